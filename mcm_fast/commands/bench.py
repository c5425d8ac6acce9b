"""`mcm-fast bench`: training-step and sampling throughput of a config on this machine, timing the step the
config trains (its kind's loss, precision and compilation, the optimizer, clipping and EMA updates)."""
from __future__ import annotations

import copy
import time

import torch

from mcm_fast._checks import inputs_checked
from mcm_fast.data.splits import training_data
from mcm_fast.denoiser import Denoiser
from mcm_fast.models import count_parameters
from mcm_fast.threads import Threads
from mcm_fast.train.build import make_kind, make_net
from mcm_fast.train.config import load_config
from mcm_fast.train.ema import ema_decay, ema_update
from mcm_fast.train.loop import autocast


def _timed(fn, iters: int, device: torch.device) -> float:
    """Seconds per call of fn, after two untimed warm-up calls."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def bench(config_name: str, overrides=(), batch: int = 64, iters: int = 10, steps=(1, 2, 4, 8), echo=print,
          threads: int | None = None) -> dict:
    """Images/s of one optimizer step of the config's run (a frozen copy of the network stands in for a
    teacher) and of its kind's sampling at each step count, with the CPU threads training and sampling would use
    (threads; None: the cores other processes leave free); prints and returns them."""
    config = load_config(config_name, overrides)
    governor = Threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = training_data(config.data, config.seed)
    kind = make_kind(config, data.num_classes)
    net = make_net(kind, tuple(data.shape), data.num_classes).to(device)
    model, extra = kind.wrap(net), kind.extra_state(net)
    ema = copy.deepcopy(net).requires_grad_(False)
    teacher = Denoiser(copy.deepcopy(net).requires_grad_(False), kind.schedule, prediction=config.prediction)
    compiled = torch.compile if config.compile else (lambda fn: fn)
    loss_fn = kind.loss(model, teacher if kind.uses_teacher else None, extra, compiled)
    batch_data = data.batch(torch.arange(batch) % len(data))
    x = batch_data.pop("x").to(device)
    cond = {k: v.to(device) for k, v in batch_data.items()}
    optim = config.optim
    optimizer = torch.optim.AdamW(net.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                  weight_decay=optim.weight_decay, fused=device.type == "cuda")

    def train_step(step=0):
        governor()
        with autocast(config.precision, device), inputs_checked():
            loss_fn(cond, x, step).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, net, ema_decay(optim.ema_decay, step))
        kind.after_step(extra, net, step)

    params = count_parameters(net)
    results = {"train_images_per_s": batch / _timed(train_step, iters, device)}
    echo(f"{config.model} ({params / 1e6:.2f}M parameters) on {device}, batch {batch}, data {tuple(data.shape)}")
    echo(f"train step ({kind.loss_name}): {results['train_images_per_s']:.1f} images/s")
    net.eval().register_forward_pre_hook(governor)
    noise = torch.randn_like(x)
    for n_steps in steps:
        rate = batch / _timed(lambda n_steps=n_steps: kind.sample(model, n_steps, noise, **cond), iters, device)
        results[f"sample_{n_steps}_images_per_s"] = rate
        echo(f"sampling, {n_steps} step(s): {rate:.1f} images/s")
    return results
