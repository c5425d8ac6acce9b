"""`mcm-fast bench`: training-step and sampling throughput of a config's network on this machine."""
from __future__ import annotations

import copy
import time

import torch

from mcm_fast.data import load_dataset
from mcm_fast.denoiser import Denoiser
from mcm_fast.models import count_parameters
from mcm_fast.objectives import MCMObjective, diffusion_loss
from mcm_fast.train.build import generate, make_net, make_schedule, wrap
from mcm_fast.train.config import load_config


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


def bench(config_name: str, overrides=(), batch: int = 64, iters: int = 10, steps=(1, 2, 4, 8), echo=print) -> dict:
    """Images/s of one optimizer step of the config's kind (teacher: v-loss; others: Algorithm 1 with a
    frozen copy of the network as teacher) and of sampling at each step count; prints and returns them."""
    config = load_config(config_name, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset(config.data.name, path=config.data.path, resolution=config.data.resolution,
                        split=config.data.split, n=config.data.n, seed=config.seed)
    net = make_net(config, tuple(data.shape), data.num_classes).to(device)
    schedule = make_schedule(config)
    model = Denoiser(net, schedule, config.prediction, config.time_input)  # the train step's model (cm: the same network)
    batch_data = data.batch(torch.arange(batch) % len(data))
    x = batch_data.pop("x").to(device)
    cond = {k: v.to(device) for k, v in batch_data.items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    if config.kind == "teacher" or config.kind == "cm":
        def loss():
            return diffusion_loss(model, x, **cond)
    else:
        teacher = Denoiser(copy.deepcopy(net).requires_grad_(False), schedule, config.prediction, config.time_input)
        objective = MCMObjective(schedule, student_steps=config.objective.student_steps)

        def loss():
            return objective(model, x, teacher=teacher, **cond)

    def train_step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    params = count_parameters(net)
    results = {"train_images_per_s": batch / _timed(train_step, iters, device)}
    echo(f"{config.model} ({params / 1e6:.2f}M parameters) on {device}, batch {batch}, data {tuple(data.shape)}")
    echo(f"train step ({'v-loss' if config.kind in ('teacher', 'cm') else 'Algorithm 1'}): "
         f"{results['train_images_per_s']:.1f} images/s")
    net.eval()
    sampler = wrap(net, config, schedule)
    noise = torch.randn_like(x)
    for n_steps in steps:
        rate = batch / _timed(lambda n_steps=n_steps: generate(sampler, config, n_steps, noise, **cond), iters, device)
        results[f"sample_{n_steps}_images_per_s"] = rate
        echo(f"sampling, {n_steps} step(s): {rate:.1f} images/s")
    return results
