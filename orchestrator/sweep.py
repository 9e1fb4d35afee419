"""`python -m orchestrator.sweep`: the QK-Norm collapse grid on Ray Tune.

    python -m orchestrator.sweep                                  # sweeps/default.yaml, private local Ray
    python -m orchestrator.sweep --config sweeps/smoke.yaml --results /tmp/r
    python -m orchestrator.sweep --config smoke --set steps=20 --set grid.seed=[0,1,2]   # a bundled sweep, overridden
    python -m orchestrator.sweep --config sweeps/paradox.yaml --address auto    # on a cluster head
    python -m orchestrator.sweep --config ... --resume            # continue an interrupted sweep
    python -m orchestrator.sweep --config gpu_study --chunks-for 4 --device-kind h200   # how many chunks of 4 min
    python -m orchestrator.sweep --config gpu_study --chunk 3/40 [--dry-run]   # one chunk -> <results>/gpu_study-chunk3of40

Everything is validated first (every grid point, the corpus, the results folder): bad input ends
with one message and exit status 2 before Ray starts and before anything is written. The corpus
is read once here and shared with every trial. Results land in <results>/<name>/: sweep.json,
trials.parquet (kept current while trials run), metrics/, spectra/, attempts.parquet and tune/
(Ray Tune's experiment state and trial checkpoints, which --resume restores).
Finished trials (completed or diverged in trials.parquet) are never run again.
"""

from __future__ import annotations

import argparse
import sys

from trainer.config import ConfigError

from . import cli
from .exits import bad_input
from .options import SweepOptions
from .spec.plan import check_sweep, plan_sweep

PROG = "python -m orchestrator.sweep"


def build_parser() -> cli.ArgumentParser:
    """The command's parser: the shared spec options (cli.spec_arguments) and its own."""
    common = cli.spec_arguments(
        kind="sweep",
        bundled="smoke, default, cpu_study, alternatives, paradox, gpu_study",
        default="default",
    )
    p = cli.parser(PROG, __doc__, parents=[common])
    cli.add_ray_arguments(p)
    p.add_argument(
        "--chunk",
        metavar="I/N",
        help="run only the I-th of N deterministic, cost-balanced parts of the grid, as a sweep of its own in "
        "<results>/<name>-chunkIofN (resumable; chunks are reported together); with --dry-run, plan that chunk "
        "(default: the whole grid)",
    )
    p.add_argument(
        "--chunks-for",
        type=float,
        metavar="MINUTES",
        help="print the fewest chunks (--chunk I/N) each predicted to take at most MINUTES, and each chunk's "
        "predicted wall time (a dry run: takes --device-kind, --gpu, --num-gpus, --calibration, --json)",
    )
    p.add_argument("--inject-failure-at", type=int, help=argparse.SUPPRESS)  # tests: fail each trial once
    cli.add_plan_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[SweepOptions, bool]:
    """The options of one sweep, and whether it is a --dry-run."""
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.chunks_for is not None:
        if args.chunk:
            p.error("--chunks-for sizes every chunk; leave out --chunk")
        args.dry_run = True  # a plan: nothing starts
    cli.check_num_cpus(p, args)
    cli.check_progress_every(p, args)
    options = SweepOptions(
        **cli.run_options(args),
        overrides=tuple(args.overrides),
        resume=args.resume,
        chunk=args.chunk,
        chunks_for=args.chunks_for,
        progress_every=args.progress_every,
        inject_failure_at=args.inject_failure_at,
        again=cli.again_command(PROG, argv),
    )
    return options, args.dry_run


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_args(argv)
    try:
        if dry_run:  # validates and prints the plan; no Ray, nothing written
            print(plan_sweep(options), end="", flush=True)
            return 0
        check_sweep(options)  # bad input answered before Ray, Tune and torch are loaded
        from .tune.sweep_run import sweep

        return sweep(options).exit_code
    except ConfigError as err:
        return bad_input(err)


if __name__ == "__main__":
    sys.exit(main())
