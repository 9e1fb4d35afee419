"""trials.parquet: one row per trial, always rewritten whole and atomically."""

from __future__ import annotations

import pyarrow as pa

from .schema import TRIALS_FILE, TRIALS_SCHEMA
from .storage import ResultsDir


def write_trials(results: ResultsDir, rows: list[dict]) -> None:
    """Rows sorted by trial_id; missing columns are null, unknown keys are an error."""
    for row in rows:
        extra = set(row) - set(TRIALS_SCHEMA.names)
        if extra:
            raise KeyError(f"trials row has columns outside the schema: {sorted(extra)}")
    ordered = sorted(rows, key=lambda r: r["trial_id"])
    columns = {name: [row.get(name) for row in ordered] for name in TRIALS_SCHEMA.names}
    results.write_table(pa.table(columns, schema=TRIALS_SCHEMA), TRIALS_FILE)


def read_trials(results: ResultsDir) -> list[dict]:
    """Existing rows, or [] when no trials.parquet has been written yet."""
    if not results.exists(TRIALS_FILE):
        return []
    return results.read_table(TRIALS_FILE).to_pylist()
