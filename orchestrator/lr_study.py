"""`python -m orchestrator.lr_study`: the best peak LR per arm, by Optuna through Ray Tune.

    python -m orchestrator.lr_study --config sweeps/lr.yaml [--results DIR] [--trials N]

For each arm (optimizer x qk_norm x width) one Optuna study searches log-LR with a seeded TPE
sampler (Ray Tune's OptunaSearch) while ASHA stops hopeless trials early. Studies live in a
persistent Optuna storage (default: SQLite at <results>/<name>/studies/optuna.db), so running the
command again adds trials to the same studies, and `optuna-dashboard sqlite:///...` opens them.
Writes <results>/<name>/lr_best.parquet (arm, best_lr, best_loss, n_trials, ...) and prints it; a
sweep takes those LRs with `lr: {from_study: <results>/<name>, multipliers: [0.5, 1, 2]}`.
Every trial also writes metrics/ and spectra/ and a trials.parquet row (status pruned when ASHA
stopped it), like a sweep.
"""

from __future__ import annotations

import argparse
import sys

from trainer.config import ConfigError

from . import plan
from .spec import check_results
from .study_run import run_studies
from .study_spec import expand_arms, load_lr_spec
from .study_storage import storage_url
from .sweep import changed_settings, check_placement, check_previous
from .tune_core import bad_input, choose_address, load_corpora


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.lr_study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="LR-study file, or a bundled one's name: lr, lr_smoke (default: lr)")
    p.add_argument("--results", help="results folder or URI (default: the file's `results:`)")
    p.add_argument("--trials", type=int, help="trials to add to each arm's study (default: search.trials_per_arm)")
    p.add_argument("--address", help="join this Ray cluster ('auto' on a head node)")
    p.add_argument("--local", action="store_true", help="always start a private local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs of the private local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--verbose-ray", action="store_true", help="let Ray and Tune print their own logs too")
    plan.add_plan_args(p)  # --dry-run, --gpu, --mfu
    args = p.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        p.error(f"--trials must be at least 1, got {args.trials}")
    return args


def check_same_train(results, spec) -> None:
    """A rerun adds trials to the same studies, so its `train:` block must be the one they were run with."""
    previous = check_previous(results, "lr_study", resume=False)
    if previous is None:
        return
    changed = changed_settings(previous.get("config") or {}, spec.model_dump(mode="json"))
    if changed:
        raise ConfigError(
            f"{results.uri} holds studies run with other train: settings ({'; '.join(changed)}); "
            "adding trials would mix them: restore the settings, or give the study a new name"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return plan.dry_run_study(args)  # validates, prints the plan; no Ray, nothing written
    try:
        spec, path = load_lr_spec(args.config)
        arms = expand_arms(spec)
        results = check_results(args.results or spec.results, spec.name)
        url = storage_url(spec, results)
        address = choose_address(args.address, args.local, args.num_cpus, spec.resources, spec.arms.width)
        check_placement(list(arms.values()), spec, local=address is None, dry_run=False)
        check_same_train(results, spec)
        tokens = load_corpora(list(arms.values()))
    except ConfigError as err:
        return bad_input(err)
    return run_studies(spec, path, arms, results, url, tokens, address, args)


if __name__ == "__main__":
    sys.exit(main())
