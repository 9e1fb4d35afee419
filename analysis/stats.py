"""Small statistical helpers: seeded bootstrap intervals, paired tests, Holm's correction."""

from __future__ import annotations

import zlib

import numpy as np
from scipy import stats

CI_LEVEL = 0.95


def rng_for(seed) -> np.random.Generator:
    """A generator seeded from any tuple of labels, so a result does not depend on the order in
    which rows are computed."""
    return np.random.default_rng(zlib.crc32(repr(seed).encode()))


def bootstrap_ci(x: np.ndarray, stat=np.mean, n_boot: int = 2000, seed=0,
                 level: float = CI_LEVEL) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap resampling the entries of x.

    NaN everywhere when x is empty; the interval is NaN when x has fewer than 2 entries.
    """
    x = np.asarray(x, float)
    if x.size == 0:
        return np.nan, np.nan, np.nan
    est = float(stat(x))
    if x.size < 2:
        return est, np.nan, np.nan
    idx = rng_for(seed).integers(0, x.size, (n_boot, x.size))
    if stat is np.median:  # sorting rows is several times faster than np.median on them
        s, n = np.sort(x[idx], axis=1), x.size
        boots = s[:, n // 2] if n % 2 else (s[:, n // 2 - 1] + s[:, n // 2]) / 2
    else:
        boots = stat(x[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


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
    """Holm-Bonferroni adjusted p-values; NaN entries are not tests and stay NaN."""
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
