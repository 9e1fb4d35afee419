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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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


def polars_schema(schema: pa.Schema) -> pl.Schema:
    return pl.from_arrow(schema.empty_table()).schema


METRICS_PL = polars_schema(METRICS_SCHEMA)
SPECTRA_PL = polars_schema(SPECTRA_SCHEMA)
TRIALS_PL = polars_schema(TRIALS_SCHEMA)


@dataclass
class Results:
    sweep_dir: Path
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
    # The trial_id=<id> folder is also a column in every file: read it from the file.
    return pl.scan_parquet(
        [str(p.path) for p in parts], hive_partitioning=False, schema=schema, extra_columns="ignore"
    )


# ---- finding the sweep ----------------------------------------------------------------------
def find_sweep_dir(path: str | os.PathLike) -> Path:
    """The sweep folder itself, or the one sweep folder inside a parent folder."""
    path = Path(path)
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
    raise ResultsError(
        f"{str(path)!r} holds {len(inner)} sweep folders ({names}): pass one of them"
    )


# ---- checking files -------------------------------------------------------------------------
def check_columns(path: Path, found: pl.Schema, expected: pl.Schema, required) -> None:
    """Raise ResultsError naming the file and the first missing or mistyped column."""
    for col in required:
        if col not in found:
            raise ResultsError(f"{path}: column {col!r} is missing (the contract requires it)")
    for col, dtype in expected.items():
        if col in found and found[col] != dtype:
            raise ResultsError(
                f"{path}: column {col!r} has type {found[col]}, the contract says {dtype}"
            )


def list_parts(folder: Path) -> list[Path]:
    """Part files under <folder>/trial_id=*/, oldest first (mtime, then name)."""
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


@dataclass(frozen=True)
class Part:
    """One part file as its footer describes it."""

    path: Path
    folder: str  # trial_id=<id>
    rows: int
    step_min: int | None  # from the footer's statistics; None when absent
    step_max: int | None


def _read_footer(path: Path) -> tuple[pl.Schema, int, int | None, int | None] | str:
    """(schema as Polars sees it, rows, step min, step max), or why the file cannot be read."""
    try:
        md = pq.read_metadata(path)
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
            pl.read_parquet(p.path, hive_partitioning=False, columns=schema.names())
        except Exception as e:  # noqa: BLE001 - any failure to read means: skip it, say why
            bad.append((p.path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"))
    return bad


# ---- trials ---------------------------------------------------------------------------------
def read_trials(path: Path) -> tuple[pl.DataFrame, int]:
    """trials.parquet, checked, with every TRIALS_SCHEMA column; repeated ids keep the last row."""
    try:
        df = pl.read_parquet(path, hive_partitioning=False)
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
        raise ResultsError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(sweep, dict):
        raise ResultsError(f"{path}: expected a JSON object, found {type(sweep).__name__}")
    return sweep


def load_results(path: str | os.PathLike) -> Results:
    """Everything the report needs to start, checked; raises ResultsError on bad input."""
    sweep_dir = find_sweep_dir(path)
    sweep = read_sweep_json(sweep_dir / SWEEP_JSON)
    trials, dup = read_trials(sweep_dir / TRIALS_FILE)
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
