"""Does the optimizer change the QK-Norm effect? A regression over all completed trials:

    metric ~ qk_norm x optimizer + log(width) + log(lr)

with treatment coding (baseline qk_norm "none", baseline optimizer "adamw" when present), OLS
with standard errors clustered by seed (trials sharing a seed share data order and init) and t
inference with (clusters - 1) degrees of freedom. The interaction coefficient
`qk_norm=V x optimizer=O` is how much the effect of V differs under O from under the baseline
optimizer. Interaction p-values are Holm-corrected over all interaction terms of one selection.

Clustered errors with G clusters have G - 1 degrees of freedom and are calibrated only with many
clusters: the regression runs only with at least MIN_CLUSTERS seed clusters; with fewer, every
row is "not run" with a note, and the interaction is judged by the per-pair
difference-in-differences (`analysis.interaction.did_table`), which does not need clusters.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl

from .paradox import BASELINE, METRICS, select, variants
from .stats import CI_LEVEL, holm

MIN_CLUSTERS = 20
COLUMNS = [
    "selection",
    "metric",
    "term",
    "coef",
    "se",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "n",
    "n_clusters",
    "cov_type",
    "note",
]


def _design(df: pl.DataFrame, ref_opt: str) -> tuple[np.ndarray, list[str]]:
    cols, names = [np.ones(df.height)], ["const"]
    qk = df.get_column("qk_norm").to_numpy()
    opt = df.get_column("optimizer").to_numpy()
    others = sorted(set(opt) - {ref_opt})
    for v in variants(df):
        cols.append((qk == v).astype(float))
        names.append(f"qk_norm={v}")
    for o in others:
        cols.append((opt == o).astype(float))
        names.append(f"optimizer={o}")
    for v in variants(df):
        for o in others:
            cols.append(((qk == v) & (opt == o)).astype(float))
            names.append(f"qk_norm={v} x optimizer={o}")
    for c in ("width", "lr"):
        x = df.get_column(c).to_numpy().astype(float)
        if np.unique(x).size > 1:
            cols.append(np.log(x))
            names.append(f"log_{c}")
    X = np.column_stack(cols)
    keep = [i for i in range(X.shape[1]) if i == 0 or np.ptp(X[:, i]) > 0]
    return X[:, keep], [names[i] for i in keep]


def regress(finals: pl.DataFrame, selection: str = "all_lrs", best: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (metric, term) of the selection's trials (`best`: the best-LR table, for
    selection "best_lr"), columns COLUMNS; "not run" rows with a note below MIN_CLUSTERS."""
    # the one class used, not statsmodels.api (which loads the whole library: 30 MB and 0.3 s more)
    from statsmodels.regression.linear_model import OLS

    data = select(finals, selection, best).filter(pl.col("status") == "completed")
    opts = sorted(set(data.get_column("optimizer").drop_nulls().to_list()))
    ref = "adamw" if "adamw" in opts else (opts[0] if opts else "adamw")
    rows = []
    for metric in METRICS:
        d = data.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite())
        if d.height == 0 or BASELINE not in d.get_column("qk_norm").to_list():
            rows.append(
                dict(
                    selection=selection,
                    metric=metric,
                    n=d.height,
                    note=f"not enough data (no completed trials with qk_norm={BASELINE})",
                )
            )
            continue
        G = d.get_column("seed").n_unique()
        if G < MIN_CLUSTERS:
            rows.append(
                dict(
                    selection=selection,
                    metric=metric,
                    n=d.height,
                    n_clusters=G,
                    note=f"not run: {G} seed clusters < {MIN_CLUSTERS} (clustered errors "
                    "need many clusters); see the difference-in-differences table",
                )
            )
            continue
        X, names = _design(d, ref)
        y = d.get_column(metric).to_numpy()
        if d.height <= X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
            rows.append(
                dict(
                    selection=selection,
                    metric=metric,
                    n=d.height,
                    note="not enough data (fewer trials than terms, or collinear terms)",
                )
            )
            continue
        with warnings.catch_warnings():
            # a coefficient whose clustered variance comes out negative (few clusters, or a
            # term constant within clusters) gets a NaN error, reported as null
            warnings.simplefilter("ignore", RuntimeWarning)
            rows += _fit(OLS, X, y, names, d, selection, metric)
    schema = {c: pl.Float64 for c in COLUMNS}
    schema.update(
        selection=pl.String,
        metric=pl.String,
        term=pl.String,
        cov_type=pl.String,
        note=pl.String,
        n=pl.Int64,
        n_clusters=pl.Int64,
    )
    df = pl.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema)
    is_int = pl.col("term").str.contains(" x ").fill_null(False)
    p = df.get_column("p_value").to_numpy().astype(float)
    p = np.where(df.select(is_int).to_series().to_numpy(), p, np.nan)
    return df.with_columns(pl.Series("p_holm", holm(p))).fill_nan(None)


def _fit(ols, X, y, names, d, selection, metric) -> list[dict]:
    seeds = d.get_column("seed").to_numpy()
    G = np.unique(seeds).size
    groups = np.unique(seeds, return_inverse=True)[1]
    fit = ols(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    cov, note = "cluster(seed)", ""
    ci = fit.conf_int(alpha=1 - CI_LEVEL)
    rows = []
    for i, name in enumerate(names):
        rows.append(
            dict(
                selection=selection,
                metric=metric,
                term=name,
                coef=float(fit.params[i]),
                se=float(fit.bse[i]),
                ci_low=float(ci[i, 0]),
                ci_high=float(ci[i, 1]),
                p_value=float(fit.pvalues[i]),
                n=d.height,
                n_clusters=G,
                cov_type=cov,
                note=note,
            )
        )
    return rows
