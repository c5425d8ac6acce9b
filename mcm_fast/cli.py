"""The `mcm-fast` command (also `python -m mcm_fast`): argument parsing only; the work is in the package."""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

EXAMPLES = """examples:
  mcm-fast demo                                        # tiny teacher + 4-step MCM on MNIST, on CPU in minutes
  mcm-fast config --config mnist-cd                     # every config key, its value and meaning
  mcm-fast train --config mnist-teacher --out runs/mnist-teacher
  mcm-fast train --config mnist-cd --out runs/mnist-cd4 --set objective.student_steps=4
  torchrun --nproc_per_node 8 -m mcm_fast train --config mnist-teacher --out runs/t --set optim.batch_size=1024
  mcm-fast sample --ckpt runs/mnist-cd4 --steps 4 --n 100 --out samples.png
  mcm-fast sample --pretrained mnist-mcm --steps 4 --out digits.png
  mcm-fast eval --ckpt runs/mnist-cd4 --steps 1,2,4,8 --n 1000
  mcm-fast bench --config mnist-teacher --batch 64
"""


def _step_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not steps or any(s < 1 for s in steps):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return steps


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _threads(command: argparse.ArgumentParser) -> None:
    command.add_argument("--threads", type=_positive, default=None,
                         help="CPU threads (default: the cores other processes leave free, re-read every second)")


def _model_source(command: argparse.ArgumentParser) -> None:
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="run or checkpoint directory")
    source.add_argument("--pretrained", metavar="NAME",
                        help="a shipped model: mnist-teacher, mnist-mcm or mnist-mcm-guided")


def _checkpoint(args):
    """The checkpoint directory of --ckpt or --pretrained (a bad name lists the shipped ones)."""
    if args.pretrained is None:
        return args.ckpt
    from mcm_fast.pretrained import pretrained_path

    try:
        return pretrained_path(args.pretrained)
    except ValueError as error:
        raise ValueError(f"--pretrained: {error}") from None


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mcm-fast", description="Multistep Consistency Models in PyTorch.",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=f"example: {example}")

    demo = command("demo", "train a tiny teacher on MNIST, distill a 4-step MCM, write a sample grid and FD table",
                   "mcm-fast demo --out runs/demo")
    _threads(demo)
    demo.add_argument("--out", default="runs/demo",
                      help="run directory; an interrupted demo resumes (default runs/demo)")
    demo.add_argument("--teacher-iters", type=_positive, default=None, help="teacher training steps (default: preset)")
    demo.add_argument("--student-iters", type=_positive, default=None, help="distillation steps (default: preset)")
    demo.add_argument("--n", type=_positive, default=2000, help="samples per FD estimate (default 2000)")

    train = command("train", "train or resume a run: kinds teacher, cd, ct, direct, cm",
                    "mcm-fast train --config tiny-teacher --out runs/t --set steps=200 --set optim.lr=1e-4")
    train.add_argument("--config", required=True, help="a preset name or a .yaml/.json file")
    train.add_argument("--out", required=True,
                       help="run directory (checkpoints, log.jsonl, samples/); resumes if present")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable); `mcm-fast config` lists them all")
    _threads(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    config = command("config", "print every config key of a preset or file with its value and meaning",
                     "mcm-fast config --config tiny-cd --set data.resolution=8")
    config.add_argument("--config", default="tiny-teacher", help="a preset name or a .yaml/.json file "
                        "(default tiny-teacher)")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")

    sample = command("sample", "write a grid of samples from a checkpoint",
                     "mcm-fast sample --ckpt runs/mnist-cd4 --steps 4 --n 100 --out samples.png")
    _model_source(sample)
    _threads(sample)
    sample.add_argument("--steps", type=_positive, default=None, help="network calls (default: the run's)")
    sample.add_argument("--n", type=_positive, default=100, help="number of samples (default 100)")
    sample.add_argument("--out", required=True, help="PNG file to write")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--label", type=int, default=None, help="one class for every sample (default: 0, 1, 2, ...)")
    sample.add_argument("--sampler", choices=("addim", "ddim"), default="addim", help="a teacher's sampler")
    sample.add_argument("--scale", type=_positive, default=1, help="upscale the grid (nearest) this many times")
    sample.add_argument("--guidance", type=_finite, default=0.0, help="classifier-free guidance scale w (default 0)")

    evaluate = command("eval", "FD (MNIST features for MNIST), precision and recall per step count",
                       "mcm-fast eval --ckpt runs/mnist-cd4 --steps 1,2,4,8 --n 1000 --out runs/mnist-cd4/eval")
    _model_source(evaluate)
    _threads(evaluate)
    evaluate.add_argument("--steps", type=_step_list, default=None,
                          help="comma-separated step counts (default: the run's)")
    evaluate.add_argument("--n", type=_positive, default=1000, help="samples per estimate (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--sampler", choices=("addim", "ddim"), default="addim", help="a teacher's sampler")
    evaluate.add_argument("--out", default=None, help="directory for eval.json, the metric-vs-steps plot and grids")
    evaluate.add_argument("--guidance", type=_finite, default=0.0, help="classifier-free guidance scale w (default 0)")

    encode = command("encode", "captioned images through a text-to-image pipeline's VAE and text encoder into "
                     "the latent cache a latent run trains on", "mcm-fast encode --pipeline sd15 --data captioned/ "
                     "--out runs/latents")
    _threads(encode)
    encode.add_argument("--pipeline", required=True, help="a diffusers text-to-image pipeline folder (vae/, "
                        "text_encoder/, tokenizer/)")
    encode.add_argument("--data", required=True, help="a folder with metadata.jsonl, an .npz with x and text, or mnist")
    encode.add_argument("--out", required=True, help="the cache's folder; an interrupted encoding resumes")
    encode.add_argument("--resolution", type=_positive, default=None, help="image side (default: the VAE's)")
    encode.add_argument("--split", default="train", help="mnist's split (default train)")
    encode.add_argument("--seed", type=int, default=0, help="seeds the VAE's latent samples (default 0)")
    encode.add_argument("--batch", type=_positive, default=64, help="images per VAE call (default 64)")

    export = command("export", "a distilled student for a stock diffusers pipeline: a LoRA run's adapters with an "
                     "MCMScheduler, or a full student's (or a text teacher's) pipeline folder",
                     "mcm-fast export --ckpt runs/lora-cd4 --out my-mcm-lora")
    export.add_argument("--ckpt", required=True, help="the student's (or text teacher's) run or checkpoint directory")
    export.add_argument("--out", required=True, help="the folder to write")

    mem = command("memory", "the GPU memory of distilling a text-to-image pipeline's network, per part, from its "
                  "config files", "mcm-fast memory --pipeline sd15 --batch 8 --lora-rank 64 --checkpointing")
    mem.add_argument("--pipeline", required=True, help="a diffusers pipeline folder (its config files suffice)")
    mem.add_argument("--batch", type=_positive, required=True, help="examples per GPU")
    mem.add_argument("--lora-rank", type=_positive, default=None, help="a LoRA student of this rank (default: full)")
    mem.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="the activations' (default bf16)")
    mem.add_argument("--checkpointing", action="store_true", help="with gradient checkpointing")

    bench = command("bench", "training and sampling throughput of a config on this machine",
                    "mcm-fast bench --config tiny-teacher --batch 128")
    _threads(bench)
    bench.add_argument("--config", default="tiny-teacher", help="a preset name or a .yaml/.json file")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    bench.add_argument("--batch", type=_positive, default=64, help="batch size (default 64)")
    bench.add_argument("--iters", type=_positive, default=10, help="timed iterations (default 10)")
    bench.add_argument("--steps", type=_step_list, default=(1, 2, 4, 8), help="sampler step counts (default 1,2,4,8)")
    return root


