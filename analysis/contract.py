"""The results contract, checked: every file's columns and types against `trainer.schema`.

- `trials.parquet` and every part's footer must match the contract: a mismatch is a
  `ResultsError` naming the file, the column, the type found and the type expected;
- every row of `trials.parquet` must hold what the trainer writes (ROW_RULES: a status, an lr > 0, a seed,
  ...), and the keys of `sweep.json` the report reads their type (SWEEP_RULES): else a
  `ResultsError` naming the file, the column or key, the trial and the value;
- a part whose footer cannot be read (truncated, not Parquet), or that is a symlink (never
  followed), is skipped and reported by name;
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
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.errors import ConfigError, short_repr
from trainer.safeio import check_run_name
from trainer.schema import MAX_LR, METRICS_SCHEMA, SPECTRA_SCHEMA, STATUSES, TRIALS_SCHEMA

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
    if md.num_row_groups == 1:  # what the trainer writes: one row group a part
        s = md.row_group(0).column(column).statistics
        return (s.min, s.max) if s is not None and s.has_min_max else None
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


_LOCAL = pafs.LocalFileSystem()  # named, so that pyarrow does not work out each path's filesystem again


def _read_footer(path: Path) -> Footer | str:
    """(its Arrow schema, rows, step min, step max, the trial ids its rows hold), or why the file
    cannot be read. pyarrow only: it runs in a forked child for half of a large study (check_parts).
    A symlink is not followed (it may point out of the results folder, or loop): skipped, named."""
    remote = isinstance(path, UriPath)
    where = path.key if remote else os.fspath(path)
    link = None if remote else symlink_to(where)
    if link is not None:
        return f"{link}; the trainer writes none"
    try:
        md = pq.read_metadata(where, filesystem=path.fs if remote else _LOCAL)
        schema = _arrow_schema(md)
        lo = hi = None
        j = schema.get_field_index("step")
        if j >= 0 and md.num_row_groups:
            lo, hi = _min_max(md, j) or (None, None)
        return schema, md.num_rows, lo, hi, _trial_ids(path, md, schema)
    except (OSError, pa.ArrowException, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def _arrow_schema(md: pq.FileMetaData) -> pa.Schema:
    """The footer's Arrow schema; the previous footer's when this one has the same Parquet schema
    and key-value metadata (which holds the Arrow schema pyarrow wrote), the two things pyarrow
    builds it from: a study's parts share a few schemas, and comparing costs a fifth of building."""
    global _LAST_FOOTER
    parquet, meta = md.schema, md.metadata
    if _LAST_FOOTER is not None and meta == _LAST_FOOTER[1] and parquet.equals(_LAST_FOOTER[0]):
        return _LAST_FOOTER[2]
    schema = parquet.to_arrow_schema()
    _LAST_FOOTER = parquet, meta, schema
    return schema


_LAST_FOOTER: tuple[pq.ParquetSchema, dict | None, pa.Schema] | None = None  # _arrow_schema's last answer


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


# What every row of trials.parquet must hold, as the trainer writes it (trainer.trials.trial_row):
# (column, the condition, what is expected). A row breaking one would end the report far from its
# cause (a NaN lr in a figure's axis limits, a null trial_id in a joined list of names), so it is
# refused here, by the column and the trial. A null is allowed only where the condition says so.
ROW_RULES = (
    ("trial_id", pl.col("trial_id").is_not_null(), "a trial id, not null"),
    ("status", pl.col("status").is_in(STATUSES), f"one of {', '.join(STATUSES)}"),
    ("optimizer", pl.col("optimizer").is_not_null(), "an optimizer name, not null"),
    ("qk_norm", pl.col("qk_norm").is_not_null(), "a QK-Norm variant, not null"),
    (
        "lr",
        pl.col("lr").is_finite() & (pl.col("lr") > 0) & (pl.col("lr") <= MAX_LR),
        f"a learning rate in (0, {MAX_LR:g}]",
    ),
    ("width", pl.col("width") > 0, "a width > 0"),
    ("d_head", pl.col("d_head") > 0, "a d_head > 0"),
    ("seed", pl.col("seed").is_not_null(), "a seed, not null"),
    ("steps_done", pl.col("steps_done").is_null() | (pl.col("steps_done") >= 0), "a step count >= 0"),
)


