"""Training configuration: dataclasses, named presets, YAML/JSON files and `--set key=value` overrides.

One TrainConfig describes a run of any kind (teacher, cd, ct, direct, cm). Files and overrides are checked
against the dataclasses: an unknown key or a value of the wrong type is an error that names the key.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SCHEDULES = ("cosine", "flow", "edm", "discrete")
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")
INITS = ("teacher", "random")
DEVICES = ("auto", "cpu", "cuda")
MAX_RESOLUTION = 4096  # an image side


KIND_NAMES = ("teacher", "cd", "ct", "direct", "cm")  # the kinds of run (train.kinds.KINDS)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass
class DataConfig:
    """What to train on: mnist, folder (PNG/JPEG), npz, latents, or the 2-D toys ring and grid (mcm_fast.data)."""

    name: str = "mnist"  # mnist, folder (PNG/JPEG, a subfolder per class), npz, latents (mcm-fast encode), ring, grid
    path: str | None = None  # folder, npz: the training images; latents: the cache mcm-fast encode wrote
    resolution: int | None = 16  # the image side (mnist: 8, 16, 28 or 32; folder: resized to it; npz: None or theirs)
    split: str = "train"  # mnist: train or test; npz: the keys x_{split}, y_{split} (plain x, y hold train)
    n: int | None = None  # points drawn for the 2-D toys
    holdout: float = 0.1  # folder, npz, latents: this fraction of the examples is held out and scores the run
    test_path: str | None = None  # folder, npz: a test folder or file (read as path is) to score against instead


@dataclass
class ObjectiveConfig:
    """Algorithm 1 (kinds cd, ct, direct; math.md §4) and the teacher's label dropout for guidance."""

    student_steps: int | list = 4  # a list (e.g. [1, 2, 4, 8, 16]): one student for each of these step counts
    steps_probs: list | None = None  # how often each S of a list is drawn (None: uniformly)
    guidance: list | None = None  # [lo, hi]: classifier-free guidance distilled into the student, w ~ U(lo, hi)
    teacher_steps: list | int = field(default_factory=lambda: [64, 1280, 100_000])  # N: start, end, anneal; or one
    teacher_solver: str = "addim"  # the teacher's integrator in Algorithm 1: addim, ddim, euler or heun
    xvar_frac: float | str = 0.75  # aDDIM's x_var: this fraction of ||x_teacher - x||^2 / d, or "analytic"
    loss: str = "pseudo_huber"  # the distance of student and target: pseudo_huber or l2_squared
    huber_eps: float = 1e-4  # the pseudo-Huber epsilon
    weighting: str = "sqrt(snr+1)"  # snr+1 (the paper's) or sqrt(snr+1) (evens the loss over segments)
    label_dropout: float = 0.1  # classifier-free guidance: labels become the null class this often
    multiscale: int = 0  # 2x2 poolings added to the loss (simple diffusion's multiscale loss)
    boundaries: str = "t"  # segment edges uniform in t (the paper) or in logsnr; sampling follows


@dataclass
class SongConfig:
    """Kind cm: consistency models of Song et al. 2023 in their EDM/VE form (mcm_fast.consistency)."""

    mode: str = "cd"  # cd (a teacher) or ct (from data)
    steps: int | None = 18  # N of the Karras grid; None = CT's schedule N(k)
    solver: str = "heun"  # the teacher's ODE step on the Karras grid: heun or euler
    distance: str = "pseudo_huber"  # the consistency distance: pseudo_huber, l2 or l2_squared
    target_decay: float | None = None  # EMA of the target network; None = 0.95 for cd, mu(k) for ct


@dataclass
class OptimConfig:
    """AdamW with linear warmup, gradient clipping and an EMA of the weights for evaluation."""

    lr: float = 2e-4  # AdamW's learning rate after warmup
    betas: list = field(default_factory=lambda: [0.9, 0.99])  # AdamW's [beta1, beta2]
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup: int = 200  # steps of linear learning-rate warmup
    grad_clip: float = 1.0  # the largest gradient norm (larger ones are scaled down to it)
    batch_size: int = 128  # the global batch, over all ranks and accumulation steps
    accumulate: int = 1  # micro-batches per step on each rank
    ema_decay: float = 0.999  # the EMA of the weights that samples and is evaluated (warmed up over the first steps)


