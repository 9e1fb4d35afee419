"""An LR study's Optuna storage URL (`search.storage`), checked as a run and its `--dry-run` check it.

Kept apart from orchestrator.tune.study_storage (which opens the storage and imports Optuna) so that
`lr_study --dry-run` refuses the URL a real run would refuse without loading Optuna; sqlalchemy, which
parses the URL, is imported only when a URL is given.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainer.config import ConfigError, short_repr
from trainer.storage import ResultsDir

from .study_file import LRStudySpec

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
    from sqlalchemy.engine import make_url  # ~0.2 s of imports, only when a URL is given

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
