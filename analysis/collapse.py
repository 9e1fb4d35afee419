"""Collapse-rate fits: an exponential decay to a floor over the fall phase of each trajectory.

Rank trajectories often fall and then partly recover (U-shaped), so each head-averaged
trajectory y(t) is fitted only up to its minimum (the fall phase) with

    y(t) = floor + (y0 - floor) * exp(-rate * (t - t0))

For a fixed rate the model is linear in (floor, amplitude), so the least-squares fit is a
one-dimensional search over the rate with the two linear parameters solved in closed form
(variable projection). That runs vectorised over tens of thousands of trajectories at once; the
tests check it against `scipy.optimize.curve_fit` on the same curves.

Per trajectory: initial value, floor, rate (per 1k steps and per million tokens), step of the
minimum, minimum, final value, recovery fraction (final - min) / (initial - min), R^2 of the fit
on the fall phase, and a status: ok | no_fall (the minimum is at the start) | too_few_points
(under 4 points in the fall phase: 3 parameters leave no residual) | rate_at_bound (the rate is
not identified: 99% of the fall happens before the second point, or the fall is still linear at
the minimum). Rates and floors are reported for status ok only.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .stats import bootstrap_ci

MIN_FIT_POINTS = 4
# Search grid for rate * span (span = steps from the first point to the minimum).
_G_LO, _G_HI, _G_N = 0.02, 300.0, 61
_CHUNK = 2048


def _sse(tau: np.ndarray, y: np.ndarray, m: np.ndarray, rate: np.ndarray):
    """Closed-form (floor, amp) and SSE for rates of shape (N, G); tau, y, m are (N, T)."""
    e = np.exp(-rate[..., None] * tau[:, None, :]) * m[:, None, :]  # (N, G, T)
    n = m.sum(-1)[:, None]  # (N, 1)
    se, see = e.sum(-1), (e * e).sum(-1)
    ym = y * m
    sy, syy = ym.sum(-1)[:, None], (ym * y).sum(-1)[:, None]
    sey = (e * ym[:, None, :]).sum(-1)
    det = n * see - se * se
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = (n * sey - se * sy) / det
        floor = (sy - amp * se) / n
    sse = syy - floor * sy - amp * sey
    sse = np.where(np.isfinite(sse), np.maximum(sse, 0.0), np.inf)
    return floor, amp, sse


def fit_decay(t: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Fit every row of y (N, T) against steps t (N, T); NaN pads rows of unequal length.

    Returns arrays of length N: initial, floor, rate (per step), min_step, min_value, final,
    recovery, r2, n_fall, status.
    """
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    N = y.shape[0]
    valid = np.isfinite(y) & np.isfinite(t)
    out = {k: np.full(N, np.nan) for k in ("initial", "floor", "rate", "min_step", "min_value",
                                              "final", "recovery", "r2")}
    out["n_fall"] = np.zeros(N, int)
    out["status"] = np.full(N, "no_data", dtype=object)
    has = valid.any(1)
    if not has.any():
        return out
    yv = np.where(valid, y, np.inf)
    imin = np.argmin(yv, axis=1)
    first = np.argmax(valid, axis=1)
    last = y.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    rows = np.arange(N)
    out["initial"] = np.where(has, y[rows, first], np.nan)
    out["final"] = np.where(has, y[rows, last], np.nan)
    out["min_value"] = np.where(has, y[rows, imin], np.nan)
    out["min_step"] = np.where(has, t[rows, imin], np.nan)
    drop = out["initial"] - out["min_value"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["recovery"] = np.where(drop > 0, (out["final"] - out["min_value"]) / drop, np.nan)
    # fall phase: valid points from the first up to the minimum
    idx = np.arange(y.shape[1])[None, :]
    m = valid & (idx <= imin[:, None])
    n_fall = m.sum(1)
    out["n_fall"] = n_fall
    status = np.where(has, "ok", "no_data").astype(object)
    status[has & (imin == first)] = "no_fall"
    status[(status == "ok") & (n_fall < MIN_FIT_POINTS)] = "too_few_points"
    fit = np.flatnonzero(status == "ok")
    for s in range(0, fit.size, _CHUNK):
        sel = fit[s : s + _CHUNK]
        res = _fit_rows(t[sel], y[sel], m[sel], t[sel, first[sel]], t[sel, imin[sel]])
        out["floor"][sel], out["rate"][sel], out["r2"][sel], at_bound = res
        status[sel[at_bound]] = "rate_at_bound"
    out["status"] = status
    return out


def _fit_rows(t, y, m, t0, tmin):
    """Grid search over log(rate * span), then golden-section refinement between neighbours."""
    span = np.maximum(tmin - t0, 1e-12)  # (N,)
    tau = np.where(m, t - t0[:, None], 0.0)
    mf = m.astype(float)
    n = mf.sum(1)
    ybar = np.where(m, y, 0.0).sum(1) / n
    yc = np.where(m, y - ybar[:, None], 0.0)  # centred: the SSE does not cancel digits
    logg = np.linspace(np.log(_G_LO), np.log(_G_HI), _G_N)
    sse = _sse(tau, yc, mf, np.exp(logg)[None, :] / span[:, None])[2]
    best = np.argmin(sse, axis=1)
    at_bound = (best == 0) | (best == _G_N - 1)
    a = logg[np.maximum(best - 1, 0)]
    b = logg[np.minimum(best + 1, _G_N - 1)]

    def f(x):
        return _sse(tau, yc, mf, (np.exp(x) / span)[:, None])[2][:, 0]

    phi = (np.sqrt(5) - 1) / 2
    for _ in range(30):  # the bracket shrinks to 0.618**30 (1e-6) of two grid steps
        c, d = b - phi * (b - a), a + phi * (b - a)
        left = f(c) < f(d)
        a, b = np.where(left, a, c), np.where(left, d, b)
    rate = np.exp((a + b) / 2) / span
    # not identified: 99% of the fall before the second point (only a lower bound on the
    # rate), or the fall still linear at the minimum (rate and floor trade off)
    dt1 = np.where(tau > 0, tau, np.inf).min(1)
    at_bound |= (rate * dt1 > np.log(100)) | (rate * span < 2.5 * _G_LO)
    floor, _, sse = (v[:, 0] for v in _sse(tau, yc, mf, rate[:, None]))
    sst = (yc * yc).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1 - sse / sst, np.nan)
    return floor + ybar, rate, r2, at_bound


