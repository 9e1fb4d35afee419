"""The results contract, checked: every file's columns and types against `trainer.schema`.

- `trials.parquet` and every part's footer must match the contract: a mismatch is a
  `ResultsError` naming the file, the column, the type found and the type expected;
- a part whose footer cannot be read (truncated, not Parquet) is skipped and reported by name;
- a part whose trial_id disagrees with its folder (`trial_id=<id>`: a part copied or moved from
  another trial) is skipped and reported by name; the check reads the trial_id column's min and
  max from the footer, or the column alone when a writer left the statistics out;
- `scan` reads the parts that passed, lazily, in the order given (the order written).

Every path is read literally (`glob=False`): a results folder named `res[2]` or `a*` is that folder,
never a pattern over its neighbours.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.errors import ConfigError, short_repr
from trainer.safeio import check_run_name
from trainer.schema import METRICS_SCHEMA, SPECTRA_SCHEMA, STATUSES, TRIALS_SCHEMA

from . import forked
from .paths import ResultsError, UriPath

# Columns of trials.parquet the analysis cannot do without; the rest are filled with null.
TRIALS_REQUIRED = ("trial_id", "optimizer", "qk_norm", "width", "d_head", "lr", "seed", "status")


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The Polars schema of an Arrow schema; a dictionary-encoded string column (how the sink
    writes trial_id, see trainer.schema.TRIAL_ID_FILE_TYPE) counts as the String it holds.
    Converted once per distinct schema (a study's tens of thousands of parts share a few), and
    the same object returned for each; a schema equal to the one asked for last is answered without
    building its key (most parts have the schema of the part before: 41k keys took 0.4 s)."""
    global _LAST
    if _LAST is not None and (schema is _LAST[0] or schema.equals(_LAST[0])):
        return _LAST[1]
    key = (tuple(schema.names), tuple(str(t) for t in schema.types))
    found = _SCHEMAS.get(key)
    if found is None:
        found = pl.from_arrow(_empty(schema)).schema
        found = _SCHEMAS[key] = pl.Schema(
            {c: pl.String if isinstance(t, pl.Categorical) else t for c, t in found.items()}
        )
    _LAST = schema, found
    return found


_SCHEMAS: dict[tuple, pl.Schema] = {}
_LAST: tuple[pa.Schema, pl.Schema] | None = None  # polars_schema's last answer


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    """An empty batch of `schema`, made without importing pandas (`Schema.empty_table` and
    `pa.array([])` import it: 43 MB of the report's memory and 0.2 s of its start)."""
    return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


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
    # the one trial id its rows hold (from the footer, checked against the folder by `misplaced`);
    # None when not known (no rows, or a part described by the summary cache)
    trial_id: str | None = None


def _min_max(md: pq.FileMetaData, column: int) -> tuple | None:
    """(min, max) of a column over every row group from the footer's statistics; None when any row
    group lacks them."""
    stats = [md.row_group(i).column(column).statistics for i in range(md.num_row_groups)]
    if not stats or not all(s is not None and s.has_min_max for s in stats):
        return None
    return min(s.min for s in stats), max(s.max for s in stats)


def _trial_ids(path: Path, md: pq.FileMetaData, schema: pa.Schema) -> set[str] | None:
    """The trial ids a part's rows hold: from the footer's min and max of trial_id (one id when they
    agree), else from the trial_id column alone (a writer that left the statistics out); None
    when the part has no trial_id column (the contract check names that)."""
    j = schema.get_field_index("trial_id")
    if j < 0:
        return None
    if md.num_rows == 0:
        return set()
    bounds = _min_max(md, j)
    if bounds is not None:
        return {str(b) for b in bounds}
    f = pq.ParquetFile(path.fs.open_input_file(path.key)) if isinstance(path, UriPath) else pq.ParquetFile(path)
    with f:
        column = f.read(columns=["trial_id"]).column("trial_id").combine_chunks()
    if isinstance(column, pa.DictionaryArray):
        column = column.dictionary_decode()
    return {v for v in column.unique().to_pylist() if v is not None}


Footer = tuple[pa.Schema, int, "int | None", "int | None", "set[str] | None"]


def _read_footer(path: Path) -> Footer | str:
    """(its Arrow schema, rows, step min, step max, the trial ids its rows hold), or why the file
    cannot be read. pyarrow only: it runs in a forked child for half of a large study (check_parts)."""
    try:
        md = pq.read_metadata(path.key, filesystem=path.fs) if isinstance(path, UriPath) else pq.read_metadata(path)
        schema = md.schema.to_arrow_schema()
        lo = hi = None
        j = schema.get_field_index("step")
        if j >= 0 and md.num_row_groups:
            lo, hi = _min_max(md, j) or (None, None)
        return schema, md.num_rows, lo, hi, _trial_ids(path, md, schema)
    except (OSError, pa.ArrowException, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


class _FooterJson:
    """A footer to JSON and back, for the forked child's half (analysis.forked): each distinct
    schema is sent once (Arrow IPC, base64) and then named by its number."""

    def __init__(self) -> None:
        self.sent: list[pa.Schema] = []  # the child's: the schemas sent, by number
        self.schemas: list[pa.Schema] = []  # the parent's: number -> schema

    def to_json(self, footer: Footer | str):
        if isinstance(footer, str):
            return footer
        schema, rows, lo, hi, ids = footer
        sent = None
        number = next((i for i, s in enumerate(self.sent) if schema.equals(s)), None)
        if number is None:
            number = len(self.sent)
            self.sent.append(schema)
            sent = base64.b64encode(schema.serialize().to_pybytes()).decode()
        return [number, sent, rows, lo, hi, None if ids is None else sorted(ids)]

    def from_json(self, found) -> Footer | str:
        if isinstance(found, str):
            return found
        number, sent, rows, lo, hi, ids = found
        if sent is not None:
            self.schemas.append(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(sent))))
        return self.schemas[number], rows, lo, hi, None if ids is None else set(ids)