@dataclass
class TrainConfig:
    """A training run: kind, network, data, objective, optimizer and the loop's schedule."""

    kind: str = "teacher"  # teacher (v-loss), cd, ct, direct (Algorithm 1) or cm (Song et al.)
    model: str = "tiny"  # a UViT preset (models.UVIT_PRESETS), mlp (2-D data), diffusers-unet2d/-unet2d-cond/-dit/-sd3
    model_options: dict = field(default_factory=dict)  # overrides of the preset's fields; a diffusers model's arguments
    prediction: str = "v"  # x, eps, v or flow (velocity eps - x); EDM's D is x on the edm schedule
    schedule: str = "cosine"  # cosine, flow (rectified flow), edm (sigma) or discrete (DDPM betas; needs diffusers)
    schedule_options: dict = field(default_factory=dict)  # the schedule's arguments (discrete: diffusers' betas)
    schedule_shift: list | None = None  # (r, res): the shifted cosine schedule of math.md §1
    time_input: str = "logsnr"  # what the network sees: logsnr, t, or native (the schedule's own time)
    teacher: str | None = None  # the teacher's checkpoint directory, or a diffusers pipeline folder (unet/, scheduler/)
    init: str = "teacher"  # students start from the teacher's EMA weights, or from random ones
    lora_rank: int | None = None  # a LoRA student: the teacher's diffusers network with adapters of this rank
    lora_alpha: float | None = None  # the adapters' scale is lora_alpha / lora_rank (None: lora_rank, scale 1)
    lora_targets: list | None = None  # the modules adapted (None: the attention projections; LCM-LoRA adds more)
    gradient_checkpointing: bool = False  # a diffusers network recomputes its blocks in the backward (less memory)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    song: SongConfig = field(default_factory=SongConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000  # optimizer steps in all (may grow when a run resumes)
    cooldown: int = 0  # the last cooldown steps decay the learning rate linearly to 0 (0: constant after warmup)
    seed: int = 0  # every random draw of the run derives from it
    log_every: int = 10  # steps between rows of log.jsonl
    save_every: int = 250  # steps between checkpoints (0: only at the end)
    keep: int = 3  # checkpoints kept, the newest
    sample_every: int = 0  # steps between sample grids (0: a grid only at the end)
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    eval_samples: int = 500  # samples per evaluation, scored against as many held-out examples
    sample_steps: int | None = None  # None: the student's S, or 64 aDDIM steps for a teacher
    compile: bool = False  # torch.compile the loss
    precision: str = "auto"  # auto: bf16 autocast on GPU and on CPUs with native bf16, else fp32
    device: str = "auto"  # auto (cuda when there is one), cpu or cuda
    threads: int | None = None  # CPU intra-op threads; None: the cores other processes leave free (mcm_fast.threads)
    strategy: str = "ddp"  # multi-process wrapping under torchrun: ddp or fsdp

    def __post_init__(self):
        check_config(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tiny(**changes) -> TrainConfig:
    """The CPU demo: the tiny UViT on MNIST at 16x16, class-conditional, sized to train in minutes."""
    return TrainConfig(**{"model": "tiny", "data": DataConfig("mnist", resolution=16), "eval_samples": 200,
                          "optim": OptimConfig(lr=1e-3, ema_decay=0.995), **changes})


def _mnist(**changes) -> TrainConfig:
    """The MNIST reproduction model at 32x32, class-conditional."""
    return TrainConfig(**{"model": "mnist", "data": DataConfig("mnist", resolution=32), "steps": 20_000,
                          "save_every": 1000, **changes})


def _ring(**changes) -> TrainConfig:
    """The 8-mode ring in 2-D with the residual MLP."""
    return TrainConfig(**{"model": "mlp", "data": DataConfig("ring", resolution=None, n=50_000),
                          "objective": ObjectiveConfig(label_dropout=0.0),
                          "optim": OptimConfig(lr=1e-3, batch_size=512),
                          "steps": 4000, "save_every": 1000, **changes})


PRESETS = {
    "tiny-teacher": lambda: _tiny(kind="teacher", steps=1200),
    # 1000 steps: past the plateau; grad_clip 50: above every gradient norm of runs/sweep (at most 21), so that it
    # guards against outliers instead of rescaling every step as 1.0 did (the same FD-MNIST; docs/results.md)
    "tiny-cd": lambda: _tiny(kind="cd", teacher="runs/tiny-teacher", steps=1000,
                             objective=ObjectiveConfig(teacher_steps=[32, 128, 500]),
                             optim=OptimConfig(lr=1e-3, ema_decay=0.995, grad_clip=50.0)),
    "mnist-teacher": lambda: _mnist(kind="teacher"),
    "mnist-cd": lambda: _mnist(kind="cd", teacher="runs/mnist-teacher", steps=10_000),
    "mnist-ct": lambda: _mnist(kind="ct", teacher="runs/mnist-teacher", steps=10_000),
    "mnist-direct": lambda: _mnist(kind="direct", teacher="runs/mnist-teacher", steps=10_000),
    "mnist-cm": lambda: _mnist(kind="cm", teacher="runs/mnist-teacher", init="random", steps=10_000),
    "ring-teacher": lambda: _ring(kind="teacher"),
    "ring-cd": lambda: _ring(kind="cd", teacher="runs/ring-teacher", steps=2000),
}


def key_meanings() -> dict[str, str]:
    """{dotted key: its one-line meaning}, read from the comments beside the dataclass fields above: one source."""
    meanings = {}
    for prefix, cls in (("", TrainConfig), ("data.", DataConfig), ("objective.", ObjectiveConfig),
                        ("song.", SongConfig), ("optim.", OptimConfig)):
        for line in inspect.getsource(cls).splitlines():
            found = re.match(r"    (\w+): [^#]*  # (.*)$", line)
            if found:
                meanings[prefix + found.group(1)] = found.group(2)
    return meanings


def describe(config: TrainConfig) -> str:
    """Every key of config as `key = value  # meaning`, one a line, in the order of the dataclasses."""
    meanings, lines = key_meanings(), []

    def walk(values: dict, prefix: str):
        for key, value in values.items():
            if isinstance(value, dict) and key not in ("model_options", "schedule_options"):
                walk(value, f"{prefix}{key}.")
            else:
                lines.append((f"{prefix}{key} = {json.dumps(value)}", meanings.get(prefix + key, "")))

    walk(config.to_dict(), "")
    width = max(len(text) for text, _ in lines)
    return "\n".join(f"{text:<{width}}  # {meaning}" for text, meaning in lines)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_value(key: str, value, hint):
    """value (parsed from YAML/JSON) must fit the annotation hint; ints are accepted for floats, and so are
    strings like "1e-4" (YAML 1.1 reads exponents without a dot as strings)."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str) and _is_float(value):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and isinstance(value, option):
            return value
        if option is list and isinstance(value, (list, tuple)):
            return list(value)
    names = " or ".join("None" if o is type(None) else o.__name__ for o in options)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def _build(cls, values: dict, prefix: str = ""):
    """cls(**values) with nested dataclasses built recursively; unknown keys and wrong types name the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"{prefix}{key}: unknown key (known: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(prefix + key, value, hint)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a dataclass without defaults for a missing field
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        free_form = key in ("model_options", "schedule_options")
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not free_form:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# what a run saved before an option existed trained with, where that is not the option's default: data sources
# -> values (holdout changed what trained only for folder and npz data; MNIST and the toys hold nothing out)
BEFORE = {("folder", "npz"): {"data": {"holdout": 0.0}}}


def with_defaults(saved: dict) -> dict:
    """A saved config dict with every key it lacks, at any depth, set to what the run trained with: the option's
    default, or its value in BEFORE, so that a run saved before an option existed resumes as it trained."""
    defaults = TrainConfig().to_dict()
    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    name = data.get("name", defaults["data"]["name"])
    before = next((values for names, values in BEFORE.items() if name in names), {})
    return _merge(_merge(defaults, before), saved)


def read_config_file(path: Path) -> dict:
    """A YAML (.yaml/.yml) or JSON (.json) file as a dict; a bad file is one line naming it."""
    if not path.is_file():
        raise ConfigError(f"config: no such file {str(path)!r}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config: cannot parse {str(path)!r}: nested too deeply") from None
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"config: cannot parse {str(path)!r}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping in {str(path)!r}, got {type(data).__name__}")
    return data


