"""The `mcm-fast` command (also `python -m mcm_fast`): argument parsing only."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mcm-fast",
        description="Multistep Consistency Models in PyTorch.",
        epilog="example: mcm-fast demo --steps 1,2,4,8 --n 20000",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="DDIM vs aDDIM on a 2-D Gaussian mixture with its exact denoiser")
    demo.add_argument("--steps", default="1,2,4,8,16,64", help="comma-separated step counts (default 1,2,4,8,16,64)")
    demo.add_argument("--n", type=int, default=20000, help="number of samples (default 20000)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        try:
            steps = tuple(int(s) for s in args.steps.split(","))
        except ValueError:
            parser.error(f"--steps: expected comma-separated positive integers, got {args.steps!r}")
        if any(s < 1 for s in steps):
            parser.error(f"--steps: expected positive integers, got {args.steps!r}")
        if args.n < 2:
            parser.error(f"--n: expected at least 2 samples, got {args.n}")
        from mcm_fast import demo as demo_module

        demo_module.run(steps=steps, n=args.n, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
