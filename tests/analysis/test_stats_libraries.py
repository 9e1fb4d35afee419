"""analysis.stats against maintained libraries (issue 21). The percentile bootstrap is
scipy.stats.bootstrap: it gives the intervals the hand-written version it replaced gave (copied
below as the reference), to float rounding, with the same seeding. Holm's correction stays written
out (statsmodels' multipletests runs gc.collect() on every call, a third of a report's time) and
gives statsmodels' numbers, NaN entries aside."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

from analysis.stats import bootstrap_ci, holm, rng_for


def bootstrap_before(x, stat=np.mean, n_boot=2000, seed=0, level=0.95):
    """analysis.stats.bootstrap_ci before issue 21."""
    x = np.asarray(x, float)
    if x.size == 0:
        return np.nan, np.nan, np.nan
    est = float(stat(x))
    if x.size < 2:
        return est, np.nan, np.nan
    idx = rng_for(seed).integers(0, x.size, (n_boot, x.size))
    boots = stat(x[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def test_holm_gives_statsmodels_adjustment_and_keeps_nans():
    from statsmodels.stats.multitest import multipletests

    gen = np.random.default_rng(21)
    # multipletests runs gc.collect() on every call, which walks every object the test session holds
    # (0.2 s a call late in a full run): the objects alive now are frozen out of those collections
    gc.freeze()
    try:
        _compare_holm(gen, multipletests)
    finally:
        gc.unfreeze()
    assert holm([]).shape == (0,) and np.isnan(holm([np.nan, np.nan])).all()
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04, 0.03]), [0.03, np.nan, 0.06, 0.06])


def _compare_holm(gen, multipletests):
    for trial in range(80):
        p = gen.uniform(0, 1, gen.integers(0, 25)) ** gen.uniform(0.5, 4)
        p[gen.uniform(size=p.size) < 0.25] = np.nan  # not tests
        if trial % 7 == 0 and p.size > 2:
            p[1] = p[2]  # ties
        if trial % 11 == 0 and p.size:
            p[0] = np.inf  # not a test either
        got, ok = holm(p), np.isfinite(p)
        assert np.isnan(got[~ok]).all() and np.isfinite(got[ok]).all()  # not tests stay NaN
        if ok.any():  # the tests adjusted as one family of their own
            np.testing.assert_allclose(got[ok], multipletests(p[ok], method="holm")[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("stat", [np.mean, np.median])
def test_bootstrap_ci_gives_the_hand_written_interval_and_stays_seeded(stat):
    gen = np.random.default_rng(5)
    for i in range(60):
        x = gen.normal(size=int(gen.integers(0, 25)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning for small or constant samples
            got = bootstrap_ci(x, stat=stat, n_boot=400, seed=("arm", i))
        want = bootstrap_before(x, stat=stat, n_boot=400, seed=("arm", i))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        assert bootstrap_ci(x, stat=stat, n_boot=400, seed=("arm", i)) == pytest.approx(got, nan_ok=True)
    assert bootstrap_ci(np.ones(6), stat=stat, n_boot=200) == (1.0, 1.0, 1.0)