def parse_overrides(pairs: list[str]) -> dict:
    """["optim.lr=1e-4", "data.name=npz"] -> nested dict; values are parsed as YAML scalars or lists."""
    out: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not all(key.split(".")):
            raise ConfigError(f"--set: expected key=value with a dotted key such as optim.lr=1e-4, got {pair!r:.80}")
        try:
            value = yaml.safe_load(text) if text else ""
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"--set {key}: cannot parse the value {text!r:.60}") from None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} was set to a value by an earlier --set, not a section")
        node[leaf] = value
    return out


def load_config(name_or_file: str | dict, overrides: list[str] | dict = ()) -> TrainConfig:
    """A preset name, a YAML/JSON file or a dict (a file or dict may name a preset under `preset:`), with
    `--set` overrides applied last."""
    if not isinstance(name_or_file, (str, dict)):
        raise TypeError(f"name_or_file: expected a preset name, a .yaml/.json path or a dict, got "
                        f"{type(name_or_file).__name__}")
    if isinstance(name_or_file, dict):
        data = dict(name_or_file)
    elif name_or_file in PRESETS:
        data = {"preset": name_or_file}
    elif Path(name_or_file).suffix in (".yaml", ".yml", ".json"):
        data = read_config_file(Path(name_or_file))
    else:
        raise ConfigError(f"--config: expected a preset ({', '.join(PRESETS)}) or a .yaml/.json file, got "
                          f"{name_or_file!r}")
    preset = data.pop("preset", None)
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise ConfigError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    base = PRESETS[preset]().to_dict() if preset else TrainConfig().to_dict()
    changes = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
    return _build(TrainConfig, _merge(_merge(base, data), changes))


