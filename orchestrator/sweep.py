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
import sys

from trainer.budget import check_device
from trainer.config import ConfigError, short_repr
from trainer.safeio import inside, read_record
from trainer.schema import SWEEP_JSON
from trainer.trials import read_trials

from . import plan
from .spec import check_results, expand, load_spec
from .sweep_run import Prepared, run_sweep
from .tune_core import TUNE_DIR, bad_input, choose_address, load_corpora


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    p.add_argument(
        "--address",
        help="join this Ray cluster ('auto' on a head node); default: the cluster this "
        "machine belongs to if there is one, else a private local Ray",
    )
    p.add_argument("--local", action="store_true", help="always start a private local Ray, even on a cluster node")
    p.add_argument("--num-cpus", type=int, help="CPUs of the private local Ray (default: all)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its trials' checkpoints")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="S", help="seconds between progress lines")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the summary")
    p.add_argument("--verbose-ray", action="store_true", help="let Ray and Tune print their own logs too")
    p.add_argument("--inject-failure-at", type=int, help=argparse.SUPPRESS)  # tests: fail each trial once
    plan.add_plan_args(p)  # --dry-run, --gpu, --mfu
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.num_cpus is not None and args.num_cpus < 1:
        p.error(f"--num-cpus must be at least 1, got {args.num_cpus}")
    return args


def prepare(args) -> Prepared:
    """All validation; raises ConfigError. Writes nothing and starts nothing."""
    preset = getattr(args, "spec", None)  # (spec, source) from the Python API (orchestrator.run_sweep)
    spec, path = preset if preset is not None else load_spec(args.config, getattr(args, "overrides", None))
    configs = expand(spec)
    results = check_results(args.results or spec.results, spec.name)
    address = choose_address(args.address, args.local, args.num_cpus, spec.resources, {c.width for c in configs})
    check_placement(configs, spec, local=address is None, dry_run=getattr(args, "dry_run", False))
    previous = check_previous(results, "sweep", resume=args.resume)
    if args.resume and previous is not None:
        planned = set(previous.get("trial_ids") or [])
        if planned and planned != {c.trial_id() for c in configs}:
            changed = changed_settings(previous.get("config") or {}, spec.model_dump(mode="json"))
            what = f" ({'; '.join(changed)})" if changed else ""
            raise ConfigError(
                f"--resume: the trials in {path} are not those of the interrupted sweep in "
                f"{results.uri}{what}; run without --resume (finished trials are kept and not run "
                "again)"
            )
    tokens = load_corpora(configs)
    return Prepared(spec, path, configs, results, tokens, address, args.num_cpus)


def check_placement(configs, spec, *, local: bool, dry_run: bool) -> None:
    """Devices and memory: a cuda trial needs a GPU slot; on this machine (a private local Ray, not a
    plan) every trial must find its device and fit in its memory (trainer.budget.check_device)."""
    if any(c.device == "cuda" and spec.resources.for_width(c.width)[1] == 0 for c in configs):
        raise ConfigError(
            "train.device: 'cuda' but resources.gpus_per_trial is 0, so a trial would see no GPU "
            "(got 'cuda'); set gpus_per_trial, or device: auto"
        )
    if local and not dry_run:
        check_device(configs)


def check_previous(results, kind: str, *, resume: bool) -> dict | None:
    """What an earlier run left in the results folder, checked before anything is written: sweep.json
    and trials.parquet readable, written by the same kind of run, and (for --resume) a Tune
    experiment inside <results>/<name>/tune (Tune unpickles what it restores)."""
    previous = read_record(results)
    read_trials(results)  # a corrupt trials.parquet is one line here, not a traceback later
    if previous is None:
        return None
    for key, ok in (
        ("trial_ids", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v)),
        ("runs", lambda v: isinstance(v, list)),
        ("config", lambda v: isinstance(v, dict)),
    ):
        if previous.get(key) is not None and not ok(previous[key]):
            raise ConfigError(
                f"{results.uri}/{SWEEP_JSON}: {key} is malformed ({short_repr(previous[key], 60)}); "
                "fix it or move the file away"
            )
    found = previous.get("kind")
    if found is not None and found != kind:
        raise ConfigError(
            f"{results.uri}/{SWEEP_JSON}: this folder holds a {short_repr(found, 30)}, not a "
            f"{kind}; choose another results folder or name"
        )
    if resume:
        tune_root = f"{results.uri}/{TUNE_DIR}"
        for i, run in enumerate(previous.get("runs") or []):
            path = run.get("tune_experiment") if isinstance(run, dict) else None
            if path is not None and not (isinstance(path, str) and inside(path, tune_root)):
                raise ConfigError(
                    f"{results.uri}/{SWEEP_JSON}: runs[{i}].tune_experiment {short_repr(path, 80)} "
                    f"is outside {tune_root}; --resume restores (unpickles) only experiments there"
                )
    return previous


def changed_settings(before: dict, after: dict, limit: int = 4) -> list[str]:
    """'train.steps: 400 -> 500' for each grid axis or train setting that differs between two specs."""
    changes = []
    for section in ("grid", "train"):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{section}.{key}: {short_repr(old.get(key), 60)} -> {short_repr(new.get(key), 60)}")
    return changes[:limit] + ([f"and {len(changes) - limit} more"] if len(changes) > limit else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return plan.dry_run_sweep(args)  # validates, prints the plan; no Ray, nothing written
    try:
        prep = prepare(args)
    except ConfigError as err:
        return bad_input(err)
    return run_sweep(prep, args)


if __name__ == "__main__":
    sys.exit(main())
