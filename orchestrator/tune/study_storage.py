"""The Optuna storage of an LR study: its URL, checked before anything is created, and the state
of each arm's study in it (size, completed trials, trials an interrupted run left RUNNING).

`storage_url` checks `search.storage` before anything is created; `summarize` reads an arm's study
back as its lr_best.parquet row.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from trainer.config import ConfigError, TrialConfig, short_repr
from trainer.storage import ResultsDir

from ..spec.study_file import LRStudySpec

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
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    return optuna.storages.RDBStorage(url)


def close_stale_trials(storage, study_name: str) -> int:
    """Trials left RUNNING by an interrupted run can never finish: file them as FAIL."""
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
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def study_finished(storage, study_name: str) -> int:
    """Trials of the study that finished: ran to their end (COMPLETE, diverged included) or were
    stopped by ASHA (PRUNED); what a run's budget counts (failed and interrupted trials do not)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def study_size(storage, study_name: str) -> int:
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def summarize(storage, url: str, arm: str, cfg: TrialConfig) -> dict:
    """One lr_best row: the best completed (not diverged) trial of the arm's study."""
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