def check_rows(path: Path, df: pl.DataFrame) -> None:
    """Raise ResultsError on the first ROW_RULES column a row breaks: one line naming the file, the
    column, the first such trial (its row number when its trial_id is null) and its value, and how
    many rows break it."""
    for col, ok, expected in ROW_RULES:
        bad = df.with_row_index("_row").filter(~ok.fill_null(False))
        if not bad.height:
            continue
        row = bad.row(0, named=True)
        where = f"trial {row['trial_id']!r}" if row["trial_id"] is not None else f"row {row['_row']} (counting from 0)"
        more = f" (and {bad.height - 1} more row(s))" if bad.height > 1 else ""
        value = "null" if row[col] is None else repr(row[col])
        raise ResultsError(f"{path}: column {col!r} has value {value} for {where}{more}; expected {expected}")


def read_trials_frame(path: Path) -> tuple[pl.DataFrame, int]:
    """trials.parquet as a checked Polars frame with every TRIALS_SCHEMA column, and how many
    repeated trial_id rows were dropped (the last row of an id is kept). Not to be confused with
    `trainer.trials.read_trials` (rows as dicts, for the sweep's own bookkeeping)."""
    not_a_link(path)
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
    check_rows(path, df)
    n = df.height
    df = df.unique(subset="trial_id", keep="last", maintain_order=True)
    return df, n - df.height


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _time_or_null(v) -> bool:
    """An ISO 8601 time as the trainer writes it (trainer.provenance), or null/"" (not finished)."""
    if v is None or v == "":
        return True
    try:
        datetime.fromisoformat(v)
    except (TypeError, ValueError):
        return False
    return True


SWEEP_KINDS = ("trial", "sweep", "lr_study")  # who wrote it (trainer.provenance.sweep_record)
# The keys of sweep.json the report reads, when present: (key, or parent.key, the check, what is
# expected). A wrong type would be read silently as something else (an n_trials of "abc" as no
# plan, a finished_at of 5 as finished) or end in a traceback far from the file. null is allowed
# where the trainer writes it (finished_at of a running sweep, a corpus it could not hash).
SWEEP_RULES = (
    ("kind", lambda v: v in SWEEP_KINDS, f"one of {', '.join(SWEEP_KINDS)}"),
    ("n_trials", _count, "a whole number >= 0 (the trials planned)"),
    ("finished_at", _time_or_null, "an ISO 8601 time, or null while the sweep runs"),
    ("config", lambda v: isinstance(v, dict), "an object (the sweep's settings)"),
    ("config.train", lambda v: isinstance(v, dict), "an object (the train: settings)"),
    ("corpus_hash", lambda v: v is None or isinstance(v, str), "a string"),
    ("corpus_source", lambda v: v is None or isinstance(v, str), "a string"),
    ("heldout", lambda v: v is None or isinstance(v, dict), "an object"),
    ("heldout.train_tokens", lambda v: v is None or _count(v), "a whole number >= 0"),
)


def check_sweep(path: Path, sweep: dict) -> None:
    """Raise ResultsError naming sweep.json, the key and its value for the first SWEEP_RULES key
    present with a value of the wrong type."""
    for key, ok, expected in SWEEP_RULES:
        parent, _, name = key.rpartition(".")
        holder = sweep.get(parent) if parent else sweep
        if isinstance(holder, dict) and name in holder and not ok(holder[name]):
            value = "null" if holder[name] is None else short_repr(holder[name], 60)
            raise ResultsError(f"{path}: key {key!r} is {value}; expected {expected}")


def symlink_to(path: str | Path) -> str | None:
    """ "a symlink (to '<target>'), not followed" when the local `path` is a symlink, else None: the
    report follows none (it may loop, or lead out of the results folder)."""
    if not os.path.islink(path):
        return None
    return f"a symlink (to {repr(os.readlink(path))[:300]}), not followed"


def not_a_link(path: Path) -> None:
    """ResultsError when a local sweep.json or trials.parquet is a symlink (`symlink_to`): a part file
    that is one is skipped; these two make the folder a results folder, and a sweep writes no link."""
    link = None if isinstance(path, UriPath) else symlink_to(path)
    if link is not None:
        raise ResultsError(
            f"{path}: {link}; the report reads only the files a sweep writes, and a sweep writes no link:"
            " copy the file in its place"
        )


def read_sweep_json(path: Path) -> dict | None:
    not_a_link(path)
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
    check_sweep(path, sweep)
    return sweep
