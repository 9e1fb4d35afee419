"""The results contract, checked: every file's columns and types against `trainer.schema`.

- `trials.parquet` and every part's footer must match the contract: a mismatch is a
  `ResultsError` naming the file, the column, the type found and the type expected;
- a part whose footer cannot be read (truncated, not Parquet) is skipped and reported by name;
- `scan` reads the parts that passed, lazily, in the order given (the order written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.errors import ConfigError, short_repr
from trainer.safeio import check_run_name
from trainer.schema import METRICS_SCHEMA, SPECTRA_SCHEMA, STATUSES, TRIALS_SCHEMA

from .paths import ResultsError, UriPath

# Columns of trials.parquet the analysis cannot do without; the rest are filled with null.
TRIALS_REQUIRED = ("trial_id", "optimizer", "qk_norm", "width", "d_head", "lr", "seed", "status")


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The Polars schema of an Arrow schema; a dictionary-encoded string column (how the sink
    writes trial_id, see trainer.schema.TRIAL_ID_FILE_TYPE) counts as the String it holds."""
    found = pl.from_arrow(schema.empty_table()).schema
    return pl.Schema({c: pl.String if isinstance(t, pl.Categorical) else t for c, t in found.items()})


METRICS_PL = polars_schema(METRICS_SCHEMA)
SPECTRA_PL = polars_schema(SPECTRA_SCHEMA)
TRIALS_PL = polars_schema(TRIALS_SCHEMA)


@dataclass(frozen=True)
class Part:
    """One part file as its footer describes it."""

    path: Path | UriPath
    folder: str  # trial_id=<id>
    rows: int
    step_min: int | None  # from the footer's statistics; None when absent
    step_max: int | None


def _read_footer(path: Path) -> tuple[pl.Schema, int, int | None, int | None] | str:
    """(schema as Polars sees it, rows, step min, step max), or why the file cannot be read."""
    try:
        md = pq.read_metadata(path.key, filesystem=path.fs) if isinstance(path, UriPath) else pq.read_metadata(path)
        schema = md.schema.to_arrow_schema()
        lo = hi = None
        j = schema.get_field_index("step")
        if j >= 0 and md.num_row_groups:
            stats = [md.row_group(i).column(j).statistics for i in range(md.num_row_groups)]
            if all(s is not None and s.has_min_max for s in stats):
                lo, hi = min(s.min for s in stats), max(s.max for s in stats)
        return polars_schema(schema), md.num_rows, lo, hi
    except (OSError, pa.ArrowException, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def check_parts(files: list[Path], expected: pl.Schema) -> tuple[list[Part], list[tuple[str, str]]]:
    """Footers of every part: schema errors raise, unreadable parts are returned as skipped."""
    good, skipped = [], []
    for f in files:
        footer = _read_footer(f)
        if isinstance(footer, str):
            skipped.append((str(f), footer))
            continue
        schema, rows, lo, hi = footer
        check_columns(f, schema, expected, expected.names())
        if lo is not None and lo < 0:  # steps count from 0: a part with step -5 was not written by the trainer
            skipped.append((str(f), f"negative step numbers (down to {lo}); not written by the trainer"))
            continue
        good.append(Part(f, f.parent.name, rows, lo, hi))
    return good, skipped


def overlapping(parts: list[Part]) -> set[str]:
    """Trial folders with two parts whose step ranges overlap: the only place where a replay
    after a restore can leave duplicate rows. Parts without step statistics count as overlapping."""
    by_folder: dict[str, list[Part]] = {}
    for p in parts:
        by_folder.setdefault(p.folder, []).append(p)
    out = set()
    for folder, ps in by_folder.items():
        if len(ps) < 2:
            continue
        if any(p.step_min is None for p in ps):
            out.add(folder)
            continue
        ps = sorted(ps, key=lambda p: (p.step_min, p.step_max))
        if any(b.step_min <= a_max for a_max, b in zip(_running_max(ps), ps[1:])):
            out.add(folder)
    return out


def _running_max(ps: list[Part]) -> list[int]:
    out, m = [], None
    for p in ps:
        m = p.step_max if m is None else max(m, p.step_max)
        out.append(m)
    return out


def find_unreadable(parts: list[Part], schema: pl.Schema) -> list[tuple[Path, str]]:
    """Read every part in full; the ones that fail (a corrupt page behind a good footer)."""
    bad = []
    for p in parts:
        try:
            pl.read_parquet(str(p.path), hive_partitioning=False, columns=schema.names())
        except Exception as e:  # noqa: BLE001 - any failure to read means: skip it, say why
            bad.append((p.path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"))
    return bad


def scan(parts: list[Part], schema: pl.Schema) -> pl.LazyFrame:
    """A lazy scan of the parts in the given order (rows keep that order)."""
    if not parts:
        return pl.LazyFrame(schema=schema)
    # The trial_id=<id> folder is also a column in every file: read it from the file, as a
    # String (newer parts store it dictionary-encoded, older ones as plain strings).
    return pl.scan_parquet(
        [str(p.path) for p in parts],
        hive_partitioning=False,
        schema=schema,
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(categorical_to_string="allow"),
    )


def check_columns(path: Path, found: pl.Schema, expected: pl.Schema, required) -> None:
    """Raise ResultsError naming the file and the first missing or mistyped column."""
    for col in required:
        if col not in found:
            raise ResultsError(f"{path}: column {col!r} is missing (the contract requires it)")
    for col, dtype in expected.items():
        if col in found and found[col] != dtype:
            raise ResultsError(f"{path}: column {col!r} has type {found[col]}, the contract says {dtype}")


def read_trials_frame(path: Path) -> tuple[pl.DataFrame, int]:
    """trials.parquet as a checked Polars frame with every TRIALS_SCHEMA column, and how many
    repeated trial_id rows were dropped (the last row of an id is kept). Not to be confused with
    `trainer.trials.read_trials` (rows as dicts, for the sweep's own bookkeeping)."""
    try:
        df = pl.read_parquet(str(path), hive_partitioning=False)
    except Exception as e:  # noqa: BLE001
        raise ResultsError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    check_columns(path, df.schema, TRIALS_PL, TRIALS_REQUIRED)
    missing = [c for c in TRIALS_PL.names() if c not in df.columns]
    df = df.with_columns(pl.lit(None, TRIALS_PL[c]).alias(c) for c in missing)
    df = df.select(TRIALS_PL.names())
    bad = df.filter(~pl.col("status").is_in(STATUSES) | pl.col("status").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise ResultsError(
            f"{path}: column 'status' has value {row['status']!r} for trial {row['trial_id']!r};"
            f" expected one of {', '.join(STATUSES)}"
        )
    n = df.height
    df = df.unique(subset="trial_id", keep="last", maintain_order=True)
    return df, n - df.height


def read_sweep_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        sweep = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: not valid JSON ({short_repr(str(e), 100)})") from e
    if not isinstance(sweep, dict):
        raise ResultsError(f"{path}: expected a JSON object, found {type(sweep).__name__}")
    if "name" in sweep:  # it goes into summary.md: no newline, no path, nothing but a name
        try:
            check_run_name(sweep["name"], str(path))
        except ConfigError as e:
            raise ResultsError(str(e)) from None
    return sweep
