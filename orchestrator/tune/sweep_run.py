"""A sweep, from options to results: `sweep(options)`, the one call behind `python -m
orchestrator.sweep` and `orchestrator.run_sweep`.

Everything is validated first (orchestrator.spec: the spec, every grid point, the results folder
and what an earlier run left there, the devices, the corpus, read once here and shared by every
trial): bad input raises a ConfigError before Ray starts and before anything is written. Then,
holding the results folder's driver lock, a Tuner runs the grid points that are not finished in
trials.parquet (finished trials never run again); with `resume` the last run's Tune experiment is
restored, so interrupted trials continue from their checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray import tune

from trainer.config import ConfigError, TrialConfig
from trainer.console import format_duration, report_command
from trainer.data import TokenData
from trainer.provenance import now_iso, sweep_record
from trainer.schema import FINISHED_STATUSES, SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.trials import read_trials

from ..exits import EXIT_INTERRUPTED, EXIT_TRIALS_FAILED, StorageUnreachable, bad_input
from ..options import SweepOptions, SweepResult
from ..spec.plan import check_sweep
from ..spec.prepare import (
    TUNE_DIR,
    check_placement,
    check_previous,
    check_resume,
    check_same_sweep,
    load_corpora,
)
from ..spec.sweep_file import SweepSpec, spec_summary
from ..spec.validation import AXES, EXTRA_AXES
from . import runtime, storage_probe, tuner
from .monitor import SweepMonitor, register
from .session import choose_address, expected_on_ray, guarded, ray_session


@dataclass(frozen=True)
class Prepared:
    """A sweep that passed validation: nothing written, Ray not started."""

    spec: SweepSpec
    source: str  # where the spec came from (a file, or "<python>")
    configs: list[TrialConfig]
    results: ResultsDir  # <results>/<name>
    tokens: dict[tuple, TokenData]
    address: str | None  # None = start a private local Ray
    chunk: dict | None = None  # --chunk I/N: sweep.json's `chunk` entry (the spec is then the chunk's)


def sweep(options: SweepOptions) -> SweepResult:
    """Validate (ConfigError on bad input, nothing written), then run the unfinished trials."""
    try:
        prep = prepare(options)
    except StorageUnreachable as err:  # the object store does not answer: exit 3, one line
        return SweepResult(results=err.where, exit_code=err.exit())
    code = guarded(lambda: run(prep, options), prep.results, "orchestrator.sweep", options.again)
    return SweepResult(results=prep.results.uri, exit_code=code, experiment=last_experiment(prep.results))


def prepare(options: SweepOptions) -> Prepared:
    """Every check, in the order a user fixes them; writes nothing and starts nothing."""
    spec, source, configs, chunk, results = check_sweep(options)
    address = choose_address(
        options.address, options.local, options.num_cpus, spec.resources, {c.width for c in configs}
    )
    check_placement(configs, spec, local=address is None)
    previous = check_previous(results, "sweep", resume=options.resume)
    if options.resume:
        check_resume(previous, spec, configs, source, results)
    tokens = load_corpora(configs)
    check_same_sweep(previous, spec, configs, tokens, results)  # one configuration per results folder
    return Prepared(spec, source, configs, results, tokens, address, chunk)


def run(prep: Prepared, options: SweepOptions) -> int:
    """Run the unfinished trials of a prepared sweep (the caller holds the driver lock); the exit status."""
    results = prep.results
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else None
    finished = {r["trial_id"] for r in read_trials(results) if r["status"] in FINISHED_STATUSES}
    todo = [c for c in prep.configs if c.trial_id() not in finished]
    print(f"sweep {prep.spec.name}: {spec_summary(prep.spec, prep.configs)} -> {results.uri}", flush=True)
    if prep.chunk:
        c = prep.chunk
        print(f"  chunk {c['index']} of {c['count']} of sweep {c['study']} ({c['trials_in_study']} trials in all)")
    if len(todo) < len(prep.configs):
        print(f"  {len(prep.configs) - len(todo)} already finished in trials.parquet (not run again)")
    if not todo:
        meta = sweep_meta(prep, previous, None)
        meta["finished_at"] = (previous or {}).get("finished_at") or now_iso()
        results.write_json(meta, SWEEP_JSON)
        print(f"all {len(prep.configs)} trials already finished; report: {report_command(results.uri)}")
        return 0
    restore_from = restorable_experiment(previous) if options.resume else None
    if options.resume and restore_from is None:
        print("  --resume: no restorable Tune experiment found; starting the unfinished trials afresh")
    elif not options.resume and previous and previous.get("finished_at") is None and restorable_experiment(previous):
        print(
            "  note: the last run was interrupted; --resume would continue its trials from their checkpoints "
            "(this run starts them afresh)"
        )
    invocation = {
        "started_at": now_iso(),
        "finished_at": None,
        "resumed": bool(restore_from),
        "tune_experiment": restore_from or f"{results.uri}/{TUNE_DIR}/run-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    session = ray_session(prep.address, options.num_cpus, local=options.local, verbose_ray=options.verbose_ray)
    with session as handle:
        print(f"  on {handle.describe()}", flush=True)
        try:  # before any trial starts: every node must see the results folder
            storage_probe.check_shared_storage(results)
        except ConfigError as err:
            return bad_input(err)
        note_placement(handle, results, prep.spec, todo)
        invocation["ray"] = handle.describe()
        counts, wall, interrupted = fit_grid(prep, previous, invocation, todo, restore_from, options)
    return conclude(
        prep, previous, invocation, counts, wall, interrupted or counts.pending > 0 or counts.running > 0, options
    )


def fit_grid(prep: Prepared, previous, invocation: dict, todo: list[TrialConfig], restore_from, options) -> tuple:
    """sweep.json for this run, then the Tuner with the driver's monitor; (status counts, wall seconds,
    whether Ctrl-C or SIGTERM interrupted it)."""
    meta = sweep_meta(prep, previous, invocation)
    prep.results.write_json(meta, SWEEP_JSON)
    monitor = SweepMonitor(
        results=prep.results,
        plan={c.trial_id(): c for c in prep.configs},
        n_planned=len(prep.configs),
        to_run={c.trial_id() for c in todo},
        corpus_hash=meta["corpus_hash"],
        max_retries=prep.spec.failure.max_retries,
        progress_every_s=options.progress_every,
        verbose=not options.quiet,
        expected=expected_on_ray(todo, prep.spec.resources, options.gpu),
    )
    register(monitor)
    t0 = time.monotonic()
    try:
        interrupted = tuner.fit(make_tuner(prep, todo, monitor, invocation["tune_experiment"], restore_from, options))
    finally:
        counts = monitor.finish()  # also when fit() raised: no row is left "running"
    return counts, time.monotonic() - t0, interrupted


def conclude(
    prep: Prepared, previous, invocation: dict, counts, wall: float, interrupted: bool, options: SweepOptions
) -> int:
    """sweep.json's end of this run, the summary lines and the exit status (`interrupted`: trials
    are left to run)."""
    results = prep.results
    invocation["finished_at"], invocation["fit_wall_s"] = now_iso(), round(wall, 3)
    meta = sweep_meta(prep, previous, invocation)
    if not interrupted:
        meta["finished_at"] = invocation["finished_at"]
    results.write_json(meta, SWEEP_JSON)
    print(f"sweep {prep.spec.name}: {counts.line(len(prep.configs))} in {format_duration(wall)}")
    if interrupted:
        print(f"interrupted; continue with: {options.again}", flush=True)
        return EXIT_INTERRUPTED
    print(f"results in {results.uri}")
    print(f"report:     {report_command(results.uri)}", flush=True)
    if counts.failed:
        print(
            f"{counts.failed} trial(s) failed (see the error column of trials.parquet); "
            "running the sweep again retries them",
            flush=True,
        )
        return EXIT_TRIALS_FAILED
    return 0


def note_placement(handle: runtime.RayHandle, results: ResultsDir, spec: SweepSpec, todo: list[TrialConfig]) -> None:
    """Say what may surprise on a cluster: a local results path, or no node with room for a trial yet."""
    if handle.mode == "cluster" and results.is_local:
        print(
            f"  note: {results.uri} is a local path: on a multi-node cluster it must be shared storage "
            "mounted at the same path on every node (or use an s3:// / gs:// URI)"
        )
    cpus, gpus = spec.resources.largest({c.width for c in todo})
    if not runtime.fits_a_node(cpus, gpus):
        print(
            f"  note: no node has {cpus:g} CPUs and {gpus:g} "
            "GPUs free for a trial yet; trials wait for one (the autoscaler adds GPU workers on demand)",
            flush=True,
        )


def sweep_meta(prep: Prepared, previous: dict | None, run: dict | None) -> dict:
    """sweep.json: the resolved spec and provenance, plus one entry per invocation that ran trials."""
    corpus = next(iter(prep.tokens.values()))
    runs = list((previous or {}).get("runs") or []) + ([run] if run else [])
    chunk = {"chunk": prep.chunk} if prep.chunk else {}
    return sweep_record(
        name=prep.spec.name,
        kind="sweep",
        n_trials=len(prep.configs),
        started_at=(previous or {}).get("started_at") or (run or {}).get("started_at") or now_iso(),
        config=prep.spec.model_dump(mode="json"),
        corpus=corpus,
        trial_ids=[c.trial_id() for c in prep.configs],
        config_file=prep.source,
        grid=[
            {"trial_id": c.trial_id(), **{axis: getattr(c, axis) for axis in AXES + EXTRA_AXES}} for c in prep.configs
        ],
        results=prep.results.uri,
        runs=runs,
        **chunk,
    )


def restorable_experiment(previous: dict | None) -> str | None:
    """The Tune experiment of the last run, if Tune can restore it."""
    for run in reversed((previous or {}).get("runs") or []):
        path = run.get("tune_experiment")
        if path and tune.Tuner.can_restore(path):
            return path
    return None


def last_experiment(results: ResultsDir) -> str | None:
    """The Tune experiment folder of the last run that started one, from sweep.json."""
    if not results.exists(SWEEP_JSON):
        return None
    runs = results.read_json(SWEEP_JSON).get("runs") or []
    return next((r.get("tune_experiment") for r in reversed(runs) if r.get("tune_experiment")), None)


def make_tuner(
    prep: Prepared,
    todo: list[TrialConfig],
    monitor: SweepMonitor,
    experiment: str,
    restore_from: str | None,
    options: SweepOptions,
):
    """A Tuner over the unfinished grid points, or the interrupted one restored (--resume)."""
    spec = prep.spec
    trainable = tuner.make_trainable(prep.tokens, prep.results, spec.resources, fail_at_step=options.inject_failure_at)
    if restore_from:
        print(f"  resuming Tune experiment {restore_from}", flush=True)
        return tune.Tuner.restore(restore_from, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={},  # each trial's config is one grid point's TrialConfig fields, flat (GridPoints)
        tune_config=tuner.tune_config(
            search_alg=tuner.GridPoints([c.model_dump() for c in todo]),
            num_samples=len(todo),
            # Tune lets a searcher other than its own grid have one trial pending at a time unless
            # this is set (ray.tune.execution.tune_controller._get_max_pending_trials): trials then
            # started one by one and a two-node cluster ran them all on one node. The resources
            # still decide how many run at once.
            max_concurrent_trials=spec.resources.max_concurrent or max(1, len(todo)),
        ),
        run_config=tuner.run_config(
            experiment.rsplit("/", 1)[1],
            prep.results,
            spec.failure.max_retries,
            monitor,
            keep=spec.checkpoints.keep,
            callbacks=spec.callbacks,
        ),
    )
