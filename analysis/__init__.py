"""The report's analysis as a library: Polars frames in a notebook, the same numbers as the CLI.

    import analysis
    res = analysis.load("results/smoke")        # checked: res.trials (DataFrame), res.metrics / res.spectra (LazyFrames)
    report = analysis.analyse("results/smoke")  # every table of `python -m analysis.report`, nothing written
    report.paradox                              # a Polars DataFrame (paradox.csv); report.tables() gives them all

`import analysis` imports nothing heavy: `analysis.load` imports analysis.loading (Polars, pyarrow)
when called, and `analysis.analyse` imports the statistics and figures (scipy, statsmodels,
matplotlib) when called. Both are plain functions.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

__all__ = ["Report", "Results", "ResultsError", "analyse", "load"]


def load(results_dir: str | os.PathLike | Sequence[str | os.PathLike]):
    """A sweep folder (or a folder holding one, or a URI), checked against the results contract; a
    list of folders is read as one study (the chunks of `--chunk I/N`: `analysis.loading.combine`).

    Returns `analysis.loading.Results`: `.trials` (a Polars DataFrame, one row per trial),
    `.metrics` and `.spectra` (Polars LazyFrames over the part files), `.collect(dataset, query)`
    (a query collected as the report reads: a part that fails to read is skipped and named in
    `.skipped`), `.sweep` (sweep.json as a dict) and `.partial_reasons()`. Raises `ResultsError`
    on input the report could not use (no such folder, a broken schema).
    """
    from .loading import load_results

    return load_results(results_dir)


def analyse(
    results_dir: str | os.PathLike | Sequence[str | os.PathLike],
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float | None = None,
):
    """Load a sweep folder (or a list of folders of one study, as `load`) and compute every table
    of the report, writing nothing.

    Returns `analysis.report.Report`, a frozen dataclass whose fields are Polars DataFrames
    (`finals`, `best_lrs`, `paradox`, `paradox_best`, `collapse_trial`, `collapse_arm`, `scaling`,
    `brackets`, `lr_curve`, `sensitivity`, `status`, `variant_ranking`, `clip_activity`, ...) plus
    `verdict` (verdict.json as a dict) and `results` (what `analysis.load` returns; per-head Muon
    trials labelled optimizer "muon_per_head"); `Report.tables()` gives the frames by the name of the
    file each is written to (paradox_cells, collapse_by_arm, loss_vs_lr, ...; the field names work
    as aliases). `n_boot` bootstrap resamples, `seed` seeds them, `alpha` is the significance level
    (default: the report's, 0.05).
    Raises `ResultsError` on input the report could not use (no such folder, a broken schema).
    """
    from .report import analyse as _analyse

    options = {} if alpha is None else {"alpha": alpha}
    return _analyse(results_dir, n_boot=n_boot, seed=seed, **options)


def __getattr__(name: str):
    """Lazy exports: `Results`, `ResultsError` (analysis.loading) and `Report` (analysis.report)."""
    if name in ("Results", "ResultsError"):
        return getattr(importlib.import_module(".loading", __name__), name)
    if name == "Report":
        return importlib.import_module(".report", __name__).Report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
