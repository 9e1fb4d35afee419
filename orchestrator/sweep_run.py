"""Running a validated sweep: sweep.json, a Tuner over the unfinished grid points, the summary.

`orchestrator.sweep` validates its input into a `Prepared` sweep and calls `run_sweep`. Finished
trials (completed or diverged in trials.parquet) are never run again; with --resume the last
run's Tune experiment is restored, so interrupted trials continue from their checkpoints.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass

from trainer.config import ConfigError, TrialConfig
from trainer.console import format_duration
from trainer.data import TokenData
from trainer.provenance import now_iso, sweep_record
from trainer.schema import FINISHED_STATUSES, SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.trials import read_trials

from . import runtime, storage_probe, tune_core
from .spec import SweepSpec, spec_summary
from .tune_core import EXIT_INTERRUPTED, EXIT_TRIALS_FAILED, TUNE_DIR
from .validation import AXES, EXTRA_AXES


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


def sweep_meta(prep: Prepared, previous: dict | None, run: dict | None) -> dict:
    """sweep.json: the resolved spec and provenance, plus one entry per invocation that ran trials."""
    corpus = next(iter(prep.tokens.values()))
    runs = list((previous or {}).get("runs") or []) + ([run] if run else [])
    return sweep_record(
        name=prep.spec.name,
        kind="sweep",
        n_trials=len(prep.configs),
        started_at=(previous or {}).get("started_at") or (run or {}).get("started_at") or now_iso(),
        config=prep.spec.model_dump(mode="json"),
        corpus=corpus,
        trial_ids=[c.trial_id() for c in prep.configs],
        config_file=prep.config_path,
        grid=[
            {"trial_id": c.trial_id(), **{axis: getattr(c, axis) for axis in AXES + EXTRA_AXES}} for c in prep.configs
        ],
        results=prep.results.uri,
        runs=runs,
    )


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
    """Run the unfinished trials of a prepared sweep, holding the results folder's driver lock;
    returns the exit status (2: another driver holds the folder; 3: the machine failed, e.g. a full disk)."""
    again = [a for a in getattr(args, "argv", None) or [] if a != "--resume"] + ["--resume"]
    return tune_core.guarded(
        lambda: _run_locked(prep, args),
        prep.results,
        "orchestrator.sweep",
        f"python -m orchestrator.sweep {shlex.join(again)}",
    )


def _run_locked(prep: Prepared, args) -> int:
    from .monitor import SweepMonitor, register

    spec, results = prep.spec, prep.results
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else None
    finished = {r["trial_id"] for r in read_trials(results) if r["status"] in FINISHED_STATUSES}
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
            print(
                "  note: the last run was interrupted; --resume would continue its trials from their checkpoints "
                "(this run starts them afresh)",
                file=out,
            )

    if not todo:
        meta = sweep_meta(prep, previous, None)
        meta["finished_at"] = (previous or {}).get("finished_at") or now_iso()
        results.write_json(meta, SWEEP_JSON)
        print(
            f"all {len(prep.configs)} trials already finished; report: python -m analysis.report {results.uri}",
            file=out,
        )
        return 0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = {
        "started_at": now_iso(),
        "finished_at": None,
        "resumed": bool(restore_from),
        "tune_experiment": restore_from or f"{results.uri}/{TUNE_DIR}/run-{stamp}",
    }
    with tune_core.ray_session(prep.address, prep.num_cpus, local=args.local, verbose_ray=args.verbose_ray) as handle:
        print(f"  on {handle.describe()}", file=out, flush=True)
        if handle.mode == "cluster" and results.is_local:
            print(
                f"  note: {results.uri} is a local path: on a multi-node cluster it must be shared storage "
                "mounted at the same path on every node (or use an s3:// / gs:// URI)",
                file=out,
            )
        try:  # before any trial starts: every node must see the results folder (storage_probe)
            storage_probe.check_shared_storage(results)
        except ConfigError as err:
            return tune_core.bad_input(err)
        cpus, gpus = spec.resources.largest({c.width for c in todo})
        if not runtime.fits_a_node(cpus, gpus):
            print(
                f"  note: no node has {cpus:g} CPUs and {gpus:g} "
                "GPUs free for a trial yet; trials wait for one (the autoscaler adds GPU workers on demand)",
                file=out,
                flush=True,
            )
        run["ray"] = handle.describe()
        meta = sweep_meta(prep, previous, run)
        results.write_json(meta, SWEEP_JSON)
        monitor = SweepMonitor(
            results=results,
            plan={c.trial_id(): c for c in prep.configs},
            n_planned=len(prep.configs),
            to_run={c.trial_id() for c in todo},
            corpus_hash=meta["corpus_hash"],
            max_retries=spec.failure.max_retries,
            progress_every_s=args.progress_every,
            verbose=not args.quiet,
        )
        register(monitor)
        tuner = make_tuner(prep, todo, monitor, run["tune_experiment"], restore_from, args)
        t0 = time.monotonic()
        try:
            interrupted = tune_core.fit(tuner)
        finally:
            counts = monitor.finish()  # also when fit() raised: no row is left "running"
        wall = time.monotonic() - t0

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
        print(
            f"{counts.failed} trial(s) failed (see the error column of trials.parquet); "
            "running the sweep again retries them",
            file=out,
            flush=True,
        )
        return EXIT_TRIALS_FAILED
    return 0


def make_tuner(prep: Prepared, todo: list[TrialConfig], monitor, experiment: str, restore_from: str | None, args):
    """A Tuner over the unfinished grid points, or the interrupted one restored (--resume)."""
    from ray import tune

    from .trainable import TRIAL_KEY

    spec = prep.spec
    trainable = tune_core.make_trainable(prep.tokens, prep.results, spec.resources, fail_at_step=args.inject_failure_at)
    if restore_from:
        print(f"  resuming Tune experiment {restore_from}", flush=True)
        return tune.Tuner.restore(restore_from, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search([c.model_dump() for c in todo])},
        tune_config=tune_core.tune_config(max_concurrent_trials=spec.resources.max_concurrent),
        run_config=tune_core.run_config(
            experiment.rsplit("/", 1)[1],
            prep.results,
            spec.failure.max_retries,
            monitor,
            keep=spec.checkpoints.keep,
            callbacks=spec.callbacks,
        ),
    )
