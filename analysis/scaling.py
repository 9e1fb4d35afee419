"""Width scaling: the log-log slope over width of the final rank and of the collapse rate.

Per (optimizer, qk_norm[, init], tensor) and quantity y, OLS of log(y) on log(width) over the
completed trials (seeds as replicates):

    log y = a + slope * log(width),   95% interval slope +- t_{n-2} se(slope)

comparing widths at the same LR (one row per LR) and at each width's best LR; never pooled over
LRs. Censored falls have no rate: they are counted and named.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from .collapse import init_axis
from .stats import CI_LEVEL, t_quantile

SCALING_COLUMNS = [
    "optimizer",
    "qk_norm",
    "tensor",
    "metric",
    "quantity",
    "selection",
    "lr",
    "n",
    "n_widths",
    "n_censored",
    "slope",
    "ci_low",
    "ci_high",
    "p_value",
    "resid_dof",
    "note",
]


QUANTITIES = ("final_norm", "rate_per_1k_steps")  # the final normalised value and the fitted rate


def _ols_slope(x: np.ndarray, y: np.ndarray, level: float):
    """Slope of y on x by OLS with the classical t interval (n - 2 dof) and its p-value."""
    res = stats.linregress(x, y)
    dof = x.size - 2
    half = t_quantile((1 + level) / 2, dof) * res.stderr
    return float(res.slope), float(res.slope - half), float(res.slope + half), float(res.pvalue), dof


def width_scaling(
    per_trial: pl.DataFrame, best_lr: pl.DataFrame | None = None, metric: str = "pr", level: float = CI_LEVEL
) -> pl.DataFrame:
    """Log-log slope over width of the final normalised value and of the fitted rate, per
    (optimizer, qk_norm, tensor), comparing widths at the same LR (selection "lr", one row per
    LR) and, given `best_lr` (the best-LR table, analysis.sensitivity.best_lrs), at each width's
    best LR (selection "best_lr"). Never pooled over LRs. OLS of log(y) on log(width) over completed
    trials (seeds as replicates), classical t interval on n - 2 dof. Censored falls have no rate:
    they are counted in n_censored and named in `note`."""
    done = per_trial.filter((pl.col("status") == "completed") & pl.col("data_complete") & (pl.col("metric") == metric))
    strata = [("lr", lr, done.filter(pl.col("lr") == lr)) for lr in sorted(done.get_column("lr").unique().to_list())]
    if best_lr is not None and best_lr.height:
        on = ["optimizer", "qk_norm", "width", *[c for c in init_axis(done) if c in best_lr.columns]]
        b = best_lr.select(*on, "best_lr")
        strata.append(("best_lr", None, done.join(b, on=on).filter(pl.col("lr") == pl.col("best_lr")).drop("best_lr")))
    rows = []
    for selection, lr, d_all in strata:
        by = ("optimizer", "qk_norm", *init_axis(d_all), "tensor")
        # One pass over the groups on numpy slices (each group's rows in their order), not a Polars
        # filter per group and quantity: 896 filters of a study took most of the table's time.
        groups = d_all.with_row_index("_row").group_by(*by, maintain_order=True).agg("_row")
        width = d_all.get_column("width").cast(pl.Float64).to_numpy()
        censored = d_all.get_column("censored").cast(pl.Int64).fill_null(0).to_numpy()
        values = {q: d_all.get_column(q).cast(pl.Float64).fill_null(np.nan).to_numpy() for q in QUANTITIES}
        for key, members in zip(groups.select(by).rows(), groups.get_column("_row").to_list()):
            at = np.asarray(members, dtype=np.int64)
            for q in QUANTITIES:
                v = values[q][at]
                kept = np.isfinite(v) & (v > 0)  # null (NaN here), infinite and non-positive left out
                n_cens = int(censored[at].sum()) if q.startswith("rate") else 0
                row = dict(
                    zip(by, key),
                    metric=metric,
                    quantity=q,
                    selection=selection,
                    lr=lr,
                    n=int(kept.sum()),
                    n_widths=int(np.unique(width[at][kept]).size),
                    n_censored=n_cens,
                    slope=None,
                    ci_low=None,
                    ci_high=None,
                    p_value=None,
                    resid_dof=None,
                    note="",
                )
                notes = []
                if n_cens:
                    notes.append(f"{n_cens} censored (too fast to fit) left out: slope of fitted rates only")
                if row["n_widths"] < 2 or row["n"] < 3:
                    notes.insert(0, "not enough data (needs 2+ widths and 3+ trials)")
                else:
                    s, lo, hi, p, dof = _ols_slope(np.log(width[at][kept]), np.log(v[kept]), level)
                    row.update(slope=s, ci_low=lo, ci_high=hi, p_value=p, resid_dof=dof)
                row["note"] = "; ".join(notes)
                rows.append(row)
    cols = SCALING_COLUMNS[:2] + list(init_axis(done)) + SCALING_COLUMNS[2:]
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in cols})
    return pl.DataFrame(rows, infer_schema_length=None).select(cols).fill_nan(None)
