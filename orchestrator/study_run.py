"""Running LR studies: one Optuna study per arm, searched through Ray Tune, and lr_best.parquet.

`orchestrator.lr_study` validates its input and calls `run_studies`. Each arm's study lives in a
persistent Optuna storage; OptunaSearch (a seeded TPE sampler) proposes log-LRs and ASHA stops
hopeless trials, which are filed as PRUNED in the study and as `pruned` in trials.parquet.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyarrow as pa

from trainer.config import ConfigError, TrialConfig, short_repr
from trainer.console import format_duration
from trainer.provenance import now_iso, sweep_record
from trainer.schema import LR_BEST_FILE, LR_BEST_SCHEMA, SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.trials import read_trials

from . import tune_core
from .records import OBJECTIVE, RUNG_STEP, as_report, is_final
from .spec import LRStudySpec
from .tune_core import EXIT_INTERRUPTED

STUDIES_DIR = "studies"


def storage_url(spec: LRStudySpec, results: ResultsDir) -> str:
    """The Optuna storage: the spec's URL, else SQLite beside the results (local results only)."""
    if spec.search.storage:
        return check_storage(spec.search.storage)
    if not results.is_local:
        raise ConfigError(
            f"search.storage: results are at {results.uri}, where SQLite cannot live; "
            "give an Optuna storage URL (e.g. postgresql://user@host/db) or a local sqlite:/// path"
        )
    return f"sqlite:///{results.local_path(STUDIES_DIR, 'optuna.db')}"


def check_storage(url: str) -> str:
    """An Optuna storage URL, checked before anything is created: it parses, its driver is installed,
    and a SQLite file's folder exists (nothing creates folders for it)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except Exception:  # noqa: BLE001 - sqlalchemy raises several types for a bad URL
        raise ConfigError(
            f"search.storage: {short_repr(url, 80)} is not a database URL "
            "(e.g. sqlite:///path/optuna.db or postgresql://user@host/db)"
        ) from None
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:":
            raise ConfigError(
                f"search.storage: {short_repr(url, 80)} has no database file; an in-memory study "
                "would be lost: give sqlite:///path/optuna.db"
            )
        file = Path(db).expanduser().absolute()
        if file.exists() and not file.is_file():
            raise ConfigError(f"search.storage: {str(file)!r} is not a file (got {short_repr(url, 80)})")
        if not file.parent.is_dir():
            raise ConfigError(
                f"search.storage: folder {str(file.parent)!r} does not exist (got {short_repr(url, 80)}); "
                "create it first"
            )
        if not os.access(file.parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"search.storage: folder {str(file.parent)!r} is not writable (got {short_repr(url, 80)})"
            )
        return url
    try:
        parsed.get_dialect()
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"search.storage: cannot use {short_repr(url, 80)} ({type(exc).__name__}: {short_repr(str(exc), 80)})"
        ) from None
    return url


def open_storage(url: str):
    import optuna

    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    return optuna.storages.RDBStorage(url)


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


def close_stale_trials(storage, study_name: str) -> int:
    """Trials left RUNNING by an interrupted run can never finish: file them as FAIL."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(stale)


def study_completed(storage, study_name: str) -> int:
    """Trials of the study that ran to their end (COMPLETE, diverged included): what min_completed counts."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def study_size(storage, study_name: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def summarize(storage, url: str, arm: str, cfg: TrialConfig) -> dict:
    """One lr_best row: the best completed (not diverged) trial of the arm's study."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=arm, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    diverged = [t for t in complete if t.user_attrs.get("status") == "diverged"]
    candidates = [t for t in complete if t.user_attrs.get("status") != "diverged" and t.value is not None]
    best = min(candidates, key=lambda t: t.value) if candidates else None
    return {
        "arm": arm,
        "optimizer": cfg.optimizer,
        "qk_norm": cfg.qk_norm,
        "width": cfg.width,
        "best_lr": best.params["lr"] if best else None,
        "best_loss": best.value if best else None,
        "n_trials": len(complete) + sum(t.state == TrialState.PRUNED for t in trials),
        "n_complete": len(complete) - len(diverged),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "n_diverged": len(diverged),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "best_trial_id": best.user_attrs.get("trial_id") if best else None,
        "study_name": arm,
        "storage": url,
    }


def format_table(rows: list[dict]) -> str:
    header = ("arm", "best_lr", "best_loss", "n_trials", "pruned", "diverged")
    body = [
        (
            r["arm"],
            "n/a" if r["best_lr"] is None else f"{r['best_lr']:.3e}",
            "n/a" if r["best_loss"] is None else f"{r['best_loss']:.4f}",
            str(r["n_trials"]),
            str(r["n_pruned"]),
            str(r["n_diverged"]),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]

    def line(cells) -> str:  # the arm left-aligned, the numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])


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
    columns = {name: [r.get(name) for r in rows] for name in LR_BEST_SCHEMA.names}
    results.write_table(pa.table(columns, schema=LR_BEST_SCHEMA), LR_BEST_FILE)
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
