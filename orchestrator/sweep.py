"""`python -m orchestrator.sweep`: the QK-Norm collapse grid on Ray Tune.

    python -m orchestrator.sweep                                  # sweeps/default.yaml, private local Ray
    python -m orchestrator.sweep --config sweeps/smoke.yaml --results /tmp/r
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
import os
import shlex
import sys
import time
from dataclasses import dataclass

from trainer.config import ConfigError, TrialConfig
from trainer.data import TokenData, corpus_key, load_tokens
from trainer.provenance import now_iso, provenance
from trainer.schema import SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.train import format_duration
from trainer.trials import read_trials

from . import runtime
from .spec import AXES, SweepSpec, check_results, expand, load_spec, spec_summary

TUNE_DIR = "tune"
EXIT_BAD_INPUT, EXIT_TRIALS_FAILED, EXIT_INTERRUPTED = 2, 1, 130


@dataclass
class Prepared:
    """A sweep that passed validation: nothing written, Ray not started."""

    spec: SweepSpec
    config_path: str
    configs: list[TrialConfig]
    results: ResultsDir  # <results>/<name>
    tokens: dict[tuple, TokenData]
    address: str | None  # None = start a private local Ray
    num_cpus: int | None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m orchestrator.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="sweep file (default: sweeps/default.yaml)")
    p.add_argument("--results", help="results folder or URI (default: the file's `results:`); "
                                     "the sweep goes in <results>/<name>")
    p.add_argument("--address", help="join this Ray cluster ('auto' on a head node); default: the cluster this "
                                     "machine belongs to if there is one, else a private local Ray")
    p.add_argument("--local", action="store_true", help="always start a private local Ray, even on a cluster node")
    p.add_argument("--num-cpus", type=int, help="CPUs of the private local Ray (default: all)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its trials' checkpoints")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="S", help="seconds between progress lines")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the summary")
    p.add_argument("--verbose-ray", action="store_true", help="let Ray and Tune print their own logs too")
    p.add_argument("--inject-failure-at", type=int, help=argparse.SUPPRESS)  # tests: fail each trial once
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.num_cpus is not None and args.num_cpus < 1:
        p.error(f"--num-cpus must be at least 1, got {args.num_cpus}")
    return args


def load_corpora(configs: list[TrialConfig]) -> dict[tuple, TokenData]:
    """Each distinct corpus once (usually one), keyed like trainer.data.corpus_key."""
    tokens: dict[tuple, TokenData] = {}
    for cfg in configs:
        key = corpus_key(cfg)
        if key not in tokens:
            tokens[key] = load_tokens(cfg)
    return tokens


def prepare(args) -> Prepared:
    """All validation; raises ConfigError. Writes nothing and starts nothing."""
    spec, path = load_spec(args.config)
    configs = expand(spec)
    results = check_results(args.results or spec.results, spec.name)
    address = None if args.local else (args.address or runtime.running_cluster_address())
    if address is None:
        runtime.check_local_resources(args.num_cpus or os.cpu_count() or 1, spec.resources.cpus_per_trial,
                                      spec.resources.gpus_per_trial)
    if args.resume and results.exists(SWEEP_JSON):
        previous = results.read_json(SWEEP_JSON)
        planned = set(previous.get("trial_ids") or [])
        if planned and planned != {c.trial_id() for c in configs}:
            changed = changed_settings(previous.get("config") or {}, spec.model_dump(mode="json"))
            what = f" ({'; '.join(changed)})" if changed else ""
            raise ConfigError(f"--resume: the trials in {path} are not those of the interrupted sweep in "
                              f"{results.uri}{what}; run without --resume (finished trials are kept and not run "
                              "again)")
    tokens = load_corpora(configs)
    return Prepared(spec, path, configs, results, tokens, address, args.num_cpus)


def changed_settings(before: dict, after: dict, limit: int = 4) -> list[str]:
    """'train.steps: 400 -> 500' for each grid axis or train setting that differs between two specs."""
    changes = []
    for section in ("grid", "train"):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes[:limit] + ([f"and {len(changes) - limit} more"] if len(changes) > limit else [])


# ---- sweep.json ------------------------------------------------------------------------------

def sweep_meta(prep: Prepared, previous: dict | None, run: dict | None) -> dict:
    """sweep.json: the resolved spec and provenance, plus one entry per invocation that ran trials."""
    corpus = next(iter(prep.tokens.values()))
    runs = list((previous or {}).get("runs") or []) + ([run] if run else [])
    return {
        "name": prep.spec.name,
        "kind": "sweep",
        "n_trials": len(prep.configs),
        "trial_ids": [c.trial_id() for c in prep.configs],
        "started_at": (previous or {}).get("started_at") or (run or {}).get("started_at") or now_iso(),
        "finished_at": None,
        "config": prep.spec.model_dump(mode="json"),
        "config_file": prep.config_path,
        "grid": [{"trial_id": c.trial_id(), **{axis: getattr(c, axis) for axis in AXES}} for c in prep.configs],
        "results": prep.results.uri,
        "corpus_hash": corpus.corpus_hash,
        "corpus_source": corpus.source,
        "runs": runs,
        **provenance(),
    }


# ---- the run ---------------------------------------------------------------------------------

def _trial_name(trial) -> str:
    from .trainable import trial_config

    return trial_config(trial.config).trial_id()


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}_{trial.trial_id}"


def latest_experiment(results: ResultsDir, previous: dict | None) -> str | None:
    """The Tune experiment of the last run, if Tune can restore it."""
    from ray import tune

    runs = (previous or {}).get("runs") or []
    for run in reversed(runs):
        path = run.get("tune_experiment")
        if path and tune.Tuner.can_restore(path):
            return path
    return None


def run_sweep(prep: Prepared, args) -> int:
    from .monitor import SweepMonitor, register

    spec, results = prep.spec, prep.results
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else None
    finished = {r["trial_id"] for r in read_trials(results) if r["status"] in ("completed", "diverged")}
    todo = [c for c in prep.configs if c.trial_id() not in finished]
    out = sys.stdout
    print(f"sweep {spec.name}: {spec_summary(spec, prep.configs)} -> {results.uri}", file=out, flush=True)
    if finished & {c.trial_id() for c in prep.configs}:
        print(f"  {len(prep.configs) - len(todo)} already finished in trials.parquet (not run again)", file=out)
    restore_from = latest_experiment(results, previous) if args.resume else None
    if args.resume and restore_from is None and todo:
        print("  --resume: no restorable Tune experiment found; starting the unfinished trials afresh", file=out)

    if not args.resume and previous and previous.get("finished_at") is None and todo:
        if latest_experiment(results, previous):
            print("  note: the last run was interrupted; --resume would continue its trials from their checkpoints "
                  "(this run starts them afresh)", file=out)

    if not todo:
        meta = sweep_meta(prep, previous, None)
        meta["finished_at"] = (previous or {}).get("finished_at") or now_iso()
        results.write_json(meta, SWEEP_JSON)
        print(f"all {len(prep.configs)} trials already finished; report: python -m analysis.report {results.uri}",
              file=out)
        return 0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = {"started_at": now_iso(), "finished_at": None, "resumed": bool(restore_from),
           "tune_experiment": restore_from or f"{results.uri}/{TUNE_DIR}/run-{stamp}"}
    handle = runtime.start_ray(prep.address, prep.num_cpus, local=args.local, quiet=not args.verbose_ray)
    try:
        if not args.verbose_ray:
            runtime.quiet_tune_logging()
        print(f"  on {handle.describe()}", file=out, flush=True)
        if handle.mode == "cluster" and results.is_local:
            print(f"  note: {results.uri} is a local path: on a multi-node cluster it must be shared storage "
                  "mounted at the same path on every node (or use an s3:// / gs:// URI)", file=out)
        if not runtime.fits_a_node(spec.resources.cpus_per_trial, spec.resources.gpus_per_trial):
            print(f"  note: no node has {spec.resources.cpus_per_trial:g} CPUs and {spec.resources.gpus_per_trial:g} "
                  "GPUs free for a trial yet; trials wait for one (the autoscaler adds GPU workers on demand)",
                  file=out, flush=True)
        run["ray"] = handle.describe()
        meta = sweep_meta(prep, previous, run)
        results.write_json(meta, SWEEP_JSON)
        monitor = SweepMonitor(results=results, plan={c.trial_id(): c for c in prep.configs},
                               n_planned=len(prep.configs), to_run={c.trial_id() for c in todo},
                               corpus_hash=meta["corpus_hash"], max_retries=spec.failure.max_retries,
                               progress_every_s=args.progress_every, verbose=not args.quiet)
        register(monitor)
        tuner = make_tuner(prep, todo, monitor, run["tune_experiment"], restore_from, args)
        t0 = time.monotonic()
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            counts = monitor.finish()  # also when fit() raised: no row is left "running"
        wall = time.monotonic() - t0
    finally:
        register(None)
        handle.stop()

    interrupted = interrupted or counts.pending > 0 or counts.running > 0
    run["finished_at"] = now_iso()
    run["fit_wall_s"] = round(wall, 3)
    meta = sweep_meta(prep, previous, run)
    if not interrupted:
        meta["finished_at"] = run["finished_at"]
    results.write_json(meta, SWEEP_JSON)
    print(f"sweep {spec.name}: {counts.line(len(prep.configs))} in {format_duration(wall)}", file=out)
    if interrupted:
        again = [a for a in args.argv if a != "--resume"] + ["--resume"]
        print(f"interrupted; continue with: python -m orchestrator.sweep {shlex.join(again)}", file=out, flush=True)
        return EXIT_INTERRUPTED
    print(f"results in {results.uri}", file=out)
    print(f"report:     python -m analysis.report {results.uri}", file=out, flush=True)
    if counts.failed:
        print(f"{counts.failed} trial(s) failed (see the error column of trials.parquet); "
              "running the sweep again retries them", file=out, flush=True)
        return EXIT_TRIALS_FAILED
    return 0


def make_tuner(prep: Prepared, todo: list[TrialConfig], monitor, experiment: str, restore_from: str | None, args):
    """A Tuner over the unfinished grid points, or the interrupted one restored (--resume)."""
    from ray import tune

    from .trainable import TRIAL_KEY, TrainableOptions, train_trial

    spec, results = prep.spec, prep.results
    cpus = spec.resources.cpus_per_trial
    options = TrainableOptions(results_uri=results.uri, threads=max(1, int(cpus)), fail_at_step=args.inject_failure_at)
    trainable = tune.with_resources(tune.with_parameters(train_trial, tokens=prep.tokens, options=options),
                                    {"cpu": cpus, "gpu": spec.resources.gpus_per_trial})
    if restore_from:
        print(f"  resuming Tune experiment {restore_from}", flush=True)
        return tune.Tuner.restore(restore_from, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search([c.model_dump() for c in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=experiment.rsplit("/", 1)[1],
            storage_path=f"{results.uri}/{TUNE_DIR}",
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[monitor],
            verbose=0,
        ),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        prep = prepare(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_sweep(prep, args)


if __name__ == "__main__":
    sys.exit(main())
