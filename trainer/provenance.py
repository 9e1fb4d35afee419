"""What produced a result: versions, git commit, hardware. Saved beside every run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "pyarrow", "polars", "ray", "optuna", "pydantic")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of this project's checkout (with '-dirty' if it has changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def hardware() -> dict:
    info = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def provenance() -> dict:
    return {"versions": versions(), "git_commit": git_commit(), "hardware": hardware()}


def sweep_record(
    *,
    name: str,
    kind: str,
    n_trials: int,
    started_at: str,
    config: dict,
    corpus,
    finished_at: str | None = None,
    **extra,
) -> dict:
    """sweep.json: what every run writes beside its results (a standalone trial, a sweep, an LR study).

    The keys here are common to all three; `kind` ("trial", "sweep" or "lr_study") says which wrote
    it, and `extra` carries the keys of that kind (a sweep's grid and runs, a study's storage, ...).
    `corpus` is the trainer.data.TokenData every trial read: its hash, source and what was held out
    (documents and token counts) go on record, so a reader can check the held-out set.
    """
    return {
        "name": name,
        "kind": kind,
        "n_trials": n_trials,
        "started_at": started_at,
        "finished_at": finished_at,
        "config": config,
        "corpus_hash": corpus.corpus_hash,
        "corpus_source": corpus.source,
        "heldout": corpus.describe(),
        **extra,
        **provenance(),
    }