def main(argv: list[str] | None = None) -> int:
    """Runs one command: 0 on success; any failure is one line on stderr and status 1 (Ctrl-C: 130; argparse's
    usage errors keep its convention: status 2 and one `error:` line after the usage)."""
    args = parser().parse_args(argv)
    prefix = f"mcm-fast {args.command}"
    for library in ("DIFFUSERS", "TRANSFORMERS"):  # their loggers, read on import: our lines only on stderr
        os.environ.setdefault(f"{library}_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{prefix}: warning: {message}", file=sys.stderr)
        try:
            return _run(args)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:  # noqa: BLE001 - every failure reaches the user as one line, never a traceback
            print(f"{prefix}: {_one_line(error)}", file=sys.stderr)
            return 1


def _one_line(error: Exception) -> str:
    """An error as one line: its message (with the file for OS errors), or its type for a failure nobody expected."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, RecursionError):
        return "input nested too deeply to read"
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    from mcm_fast.train.config import ConfigError
    from mcm_fast.train.loop import NonFiniteLossError

    expected = (ConfigError, NonFiniteLossError, OSError, ValueError, TypeError)
    return text if isinstance(error, expected) and text else f"unexpected {type(error).__name__}: {text}"


def _run(args) -> int:
    if args.command == "demo":
        from mcm_fast.demo import run

        run(out=args.out, teacher_iters=args.teacher_iters, student_iters=args.student_iters, n=args.n,
            threads=args.threads)
    elif args.command == "train":
        from mcm_fast.train.config import load_config
        from mcm_fast.train.loop import train

        threads = [] if args.threads is None else [f"threads={args.threads}"]
        train(load_config(args.config, [*args.set, *threads]), args.out, progress=not args.no_progress)
    elif args.command == "config":
        from mcm_fast.train.build import make_kind
        from mcm_fast.train.config import describe, load_config

        config = load_config(args.config, args.set)
        make_kind(config, num_classes=10)  # the checks a run makes as it starts (they do not depend on the classes)
        print(describe(config))
    elif args.command == "sample":
        from mcm_fast.commands.evaluate import sample_grid

        print(sample_grid(_checkpoint(args), args.out, n=args.n, n_steps=args.steps, seed=args.seed, label=args.label,
                          sampler=args.sampler, scale=args.scale, guidance=args.guidance, threads=args.threads))
    elif args.command == "eval":
        from mcm_fast.commands.evaluate import evaluate_checkpoint

        evaluate_checkpoint(_checkpoint(args), steps=args.steps, n=args.n, seed=args.seed, sampler=args.sampler,
                            out=args.out, guidance=args.guidance, threads=args.threads)
    elif args.command == "encode":
        from mcm_fast.commands.encode import encode

        encode(args.pipeline, args.data, args.out, resolution=args.resolution, split=args.split, seed=args.seed,
               batch_size=args.batch, threads=args.threads)
    elif args.command == "export":
        from mcm_fast.commands.export import export

        export(args.ckpt, args.out)
    elif args.command == "memory":
        from mcm_fast.commands.memory import memory

        memory(args.pipeline, args.batch, args.lora_rank, args.precision, args.checkpointing)
    elif args.command == "bench":
        from mcm_fast.commands.bench import bench

        bench(args.config, args.set, batch=args.batch, iters=args.iters, steps=args.steps, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
