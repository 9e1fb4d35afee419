"""`python -m orchestrator.sweep`: the QK-Norm collapse grid on Ray Tune.

    python -m orchestrator.sweep                                  # sweeps/default.yaml, private local Ray
    python -m orchestrator.sweep --config sweeps/smoke.yaml --results /tmp/r
    python -m orchestrator.sweep --config smoke --set steps=20 --set grid.seed=[0,1,2]   # a bundled sweep, overridden
    python -m orchestrator.sweep --config sweeps/paradox.yaml --address auto    # on a cluster head
    python -m orchestrator.sweep --config ... --resume            # continue an interrupted sweep

Everything is validated first (every grid point, the corpus, the results folder): bad input ends
with one message and exit status 2 before Ray starts and before anything is written. The corpus
is read once here and shared with every trial. Results land in <results>/<name>/: sweep.json,
trials.parquet (kept current while trials run), metrics/, spectra/, attempts.parquet and tune/
(Ray Tune's experiment state and trial checkpoints, which --resume restores).
Finished trials (completed or diverged in trials.parquet) are never run again.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from trainer.config import ConfigError

from . import cli
from .exits import bad_input
from .options import SweepOptions
from .spec.plan import plan_sweep
from .tune.sweep_run import sweep


def parse_args(argv: list[str] | None = None) -> tuple[SweepOptions, bool]:
    """The options of one sweep, and whether it is a --dry-run."""
    p = cli.parser("python -m orchestrator.sweep", __doc__)
    p.add_argument(
        "--config", help="sweep file, or a bundled sweep's name: smoke, default, paradox, cpu_study (default: default)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the sweep file (repeatable): train.steps=50, grid.seed=[0,1], "
        "resources.cpus_per_trial=2; a plain key is a train setting (or a grid axis the file has)",
    )
    p.add_argument(
        "--results", help="results folder or URI (default: the file's `results:`); the sweep goes in <results>/<name>"
    )
    cli.add_ray_arguments(
        p,
        address_help="join this Ray cluster ('auto' on a head node); default: the cluster this "
        "machine belongs to if there is one, else a private local Ray",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its trials' checkpoints")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="S", help="seconds between progress lines")
    p.add_argument("--inject-failure-at", type=int, help=argparse.SUPPRESS)  # tests: fail each trial once
    cli.add_plan_arguments(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    cli.check_num_cpus(p, args)
    again = shlex.join([a for a in argv if a != "--resume"] + ["--resume"])
    options = SweepOptions(
        **cli.run_options(args),
        overrides=tuple(args.overrides),
        resume=args.resume,
        progress_every=args.progress_every,
        inject_failure_at=args.inject_failure_at,
        again=f"python -m orchestrator.sweep {again}",
    )
    return options, args.dry_run


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_args(argv)
    try:
        if dry_run:  # validates and prints the plan; no Ray, nothing written
            print(plan_sweep(options), end="", flush=True)
            return 0
        return sweep(options).exit_code
    except ConfigError as err:
        return bad_input(err)


if __name__ == "__main__":
    sys.exit(main())
