"""Collapse-rate fits: an exponential decay to a floor over the fall phase of each trajectory.

Rank trajectories often fall and then partly recover (U-shaped), so each head-averaged
trajectory y(t) is fitted only from its first point t0 up to its minimum (the fall phase) with

    y(t) = floor + (y0 - floor) * exp(-rate * (t - t0))        (3 parameters)

For a fixed rate the model is linear in (floor, amplitude), so the least-squares fit is a
one-dimensional search over log(rate) with the two linear parameters solved in closed form
(variable projection). That runs vectorised over tens of thousands of trajectories at once; the
tests check it against `scipy.optimize.curve_fit` on the same curves.

Honesty rules (docs/analysis.md, "Collapse fits"):
- No fit with fewer than N_PARAMS + 2 = 5 points in the fall phase (2 residual degrees of
  freedom at least); R^2 and the residual RMSE are reported with their residual dof.
- Falls the probes cannot resolve are censored, not dropped. `fit_status`:
    fitted          rate identified: its 95% profile-likelihood interval is bounded on both
                    sides and the time constant 1/rate is at least the first probe spacing
    censored_fast   the minimum is at the first probe after t0, or the fitted time constant is
                    shorter than the first probe spacing, or the profile interval is unbounded
                    above (a step down fits as well): only a lower bound on the rate is known
    too_few_points  3 or 4 points in the fall phase: a fast fall, also censored (lower bound)
    censored_slow   the profile interval reaches rate -> 0 (the fall is still straight at the
                    minimum): the time constant exceeds the fall span; no rate is given
    no_fall         the minimum is the first point, or no fall is distinguishable from noise
                    (the profile interval is unbounded on both sides)
    failed          the fit is not finite or the best decay has a non-positive amplitude
    no_data         no finite points
  `rate_lower_bound_per_1k` (censored_fast, too_few_points) = ln 2 / t_half, t_half the steps
  from t0 to the first probe by which half of the observed drop (initial - minimum) happened:
  valid when the fall had reached its floor at the observed minimum (so at least half of the
  whole fall happened by t_half).
- Per-arm summaries are per (optimizer, qk_norm, width, lr): LRs are never pooled.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from .stats import CI_LEVEL

N_PARAMS = 3  # floor, amplitude, rate
MIN_FIT_POINTS = N_PARAMS + 2
# Search grid over log(rate): from rate * span = _SLOW (the decay is still a straight line over
# the fall) to rate * dt1 = _FAST (exp(-10): the fall is over at the first probe, a step).
_SLOW, _FAST, _G_N = 0.02, 10.0, 121
_CHUNK = 512
FIT_STATUSES = ("fitted", "censored_fast", "too_few_points", "censored_slow", "no_fall", "failed", "no_data")
CENSORED = ("censored_fast", "too_few_points")  # too fast to fit: a lower bound on the rate


# What fit_decay returns per curve (float arrays), besides n_fall.
FIT_FIELDS = (
    "initial",
    "floor",
    "rate",
    "rate_ci_low",
    "rate_ci_high",
    "rate_lower_bound",
    "min_step",
    "min_value",
    "final",
    "recovery",
    "r2",
    "rmse",
    "dt1",
)


def _sse(tau: np.ndarray, y: np.ndarray, m: np.ndarray, rate: np.ndarray):
    """Closed-form (floor, amp) and SSE for rates of shape (N, G); tau, y, m are (N, T)."""
    e = np.exp(-rate[..., None] * tau[:, None, :]) * m[:, None, :]  # (N, G, T)
    n = m.sum(-1)[:, None]  # (N, 1)
    se, see = e.sum(-1), (e * e).sum(-1)
    ym = y * m
    sy, syy = ym.sum(-1)[:, None], (ym * y).sum(-1)[:, None]
    sey = (e * ym[:, None, :]).sum(-1)
    det = n * see - se * se
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amp = (n * sey - se * sy) / det
        floor = (sy - amp * se) / n
    sse = syy - floor * sy - amp * sey
    sse = np.where(np.isfinite(sse), np.maximum(sse, 0.0), np.inf)
    return floor, amp, sse


def fit_decay(t: np.ndarray, y: np.ndarray, level: float = CI_LEVEL) -> dict[str, np.ndarray]:
    """Fit every row of y (N, T) against steps t (N, T); NaN pads rows of unequal length.

    Returns arrays of length N: initial, floor, rate (per step), rate_ci_low, rate_ci_high
    (profile likelihood, `level`), rate_lower_bound (per step, censored rows), min_step,
    min_value, final, recovery, r2, rmse, resid_dof, n_fall, dt1 (first probe spacing), status.
    """
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    N = y.shape[0]
    valid = np.isfinite(y) & np.isfinite(t)
    out = {k: np.full(N, np.nan) for k in FIT_FIELDS}
    out["n_fall"] = np.zeros(N, int)
    out["resid_dof"] = np.zeros(N, int)
    out["status"] = np.full(N, "no_data", dtype=object)
    has = valid.any(1)
    if not has.any():
        return out
    yv = np.where(valid, y, np.inf)
    imin = np.argmin(yv, axis=1)
    first = np.argmax(valid, axis=1)
    last = y.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    rows = np.arange(N)
    t0 = t[rows, first]
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
    later = np.where(valid & (idx > first[:, None]), t, np.inf).min(1)
    out["dt1"] = np.where(np.isfinite(later), later - t0, np.nan)
    # t_half: steps to the first fall-phase probe with at least half of the observed drop
    with np.errstate(invalid="ignore"):
        half = m & (out["initial"][:, None] - y >= 0.5 * drop[:, None]) & (idx > first[:, None])
    t_half = np.where(half.any(1), t[rows, np.argmax(half, axis=1)] - t0, np.nan)

    status = np.where(has, "fitted", "no_data").astype(object)
    status[has & ((imin == first) | ~(drop > 0))] = "no_fall"
    falling = status == "fitted"
    status[falling & (n_fall == 2)] = "censored_fast"
    status[falling & (n_fall > 2) & (n_fall < MIN_FIT_POINTS)] = "too_few_points"
    fit = np.flatnonzero(status == "fitted")
    for s in range(0, fit.size, _CHUNK):
        sel = fit[s : s + _CHUNK]
        res = _fit_rows(t[sel], y[sel], m[sel], t0[sel], out["min_step"][sel], out["dt1"][sel], level)
        for k in ("floor", "rate", "rate_ci_low", "rate_ci_high", "r2", "rmse"):
            out[k][sel] = res[k]
        status[sel] = res["status"]
    out["resid_dof"] = np.where(n_fall >= MIN_FIT_POINTS, n_fall - N_PARAMS, 0)
    cens = np.isin(status, CENSORED)
    with np.errstate(divide="ignore"):
        out["rate_lower_bound"] = np.where(cens & (t_half > 0), np.log(2) / t_half, np.nan)
    out["status"] = status
    return out


def _fit_rows(t, y, m, t0, tmin, dt1, level) -> dict[str, np.ndarray]:
    """Grid search over log(rate), golden-section refinement between the best point's
    neighbours, then the profile-likelihood interval of the rate read off the grid."""
    span = np.maximum(tmin - t0, 1e-12)  # (N,)
    tau = np.where(m, t - t0[:, None], 0.0)
    mf = m.astype(float)
    n = mf.sum(1)
    ybar = np.where(m, y, 0.0).sum(1) / n
    yc = np.where(m, y - ybar[:, None], 0.0)  # centred: the SSE does not cancel digits
    lo = np.log(_SLOW / span)
    hi = np.maximum(np.log(_FAST / dt1), lo + 1.0)
    u = np.linspace(0.0, 1.0, _G_N)
    logg = lo[:, None] + (hi - lo)[:, None] * u[None, :]  # (N, G)
    sse_g = _sse(tau, yc, mf, np.exp(logg))[2]
    best = np.argmin(sse_g, axis=1)
    rows = np.arange(len(best))
    a = logg[rows, np.maximum(best - 1, 0)]
    b = logg[rows, np.minimum(best + 1, _G_N - 1)]

    def f(x):
        return _sse(tau, yc, mf, np.exp(x)[:, None])[2][:, 0]

    phi = (np.sqrt(5) - 1) / 2
    for _ in range(30):  # the bracket shrinks to 0.618**30 (1e-6) of two grid steps
        c, d = b - phi * (b - a), a + phi * (b - a)
        left = f(c) < f(d)
        a, b = np.where(left, a, c), np.where(left, d, b)
    x_best = (a + b) / 2
    rate = np.exp(x_best)
    floor, amp, sse = (v[:, 0] for v in _sse(tau, yc, mf, rate[:, None]))
    dof = n - N_PARAMS
    sst = (yc * yc).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where((sst > 0) & (dof >= 1), 1 - sse / sst, np.nan)
        rmse = np.where(dof >= 1, np.sqrt(sse / dof), np.nan)
    # Profile likelihood: the rates whose best (floor, amp) fit has
    # SSE <= SSE_min * (1 + F(level; 1, dof) / dof), the contiguous run around the optimum.
    thr = sse * (1 + stats.f.ppf(level, 1, np.maximum(dof, 1)) / np.maximum(dof, 1))
    outside = sse_g > thr[:, None]
    gi = np.arange(_G_N)[None, :]
    below = outside & (gi < best[:, None])
    above = outside & (gi > best[:, None])
    jl = np.where(below.any(1), _G_N - 1 - np.argmax(below[:, ::-1], axis=1), -1)
    ju = np.where(above.any(1), np.argmax(above, axis=1), _G_N)
    lo_open, hi_open = jl < 0, ju >= _G_N

    def cross(j_out):
        """Bisection in log(rate) between a grid point outside the interval and the optimum."""
        a = logg[rows, np.clip(j_out, 0, _G_N - 1)]
        b = x_best.copy()
        for _ in range(40):
            mid = (a + b) / 2
            out_ = f(mid) > thr
            a, b = np.where(out_, mid, a), np.where(out_, b, mid)
        return np.exp((a + b) / 2)

    ci_low = np.where(lo_open, np.nan, cross(jl))
    ci_high = np.where(hi_open, np.nan, cross(ju))
    status = np.full(len(best), "fitted", dtype=object)
    bad = ~(np.isfinite(rate) & np.isfinite(sse) & np.isfinite(floor)) | ~(amp > 0)
    status[lo_open] = "censored_slow"
    status[hi_open | (rate * dt1 > 1.0)] = "censored_fast"
    status[lo_open & hi_open] = "no_fall"
    status[bad] = "failed"
    return dict(
        floor=floor + ybar, rate=rate, rate_ci_low=ci_low, rate_ci_high=ci_high, r2=r2, rmse=rmse, status=status
    )


# ---- per trial --------------------------------------------------------------------------------
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


TRIAL_COLUMNS = (
    "trial_id",
    "optimizer",
    "qk_norm",
    "width",
    "lr",
    "seed",
    "status",
    "data_complete",
    "d_head",
    "metric",
    "tensor",
    "initial",
    "floor",
    "rate_per_1k_steps",
    "rate_per_m_tokens",
    "min_step",
    "min_value",
    "final",
    "min_norm",
    "final_norm",
    "recovery",
    "r2",
    "n_fall",
    "fit_status",
    # added with the censoring rules
    "censored",
    "rate_ci_low_per_1k",
    "rate_ci_high_per_1k",
    "rate_lower_bound_per_1k",
    "n_params",
    "resid_dof",
    "rmse",
    "probe_dt1",
)


def collapse_per_trial(curves: pl.DataFrame, finals: pl.DataFrame) -> pl.DataFrame:
    """One row per (trial, rank metric, tensor) with the fit and the trajectory's landmarks.

    rate, floor, r2 and the rate interval are given for `fitted` rows only;
    rate_lower_bound_per_1k for censored rows (censored_fast, too_few_points)."""
    keys, steps, vals = _pad(curves)
    fit = fit_decay(steps, vals)
    df = keys.with_columns(pl.Series(k, fit[k], pl.Float64) for k in FIT_FIELDS).with_columns(
        pl.Series("n_fall", fit["n_fall"], pl.Int64),
        pl.Series("resid_dof", fit["resid_dof"], pl.Int64),
        pl.Series("fit_status", fit["status"].astype(str), pl.String),
    )
    extra = [c for c in ("init_key",) if c in finals.columns]  # an init axis: never pooled
    meta = finals.select(
        "trial_id",
        "optimizer",
        "qk_norm",
        "width",
        "lr",
        "seed",
        "d_head",
        "status",
        "data_complete",
        "tokens_per_step",
        *extra,
    )
    df = meta.join(df, on="trial_id", how="inner")
    ok = pl.col("fit_status") == "fitted"
    per_1k = lambda c: pl.when(ok).then(pl.col(c) * 1000)  # noqa: E731
    return (
        df.with_columns(
            per_1k("rate").alias("rate_per_1k_steps"),
            pl.when(ok).then(pl.col("rate") / pl.col("tokens_per_step") * 1e6).alias("rate_per_m_tokens"),
            per_1k("rate_ci_low").alias("rate_ci_low_per_1k"),
            per_1k("rate_ci_high").alias("rate_ci_high_per_1k"),
            (pl.col("rate_lower_bound") * 1000).alias("rate_lower_bound_per_1k"),
            pl.when(ok).then(pl.col("floor")).alias("floor"),
            pl.when(ok).then(pl.col("r2")).alias("r2"),
            pl.when(ok).then(pl.col("rmse")).alias("rmse"),
            (pl.col("min_value") / pl.col("d_head")).alias("min_norm"),
            (pl.col("final") / pl.col("d_head")).alias("final_norm"),
            pl.col("fit_status").is_in(CENSORED).alias("censored"),
            pl.lit(N_PARAMS, pl.Int64).alias("n_params"),
            pl.col("dt1").alias("probe_dt1"),
        )
        .select(
            *TRIAL_COLUMNS[:9],  # trial_id .. d_head
            pl.col("name").alias("metric"),
            *TRIAL_COLUMNS[10:],
            *extra,
        )
        .sort("optimizer", "qk_norm", "width", "lr", "seed", "metric", "tensor")
        .fill_nan(None)
    )


# ---- per arm and LR ---------------------------------------------------------------------------
CELL = ("optimizer", "qk_norm", "width", "lr")  # an arm at one LR: seeds are the replicates


def _init(df: pl.DataFrame) -> tuple[str, ...]:
    """("init_key",) when the frame carries an initialisation key (inits are never pooled)."""
    return ("init_key",) if "init_key" in df.columns else ()


ARM_QUANTITIES = ("min_step", "min_norm", "final_norm", "recovery")


def t_interval(x: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval over the entries of x (n - 1 dof); NaN interval
    below 2 entries, NaN everything when x is empty."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan
    half = stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def censored_median(rates: np.ndarray, n_fast: int, n_slow: int) -> float:
    """Median over all falling trials, with too-fast falls ranked above every fitted rate and
    too-slow ones below; NaN when the median lands on a censored trial."""
    v = np.r_[np.full(n_slow, -np.inf), np.sort(np.asarray(rates, float)), np.full(n_fast, np.inf)]
    if v.size == 0:
        return np.nan
    med = float(np.median(v)) if np.isfinite(v[(v.size - 1) // 2]) and np.isfinite(v[v.size // 2]) else np.nan
    return med


def collapse_per_arm(
    per_trial: pl.DataFrame, n_boot: int | None = None, seed: int | None = None, level: float = CI_LEVEL
) -> pl.DataFrame:
    """One row per (optimizer, qk_norm, width, lr, metric, tensor) over the completed trials
    whose data is complete (seeds are the replicates; LRs are never pooled).

    - counts of every fit status; `n_fit_ok` = fitted, `n_censored` = censored_fast +
      too_few_points (falls too fast to fit, never dropped silently);
    - rate_per_1k_steps / rate_per_m_tokens: geometric mean over fitted trials with a t interval
      on log(rate) (n_fit_ok - 1 dof), back-transformed; biased low when n_censored > 0 (the
      fastest falls are the censored ones: see `rate_note`);
    - rate_median_censored_per_1k: median over all falling trials with censored ones ranked
      (null when the median is a censored trial); rate_lower_bound_per_1k: the smallest lower
      bound among the censored trials;
    - min_step, min_norm, final_norm, recovery: mean over trials with a t interval.
    n_boot and seed are accepted for older callers and unused (no resampling)."""
    done = per_trial.filter((pl.col("status") == "completed") & pl.col("data_complete"))
    keys = (*CELL, *_init(per_trial), "metric", "tensor")
    rows = []
    for key, g in done.group_by(*keys, maintain_order=True):
        row = dict(zip(keys, key))
        st = g.get_column("fit_status").to_list()
        count = {s: st.count(s) for s in FIT_STATUSES}
        row["n_trials"] = g.height
        row["n_fit_ok"] = count["fitted"]
        row["n_censored"] = count["censored_fast"] + count["too_few_points"]
        for s in FIT_STATUSES[1:-1]:
            row[f"n_{s}"] = count[s]
        fitted = g.filter(pl.col("fit_status") == "fitted")
        for q in ("rate_per_1k_steps", "rate_per_m_tokens"):
            x = fitted.get_column(q).drop_nulls().to_numpy()
            x = x[np.isfinite(x) & (x > 0)]
            m, lo, hi = t_interval(np.log(x), level)
            row[q], row[f"{q}_ci_low"], row[f"{q}_ci_high"] = np.exp(m), np.exp(lo), np.exp(hi)
        row["rate_median_censored_per_1k"] = censored_median(
            fitted.get_column("rate_per_1k_steps").drop_nulls().to_numpy(), row["n_censored"], count["censored_slow"]
        )
        lb = g.get_column("rate_lower_bound_per_1k").drop_nulls()
        row["rate_lower_bound_per_1k"] = float(lb.min()) if lb.len() else None
        falling = row["n_fit_ok"] + row["n_censored"] + count["censored_slow"]
        row["rate_note"] = (
            ""
            if not row["n_censored"]
            else f"{row['n_censored']}/{falling} falls too fast to fit (censored): the fitted mean is biased low"
            if row["n_fit_ok"]
            else f"no fit: {row['n_censored']}/{falling} falls too fast to fit (censored)"
        )
        for q in ARM_QUANTITIES:
            m, lo, hi = t_interval(g.get_column(q).drop_nulls().to_numpy(), level)
            row[q], row[f"{q}_ci_low"], row[f"{q}_ci_high"] = m, lo, hi
        row["interval"] = f"t {int(level * 100)}% over seeds (rate: on log scale)"
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None).sort(*keys).fill_nan(None)


# ---- width scaling at a fixed LR -----------------------------------------------------------
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


def _ols_slope(x: np.ndarray, y: np.ndarray, level: float):
    """Slope of y on x by OLS with the classical t interval (n - 2 dof) and its p-value."""
    res = stats.linregress(x, y)
    dof = x.size - 2
    half = stats.t.ppf((1 + level) / 2, dof) * res.stderr
    return float(res.slope), float(res.slope - half), float(res.slope + half), float(res.pvalue), dof


def width_scaling(
    per_trial: pl.DataFrame, best_lr: pl.DataFrame | None = None, metric: str = "pr", level: float = CI_LEVEL
) -> pl.DataFrame:
    """Log-log slope over width of the final normalised value and of the fitted rate, per
    (optimizer, qk_norm, tensor), comparing widths at the same LR (selection "lr", one row per
    LR) and, given `best_lr` (optimizer, qk_norm, width, best_lr), at each width's best LR
    (selection "best_lr"). Never pooled over LRs. OLS of log(y) on log(width) over completed
    trials (seeds as replicates), classical t interval on n - 2 dof. Censored falls have no rate:
    they are counted in n_censored and named in `note`."""
    done = per_trial.filter((pl.col("status") == "completed") & pl.col("data_complete") & (pl.col("metric") == metric))
    strata = [("lr", lr, done.filter(pl.col("lr") == lr)) for lr in sorted(done.get_column("lr").unique().to_list())]
    if best_lr is not None and best_lr.height:
        on = ["optimizer", "qk_norm", "width", *[c for c in _init(done) if c in best_lr.columns]]
        b = best_lr.select(*on, "best_lr")
        strata.append(("best_lr", None, done.join(b, on=on).filter(pl.col("lr") == pl.col("best_lr")).drop("best_lr")))
    rows = []
    for selection, lr, d_all in strata:
        by = ("optimizer", "qk_norm", *_init(d_all), "tensor")
        for key, g in d_all.group_by(*by, maintain_order=True):
            for q in ("final_norm", "rate_per_1k_steps"):
                d = g.filter(pl.col(q).is_not_null() & pl.col(q).is_finite() & (pl.col(q) > 0))
                n_cens = int(g.get_column("censored").sum()) if q.startswith("rate") else 0
                row = dict(
                    zip(by, key),
                    metric=metric,
                    quantity=q,
                    selection=selection,
                    lr=lr,
                    n=d.height,
                    n_widths=d.get_column("width").n_unique(),
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
                if row["n_widths"] < 2 or d.height < 3:
                    notes.insert(0, "not enough data (needs 2+ widths and 3+ trials)")
                else:
                    x = np.log(d.get_column("width").to_numpy().astype(float))
                    s, lo, hi, p, dof = _ols_slope(x, np.log(d.get_column(q).to_numpy()), level)
                    row.update(slope=s, ci_low=lo, ci_high=hi, p_value=p, resid_dof=dof)
                row["note"] = "; ".join(notes)
                rows.append(row)
    cols = SCALING_COLUMNS[:2] + list(_init(done)) + SCALING_COLUMNS[2:]
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in cols})
    return pl.DataFrame(rows, infer_schema_length=None).select(cols).fill_nan(None)