def read_footers(files: list[Path]) -> Iterable[Footer | str]:
    """`_read_footer` of every file, in order: a large local study's in two processes
    (analysis.forked.map_halves), else one by one as they are used."""
    if any(isinstance(f, UriPath) for f in files):  # an object store's client is never forked
        return map(_read_footer, files)
    codec = _FooterJson()
    return forked.map_halves(_read_footer, files, codec.to_json, codec.from_json)


def misplaced(folder: str, ids: set[str] | None) -> str | None:
    """Why a part's rows do not belong in its folder `trial_id=<id>`, or None when they do."""
    if ids is None:
        return None
    if not folder.startswith("trial_id="):
        return f"not in a trial_id=<id> folder ({folder!r}); its rows hold trial_id {', '.join(sorted(ids))}"
    own = folder.removeprefix("trial_id=")
    if ids <= {own, unquote(own)}:
        return None
    found = ", ".join(repr(i) for i in sorted(ids))
    return (
        f"its rows hold trial_id {found}, but its folder is {folder}: a part copied or moved from another"
        " trial; move it back (or delete it)"
    )


def check_parts(files: list[Path], expected: pl.Schema) -> tuple[list[Part], list[tuple[str, str]]]:
    """Footers of every part: schema errors raise; unreadable parts, and parts whose trial_id
    disagrees with their folder, are returned as skipped (path, reason)."""
    good, skipped = [], []
    checked = None  # the schema of the part before, checked
    for f, footer in zip(files, read_footers(files), strict=True):
        if isinstance(footer, str):
            skipped.append((str(f), footer))
            continue
        arrow_schema, rows, lo, hi, ids = footer
        schema = polars_schema(arrow_schema)
        if schema is not checked:  # one object per distinct schema (polars_schema): checked when it changes
            check_columns(f, schema, expected, expected.names())
            checked = schema
        if lo is not None and lo < 0:  # steps count from 0: a part with step -5 was not written by the trainer
            skipped.append((str(f), f"negative step numbers (down to {lo}); not written by the trainer"))
            continue
        wrong = misplaced(f.parent.name, ids)
        if wrong is not None:  # read as is, its rows would count twice or under another trial
            skipped.append((str(f), wrong))
            continue
        good.append(Part(f, f.parent.name, rows, lo, hi, next(iter(ids)) if ids and len(ids) == 1 else None))
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
            pl.read_parquet(str(p.path), hive_partitioning=False, columns=schema.names(), glob=False)
        except (Exception, pl.exceptions.PanicException) as e:  # noqa: BLE001 - any failure to read: skip it, say why
            bad.append((p.path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"))
    return bad


def scan(
    parts: list[Part], schema: pl.Schema, use_statistics: bool = True, row_index: str | None = None
) -> pl.LazyFrame:
    """A lazy scan of the parts in the given order (rows keep that order). `use_statistics=False`
    when a filter will keep most row groups: checking it against every file's statistics then
    costs more than it saves (a third of reading a study's metrics with the features' filter).
    `row_index`: a first column of that name, each row's position in the parts read one after
    the other (counted before any filter: a row of part i lies in [sum of rows before it, + rows))."""
    if not parts:
        empty = pl.LazyFrame(schema=schema)
        return empty if row_index is None else empty.with_row_index(row_index)
    # The trial_id=<id> folder is also a column in every file: read it from the file, as a
    # String (newer parts store it dictionary-encoded, older ones as plain strings).
    return pl.scan_parquet(
        [str(p.path) for p in parts],
        hive_partitioning=False,
        glob=False,  # the paths are literal: a folder named res[2] or a* is not a pattern
        schema=schema,
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(categorical_to_string="allow"),
        use_statistics=use_statistics,
        row_index_name=row_index,
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
        df = pl.read_parquet(str(path), hive_partitioning=False, glob=False)
    except Exception as e:  # noqa: BLE001
        raise ResultsError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    # trial_id is dictionary-encoded on disk (Categorical here) since trainer.schema.TRIALS_FILE_SCHEMA,
    # a plain string before: the analysis sees a String either way.
    df = df.with_columns(pl.col(c).cast(pl.String) for c, t in df.schema.items() if isinstance(t, pl.Categorical))
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
