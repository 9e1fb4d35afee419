"""LR studies, from options to lr_best.parquet: `lr_study(options)`, the one call behind
`python -m orchestrator.lr_study`.

Each arm (optimizer x qk_norm x width) has one Optuna study in a persistent storage; OptunaSearch
(a seeded TPE sampler) proposes log-LRs and ASHA stops hopeless trials, which are filed as PRUNED
in the study and as `pruned` in trials.parquet. All arms share one Tuner (study_search.py). Bad
input raises a ConfigError before Ray starts and before anything is written.
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

from ..exits import EXIT_INTERRUPTED
from ..options import StudyOptions
from ..spec.lr_best import format_table, write_lr_best
from ..spec.prepare import check_placement, check_previous, check_results, check_same_train, load_corpora
from ..spec.study_file import LRStudySpec, expand_arms, load_lr_spec
from . import tuner
from .monitor import SweepMonitor, register
from .reports import OBJECTIVE, RUNG_STEP
from .session import choose_address, guarded, ray_session
from .study_search import ArmScheduler, ArmSearch, StudySearch
from .study_storage import close_stale_trials, open_storage, storage_url, study_completed, study_size, summarize


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
    prep = prepare(options)
    again = "python -m orchestrator.lr_study with the same arguments"
    return guarded(lambda: run(prep, options), prep.results, "orchestrator.lr_study", again)


def prepare(options: StudyOptions) -> PreparedStudy:
    spec, source = load_lr_spec(options.config)
    arms = expand_arms(spec)
    results = check_results(options.results or spec.results, spec.name)
    url = storage_url(spec, results)
    address = choose_address(options.address, options.local, options.num_cpus, spec.resources, spec.arms.width)
    check_placement(list(arms.values()), spec, local=address is None)
    check_same_train(check_previous(results, "lr_study", resume=False), spec, results)
    return PreparedStudy(spec, source, arms, results, url, load_corpora(list(arms.values())), address)


def run(prep: PreparedStudy, options: StudyOptions) -> int:
    """Add trials to every arm's study (the caller holds the driver lock), then write lr_best.parquet."""
    spec, results, out = prep.spec, prep.results, sys.stdout
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_per_arm = options.trials or spec.search.trials_per_arm
    print(
        f"lr_study {spec.name}: {len(prep.arms)} arms x {n_per_arm} trials, lr in "
        f"[{spec.search.lr_min:g}, {spec.search.lr_max:g}] -> {results.uri}",
        file=out,
        flush=True,
    )
    print(f"  studies: {prep.storage_url}  (optuna-dashboard {prep.storage_url})", file=out, flush=True)
    results.makedirs()
    try:
        storage = open_storage(prep.storage_url)
    except Exception as exc:  # noqa: BLE001 - a driver missing, a server down: one line, exit 2
        raise ConfigError(
            f"search.storage: cannot open {short_repr(prep.storage_url, 80)} ({type(exc).__name__}: "
            f"{short_repr(str(exc).splitlines()[0] if str(exc) else '', 100)})"
        ) from None
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else {}
    started = now_iso()
    corpus = next(iter(prep.tokens.values()))
    meta = sweep_record(
        name=spec.name,
        kind="lr_study",
        n_trials=len(read_trials(results)) + len(prep.arms) * n_per_arm,
        started_at=previous.get("started_at") or started,
        config=spec.model_dump(mode="json"),
        corpus=corpus,
        config_file=prep.source,
        results=results.uri,
        optuna_storage=prep.storage_url,
        runs=list(previous.get("runs") or []) + [{"started_at": started, "finished_at": None}],
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
            n_planned=len(prep.arms) * n_per_arm,
            corpus_hash=corpus.corpus_hash,
            max_retries=spec.failure.max_retries,
            verbose=not options.quiet,
        )
        register(monitor)
        interrupted = tuner.fit(make_tuner(prep, storage, monitor, n_per_arm)) or monitor.counts().running > 0
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
        print("interrupted; run the same command again to add trials to the same studies", file=out, flush=True)
        return EXIT_INTERRUPTED
    return 0


def make_tuner(prep: PreparedStudy, storage, monitor: SweepMonitor, n_per_arm: int):
    """One Tuner over every arm (study_search.py): trials of all arms share the slots, each arm keeps
    its own study and its own ASHA, and no arm prunes before min_completed of its trials completed."""
    spec, search = prep.spec, prep.spec.search
    searchers, schedulers, completed = {}, {}, {}
    for arm, cfg in prep.arms.items():
        stale = close_stale_trials(storage, arm)
        existing = study_size(storage, arm)
        completed[arm] = study_completed(storage, arm)
        note = f" ({existing} trials so far" + (f", {stale} interrupted ones marked failed)" if stale else ")")
        monitor.say("study", f"{arm}{note if existing else ''}: adding {n_per_arm} trials")
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
    budget = {arm: n_per_arm for arm in prep.arms}
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
