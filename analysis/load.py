"""Find a sweep folder, check its files against the contract, and scan them lazily.

Nothing here collects the metrics: `Results.metrics` and `Results.spectra` are Polars lazy scans
over the part files that passed the checks, in the order they were written (file mtime, then
name), so that "last written wins" is the order of rows in the scan.

Checks, in the order they run (all before anything is written):
- the folder exists and holds `trials.parquet` (or holds exactly one sweep folder that does);
- `trials.parquet` and every part's footer match `trainer.schema` (a mismatch is a
  `ResultsError` naming the file, the column, the type found and the type expected);
- a part whose footer cannot be read (truncated, not Parquet) is skipped and reported by name.
Temporary files (leading '.', or ending in '.tmp') are ignored, as the trainer writes them.

The folder may be a pyarrow filesystem URI (s3://bucket/prefix/<sweep>, gs://...): files are listed
through pyarrow's filesystem and read by pyarrow and Polars' own cloud readers, configured by the
standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
AWS_ALLOW_HTTP=true for an http endpoint; see docs/analysis.md).
"""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.errors import ConfigError, short_repr
from trainer.safeio import check_run_name
from trainer.schema import (
    METRICS_DIR,
    METRICS_SCHEMA,
    SPECTRA_DIR,
    SPECTRA_SCHEMA,
    STATUSES,
    SWEEP_JSON,
    TRIALS_FILE,
    TRIALS_SCHEMA,
)

# Columns of trials.parquet the analysis cannot do without; the rest are filled with null.
TRIALS_REQUIRED = ("trial_id", "optimizer", "qk_norm", "width", "d_head", "lr", "seed", "status")


class ResultsError(Exception):
    """Input the report cannot use; the CLI prints the message and exits with status 2."""


