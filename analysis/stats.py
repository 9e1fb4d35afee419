"""Small statistical helpers: t intervals of means (the intervals of every mean paired difference
in the report), paired tests, Holm's correction, and a seeded percentile bootstrap
(scipy.stats.bootstrap; for medians: it under-covers for means of few pairs, 81% at n = 4)."""

from __future__ import annotations

import inspect
import zlib
from functools import lru_cache

import numpy as np
from scipy import special, stats

CI_LEVEL = 0.95


@lru_cache(maxsize=4096)
def t_quantile(q: float, dof: int) -> float:
    """Student t quantile, scipy's stats.t.ppf(q, dof), remembered: a study asks for the same few
    thousands of times (27,648 intervals over about twenty dofs), and each call costs 50 us."""
    return float(stats.t.ppf(q, dof))


# scipy >= 1.15 takes bootstrap's generator as `rng` (SPEC 7); older releases as `random_state`.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def rng_for(seed) -> np.random.Generator:
    """A generator seeded from any tuple of labels, so a result does not depend on the order in
    which rows are computed."""
    return np.random.default_rng(zlib.crc32(repr(seed).encode()))


def bootstrap_ci(
    x: np.ndarray, stat=np.mean, n_boot: int = 2000, seed=0, level: float = CI_LEVEL
) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap resampling the entries of x (scipy.stats.bootstrap,
    seeded by `rng_for(seed)`, so the same x and seed give the same interval). `stat` takes an
    `axis` argument, as numpy's reductions do.

    NaN everywhere when x is empty; the interval is NaN when x has fewer than 2 entries.
    """
    x = np.asarray(x, float)
    if x.size == 0:
        return np.nan, np.nan, np.nan
    est = float(stat(x))
    if x.size < 2:
        return est, np.nan, np.nan
    res = stats.bootstrap(
        (x,),
        stat,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        **{_RNG_KEYWORD: rng_for(seed)},
    )
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_tests(d: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test on the
    differences d (NaN when a test is undefined, e.g. all differences equal)."""
    d = np.asarray(d, float)
    if d.size < 2:
        return np.nan, np.nan
    with np.errstate(all="ignore"):
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue) if np.ptp(d) > 0 else np.nan
    try:
        p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else np.nan
    except ValueError:
        p_w = np.nan
    return p_t, p_w


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaN entries are not tests and stay NaN.

    The same numbers as statsmodels' multipletests(method="holm") on the finite entries
    (tests/analysis/test_stats_libraries.py checks it), written out because multipletests runs
    gc.collect() on every Holm call: ~40 ms each in a report's process, 1.2 s of a 3.9 s
    `analysis.analyse` over the 28 families of a small synthetic sweep."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def mean_ci(d: np.ndarray, level: float = CI_LEVEL):
    """(mean, low, high, p_value) of the mean of d along its last axis: the one-sample t interval and the
    two-sided t-test of mean 0, the pair that agree (0 outside the interval iff p < 1 - level).

    Vectorised: d may be (..., n); NaN entries are not allowed (drop them first). With n < 2, or
    all entries equal, interval and p are NaN (the mean is still given). This replaces the
    percentile bootstrap for means of paired differences: at n = 4 the percentile bootstrap covers
    ~81%, the t interval 95% for normal differences (tests/analysis/test_analysis_decisions.py measures it).
    The quantile and tail are scipy.special's stdtrit and stdtr, the functions stats.t.ppf and
    stats.t.sf call (the same bits) without the distribution's argument checks, which cost ten
    times the arithmetic: a report computes a few thousand of these intervals, a simulation test
    hundreds of thousands.
    """
    d = np.asarray(d, float)
    n = d.shape[-1]
    with np.errstate(all="ignore"):
        m = d.mean(axis=-1) if n else np.full(d.shape[:-1], np.nan)
        if n < 2:
            nan = np.full(np.shape(m), np.nan)
            return m, nan, nan.copy(), nan.copy()
        sd = d.std(axis=-1, ddof=1)
        se = sd / np.sqrt(n)
        tq = special.stdtrit(n - 1, 0.5 + level / 2)  # stats.t.ppf(0.5 + level / 2, n - 1)
        ok = se > 1e-12 * np.maximum(np.abs(m), 1e-300)
        t = np.where(ok, m / np.where(ok, se, 1.0), np.nan)
        p = np.where(ok, 2 * special.stdtr(n - 1, -np.abs(t)), np.nan)  # 2 stats.t.sf(|t|, n - 1)
        lo = np.where(ok, m - tq * se, np.nan)
        hi = np.where(ok, m + tq * se, np.nan)
    return m, lo, hi, p


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank test (NaN when undefined: all d zero)."""
    try:
        return float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else np.nan
    except ValueError:
        return np.nan


def paired_summary(d: np.ndarray, level: float = CI_LEVEL, min_n: int = 2, wilcoxon: bool = True) -> dict:
    """n_pairs, mean_diff, ci_low, ci_high (t interval), p_value (paired t), p_wilcoxon, sd_diff
    and dz (mean / sd, the standardised effect) of one vector of paired differences."""
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    out = dict(
        n_pairs=int(d.size),
        mean_diff=float(d.mean()) if d.size else np.nan,
        ci_low=np.nan,
        ci_high=np.nan,
        p_value=np.nan,
        p_wilcoxon=np.nan,
        sd_diff=float(d.std(ddof=1)) if d.size > 1 else np.nan,
        dz=np.nan,
    )
    if d.size >= max(min_n, 2):
        _, lo, hi, p = mean_ci(d, level)
        out.update(ci_low=float(lo), ci_high=float(hi), p_value=float(p))
        if wilcoxon:
            out["p_wilcoxon"] = wilcoxon_p(d)
        if out["sd_diff"] > 0:
            out["dz"] = out["mean_diff"] / out["sd_diff"]
    return out
