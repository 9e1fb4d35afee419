"""Find a sweep folder, check its files against the contract, and scan them lazily.

Nothing here collects the metrics: `Results.metrics` and `Results.spectra` are Polars lazy scans
over the part files that passed the checks, in the order they were written (file mtime, then
name), so that "last written wins" is the order of rows in the scan.

Checks, in the order they run (all before anything is written):
- the folder exists and holds `trials.parquet` (or holds exactly one sweep folder that does;
  local or a URI: analysis.paths);
- `trials.parquet` and every part's footer match `trainer.schema` (analysis.contract);
- a part whose footer cannot be read (truncated, not Parquet) is skipped and reported by name.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from trainer.schema import METRICS_DIR, SPECTRA_DIR, SWEEP_JSON, TRIALS_FILE

from .contract import METRICS_PL, SPECTRA_PL, Part, check_parts, read_sweep_json, read_trials_frame, scan
from .paths import ResultsError, UriPath, find_sweep_dir, list_parts

__all__ = ["Results", "ResultsError", "load", "load_results"]


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
