"""The collapse-rate fit: an exponential decay to a floor over the fall phase of a trajectory.

Rank trajectories often fall and then partly recover (U-shaped), so each head-averaged
trajectory y(t) is fitted only from its first point t0 up to its minimum (the fall phase) with

    y(t) = floor + (y0 - floor) * exp(-rate * (t - t0))        (3 parameters)

For a fixed rate the model is linear in (floor, amplitude), so the least-squares fit is a
one-dimensional search over log(rate) with the two linear parameters solved in closed form
(variable projection). That runs vectorised over tens of thousands of trajectories at once; the
tests check it against `scipy.optimize.curve_fit` on the same curves.

The rate's interval is the profile likelihood's: the rates whose best (floor, amplitude) fit has
SSE <= SSE_min * (1 + F(level; 1, dof) / dof), dof = n - 3 (a contiguous run around the optimum).

Honesty rules (docs/analysis.md, "Collapse fits"):
- No fit with fewer than N_PARAMS + 2 = 5 points in the fall phase (2 residual degrees of
  freedom at least); R^2 and the residual RMSE are reported with their residual dof.
- Falls the probes cannot resolve are censored, not dropped. `status`:
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
  `rate_lower_bound` (censored_fast, too_few_points) = ln 2 / t_half, t_half the steps from t0
  to the first probe by which half of the observed drop (initial - minimum) happened: valid when
  the fall had reached its floor at the observed minimum (so at least half of the whole fall
  happened by t_half).
"""

from __future__ import annotations

import numpy as np
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