class UriPath:
    """The few `pathlib.Path` operations this module uses, on a pyarrow filesystem URI.

    `Path("s3://b/k")` would collapse the '//' ("s3:/b/k"); this keeps the URI whole, lists and
    opens through pyarrow (`fs`), and its `str()` is the URI that Polars and pyarrow read directly.
    """

    def __init__(self, uri: str, fs: pafs.FileSystem | None = None, key: str | None = None):
        self.uri = uri.rstrip("/")
        if fs is None:
            try:
                fs, key = pafs.FileSystem.from_uri(self.uri)
            except Exception as e:  # noqa: BLE001 - bad scheme, credentials, bucket
                raise ResultsError(f"cannot open results {uri!r}: {e}") from None
        self.fs, self.key = fs, key.rstrip("/")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"UriPath({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UriPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str) -> UriPath:
        return UriPath(f"{self.uri}/{name}", self.fs, f"{self.key}/{name}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> UriPath:
        return UriPath(self.uri.rsplit("/", 1)[0], self.fs, self.key.rsplit("/", 1)[0])

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.key).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def iterdir(self) -> list[UriPath]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.key, recursive=False, allow_not_found=True))
        return [self / info.base_name for info in infos]

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.key) as f:
            return f.read().decode()

    def files(self) -> list[pafs.FileInfo]:
        """Every file below this folder (recursive; empty when it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.key, recursive=True, allow_not_found=True))
        return [i for i in infos if i.type == pafs.FileType.File]


def as_path(path: str | os.PathLike | UriPath) -> Path | UriPath:
    """A local Path, or a UriPath for a filesystem URI (s3://, gs://, ...; file:// stays local)."""
    if isinstance(path, UriPath):
        return path
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return UriPath(text)
    return Path(text.removeprefix("file://"))


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The Polars schema of an Arrow schema; a dictionary-encoded string column (how the sink
    writes trial_id, see trainer.schema.TRIAL_ID_FILE_TYPE) counts as the String it holds."""
    found = pl.from_arrow(schema.empty_table()).schema
    return pl.Schema({c: pl.String if isinstance(t, pl.Categorical) else t for c, t in found.items()})


METRICS_PL = polars_schema(METRICS_SCHEMA)
SPECTRA_PL = polars_schema(SPECTRA_SCHEMA)
TRIALS_PL = polars_schema(TRIALS_SCHEMA)


@dataclass
class Results:
    sweep_dir: Path | UriPath  # a local folder, or a pyarrow filesystem URI (str() gives the URI)
    sweep: dict | None  # sweep.json, None when absent (a standalone trial)
    trials: pl.DataFrame  # one row per trial, TRIALS_SCHEMA columns
    metric_parts: list[Part]  # oldest first: the scan order is the order written
    spectra_parts: list[Part]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicate_trial_rows: int = 0  # repeated trial_id rows in trials.parquet (last kept)

    @property
    def metrics(self) -> pl.LazyFrame:
        return scan(self.metric_parts, METRICS_PL)

    @property
    def spectra(self) -> pl.LazyFrame:
        return scan(self.spectra_parts, SPECTRA_PL)

    @property
    def name(self) -> str:
        return str((self.sweep or {}).get("name") or self.sweep_dir.name)

    def partial_reasons(self) -> list[str]:
        """Why the results are not a finished sweep (empty when they are)."""
        reasons = []
        n_running = self.trials.filter(pl.col("status") == "running").height
        if n_running:
            reasons.append(f"{n_running} trial(s) still running")
        if self.sweep is not None:
            if self.sweep.get("finished_at") in (None, ""):
                reasons.append("sweep.json has no finished_at (the sweep has not finished)")
            planned = self.sweep.get("n_trials")
            if isinstance(planned, int) and self.trials.height < planned:
                reasons.append(f"{self.trials.height} of {planned} planned trials exist")
        return reasons

    def skip(self, path: Path, reason: str) -> None:
        """Drop a part found unreadable after the footer checks."""
        self.skipped.append((str(path), reason))
        self.metric_parts = [p for p in self.metric_parts if p.path != path]
        self.spectra_parts = [p for p in self.spectra_parts if p.path != path]


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


# ---- finding the sweep ----------------------------------------------------------------------
def find_sweep_dir(path: str | os.PathLike) -> Path:
    """The sweep folder itself, or the one sweep folder inside a parent folder (local or a URI)."""
    path = as_path(path)
    if not path.exists():
        raise ResultsError(f"results folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ResultsError(f"results path {str(path)!r} is not a folder")
    if (path / TRIALS_FILE).is_file():
        return path
    inner = sorted(p for p in path.iterdir() if p.is_dir() and (p / TRIALS_FILE).is_file())
    if len(inner) == 1:
        return inner[0]
    if not inner:
        raise ResultsError(
            f"no {TRIALS_FILE} in {str(path)!r} or in any folder directly inside it: "
            "pass the sweep folder (the one holding trials.parquet, metrics/ and spectra/)"
        )
    names = ", ".join(p.name for p in inner)
    raise ResultsError(f"{str(path)!r} holds {len(inner)} sweep folders ({names}): pass one of them")


# ---- checking files -------------------------------------------------------------------------
def check_columns(path: Path, found: pl.Schema, expected: pl.Schema, required) -> None:
    """Raise ResultsError naming the file and the first missing or mistyped column."""
    for col in required:
        if col not in found:
            raise ResultsError(f"{path}: column {col!r} is missing (the contract requires it)")
    for col, dtype in expected.items():
        if col in found and found[col] != dtype:
            raise ResultsError(f"{path}: column {col!r} has type {found[col]}, the contract says {dtype}")


def list_parts(folder: Path) -> list[Path]:
    """Part files under <folder>/trial_id=*/, oldest first (mtime, then name)."""
    if isinstance(folder, UriPath):
        return _list_remote_parts(folder)
    try:
        return _list_local_parts(folder)
    except OSError as e:  # a symlink loop, a folder that cannot be listed: one line, exit 2
        where = e.filename or folder
        raise ResultsError(f"{where}: cannot read it ({e.strerror or e}); remove it or fix its permissions") from None


def _list_local_parts(folder: Path) -> list[Path]:
    if os.path.islink(folder) and not folder.exists():
        raise OSError(40, "a broken symlink or a symlink loop", str(folder))
    if not folder.is_dir():
        return []
    found = []
    with os.scandir(folder) as trials:
        for t in trials:
            if not t.is_dir() or t.name.startswith("."):
                continue
            with os.scandir(t.path) as parts:
                for p in parts:
                    if p.name.startswith(".") or p.name.endswith(".tmp"):
                        continue
                    if p.name.endswith(".parquet") and p.is_file():
                        found.append((p.stat().st_mtime_ns, p.path))
    return [Path(p) for _, p in sorted(found)]


def _list_remote_parts(folder: UriPath) -> list[UriPath]:
    """list_parts on an object store: one recursive listing (object stores have no folders)."""
    found = []
    for info in folder.files():
        rel = info.path[len(folder.key) + 1 :].split("/")
        if len(rel) != 2 or rel[0].startswith(".") or rel[1].startswith(".") or rel[1].endswith(".tmp"):
            continue
        if rel[1].endswith(".parquet"):
            found.append((info.mtime_ns or 0, info.path, folder / rel[0] / rel[1]))
    return [p for _, _, p in sorted(found, key=lambda t: t[:2])]


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


# ---- trials ---------------------------------------------------------------------------------
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


def load_results(path: str | os.PathLike) -> Results:
    """Everything the report needs to start, checked; raises ResultsError on bad input."""
    sweep_dir = find_sweep_dir(path)
    sweep = read_sweep_json(sweep_dir / SWEEP_JSON)
    trials, dup = read_trials_frame(sweep_dir / TRIALS_FILE)
    metric_parts, skipped_m = check_parts(list_parts(sweep_dir / METRICS_DIR), METRICS_PL)
    spectra_parts, skipped_s = check_parts(list_parts(sweep_dir / SPECTRA_DIR), SPECTRA_PL)
    return Results(
        sweep_dir=sweep_dir,
        sweep=sweep,
        trials=trials,
        metric_parts=metric_parts,
        spectra_parts=spectra_parts,
        skipped=skipped_m + skipped_s,
        duplicate_trial_rows=dup,
    )


# ---- the Python API: analysis.load(results_dir) ----------------------------------------------
def load(results_dir: str | os.PathLike) -> Results:
    """A sweep folder (or a folder holding one, or a URI), checked against the results contract.

    Returns `Results`: `.trials` (a Polars DataFrame, one row per trial), `.metrics` and `.spectra`
    (Polars LazyFrames over the part files: filter, then `.collect()`), `.sweep` (sweep.json as a
    dict) and `.partial_reasons()`. Raises ResultsError on input the report could not use.

        >>> import analysis
        >>> res = analysis.load("results/smoke")
        >>> res.metrics.filter(pl.col("name") == "pr").collect()
    """
    return load_results(results_dir)


class _CallableModule(types.ModuleType):
    """`analysis.load` is this module, and calling it is `load(results_dir)`: Python binds the
    submodule to the package attribute on import, which would hide a function of the same name."""

    def __call__(self, results_dir: str | os.PathLike) -> Results:
        return load(results_dir)


sys.modules[__name__].__class__ = _CallableModule
