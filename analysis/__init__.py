"""The report's analysis as a library: Polars frames in a notebook, the same numbers as the CLI.

    import analysis
    res = analysis.load("results/smoke")        # checked: res.trials (DataFrame), res.metrics / res.spectra (LazyFrames)
    report = analysis.analyse("results/smoke")  # every table of `python -m analysis.report`, nothing written
    report.paradox                              # a Polars DataFrame (paradox.csv); report.tables() gives them all

`import analysis` imports nothing heavy: `analysis.load` (Polars, pyarrow) is imported on first use,
and `analysis.analyse` imports the statistics and figures (scipy, statsmodels, matplotlib) when called.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["Report", "Results", "ResultsError", "analyse", "load"]


def analyse(results_dir: str | os.PathLike, n_boot: int = 2000, seed: int = 0, alpha: float | None = None):
    """Load a sweep folder and compute every table of the report, writing nothing.

    Returns `analysis.report.Report`, a frozen dataclass whose fields are Polars DataFrames
    (`finals`, `best_lrs`, `paradox`, `paradox_best`, `collapse_trial`, `collapse_arm`, `scaling`,
    `brackets`, `lr_curve`, `sensitivity`, `status`, ...) plus `verdict` (verdict.json as a dict) and `results`
    (what `analysis.load` returns); `Report.tables()` gives the frames by name. `n_boot` bootstrap
    resamples, `seed` seeds them, `alpha` is the significance level (default: the report's, 0.05).
    Raises `ResultsError` on input the report could not use (no such folder, a broken schema).
    """
    from .report import analyse as _analyse

    options = {} if alpha is None else {"alpha": alpha}
    return _analyse(results_dir, n_boot=n_boot, seed=seed, **options)


def __getattr__(name: str):
    """Lazy exports: `analysis.load` (the submodule, callable as `analysis.load(results_dir)`),
    `Results`, `ResultsError` (analysis.load) and `Report` (analysis.report)."""
    if name == "load":
        return importlib.import_module(".load", __name__)
    if name in ("Results", "ResultsError"):
        return getattr(importlib.import_module(".load", __name__), name)
    if name == "Report":
        return importlib.import_module(".report", __name__).Report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
