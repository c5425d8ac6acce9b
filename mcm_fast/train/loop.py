"""The training loop shared by every kind: teacher (v-loss), cd, ct, direct (Algorithm 1) and cm (Song et al.).
What differs between them is the kind's object (train.kinds); the loop never branches on it, and a training
step reads nothing back from the device (the loss and gradient norm are read when logged or checkpointed).

Every random draw of step k (data order, t, noise, dropout) comes from seeds derived from (seed, k, micro-batch),
so a run resumed from a checkpoint at step k continues exactly as the uninterrupted run would, and a DDP run on
R ranks equals a single process that accumulates R micro-batches (rank r draws what micro-batch r draws).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mcm_fast._checks import inputs_checked
from mcm_fast.data import batch_indices, shard
from mcm_fast.data.latents import LatentData
from mcm_fast.data.splits import training_data
from mcm_fast.integrations.pipelines import is_pipeline_folder
from mcm_fast.metrics.evaluate import Scorer, decoder, sample_inputs
from mcm_fast.metrics.grid import save_grid
from mcm_fast.threads import Threads
from mcm_fast.train import distributed
from mcm_fast.train.build import (
    adapter_keys,
    adopt_teacher,
    data_null_cond,
    deeper_middle,
    load_model,
    load_teacher_weights,
    lora_base,
    make_kind,
    make_net,
    with_lora,
)
from mcm_fast.train.checkpoint import (
    check_state_dict,
    has_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from mcm_fast.train.config import ConfigError, TrainConfig, as_config_error, with_defaults
from mcm_fast.train.ema import ema_decay, ema_update

LOG_NAME = "log.jsonl"
PARAMETERIZATION_KEYS = ("model", "model_options", "prediction", "schedule", "schedule_options", "schedule_shift",
                      "time_input")  # what a student shares with its teacher
# may change when a run resumes; every other key may not
LOOP_KEYS = ("steps", "cooldown", "log_every", "save_every", "keep", "sample_every", "eval_every", "eval_samples",
             "sample_steps", "compile", "device", "precision", "threads")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops before the optimizer step, its checkpoints intact."""


def micro_seed(seed: int, step: int, micro: int) -> int:
    """The seed of micro-batch `micro` of step `step`: distinct for every (seed, step, micro)."""
    return (seed * 1_000_003 + step) * 1_009 + micro


