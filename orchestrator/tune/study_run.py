"""LR studies, from options to lr_best.parquet: `lr_study(options)`, the one call behind
`python -m orchestrator.lr_study`.

Each arm (optimizer x qk_norm x width) has one Optuna study in a persistent storage; OptunaSearch
(a seeded TPE sampler) proposes log-LRs and ASHA stops hopeless trials, which are filed as PRUNED
in the study and as `pruned` in trials.parquet. All arms share one Tuner (study_search.py). Bad
input raises a ConfigError before Ray starts and before anything is written.

Each run adds `trials_per_arm` (or `--trials`) trials to every arm's study and records in sweep.json
the number of finished trials (completed, diverged or pruned) each arm's study is to reach. With
`resume`, a run adds only what the last run left of that: the trials an interruption (Ctrl-C,
SIGTERM, a killed driver) or a failure kept from finishing; an interrupted trial starts afresh (the
Optuna trial it was is filed as FAIL).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import optuna
import ray
from optuna.distributions import FloatDistribution
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from trainer.config import ConfigError, TrialConfig, short_repr
from trainer.console import format_duration
from trainer.data import TokenData
from trainer.provenance import now_iso, sweep_record
from trainer.schema import LR_BEST_FILE, SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.trials import read_trials

from ..exits import EXIT_INTERRUPTED, StorageUnreachable
from ..options import StudyOptions
from ..spec.lr_best import format_table, write_lr_best
from ..spec.plan import check_study
from ..spec.prepare import check_placement, check_previous, check_same_train, load_corpora
from ..spec.study_file import LRStudySpec
from . import tuner
from .monitor import SweepMonitor, register
from .reports import OBJECTIVE, RUNG_STEP
from .session import choose_address, expected_on_ray, guarded, ray_session
from .study_search import ArmScheduler, ArmSearch, StudySearch
from .study_storage import (
    close_stale_trials,
    open_storage,
    storage_url,
    study_completed,
    study_finished,
    study_size,
    summarize,
)


@dataclass(frozen=True)
class PreparedStudy:
    """LR studies that passed validation: nothing written, Ray not started."""

    spec: LRStudySpec
    source: str
    arms: dict[str, TrialConfig]  # arm name -> the arm's config at search.lr_min
    results: ResultsDir
    storage_url: str
    tokens: dict[tuple, TokenData]
    address: str | None


def lr_study(options: StudyOptions) -> int:
    """Validate (ConfigError on bad input, nothing written), then add trials to every arm's study;
    returns the exit status (2 when another driver holds the folder, 3 when the machine fails)."""
    try:
        prep = prepare(options)
    except StorageUnreachable as err:  # the object store does not answer: exit 3, one line
        return err.exit()
    return guarded(lambda: run(prep, options), prep.results, "orchestrator.lr_study", options.again)


def prepare(options: StudyOptions) -> PreparedStudy:
    spec, source, arms, results = check_study(options)
    url = storage_url(spec, results)
    address = choose_address(options.address, options.local, options.num_cpus, spec.resources, spec.arms.width)
    check_placement(list(arms.values()), spec, local=address is None)
    previous = check_previous(results, "lr_study", resume=options.resume)
    check_same_train(previous, spec, results)
    if options.resume:
        check_resume_arms(last_targets(previous), arms, source, results)
    return PreparedStudy(spec, source, arms, results, url, load_corpora(list(arms.values())), address)


def last_targets(previous: dict | None) -> dict[str, int] | None:
    """{arm: finished trials its study is to reach} as the last run recorded it in sweep.json; None
    when no run recorded one (no earlier run, or one written before runs recorded targets)."""
    runs = [r for r in (previous or {}).get("runs") or [] if isinstance(r, dict)]
    targets = runs[-1].get("targets") if runs else None
    if not isinstance(targets, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in targets.items()):
        raise ConfigError(
            f"{SWEEP_JSON}: runs[-1].targets is malformed ({short_repr(targets, 60)}); fix it or run without --resume"
        )
    return targets


def left_by_last_run(previous: dict | None, finished: dict[str, int]) -> int:
    """Trials the last run's targets leave unfinished (0 when none are on record or readable)."""
    try:
        targets = last_targets(previous) or {}
    except ConfigError:
        return 0
    return sum(max(0, targets[arm] - done) for arm, done in finished.items() if arm in targets)


