"""The collapse-rate fit: an exponential decay to a floor over the fall phase of a trajectory.

Rank trajectories often fall and then partly recover (U-shaped), so each head-averaged
trajectory y(t) is fitted only from its first point t0 up to its minimum (the fall phase) with

    y(t) = floor + (y0 - floor) * exp(-rate * (t - t0))        (3 parameters)

For a fixed rate the model is linear in (floor, amplitude), so the least-squares fit is a
one-dimensional search over log(rate) with the two linear parameters solved in closed form
(variable projection). That runs vectorised over hundreds of thousands of trajectories, in
blocks of rows; the tests check it against `scipy.optimize.curve_fit` on the same curves, and
against the SSE profile computed independently.

The search: a 121-point grid over log(rate) (trajectories with the same fall-phase steps share
its exponentials, so their grid is one matrix product), then Newton's method on the analytic
derivatives of the profile SSE from the vertex of the parabola through the best grid point and
its neighbours, kept between those neighbours (golden-section search where it does not
converge there: a minimum at the grid's end, a profile flat to rounding).

The rate's interval is the profile likelihood's: the rates whose best (floor, amplitude) fit has
SSE <= SSE_min * (1 + F(level; 1, dof) / dof), dof = n - 3 (a contiguous run around the optimum).
Each end lies between the first grid point outside it and its neighbour towards the optimum;
Newton steps on sqrt(SSE - SSE_min) (nearly linear there) find it, bisection where they do not
converge.

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
_CHUNK = 4096  # rows per block
_MIN_SHARED = 8  # rows with one step pattern whose grid SSE is a matrix product
_MATMUL_ROWS = 128  # rows per product: 128 x 13 x 121 is below OpenBLAS's threading threshold
_GOLDEN_ITERS = 30
_NEWTON_ITERS = 2  # Newton steps for every column (the minimum; each end of the rate interval)
_NEWTON_MAX = 8  # and at most this many for those not converged by then
_STEP_TOL = 1e-6  # a last Newton step at most this long (in log rate) has converged
_XTOL = 1e-10  # bisection's final bracket, in log rate
FIT_STATUSES = ("fitted", "censored_fast", "too_few_points", "censored_slow", "no_fall", "failed", "no_data")
CENSORED = ("censored_fast", "too_few_points")  # too fast to fit: a lower bound on the rate
_FITTED, _CENSORED_FAST, _TOO_FEW, _CENSORED_SLOW, _NO_FALL, _FAILED, _NO_DATA = range(len(FIT_STATUSES))


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


def _solve(n, se, see, sy, syy, sey):
    """Closed-form (floor, amp) and their SSE from the sums over the fall phase: n points, and
    the sums of e, e^2, y, y^2 and e*y, e = exp(-rate * tau) (any shapes that broadcast)."""
    det = n * see - se * se
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amp = (n * sey - se * sy) / det
        floor = (sy - amp * se) / n
        sse = syy - floor * sy - amp * sey
    sse = np.where(np.isfinite(sse), np.maximum(sse, 0.0), np.inf)
    return floor, amp, sse


def _pattern_key(tau, mf, span, dt1):
    """Per row, what its search grid and exp(-rate * tau) depend on (the fall phase's steps), and
    a hash of it: rows with one key share the grid's exponentials."""
    key = np.concatenate([tau, mf, span[:, None], dt1[:, None]], axis=1)
    return key, np.einsum("nk,k->n", key, np.random.default_rng(0).uniform(1.0, 2.0, key.shape[1]))


def _grid(tau, yc, mf, n, sy, syy, c, span, dt1, lo, hi) -> np.ndarray:
    """V (N, G) on each row's grid of log rates lo + (hi - lo) u, with SSE = max(c - V, 0)
    (c = sum(y^2) - sum(y)^2 / n; V = -inf where the SSE is not finite).

    The SSE of the best (floor, amp) at a rate is c - W^2 / (n D), W = n sum(e y) - sum(e) sum(y),
    D = n sum(e^2) - sum(e)^2 (the closed form of `_solve`). Rows with the same fall-phase steps
    share e = exp(-rate * tau) (G, T), so their V = (y @ (A / sqrt(n D)).T)^2 with
    A = n e - sum(e) is one matrix product; rows whose pattern is rare are evaluated one by one."""
    N, G = len(n), _G_N
    u = np.linspace(0.0, 1.0, G)
    V = np.empty((N, G))
    key, h = _pattern_key(tau, mf, span, dt1)
    _, first, inv, count = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    same = (key == key[first[inv]]).all(1)  # a hash collision leaves its rows to the row-wise path
    shared = same & (count[inv] >= _MIN_SHARED)
    rest = [np.flatnonzero(~shared)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for g in np.flatnonzero(count >= _MIN_SHARED):
            r0 = first[g]
            rows = np.flatnonzero((inv == g) & shared)
            logg = lo[r0] + (hi[r0] - lo[r0]) * u
            e = np.exp(-np.exp(logg)[:, None] * tau[r0][None, :]) * mf[r0][None, :]  # (G, T)
            se = e.sum(1)
            k = 1 / (n[r0] * (n[r0] * (e * e).sum(1) - se * se))
            b = (n[r0] * e - se[:, None]) * np.sqrt(k)[:, None]
            bound = np.abs(yc[rows]).sum(1).max() * np.abs(b).max()
            if not (np.isfinite(k).all() and (k > 0).all() and bound < 1e150):
                rest.append(rows)
                continue
            # Small products: each stays on one core (OpenBLAS threads larger ones, and on a
            # busy machine its waiting threads cost more than they save).
            contiguous = rows[-1] - rows[0] + 1 == rows.size
            for s in range(0, rows.size, _MATMUL_ROWS):
                if contiguous:
                    v = V[rows[0] + s : rows[0] + min(s + _MATMUL_ROWS, rows.size)]
                    np.matmul(yc[rows[0] + s : rows[0] + s + v.shape[0]], b.T, out=v)
                    np.square(v, out=v)
                else:
                    r = rows[s : s + _MATMUL_ROWS]
                    V[r] = np.square(yc[r] @ b.T)
    rest = np.concatenate(rest)
    for s in range(0, rest.size, 512):
        rows = rest[s : s + 512]
        logg = lo[rows, None] + (hi - lo)[rows, None] * u[None, :]
        e = np.exp(-np.exp(logg)[..., None] * tau[rows][:, None, :]) * mf[rows][:, None, :]  # (r, G, T)
        sey = np.einsum("rgt,rt->rg", e, yc[rows])
        see = np.einsum("rgt,rgt->rg", e, e)
        sse = _solve(n[rows, None], e.sum(-1), see, sy[rows, None], syy[rows, None], sey)[2]
        V[rows] = c[rows, None] - sse
    return V


class _Cols:
    """The fall phases of a block of rows transposed to (T, rows), so that the sums over a
    row's points are whole-vector operations; x is log(rate), one per column. Masked points
    have tau = 1e200, so that exp(-rate * tau) = 0 there without a mask."""

    def __init__(self, tau, yc, n, sy, syy, thr=None):
        self.tau, self.yc, self.n, self.sy, self.syy = tau, yc, n, sy, syy
        self.thr = thr  # the SSE threshold of the rate interval, once known

    @classmethod
    def of_rows(cls, tau, yc, m, n, sy, syy):
        return cls(np.ascontiguousarray(np.where(m, tau, 1e200).T), np.ascontiguousarray(yc.T), n, sy, syy)

    def take(self, idx):
        thr = None if self.thr is None else self.thr[idx]
        return _Cols(self.tau[:, idx], self.yc[:, idx], self.n[idx], self.sy[idx], self.syy[idx], thr)

    def _e(self, x):
        with np.errstate(over="ignore"):
            e = np.multiply(self.tau, -np.exp(x))
            return np.exp(e, out=e)

    def fit(self, x):
        """(floor, amp, SSE) at x."""
        e = self._e(x)
        sey = np.einsum("tc,tc->c", e, self.yc)
        return _solve(self.n, e.sum(0), np.einsum("tc,tc->c", e, e), self.sy, self.syy, sey)

    def sse(self, x):
        return self.fit(x)[2]

    def derivs(self, x, second=False):
        """SSE, dSSE/dx and, when `second`, d2SSE/dx2 at x.

        SSE = c - W^2 / (n D), W = n sum(e y) - sum(e) sum(y), D = n sum(e^2) - sum(e)^2, and with
        r = rate, q = tau e, p = tau q: de/dx = -r q, d2e/dx2 = -r q + r^2 p."""
        n, sy, yc, r = self.n, self.sy, self.yc, np.exp(x)
        e = self._e(x)
        q = e * self.tau
        e0, q0 = e.sum(0), q.sum(0)
        e2, y0 = np.einsum("tc,tc->c", e, e), np.einsum("tc,tc->c", e, yc)
        qe, qy = np.einsum("tc,tc->c", q, e), np.einsum("tc,tc->c", q, yc)
        sse = _solve(n, e0, e2, sy, self.syy, y0)[2]
        w, d = n * y0 - e0 * sy, n * e2 - e0 * e0
        e0_, e2_, y0_ = -r * q0, -2 * r * qe, -r * qy  # first derivatives of the sums
        w_, d_ = n * y0_ - e0_ * sy, n * e2_ - 2 * e0 * e0_
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            num = 2 * w * w_ * d - w * w * d_  # dSSE/dx = -num / (n D^2)
            ds = -num / (n * d * d)
            if not second:
                return sse, ds
            p = q * self.tau
            p0, pe, py = p.sum(0), np.einsum("tc,tc->c", p, e), np.einsum("tc,tc->c", p, yc)
            qq = np.einsum("tc,tc->c", q, q)
            e0__ = -r * q0 + r * r * p0
            e2__ = 2 * r * r * qq - 2 * r * qe + 2 * r * r * pe
            y0__ = -r * qy + r * r * py
            w__, d__ = n * y0__ - e0__ * sy, n * e2__ - 2 * e0_ * e0_ - 2 * e0 * e0__
            num_ = 2 * w_ * w_ * d + 2 * w * w__ * d - w * w * d__
            dds = -(num_ * d - 2 * num * d_) / (n * d * d * d)
        return sse, ds, dds


def _inside(x, a, b):
    return (x >= np.minimum(a, b)) & (x <= np.maximum(a, b))


def _newton(cols, step_fn, x, lo, hi):
    """Newton iterations per column from x inside the bracket [lo, hi]: step_fn(cols, i, x, lo,
    hi) -> (x_new, lo, hi, ok) for the columns i, ok where x_new is a Newton step (not a fallback).
    All columns take _NEWTON_ITERS steps; then only those whose last step was longer than
    _STEP_TOL, up to _NEWTON_MAX steps. Returns x, the bracket, and whether each converged."""
    x, lo, hi = np.array(x, float), np.array(lo, float), np.array(hi, float)
    step = np.full(x.size, np.inf)
    i, c = np.arange(x.size), cols
    for k in range(_NEWTON_MAX):
        if k >= _NEWTON_ITERS:
            i = i[~(step[i] <= _STEP_TOL)]
            if not i.size:
                break
            c = cols.take(i)
        xn, lo[i], hi[i], ok = step_fn(c, i, x[i], lo[i], hi[i])
        step[i] = np.where(ok, np.abs(xn - x[i]), np.inf)
        x[i] = xn
    return x, lo, hi, step <= _STEP_TOL


def _minimum(cols, x, a, b):
    """Per column, the minimum of the SSE in [a, b] (the best grid point's neighbours) from x:
    Newton steps on dSSE/dx kept inside the bracket (halfway to its downhill end when a step
    leaves it or the SSE is not convex there). Columns that do not converge (no minimum
    inside: it is at an end of the bracket, or the SSE is flat to rounding) are left to
    golden-section search over [a, b]."""

    def step_fn(c, i, x, lo, hi):
        _, ds, dds = c.derivs(x, second=True)
        lo, hi = np.where(ds < 0, x, lo), np.where(ds < 0, hi, x)  # the minimum is downhill
        with np.errstate(divide="ignore", invalid="ignore"):
            xn = x - ds / dds
        ok = (dds > 0) & _inside(xn, lo, hi)
        return np.where(ok, xn, np.where(ds < 0, (x + hi) / 2, (lo + x) / 2)), lo, hi, ok

    x, _, _, done = _newton(cols, step_fn, x, a, b)
    rest = np.flatnonzero(~done)
    if rest.size:
        x[rest] = _golden(cols.take(rest), np.asarray(a)[rest], np.asarray(b)[rest])
    return x


def _golden(cols, a, b):
    """Golden-section search for the minimum SSE in [a, b] per column; the bracket shrinks to
    0.618**30 (1e-6) of its width. Each step evaluates one new point and keeps the other."""
    phi = (np.sqrt(5) - 1) / 2
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = cols.sse(c), cols.sse(d)
    for i in range(_GOLDEN_ITERS):
        left = fc < fd
        a, b = np.where(left, a, c), np.where(left, d, b)
        if i == _GOLDEN_ITERS - 1:
            break
        # left: the old c is the new d; right: the old d is the new c
        c, d = np.where(left, b - phi * (b - a), d), np.where(left, c, a + phi * (b - a))
        new = cols.sse(np.where(left, c, d))
        fc, fd = np.where(left, new, fd), np.where(left, fc, new)
    return (a + b) / 2


def _crossing(cols, smin, a, b, sa, sb):
    """Per column, where the SSE crosses cols.thr (> smin, the minimum SSE) in [a, b], with
    SSE(a) = sa > thr >= sb = SSE(b). Near its minimum the SSE is close to quadratic in x, so
    h = sqrt(SSE - smin) - sqrt(thr - smin), of the sign of SSE - thr, is close to linear: a
    secant step on h, Newton steps kept inside the bracket (its midpoint when a step leaves
    it), then bisection where they do not converge."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r0 = np.sqrt(cols.thr - smin)
        ha, hb = np.sqrt(np.maximum(sa - smin, 0.0)) - r0, np.sqrt(np.maximum(sb - smin, 0.0)) - r0
        x = b - hb * (b - a) / (hb - ha)
    x = np.where(_inside(x, a, b), x, (a + b) / 2)

    def step_fn(c, i, x, a, b):
        sse, ds = c.derivs(x)
        pos = sse > c.thr
        a, b = np.where(pos, x, a), np.where(pos, b, x)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.sqrt(np.maximum(sse - smin[i], 0.0))
            xn = x - (r - r0[i]) * 2 * r / ds  # h / h', h' = ds / (2 r)
        ok = _inside(xn, a, b)
        return np.where(ok, xn, (a + b) / 2), a, b, ok

    x, a, b, done = _newton(cols, step_fn, x, a, b)
    rest = np.flatnonzero(~done)
    if rest.size:
        x[rest] = _bisect(cols.take(rest), a[rest], b[rest])
    return x


def _bisect(cols, a, b):
    """Bisection of [a, b] (SSE > cols.thr at a, not at b) down to _XTOL wide; the midpoints."""
    width = np.abs(b - a)
    widest = width[np.isfinite(width)].max(initial=0.0)
    for _ in range(int(np.ceil(np.log2(widest / _XTOL))) if widest > _XTOL else 0):
        mid = (a + b) / 2
        o = cols.sse(mid) > cols.thr
        a, b = np.where(o, mid, a), np.where(o, b, mid)
    return (a + b) / 2


def _scan(outside, best, direction):
    """Per row, the first grid index from best (exclusive) in `direction` where outside(rows, j)
    holds: -1 or _G_N when there is none (the interval is open on that side)."""
    found = np.full(best.size, -1 if direction < 0 else _G_N)
    act, j = np.arange(best.size), best.copy()
    while act.size:
        j = j + direction
        inb = (j >= 0) & (j < _G_N)
        act, j = act[inb], j[inb]
        out = outside(act, j)
        found[act[out]] = j[out]
        act, j = act[~out], j[~out]
    return found


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
    imin = np.argmin(np.where(valid, y, np.inf), axis=1)  # the (N, T) copy not kept: 45 MB at 437,760 rows
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

    # status as an index into FIT_STATUSES until the end
    status = np.where(has, _FITTED, _NO_DATA).astype(np.int8)
    status[has & ((imin == first) | ~(drop > 0))] = _NO_FALL
    falling = status == _FITTED
    status[falling & (n_fall == 2)] = _CENSORED_FAST
    status[falling & (n_fall > 2) & (n_fall < MIN_FIT_POINTS)] = _TOO_FEW
    fit = np.flatnonzero(status == _FITTED)
    # rows likely to share their fall-phase steps next to each other: `_grid` shares their
    # exponentials (the result of a row does not depend on its neighbours)
    fit = fit[np.lexsort((out["dt1"][fit], out["min_step"][fit] - t0[fit], n_fall[fit]))]

    for s in range(0, fit.size, _CHUNK):
        sel = fit[s : s + _CHUNK]
        res = _fit_rows(t[sel], y[sel], m[sel], t0[sel], out["min_step"][sel], out["dt1"][sel], level)
        for k in ("floor", "rate", "rate_ci_low", "rate_ci_high", "r2", "rmse"):
            out[k][sel] = res[k]
        status[sel] = res["status"]
    out["resid_dof"] = np.where(n_fall >= MIN_FIT_POINTS, n_fall - N_PARAMS, 0)
    cens = (status == _CENSORED_FAST) | (status == _TOO_FEW)
    with np.errstate(divide="ignore"):
        out["rate_lower_bound"] = np.where(cens & (t_half > 0), np.log(2) / t_half, np.nan)
    out["status"] = np.array(FIT_STATUSES, dtype=object)[status]
    return out


def _fit_rows(t, y, m, t0, tmin, dt1, level) -> dict[str, np.ndarray]:
    """Grid search over log(rate), refinement between the best point's neighbours, then the
    profile-likelihood interval of the rate: the grid brackets each end, root finding refines it.

    The refinement is Newton's method on the analytic dSSE/dlog(rate) from the vertex of the
    parabola through the three grid points; golden-section search where it does not converge
    inside the bracket (a minimum at the bracket's end, an SSE flat to rounding)."""
    span = np.maximum(tmin - t0, 1e-12)  # (N,)
    tau = np.where(m, t - t0[:, None], 0.0)
    mf = m.astype(float)
    n = mf.sum(1)
    ybar = np.where(m, y, 0.0).sum(1) / n
    yc = np.where(m, y - ybar[:, None], 0.0)  # centred: the SSE does not cancel digits
    sy, syy = yc.sum(1), (yc * yc).sum(1)
    c = syy - sy * sy / n
    lo = np.log(_SLOW / span)
    hi = np.maximum(np.log(_FAST / dt1), lo + 1.0)
    u = np.linspace(0.0, 1.0, _G_N)

    def logg(rows, j):
        return lo[rows] + (hi[rows] - lo[rows]) * u[j]

    V = _grid(tau, yc, mf, n, sy, syy, c, span, dt1, lo, hi)
    N = len(n)
    rows = np.arange(N)

    def grid_sse(rows, j):
        return np.maximum(c[rows] - V[rows, j], 0.0)

    best = np.argmax(V, axis=1)
    ja, jb = np.maximum(best - 1, 0), np.minimum(best + 1, _G_N - 1)
    a, b = logg(rows, ja), logg(rows, jb)
    # start: the vertex of the parabola through the best grid point and its neighbours
    s_a, s_0, s_b = grid_sse(rows, ja), grid_sse(rows, best), grid_sse(rows, jb)
    curv = s_a - 2 * s_0 + s_b
    with np.errstate(divide="ignore", invalid="ignore"):
        x0 = logg(rows, best) + (b - a) / 4 * (s_a - s_b) / curv
    x0 = np.where((curv > 0) & (ja < best) & (best < jb) & _inside(x0, a, b), x0, logg(rows, best))
    cols = _Cols.of_rows(tau, yc, m, n, sy, syy)
    x_best = _minimum(cols, x0, a, b)
    rate = np.exp(x_best)
    floor, amp, sse = cols.fit(x_best)
    dof = n - N_PARAMS
    sst = syy
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where((sst > 0) & (dof >= 1), 1 - sse / sst, np.nan)
        rmse = np.where(dof >= 1, np.sqrt(sse / dof), np.nan)
    # Profile likelihood: the rates whose best (floor, amp) fit has
    # SSE <= SSE_min * (1 + F(level; 1, dof) / dof), the contiguous run around the optimum:
    # each end is at the first grid point outside it, looking away from the best one.
    dof1 = np.maximum(dof, 1)
    dofs, dof_inv = np.unique(dof1, return_inverse=True)
    thr = sse * (1 + (stats.f.ppf(level, 1, dofs) / dofs)[dof_inv])

    def outside(rows, j):
        return grid_sse(rows, j) > thr[rows]

    jl, ju = _scan(outside, best, -1), _scan(outside, best, 1)
    lo_open, hi_open = jl < 0, ju >= _G_N

    # Each bounded end lies between its outside grid point and the next grid point towards the
    # optimum (inside by construction), or x_best when that next point is the grid's best.
    il, iu = np.flatnonzero(~lo_open), np.flatnonzero(~hi_open)
    idx = np.r_[il, iu]
    j_out = np.r_[jl[il], ju[iu]]
    j_in = np.r_[jl[il] + 1, ju[iu] - 1]
    at_best = j_in == best[idx]
    s_in = np.where(at_best, sse[idx], grid_sse(idx, j_in))
    x_in = np.where(at_best, x_best[idx], logg(idx, j_in))
    ci_cols = cols.take(idx)
    ci_cols.thr = thr[idx]
    x_ci = _crossing(ci_cols, sse[idx], logg(idx, j_out), x_in, grid_sse(idx, j_out), s_in)
    ci_low, ci_high = np.full(N, np.nan), np.full(N, np.nan)
    ci_low[il], ci_high[iu] = np.exp(x_ci[: il.size]), np.exp(x_ci[il.size :])
    status = np.full(N, _FITTED, dtype=np.int8)
    bad = ~(np.isfinite(rate) & np.isfinite(sse) & np.isfinite(floor)) | ~(amp > 0)
    status[lo_open] = _CENSORED_SLOW
    status[hi_open | (rate * dt1 > 1.0)] = _CENSORED_FAST
    status[lo_open & hi_open] = _NO_FALL
    status[bad] = _FAILED
    return dict(
        floor=floor + ybar, rate=rate, rate_ci_low=ci_low, rate_ci_high=ci_high, r2=r2, rmse=rmse, status=status
    )
