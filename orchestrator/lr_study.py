"""`python -m orchestrator.lr_study`: the best peak LR per arm, by Optuna through Ray Tune.

    python -m orchestrator.lr_study --config sweeps/lr.yaml [--results DIR] [--trials N]
    python -m orchestrator.lr_study --config lr --set search.trials_per_arm=4 --set arms.width=[64]
    python -m orchestrator.lr_study --config sweeps/lr.yaml --resume   # finish an interrupted run's trials

For each arm (optimizer x qk_norm x width) one Optuna study searches log-LR with a seeded TPE
sampler (Ray Tune's OptunaSearch) while ASHA stops hopeless trials early. Studies live in a
persistent Optuna storage (default: SQLite at <results>/<name>/studies/optuna.db), so running the
command again adds trials to the same studies (--resume instead runs only the trials an
interrupted run left of its budget), and `optuna-dashboard sqlite:///...` opens them.
Writes <results>/<name>/lr_best.parquet (arm, best_lr, best_loss, n_trials, ...) and prints it; a
sweep takes those LRs with `lr: {from_study: <results>/<name>, multipliers: [0.5, 1, 2]}`.
Every trial also writes metrics/ and spectra/ and a trials.parquet row (status pruned when ASHA
stopped it), like a sweep.
"""

from __future__ import annotations

import sys

from trainer.config import ConfigError

from . import cli
from .exits import bad_input
from .options import StudyOptions
from .spec.plan import check_study, plan_study

PROG = "python -m orchestrator.lr_study"


def build_parser() -> cli.ArgumentParser:
    """The command's parser: the shared spec options (cli.spec_arguments) and its own."""
    common = cli.spec_arguments(kind="LR-study", bundled="lr, lr_smoke", default="lr")
    p = cli.parser(PROG, __doc__, parents=[common])
    p.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="trials to add to each arm's study (default: search.trials_per_arm; not with --resume, which "
        "runs what the interrupted run left)",
    )
    cli.add_ray_arguments(p)
    cli.add_plan_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[StudyOptions, bool]:
    """The options of one LR-study run, and whether it is a --dry-run."""
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    cli.check_num_cpus(p, args)
    cli.check_progress_every(p, args)
    if args.trials is not None and args.trials < 1:
        p.error(f"--trials must be at least 1, got {args.trials}")
    if args.trials is not None and args.resume:
        p.error("--resume runs the trials the interrupted run left of its budget; leave out --trials")
    options = StudyOptions(
        **cli.run_options(args),
        trials=args.trials,
        overrides=tuple(args.overrides),
        resume=args.resume,
        progress_every=args.progress_every,
        again=cli.again_command(PROG, argv, drop=("--trials",)),
    )
    return options, args.dry_run


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_args(argv)
    try:
        if dry_run:  # validates and prints the plan; no Ray, nothing written
            print(plan_study(options), end="", flush=True)
            return 0
        check_study(options)  # bad input answered before Ray, Tune, Optuna and torch are loaded
        from .tune.study_run import lr_study

        return lr_study(options)
    except ConfigError as err:
        return bad_input(err)


if __name__ == "__main__":
    sys.exit(main())
