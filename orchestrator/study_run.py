"""Running LR studies: one Optuna study per arm, searched through Ray Tune, and lr_best.parquet.

`orchestrator.lr_study` validates its input and calls `run_studies`. Each arm's study lives in a
persistent Optuna storage; OptunaSearch (a seeded TPE sampler) proposes log-LRs and ASHA stops
hopeless trials, which are filed as PRUNED in the study and as `pruned` in trials.parquet.
The storage checks are in study_storage.py, the lr_best table in lr_best.py.
"""

from __future__ import annotations

import sys
import time

from trainer.config import ConfigError, TrialConfig, short_repr
from trainer.console import format_duration
from trainer.provenance import now_iso, sweep_record
from trainer.schema import LR_BEST_FILE, SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.trials import read_trials

from . import tune_core
from .lr_best import format_table, summarize, write_lr_best
from .records import OBJECTIVE, RUNG_STEP, as_report, is_final
from .study_spec import LRStudySpec
from .study_storage import close_stale_trials, open_storage, study_completed, study_size
from .tune_core import EXIT_INTERRUPTED


def _study_search_class():
    """OptunaSearch that files ASHA-stopped trials as PRUNED and tags trials with their trial_id."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        def on_trial_result(self, trial_id, result):
            ot_trial, report = self._ot_trials.get(trial_id), as_report(result)
            if ot_trial is not None and "trial_id" not in ot_trial.user_attrs and report.get("sweep_trial_id"):
                ot_trial.set_user_attr("trial_id", report["sweep_trial_id"])
            # Intermediate values keyed by training step (not by report number, which a restart from a
            # checkpoint or an extra checkpoint report would shift), each step once.
            step, value = report.get("step"), report.get(OBJECTIVE)
            if ot_trial is None or trial_id in self._completed_trials or step is None or value is None:
                return
            if int(step) not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(value), int(step))

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial, report = self._ot_trials.get(trial_id), as_report(result)
            if ot_trial is not None and result and trial_id not in self._completed_trials:
                final = is_final(report)
                ot_trial.set_user_attr(
                    "status", "failed" if error else report.get("status", "pruned") if final else "pruned"
                )
                if not error and not final:  # stopped by ASHA before its last step
                    self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
                    self._completed_trials.add(trial_id)
                    return
            super().on_trial_complete(trial_id, result=result, error=error)

    return StudySearch


def run_studies(
    spec: LRStudySpec,
    path: str,
    arms: dict[str, TrialConfig],
    results: ResultsDir,
    url: str,
    tokens: dict,
    address: str | None,
    args,
) -> int:
    """Run the studies holding the results folder's driver lock (exit 2 when another driver holds it,
    3 when the machine fails, e.g. a full disk)."""
    return tune_core.guarded(
        lambda: _run_locked(spec, path, arms, results, url, tokens, address, args),
        results,
        "orchestrator.lr_study",
        "python -m orchestrator.lr_study with the same arguments",
    )


def _run_locked(
    spec: LRStudySpec,
    path: str,
    arms: dict[str, TrialConfig],
    results: ResultsDir,
    url: str,
    tokens: dict,
    address: str | None,
    args,
) -> int:
    import optuna
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .monitor import SweepMonitor, register

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_per_arm = args.trials or spec.search.trials_per_arm
    out = sys.stdout
    print(
        f"lr_study {spec.name}: {len(arms)} arms x {n_per_arm} trials, lr in "
        f"[{spec.search.lr_min:g}, {spec.search.lr_max:g}] -> {results.uri}",
        file=out,
        flush=True,
    )
    print(f"  studies: {url}  (optuna-dashboard {url})", file=out, flush=True)
    results.makedirs()
    try:
        storage = open_storage(url)
    except Exception as exc:  # noqa: BLE001 - a driver missing, a server down: one line, exit 2
        raise ConfigError(
            f"search.storage: cannot open {short_repr(url, 80)} ({type(exc).__name__}: "
            f"{short_repr(str(exc).splitlines()[0] if str(exc) else '', 100)})"
        ) from None
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else {}
    started = now_iso()
    corpus = next(iter(tokens.values()))
    meta = sweep_record(
        name=spec.name,
        kind="lr_study",
        n_trials=len(read_trials(results)) + len(arms) * n_per_arm,
        started_at=previous.get("started_at") or started,
        config=spec.model_dump(mode="json"),
        corpus=corpus,
        config_file=path,
        results=results.uri,
        optuna_storage=url,
        runs=list(previous.get("runs") or []) + [{"started_at": started, "finished_at": None}],
    )

    interrupted, summaries = False, []
    with tune_core.ray_session(address, args.num_cpus, local=args.local, verbose_ray=args.verbose_ray) as handle:
        t0 = time.monotonic()
        print(f"  on {handle.describe()}", file=out, flush=True)
        meta["runs"][-1]["ray"] = handle.describe()
        results.write_json(meta, SWEEP_JSON)
        slots = spec.resources.max_concurrent or max(1, int(runtime_cpus() // spec.resources.cpus_per_trial))
        trainable = tune_core.make_trainable(tokens, results, spec.resources, objective=spec.search.metric)
        monitor = SweepMonitor(
            results=results,
            plan={},
            n_planned=len(arms) * n_per_arm,
            corpus_hash=corpus.corpus_hash,
            max_retries=spec.failure.max_retries,
            verbose=not args.quiet,
        )
        register(monitor)
        StudySearch = _study_search_class()
        from .study_arms import ArmScheduler, ArmSearch

        searchers, schedulers, completed = {}, {}, {}
        for arm, cfg in arms.items():
            stale = close_stale_trials(storage, arm)
            existing = study_size(storage, arm)
            completed[arm] = study_completed(storage, arm)
            note = f" ({existing} trials so far" + (f", {stale} interrupted ones marked failed)" if stale else ")")
            monitor.say("study", f"{arm}{note if existing else ''}: adding {n_per_arm} trials")
            searchers[arm] = StudySearch(
                space={"lr": FloatDistribution(spec.search.lr_min, spec.search.lr_max, log=True)},
                metric=OBJECTIVE,
                mode="min",
                study_name=arm,
                storage=storage,
                sampler=optuna.samplers.TPESampler(
                    seed=spec.search.seed + existing, n_startup_trials=spec.search.startup_trials
                ),
            )
            schedulers[arm] = ASHAScheduler(
                time_attr=RUNG_STEP,
                metric=OBJECTIVE,
                mode="min",
                max_t=cfg.steps,
                grace_period=min(spec.search.grace_steps, cfg.steps),
                reduction_factor=spec.search.reduction_factor,
            )
        # One Tuner over every arm (study_arms): trials of all arms share the slots, each arm keeps its
        # own study and its own ASHA, and no arm prunes before min_completed of its trials completed.
        budget = {arm: n_per_arm for arm in arms}
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune_core.tune_config(
                search_alg=ArmSearch(
                    searchers, {a: c.model_dump() for a, c in arms.items()}, budget, metric=OBJECTIVE, mode="min"
                ),
                scheduler=ArmScheduler(schedulers, spec.search.min_completed, completed),
                num_samples=sum(budget.values()),
                max_concurrent_trials=slots,
            ),
            run_config=tune_core.run_config(
                f"arms-{time.strftime('%Y%m%d-%H%M%S')}",
                results,
                spec.failure.max_retries,
                monitor,
                keep=spec.checkpoints.keep,
                callbacks=spec.callbacks,
            ),
        )
        interrupted = tune_core.fit(tuner) or monitor.counts().running > 0
        summaries = [summarize(storage, url, arm, cfg) for arm, cfg in arms.items()]
        monitor.finish()

    done = {s["arm"] for s in summaries}
    rows = summaries + [
        summarize(storage, url, arm, cfg) for arm, cfg in arms.items() if arm not in done and study_size(storage, arm)
    ]
    write_lr_best(results, rows)
    meta["runs"][-1]["finished_at"] = now_iso()
    meta["n_trials"] = len(read_trials(results))
    if not interrupted:
        meta["finished_at"] = meta["runs"][-1]["finished_at"]
    results.write_json(meta, SWEEP_JSON)
    print(f"\nbest LR per arm ({format_duration(time.monotonic() - t0)}):", file=out)
    print(format_table(rows), file=out)
    print(f"\nwrote {results.uri}/{LR_BEST_FILE}", file=out)
    print(f"use it in a sweep: lr: {{from_study: {results.uri}, multipliers: [0.5, 1, 2]}}", file=out, flush=True)
    if interrupted:
        print("interrupted; run the same command again to add trials to the same studies", file=out, flush=True)
        return EXIT_INTERRUPTED
    return 0


def runtime_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