# ----------------------------------------------------------------- validation
def _int(lo: int, hi: float = math.inf):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _real(lo: float, hi: float, low_open: bool = False, high_open: bool = False):
    """A test for a number in [lo, hi], with an open end where asked (NaN fails every comparison)."""
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
                      and not (low_open and v == lo) and not (high_open and v == hi))


def _optional(test):
    return lambda v: v is None or test(v)


def _pair(test):
    return lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(test(x) for x in v)


def _one_of(options):
    return lambda v: isinstance(v, str) and v in options, f"one of {', '.join(options)}"


def _rules() -> dict:
    """dotted key -> (test, what is expected): the settings Algorithm 1's and Song et al.'s own checks do not
    cover (those run through _delegate). Its imports are local: the constants live in modules that import torch."""
    from mcm_fast._checks import MAX_STEPS
    from mcm_fast.data.images import DATASETS
    from mcm_fast.data.points import MAX_POINTS
    from mcm_fast.denoiser import PREDICTIONS, TIME_INPUTS
    from mcm_fast.metrics.evaluate import MIN_SAMPLES
    from mcm_fast.models import UVIT_PRESETS
    from mcm_fast.models.diffusers_nets import DIFFUSERS_MODELS

    positive, count = _int(1), _int(0)
    return {
        "kind": _one_of(KIND_NAMES), "precision": _one_of(PRECISIONS), "strategy": _one_of(STRATEGIES),
        "init": _one_of(INITS), "device": _one_of(DEVICES),
        "model": _one_of(("mlp", *UVIT_PRESETS, *DIFFUSERS_MODELS)), "prediction": _one_of(tuple(PREDICTIONS)),
        "schedule": _one_of(SCHEDULES), "time_input": _one_of(TIME_INPUTS),
        "schedule_options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a mapping"),
        "schedule_shift": (_optional(_pair(_real(0, math.inf, True, True))),
                           "None or [r, res], two finite numbers > 0"),
        "teacher": (_optional(lambda v: isinstance(v, str) and v != ""), "None or a checkpoint directory"),
        "lora_rank": (_optional(_int(1)), "None or an integer >= 1"),
        "gradient_checkpointing": (lambda v: isinstance(v, bool), "true or false"),
        "lora_alpha": (_optional(_real(0, math.inf, True, True)), "None or a finite number > 0"),
        "lora_targets": (_optional(lambda v: isinstance(v, list) and v and all(isinstance(n, str) and n for n in v)),
                         "None or a list of module names"),
        "data.name": _one_of(DATASETS),
        "data.path": (_optional(lambda v: isinstance(v, str) and v != ""), "None or a path"),
        "data.resolution": (_optional(_int(1, MAX_RESOLUTION)), f"None or an integer in [1, {MAX_RESOLUTION}]"),
        "data.split": (lambda v: isinstance(v, str) and v != "", "a split name such as train or test"),
        "data.n": (_optional(_int(1, MAX_POINTS)), f"None or an integer in [1, {MAX_POINTS}]"),
        "data.holdout": (_real(0, 1, high_open=True), "a fraction in [0, 1)"),
        "data.test_path": (_optional(lambda v: isinstance(v, str) and v != ""), "None or a path"),
        "song.target_decay": (_optional(_real(0, 1)), "None or a number in [0, 1]"),
        "optim.lr": (_real(0, math.inf, True, True), "a finite number > 0"),
        "optim.betas": (_pair(_real(0, 1, high_open=True)), "[beta1, beta2], two numbers in [0, 1)"),
        "optim.weight_decay": (_real(0, math.inf, high_open=True), "a finite number >= 0"),
        "optim.warmup": (count, "an integer >= 0"),
        "optim.grad_clip": (_real(0, math.inf, low_open=True), "a number > 0 (inf: no clipping)"),
        "optim.batch_size": (positive, "an integer >= 1"),
        "optim.accumulate": (positive, "an integer >= 1"),
        "optim.ema_decay": (_real(0, 1), "a number in [0, 1]"),
        "steps": (positive, "an integer >= 1"),
        "cooldown": (count, "an integer >= 0"),
        "seed": (_int(0, 2**31 - 1), "an integer in [0, 2^31)"),
        "log_every": (positive, "an integer >= 1"),
        "save_every": (count, "an integer >= 0 (0: only at the end)"),
        "keep": (positive, "an integer >= 1"),
        "sample_every": (count, "an integer >= 0 (0: only at the end)"),
        "eval_every": (count, "an integer >= 0 (0: only at the end)"),
        "eval_samples": (_int(MIN_SAMPLES), f"an integer >= {MIN_SAMPLES}"),
        "sample_steps": (_optional(_int(1, MAX_STEPS)), f"None or an integer in [1, {MAX_STEPS}]"),
        "compile": (lambda v: isinstance(v, bool), "true or false"),
        "threads": (_optional(positive), "None (the cores other processes leave free) or an integer >= 1"),
        "model_options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a mapping"),
    }



