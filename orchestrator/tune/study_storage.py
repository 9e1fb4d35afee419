"""The Optuna storage of an LR study: the state of each arm's study in it (size, completed trials,
trials an interrupted run left RUNNING).

Its URL is checked before anything is created by `storage_url` (orchestrator.spec.optuna_storage,
re-exported here; the dry run checks it too); `summarize` reads an arm's study back as its
lr_best.parquet row.
"""

from __future__ import annotations

import os

import optuna
from optuna.trial import TrialState

from trainer.config import TrialConfig

from ..spec.optuna_storage import STUDIES_DIR, check_storage, storage_url  # noqa: F401 - re-exported


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