# ---- per trial, per arm ---------------------------------------------------------------------
def _pad(curves: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Group curves by (trial_id, name, tensor) into NaN-padded (N, T) step and value arrays."""
    g = (
        curves.sort("trial_id", "name", "tensor", "step")
        .group_by("trial_id", "name", "tensor", maintain_order=True)
        .agg(pl.col("step"), pl.col("value"))
    )
    lens = g.get_column("step").list.len().to_numpy().astype(np.int64)
    T = int(lens.max()) if lens.size else 0
    steps = np.full((g.height, T), np.nan)
    vals = np.full((g.height, T), np.nan)
    if g.height:
        flat_s = g.get_column("step").explode().to_numpy().astype(float)
        flat_v = g.get_column("value").explode().to_numpy().astype(float)
        row = np.repeat(np.arange(g.height), lens)
        col = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        steps[row, col], vals[row, col] = flat_s, flat_v
    return g.select("trial_id", "name", "tensor"), steps, vals


def collapse_per_trial(curves: pl.DataFrame, finals: pl.DataFrame) -> pl.DataFrame:
    """One row per (trial, rank metric, tensor) with the fit and the trajectory's landmarks."""
    keys, steps, vals = _pad(curves)
    fit = fit_decay(steps, vals)
    df = keys.with_columns(
        pl.Series(k, fit[k]) for k in ("initial", "floor", "rate", "min_step", "min_value",
                                          "final", "recovery", "r2")
    ).with_columns(
        pl.Series("n_fall", fit["n_fall"], pl.Int64),
        pl.Series("fit_status", fit["status"].astype(str)),
    )
    meta = finals.select("trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "d_head",
                         "status", "data_complete", "tokens_per_step")
    df = meta.join(df, on="trial_id", how="inner")
    ok = pl.col("fit_status") == "ok"
    return df.with_columns(
        pl.when(ok).then(pl.col("rate") * 1000).alias("rate_per_1k_steps"),
        pl.when(ok).then(pl.col("rate") / pl.col("tokens_per_step") * 1e6).alias("rate_per_m_tokens"),
        pl.when(ok).then(pl.col("floor")).alias("floor"),
        (pl.col("min_value") / pl.col("d_head")).alias("min_norm"),
        (pl.col("final") / pl.col("d_head")).alias("final_norm"),
    ).select(
        "trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "status", "data_complete",
        "d_head", pl.col("name").alias("metric"), "tensor", "initial", "floor", "rate_per_1k_steps",
        "rate_per_m_tokens", "min_step", "min_value", "final", "min_norm", "final_norm",
        "recovery", "r2", "n_fall", "fit_status",
    ).sort("optimizer", "qk_norm", "width", "lr", "seed", "metric", "tensor").fill_nan(None)


ARM = ("optimizer", "qk_norm", "width")
ARM_QUANTITIES = ("rate_per_1k_steps", "rate_per_m_tokens", "min_step", "min_norm",
                  "final_norm", "recovery")


def collapse_per_arm(per_trial: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Medians over the completed trials of each arm (all LRs) whose data is complete, with 95%
    bootstrap intervals (percentile, resampling trials). Rates use only fits with status ok."""
    done = per_trial.filter((pl.col("status") == "completed") & pl.col("data_complete"))
    rows = []
    for key, g in done.group_by(*ARM, "metric", "tensor", maintain_order=True):
        row = dict(zip((*ARM, "metric", "tensor"), key))
        row["n_trials"] = g.height
        row["n_fit_ok"] = int((g.get_column("fit_status") == "ok").sum())
        for q in ARM_QUANTITIES:
            x = g.get_column(q).drop_nulls().drop_nans().to_numpy()
            med, lo, hi = bootstrap_ci(x, np.median, n_boot=n_boot, seed=(seed, *key, q))
            row[q], row[f"{q}_ci_low"], row[f"{q}_ci_high"] = med, lo, hi
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows).sort(*ARM, "metric", "tensor").fill_nan(None)


def width_scaling(per_trial: pl.DataFrame, metric: str = "pr") -> pl.DataFrame:
    """Log-log slope over width of the final normalised value and of the rate, per
    (optimizer, qk_norm, tensor), from completed trials: OLS of log(y) on log(width), plus
    log(lr) when several LRs are present, with heteroskedasticity-robust (HC1) 95% intervals."""
    import statsmodels.api as sm

    done = per_trial.filter((pl.col("status") == "completed") & pl.col("data_complete")
                            & (pl.col("metric") == metric))
    rows = []
    for key, g in done.group_by("optimizer", "qk_norm", "tensor", maintain_order=True):
        for q in ("final_norm", "rate_per_1k_steps"):
            d = g.filter(pl.col(q).is_not_null() & pl.col(q).is_finite() & (pl.col(q) > 0))
            row = dict(zip(("optimizer", "qk_norm", "tensor"), key), quantity=q, metric=metric,
                       n=d.height, n_widths=d.get_column("width").n_unique(),
                       slope=None, ci_low=None, ci_high=None, p_value=None, note="")
            X = [np.log(d.get_column("width").to_numpy().astype(float))]
            if d.get_column("lr").n_unique() > 1:
                X.append(np.log(d.get_column("lr").to_numpy()))
            if row["n_widths"] < 2 or d.height < len(X) + 2:
                row["note"] = "not enough data (needs 2+ widths and residual degrees of freedom)"
                rows.append(row)
                continue
            res = sm.OLS(np.log(d.get_column(q).to_numpy()), sm.add_constant(np.column_stack(X))).fit(
                cov_type="HC1"
            )
            lo, hi = res.conf_int()[1]
            row.update(slope=float(res.params[1]), ci_low=float(lo), ci_high=float(hi),
                       p_value=float(res.pvalues[1]))
            rows.append(row)
    cols = ["optimizer", "qk_norm", "tensor", "metric", "quantity", "n", "n_widths", "slope",
            "ci_low", "ci_high", "p_value", "note"]
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in cols})
    return pl.DataFrame(rows, infer_schema_length=None).select(cols)