def check_resume_arms(targets: dict[str, int] | None, arms: dict, source: str, results: ResultsDir) -> None:
    """--resume continues the interrupted run: its arms must be this spec's."""
    if targets is not None and set(targets) != set(arms):
        gone, new = sorted(set(targets) - set(arms)), sorted(set(arms) - set(targets))
        what = "; ".join(
            part
            for part in (f"left out: {', '.join(gone)}" if gone else "", f"new: {', '.join(new)}" if new else "")
            if part
        )
        raise ConfigError(
            f"--resume: the arms of {source} are not those of the interrupted run in {results.uri} ({what}); "
            "run without --resume to add trials to every arm"
        )


def trial_budget(
    options: StudyOptions, spec: LRStudySpec, finished: dict[str, int], previous: dict | None
) -> tuple[dict[str, int], dict[str, int], str | None]:
    """({arm: trials this run adds}, {arm: finished trials the arm's study is to reach}, a note).

    Without resume every arm gets `--trials` or search.trials_per_arm; with resume, what the last
    run's targets leave given the trials finished since (`finished`: completed or pruned, per arm)."""
    targets = last_targets(previous) if options.resume else None
    note = None
    if targets is None:
        per_arm = options.trials or spec.search.trials_per_arm
        targets = {arm: done + per_arm for arm, done in finished.items()}
        if options.resume:
            note = f"--resume: no earlier run on record to continue; adding {per_arm} trials per arm"
    return {arm: max(0, targets[arm] - done) for arm, done in finished.items()}, targets, note


def run(prep: PreparedStudy, options: StudyOptions) -> int:
    """Add trials to every arm's study (the caller holds the driver lock), then write lr_best.parquet."""
    spec, results, out = prep.spec, prep.results, sys.stdout
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results.makedirs()
    try:
        storage = open_storage(prep.storage_url)
    except Exception as exc:  # noqa: BLE001 - a driver missing, a server down: one line, exit 2
        raise ConfigError(
            f"search.storage: cannot open {short_repr(prep.storage_url, 80)} ({type(exc).__name__}: "
            f"{short_repr(str(exc).splitlines()[0] if str(exc) else '', 100)})"
        ) from None
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else {}
    finished = {arm: study_finished(storage, arm) for arm in prep.arms}
    budget, targets, note = trial_budget(options, spec, finished, previous)
    left = sum(budget.values())
    if options.resume and note is None:
        what = f"resuming: {left} trial(s) left of the last run's budget over {len(prep.arms)} arms"
    else:
        what = f"{len(prep.arms)} arms x {options.trials or spec.search.trials_per_arm} trials"
    print(
        f"lr_study {spec.name}: {what}, lr in [{spec.search.lr_min:g}, {spec.search.lr_max:g}] -> {results.uri}",
        file=out,
        flush=True,
    )
    print(f"  studies: {prep.storage_url}  (optuna-dashboard {prep.storage_url})", file=out, flush=True)
    if note:
        print(f"  {note}", file=out, flush=True)
    unfinished = 0 if options.resume else left_by_last_run(previous, finished)
    if unfinished:
        print(
            f"  note: the last run ended with {unfinished} trial(s) of its budget unfinished; --resume would run "
            "only those (this run adds a full budget)",
            file=out,
            flush=True,
        )
    if left == 0:  # --resume after a run that finished its budget: nothing to run, lr_best.parquet rewritten
        return nothing_left(prep, storage, previous)
    started = now_iso()
    corpus = next(iter(prep.tokens.values()))
    meta = sweep_record(
        name=spec.name,
        kind="lr_study",
        n_trials=len(read_trials(results)) + left,
        started_at=previous.get("started_at") or started,
        config=spec.model_dump(mode="json"),
        corpus=corpus,
        config_file=prep.source,
        results=results.uri,
        optuna_storage=prep.storage_url,
        runs=list(previous.get("runs") or [])
        + [{"started_at": started, "finished_at": None, "resumed": bool(options.resume), "targets": targets}],
    )
    session = ray_session(prep.address, options.num_cpus, local=options.local, verbose_ray=options.verbose_ray)
    with session as handle:
        t0 = time.monotonic()
        print(f"  on {handle.describe()}", file=out, flush=True)
        meta["runs"][-1]["ray"] = handle.describe()
        results.write_json(meta, SWEEP_JSON)
        monitor = SweepMonitor(
            results=results,
            plan={},
            n_planned=left,
            corpus_hash=corpus.corpus_hash,
            max_retries=spec.failure.max_retries,
            progress_every_s=options.progress_every,
            verbose=not options.quiet,
            expected=expected_on_ray(
                [cfg for arm, cfg in prep.arms.items() for _ in range(budget.get(arm, 0))], spec.resources, options.gpu
            ),
        )
        register(monitor)
        interrupted = tuner.fit(make_tuner(prep, storage, monitor, budget)) or monitor.counts().running > 0
        summaries = [summarize(storage, prep.storage_url, arm, cfg) for arm, cfg in prep.arms.items()]
        monitor.finish()
    write_lr_best(results, summaries)
    meta["runs"][-1]["finished_at"] = now_iso()
    meta["n_trials"] = len(read_trials(results))
    if not interrupted:
        meta["finished_at"] = meta["runs"][-1]["finished_at"]
    results.write_json(meta, SWEEP_JSON)
    print(f"\nbest LR per arm ({format_duration(time.monotonic() - t0)}):", file=out)
    print(format_table(summaries), file=out)
    print(f"\nwrote {results.uri}/{LR_BEST_FILE}", file=out)
    print(f"use it in a sweep: lr: {{from_study: {results.uri}, multipliers: [0.5, 1, 2]}}", file=out, flush=True)
    if interrupted:
        print(f"interrupted; continue with: {options.again}", file=out, flush=True)
        return EXIT_INTERRUPTED
    return 0