def check_config(config: TrainConfig) -> None:
    """Every setting of config in range, or a ConfigError naming its dotted key: checked when the config is built,
    before any work. The settings of the schedule, the objective and Song et al.'s loss are checked where they are
    used, when a run builds its schedule and binds its kind (train.build.make_kind)."""
    for key, (test, expected) in _rules().items():
        value = _get(config, key)
        if not test(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if config.optim.batch_size % config.optim.accumulate:
        raise ConfigError(f"optim.accumulate: expected a divisor of optim.batch_size={config.optim.batch_size}, "
                          f"got {config.optim.accumulate}")
    if config.cooldown > config.steps:
        raise ConfigError(f"cooldown: expected at most steps={config.steps}, got {config.cooldown}")
    if config.schedule_shift is not None and config.schedule != "cosine":
        raise ConfigError(f"schedule_shift: shifts the cosine schedule, expected None for schedule={config.schedule!r}")
    from mcm_fast.data.images import check_arguments

    data = config.data
    as_config_error("data.", lambda: check_arguments(data.name, data.path, data.resolution, data.split, data.n))


def _get(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def as_config_error(prefix: str, build, renames: dict | None = None):
    """build() (a constructor that checks its arguments), its errors reported as ConfigErrors under the config's
    dotted keys (prefix + the argument's name, renamed by renames)."""
    try:
        return build()
    except (ValueError, TypeError) as error:
        name, _, rest = str(error).partition(":")
        raise ConfigError(f"{prefix}{(renames or {}).get(name, name)}:{rest}") from None