def autocast(precision: str, device: torch.device):
    """bf16 autocast with precision bf16, and with auto on GPU and on CPUs with native bf16 (AVX-512 bf16 or
    AMX: 1.1-1.4x faster here, to the same FD; docs/results.md); float32 otherwise."""
    native = device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" or (precision == "auto" and native):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of 0-based step: linear warmup over optim.warmup steps, constant, then a linear decay
    over the last config.cooldown steps whose final step still moves (the warmup-stable-decay schedule; with the
    EMA it lowers the noise of the final weights, docs/results.md)."""
    warmup = (step + 1) / max(config.optim.warmup, 1)
    decay = (config.steps - step) / config.cooldown if config.cooldown else 1.0
    return config.optim.lr * min(1.0, warmup, decay)


class Trainer:
    """One run: builds data, networks and optimizer from a TrainConfig, resumes from `out` when a checkpoint
    is there, and trains to config.steps, writing checkpoints, log.jsonl, sample grids and evaluations."""

    def __init__(self, config: TrainConfig, out: str | Path, progress: bool = True):
        config = adopt_teacher(config)
        self.config, self.out = config, Path(out)
        found = next(p for p in (self.out, *self.out.parents) if p.exists())
        if not found.is_dir():
            raise ConfigError(f"--out: {found} is a file; expected {self.out} to be a run directory (new or to resume)")
        self.ranks = distributed.setup(config.device)
        self.threads = Threads(config.threads)  # called every step, and by the EMA network that samples
        self.progress = progress and self.ranks.main
        self.data = training_data(config.data, config.seed)
        self.info = {"shape": list(self.data.shape), "num_classes": self.data.num_classes}
        if isinstance(self.data, LatentData):  # text-conditioned: its prompt embeddings' [L, D] (and pooled P)
            self.info.update(self.data.text_info)
        micro_batches = self.ranks.world * config.optim.accumulate
        if config.optim.batch_size % micro_batches:
            raise ConfigError(f"optim.batch_size: expected a multiple of ranks x accumulate = {micro_batches}, "
                              f"got {config.optim.batch_size}")
        # checks the settings it uses, before any work
        self.kind = make_kind(config, self.info["num_classes"], null_cond=data_null_cond(config))
        self.teacher, teacher_net = self._load_teacher()
        torch.manual_seed(config.seed)  # the initial weights, the same on every rank
        net = make_net(self.kind, tuple(self.info["shape"]), self.info["num_classes"], self.info.get("text"),
                       self.info.get("pooled"))
        if teacher_net is not None and config.init == "teacher" and self.kind.same_network_as_teacher:
            load_teacher_weights(net, teacher_net)
        if config.lora_rank is not None:  # the teacher becomes the student's own network with its adapters off
            if not (self.kind.needs_teacher and config.init == "teacher"):
                raise ConfigError(f"lora_rank: a LoRA student starts from the teacher it distills; expected kind cd "
                                  f"or direct with init teacher, got kind {config.kind!r}, init {config.init!r}")
            from mcm_fast.integrations.lora import AdaptersOff

            net = with_lora(net.to(self.ranks.device), config)
            self.teacher = self.kind.wrap(AdaptersOff(net))
        # a LoRA run of a pipeline folder saves its adapters only: its base is the folder's network (lora_base)
        self.saved_keys, self.lora_base = (adapter_keys(net), lora_base(config)) \
            if config.lora_rank and is_pipeline_folder(config.teacher) else (None, None)
        net = net.to(self.ranks.device)
        frozen = {id(p): p for p in net.parameters() if not p.requires_grad}  # a LoRA student's base: shared
        self.ema = copy.deepcopy(net, memo=frozen).eval().requires_grad_(False)
        self.ema.register_forward_pre_hook(self.threads)
        self.extra = self.kind.extra_state(net)  # e.g. Song et al.'s EMA target network
        self.net = distributed.parallel(net, config.strategy, self.ranks)
        if config.strategy == "fsdp" and self.ranks.world > 1:  # shard the copies alike, so updates stay local
            self.ema = distributed.parallel(self.ema, "fsdp", self.ranks)
            self.extra = {name: distributed.parallel(m, "fsdp", self.ranks) for name, m in self.extra.items()}
        self.model = self.kind.wrap(self.net)
        self.loss_fn = self._make_loss()
        fused = self.ranks.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                                           weight_decay=config.optim.weight_decay, fused=fused)
        self.step = 0
        self._resume()

    # ----------------------------------------------------------------- setup
    def _load_teacher(self):
        """The frozen teacher (its EMA weights) of a kind that distills it or starts from it (binding the kind has
        checked that a kind which needs one names it)."""
        config = self.config
        if config.teacher is None or not self.kind.uses_teacher:
            return None, None
        try:
            model, teacher_kind, info = load_model(config.teacher, self.ranks.device)
        except FileNotFoundError as error:
            raise ConfigError(f"teacher: {error}") from None
        if config.data.name == "latents" and is_pipeline_folder(config.teacher):
            from mcm_fast.integrations.text_to_image import check_cache_of

            as_config_error("", lambda: check_cache_of(config.teacher, config.data.path))
        teacher_config = teacher_kind.config
        if teacher_config.kind != "teacher":
            raise ConfigError(f"teacher: {config.teacher} holds a {teacher_config.kind!r} run, expected a teacher")
        if info != self.info:
            raise ConfigError(f"teacher: trained on data {info}, but this run's data is {self.info}")
        differ = [k for k in PARAMETERIZATION_KEYS if getattr(teacher_config, k) != getattr(config, k)
                  and not (k == "model_options" and config.init == "teacher" and deeper_middle(teacher_config, config))]
        if self.kind.same_network_as_teacher and differ:
            key = differ[0]
            raise ConfigError(f"{key}: a student starts from its teacher's network, expected {key}="
                              f"{getattr(teacher_config, key)!r}, got {getattr(config, key)!r}")
        return model, model.net

    def _make_loss(self):
        """loss(batch, step) -> the mean loss over the micro-batch, for this run's kind; with config.compile the
        whole loss (every forward, the target and the loss; so its backward too) is one compiled graph."""
        compiled = torch.compile if self.config.compile else (lambda fn: fn)
        return self.kind.loss(self.model, self.teacher, self.extra, compiled)

    def _resume(self):
        """Continues from the newest checkpoint in out that loads and verifies; damaged ones are skipped with a
        warning and kept, and a run directory none of whose checkpoints verifies is refused (never restarted). A run
        that starts from scratch drops the rows a lost run left in log.jsonl, so the log holds one run."""
        if not has_checkpoints(self.out):
            if self.ranks.main:
                self._truncate_log(0)
            return
        state = load_checkpoint(self.out)
        saved, current = state.get("config"), self.config.to_dict()
        if not isinstance(saved, dict):
            raise ConfigError(f"--out: {state['path']} holds no training config; expected a checkpoint of mcm-fast "
                              f"train")
        saved = with_defaults(saved)  # keys added since the run was saved
        changed = sorted(k for k in set(saved) | set(current) if k not in LOOP_KEYS and saved.get(k) != current.get(k))
        if changed:
            raise ConfigError(f"--out: {self.out} holds a run with a different config (keys {', '.join(changed)}); "
                              "use a new --out, or change only " + ", ".join(LOOP_KEYS))
        only = self.saved_keys if "lora_base" in state else None  # adapters only: the base is the teacher's
        if only is not None and state["lora_base"]["weights_sha256"] != self.lora_base["weights_sha256"]:
            raise ConfigError(f"teacher: the network of {self.config.teacher} is not the base {state['path']} was "
                              f"trained on (its sha256 differs from the checkpoint's lora_base)")
        modules = {"model": self.net, "ema": self.ema, **self.extra}
        for name, module in modules.items():
            check_state_dict(f"{state['path'] / name}.safetensors", state.get(name, {}), module,
                             only if name in ("model", "ema") else None)
        distributed.load_full_state(self.net, state["model"], self.optimizer, state["optimizer"], only is None)
        for name in ("ema", *self.extra):
            distributed.load_full_state(modules[name], state[name], strict=name != "ema" or only is None)
        self.step = state["step"]
        if self.ranks.main:
            self._truncate_log(self.step)

    # ----------------------------------------------------------------- loop
    def train(self) -> list[dict]:
        """Trains from self.step to config.steps; returns the log rows of this call."""
        config, out = self.config, self.out
        if self.ranks.main:
            out.mkdir(parents=True, exist_ok=True)
        rows, window, started = [], [], time.perf_counter()
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True,
                   desc=f"{config.kind}")
        writer = self._tensorboard()
        tick, images = time.perf_counter(), 0
        if self.step:  # resumed: what a killed run left undone after its checkpoint
            self._outputs(writer)
        while self.step < config.steps:
            self.threads()
            window.append(self._train_step(self.step))
            self.step += 1
            images += config.optim.batch_size
            saving = config.save_every and self.step % config.save_every == 0 or self.step == config.steps
            sampling = any(every and self.step % every == 0 for every in (config.sample_every, config.eval_every))
            if self.step % config.log_every == 0 or self.step == config.steps:
                now = time.perf_counter()
                losses = self._losses(window)
                row = {"step": self.step, "loss": sum(losses) / len(losses), "grad_norm": float(self._grad_norm),
                       "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": images / (now - tick),
                       "time": now - started}
                rows.append(row)
                self._log(row, writer)
                bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}")
                window, tick, images = [], now, 0
            elif saving or sampling:
                self._losses(window)  # no checkpoint, grid or evaluation after a non-finite loss
            bar.update(1)
            if saving:
                self.save()
            self._outputs(writer)
        bar.close()
        return rows

    def _losses(self, window: list[torch.Tensor]) -> list[float]:
        """The losses of the steps since the last read (one host read): a non-finite one stops the run before a
        checkpoint or a log row holds its consequences."""
        losses = torch.stack(window).tolist()
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"step {self.step - len(losses) + i + 1}: the loss is {value}; stopping "
                                         f"(the last checkpoint in {self.out} is intact)")
        return losses

    def _train_step(self, step: int) -> torch.Tensor:
        """One optimizer step over the global batch: returns the mean loss over all ranks (a 0-d tensor).

        Nothing is read back from the device: the loss and the gradient norm (self._grad_norm) are read when
        logged, and the model calls run in inputs_checked() (the data's labels were checked when loaded).
        """
        config, ranks = self.config, self.ranks
        accumulate = config.optim.accumulate
        micro_batches = ranks.world * accumulate
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        indices = batch_indices(len(self.data), config.optim.batch_size, step, config.seed)
        self.net.train()
        total = torch.zeros((), device=ranks.device)
        for j in range(accumulate):
            micro = ranks.rank * accumulate + j
            torch.manual_seed(micro_seed(config.seed, step, micro))
            batch = self.data.batch(shard(indices, micro, micro_batches))
            x = batch.pop("x").to(ranks.device)
            cond = {k: v.to(ranks.device) for k, v in batch.items()}
            sync = j == accumulate - 1 or not isinstance(self.net, torch.nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else self.net.no_sync()), self._autocast(), inputs_checked():
                loss = self.loss_fn(cond, x, step)
            (loss / accumulate).backward()
            total += loss.detach().float()
        loss = distributed.mean_over_ranks(total / accumulate, ranks)
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.ema, distributed.unwrap(self.net), ema_decay(config.optim.ema_decay, step))
        self.kind.after_step(self.extra, distributed.unwrap(self.net), step)
        return loss

    def _autocast(self):
        return autocast(self.config.precision, self.ranks.device)

    # ----------------------------------------------------------------- outputs
    def save(self) -> None:
        """Writes a checkpoint (rank 0; the state gathering is collective)."""
        state = {
            "model": distributed.full_state_dict(self.net, self.ranks),
            "ema": distributed.full_state_dict(self.ema, self.ranks),
            "optimizer": distributed.full_optimizer_state(self.net, self.optimizer, self.ranks),
            **{name: distributed.full_state_dict(module, self.ranks) for name, module in self.extra.items()},
        }
        if self.saved_keys is not None:  # a LoRA run: the adapters, and which base they adapt
            state = {**state, **{name: {k: v for k, v in state[name].items() if k in self.saved_keys}
                                 for name in ("model", "ema")}, "lora_base": self.lora_base}
        if self.ranks.main:
            model = state.pop("model")
            save_checkpoint(self.out, model, step=self.step, keep=self.config.keep, config=self.config.to_dict(),
                            data_info=self.info, **state)

    def _outputs(self, writer) -> None:
        """The grid and evaluation due after self.step, each unless already written, so that a run killed after
        a checkpoint finishes on resuming what it had not (the final grid and evaluation included)."""
        config, last = self.config, self.step == self.config.steps
        if ((config.sample_every and self.step % config.sample_every == 0) or last) and not self._grid_path().exists():
            self.write_grid()
        if ((config.eval_every and self.step % config.eval_every == 0) or last) and not self._evaluated():
            self._log({"step": self.step, "eval": self.evaluate()}, writer)

    def _grid_path(self) -> Path:
        return self.out / "samples" / f"step-{self.step:09d}.png"

    def _evaluated(self) -> bool:
        """Whether log.jsonl holds the evaluation of self.step (rows past the checkpoint were dropped on resuming)."""
        path = self.out / LOG_NAME
        rows = path.read_text().splitlines() if path.exists() else []
        return any(_row_step(line) == self.step and '"eval":' in line for line in rows)

    def sample(self, n: int, n_steps: int | None = None, seed: int | None = None, teacher_sampler: str = "addim"):
        """n samples of the EMA model with fixed noise (seed), class labels 0, 1, 2, ... when conditional, the
        training data's first prompts when text-conditioned."""
        n_steps = self.kind.default_steps() if n_steps is None else n_steps
        seed = self.config.seed if seed is None else seed
        prompts = self.data.prompts(n) if isinstance(self.data, LatentData) else None
        noise, cond, generator = sample_inputs(self.info, n, seed, self.ranks.device, prompts=prompts)
        return self.kind.sample(self.kind.wrap(self.ema), n_steps, noise, teacher_sampler, generator, **cond)

    def write_grid(self) -> Path | None:
        """A grid of 100 samples (a column per class for 10 classes; latents decoded) under out/samples; images
        only."""
        if len(self.info["shape"]) != 3:
            return None
        images = self.sample(100)
        decode = decoder(self.config)
        images = images if decode is None else decode(images)
        if not self.ranks.main:
            return None
        path = self._grid_path()
        save_grid(images, path, nrow=10)
        return path

    def evaluate(self) -> dict:
        """Sample quality of the EMA model at its default step count against held-out data (metrics.Scorer)."""
        config, steps, model = self.config, self.kind.default_steps(), self.kind.wrap(self.ema)
        scorer = Scorer(config, self.info, config.eval_samples, config.seed + 1, self.ranks.device)
        scores, _ = scorer(lambda noise, generator, **cond: self.kind.sample(model, steps, noise, "addim", generator,
                                                                             **cond))
        return {"steps": steps, **scores}

    def _log(self, row: dict, writer) -> None:
        if not self.ranks.main:
            return
        with open(self.out / LOG_NAME, "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(key, value, row["step"])

    def _truncate_log(self, step: int) -> None:
        """Drops the log rows written after the checkpoint a run resumes from (atomically)."""
        path = self.out / LOG_NAME
        if not path.exists():
            return
        rows = [line for line in path.read_text().splitlines() if _row_step(line) <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in rows))
        os.replace(tmp, path)

    def _tensorboard(self):
        if not self.ranks.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.out / "tensorboard"))


def _row_step(line: str) -> float:
    """The step of a log line; a line torn by a crash mid-write counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def train(config: TrainConfig, out: str | Path, progress: bool = True) -> list[dict]:
    """Trains (or resumes) one run in `out`; see Trainer."""
    trainer = Trainer(config, out, progress)
    try:
        return trainer.train()
    finally:
        distributed.teardown()