def nothing_left(prep: PreparedStudy, storage, previous: dict) -> int:
    """--resume when the last run finished its budget: lr_best.parquet from the studies as they are."""
    summaries = [summarize(storage, prep.storage_url, arm, cfg) for arm, cfg in prep.arms.items()]
    write_lr_best(prep.results, summaries)
    if previous and previous.get("finished_at") is None:
        previous["finished_at"] = now_iso()
        prep.results.write_json(previous, SWEEP_JSON)
    print(
        "  --resume: every arm already has the trials the last run planned; nothing to run "
        "(run without --resume to add trials)",
        flush=True,
    )
    print("\nbest LR per arm:")
    print(format_table(summaries))
    print(f"\nwrote {prep.results.uri}/{LR_BEST_FILE}", flush=True)
    return 0


def make_tuner(prep: PreparedStudy, storage, monitor: SweepMonitor, budget: dict[str, int]):
    """One Tuner over every arm (study_search.py), adding budget[arm] trials to each arm's study:
    trials of all arms share the slots, each arm keeps its own study and its own ASHA, and no arm
    prunes before min_completed of its trials completed."""
    spec, search = prep.spec, prep.spec.search
    searchers, schedulers, completed = {}, {}, {}
    for arm, cfg in prep.arms.items():
        stale = close_stale_trials(storage, arm)
        existing = study_size(storage, arm)
        completed[arm] = study_completed(storage, arm)
        note = f" ({existing} trials so far" + (f", {stale} interrupted ones marked failed)" if stale else ")")
        monitor.say("study", f"{arm}{note if existing else ''}: adding {budget[arm]} trials")
        searchers[arm] = StudySearch(
            space={"lr": FloatDistribution(search.lr_min, search.lr_max, log=True)},
            metric=OBJECTIVE,
            mode="min",
            study_name=arm,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=search.seed + existing, n_startup_trials=search.startup_trials),
        )
        schedulers[arm] = ASHAScheduler(
            time_attr=RUNG_STEP,
            metric=OBJECTIVE,
            mode="min",
            max_t=cfg.steps,
            grace_period=min(search.grace_steps, cfg.steps),
            reduction_factor=search.reduction_factor,
        )
    configs = {arm: cfg.model_dump() for arm, cfg in prep.arms.items()}
    slots = spec.resources.max_concurrent or max(
        1, int(ray.cluster_resources().get("CPU", 1) // spec.resources.cpus_per_trial)
    )
    trainable = tuner.make_trainable(prep.tokens, prep.results, spec.resources, objective=search.metric)
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tuner.tune_config(
            search_alg=ArmSearch(searchers, configs, budget, metric=OBJECTIVE, mode="min"),
            scheduler=ArmScheduler(schedulers, search.min_completed, completed),
            num_samples=sum(budget.values()),
            max_concurrent_trials=slots,
        ),
        run_config=tuner.run_config(
            f"arms-{time.strftime('%Y%m%d-%H%M%S')}",
            prep.results,
            spec.failure.max_retries,
            monitor,
            keep=spec.checkpoints.keep,
            callbacks=spec.callbacks,
        ),
    )
