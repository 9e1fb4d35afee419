"""trials.parquet: one row per trial, always rewritten whole and atomically."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyarrow as pa

from .schema import TRIALS_FILE, TRIALS_FILE_SCHEMA, TRIALS_SCHEMA, empty_trial_row
from .storage import ResultsDir

if TYPE_CHECKING:  # the config pulls in pydantic and yaml; a row builder only reads its fields
    from .config import TrialConfig


def trial_row(
    cfg: TrialConfig,
    corpus_hash: str | None,
    status: str = "running",
    *,
    trial_id: str | None = None,
    steps_done: int = 0,
    final_train_loss: float | None = None,
    final_val_loss: float | None = None,
    wall_s: float = 0.0,
    diverged_step: int | None = None,
) -> dict:
    """The trials row of one trial: the loop's (while and after training) and the sweep driver's
    (a trial that started but reported nothing yet) come from here, so they cannot drift apart."""
    row = empty_trial_row()
    row.update(
        trial_id=trial_id or cfg.trial_id(),
        optimizer=cfg.optimizer,
        qk_norm=cfg.qk_norm,
        width=cfg.width,
        depth=cfg.depth,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        lr=cfg.lr,
        seed=cfg.seed,
        steps_planned=cfg.steps,
        steps_done=steps_done,
        tokens=steps_done * cfg.batch_size * cfg.seq_len,
        status=status,
        final_train_loss=_finite(final_train_loss),
        final_val_loss=_finite(final_val_loss),
        wall_s=wall_s,
        corpus_hash=corpus_hash,
        config_json=cfg.canonical_json(),
        diverged_step=diverged_step,
    )
    return row


def _finite(value: float | None) -> float | None:
    """NaN and inf losses (a diverged step, no eval yet) are stored as null."""
    return value if value is not None and math.isfinite(value) else None


def write_trials(results: ResultsDir, rows: list[dict]) -> None:
    """Rows sorted by trial_id; missing columns are null, unknown keys are an error. trial_id is
    written dictionary-encoded, as the metrics and spectra parts hold it (schema.TRIAL_ID_FILE_TYPE),
    so that the folders join with this file in Polars, pandas and DuckDB without a cast."""
    for row in rows:
        extra = set(row) - set(TRIALS_SCHEMA.names)
        if extra:
            raise KeyError(f"trials row has columns outside the schema: {sorted(extra)}")
    ordered = sorted(rows, key=lambda r: r["trial_id"])
    columns = {name: [row.get(name) for row in ordered] for name in TRIALS_SCHEMA.names}
    results.write_table(pa.table(columns, schema=TRIALS_FILE_SCHEMA), TRIALS_FILE)


def read_trials(results: ResultsDir) -> list[dict]:
    """Existing rows, or [] when no trials.parquet has been written yet."""
    if not results.exists(TRIALS_FILE):
        return []
    try:
        rows = results.read_table(TRIALS_FILE).to_pylist()
    except (OSError, pa.ArrowException, ValueError) as exc:  # truncated, not Parquet, a folder
        from .config import ConfigError, short_repr

        raise ConfigError(
            f"{results.uri}/{TRIALS_FILE}: cannot read it ({type(exc).__name__}: "
            f"{short_repr(str(exc).splitlines()[0] if str(exc) else '', 100)}); move it away to start "
            "afresh (finished trials would run again)"
        ) from None
    if rows and not all(isinstance(r.get("trial_id"), str) and r.get("status") for r in rows):
        from .config import ConfigError

        raise ConfigError(f"{results.uri}/{TRIALS_FILE}: rows without a trial_id or status; not a trials table")
    return rows
