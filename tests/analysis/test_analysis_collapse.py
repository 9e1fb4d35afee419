"""Collapse-rate fits: planted exponential and U-shaped PR trajectories, and scipy as reference."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.optimize import curve_fit

from analysis.collapse import collapse_per_arm, collapse_per_trial
from analysis.decay import fit_decay
from analysis.features import build_features
from analysis.finals import final_values
from analysis.loading import load_results
from analysis.scaling import width_scaling
from benchmarks.synthetic_results import SyntheticSpec, TrialKey, write_results

GRID = dict(
    optimizers=("adamw",), qk_norms=("none",), lrs=(1e-2,), seeds=(0, 1, 2, 3), steps=400, eval_every=20, spectra="none"
)


def fits(tmp_path, **kw) -> tuple[SyntheticSpec, pl.DataFrame]:
    spec = SyntheticSpec(**{**GRID, **kw})
    write_results(spec, tmp_path / "s")
    res = load_results(tmp_path / "s")
    feats = build_features(res)
    return spec, collapse_per_trial(feats.curves, final_values(res.trials, feats))


def planted_rate(spec, row) -> float:
    return spec.rate(TrialKey(row["optimizer"], row["qk_norm"], row["width"], row["lr"], row["seed"]))


def test_planted_exponential_rate_is_recovered_within_10_percent(tmp_path):
    spec, df = fits(
        tmp_path, widths=(64, 128), rate_per_1k=8.0, rate_width_exp=0.5, pr_init=0.8, pr_floor=0.35, point_noise=0.004
    )
    q = df.filter((pl.col("metric") == "pr") & (pl.col("tensor") == "q"))
    assert q.height == 8 and (q["fit_status"] == "fitted").all()
    for row in q.iter_rows(named=True):
        assert row["rate_per_1k_steps"] == pytest.approx(planted_rate(spec, row), rel=0.10)
        assert row["floor"] / row["d_head"] == pytest.approx(0.35, abs=0.03)
        assert row["initial"] / row["d_head"] == pytest.approx(0.8, abs=0.02)
    # tokens: 2048 per step, so the rate per million tokens is the per-step rate * 1e6 / 2048
    np.testing.assert_allclose(q["rate_per_m_tokens"], q["rate_per_1k_steps"] / 1000 * 1e6 / 2048)


def test_u_shaped_trajectory_gets_its_minimum_step_and_recovery(tmp_path):
    spec, df = fits(tmp_path, widths=(64,), shape="u", min_step=160, recovery=0.4, rate_per_1k=12.0, point_noise=0.002)
    for tensor in ("q", "k", "wq", "wk"):
        d = df.filter((pl.col("metric") == "pr") & (pl.col("tensor") == tensor))
        assert (d["min_step"] == 160).all()
        assert d["recovery"].to_numpy() == pytest.approx(0.4, abs=0.05)
        # the fit covers the fall only, so the planted rate is still found
        assert d["rate_per_1k_steps"].to_numpy() == pytest.approx(12.0, rel=0.10)


def test_fit_agrees_with_scipy_curve_fit():
    rng = np.random.default_rng(3)
    t = np.arange(0, 501, 25.0)
    rates = rng.uniform(3, 20, 30) / 1000
    y = 0.3 + 0.5 * np.exp(-rates[:, None] * t) + 0.005 * rng.standard_normal((30, t.size))
    got = fit_decay(np.tile(t, (30, 1)), y)
    for i in range(30):
        assert got["status"][i] == "fitted"
        m = int(np.argmin(y[i])) + 1
        p, _ = curve_fit(lambda x, c, a, r: c + a * np.exp(-r * x), t[:m], y[i, :m], p0=[0.3, 0.5, 0.01], maxfev=20000)
        assert got["rate"][i] == pytest.approx(p[2], rel=1e-4)
        assert got["floor"][i] == pytest.approx(p[0], rel=1e-4, abs=1e-6)


def test_fit_statuses_for_curves_that_cannot_be_fitted():
    t = np.tile(np.arange(0, 200, 20.0), (4, 1))
    rising = 1 + t[0] / 100
    short = np.r_[1.0, 0.8, 0.7, np.full(7, 0.9)]  # minimum at the 3rd point
    cliff = np.r_[1.0, 0.5 - np.linspace(0, 1e-9, 9)]  # all of the fall in one step
    padded = np.r_[np.exp(-t[0, :6] / 50), np.full(4, np.nan)]  # a shorter (running) trial
    got = fit_decay(t, np.vstack([rising, short, cliff, padded]))
    assert list(got["status"]) == ["no_fall", "too_few_points", "censored_fast", "fitted"]
    assert got["final"][3] == pytest.approx(np.exp(-100 / 50))
    assert got["rate"][3] == pytest.approx(1 / 50, rel=1e-4)
    assert np.isnan(got["recovery"][0])


def test_width_scaling_finds_the_planted_exponent(tmp_path):
    _, df = fits(
        tmp_path, widths=(64, 128, 256), rate_per_1k=6.0, rate_width_exp=0.6, rate_noise=0.05, point_noise=0.002
    )
    s = width_scaling(df).filter(
        (pl.col("tensor") == "q") & (pl.col("quantity") == "rate_per_1k_steps") & (pl.col("selection") == "lr")
    )
    row = s.row(0, named=True)
    assert row["n_widths"] == 3
    assert row["ci_low"] < 0.6 < row["ci_high"]
    assert row["slope"] == pytest.approx(0.6, abs=0.1)


def test_arm_means_have_intervals_around_them(tmp_path):
    _, df = fits(tmp_path, widths=(64,), rate_noise=0.2, seeds=tuple(range(8)))
    arm = collapse_per_arm(df).filter((pl.col("metric") == "pr") & (pl.col("tensor") == "q"))
    row = arm.row(0, named=True)
    assert row["n_trials"] == 8 and row["n_fit_ok"] == 8
    assert row["rate_per_1k_steps_ci_low"] <= row["rate_per_1k_steps"] <= row["rate_per_1k_steps_ci_high"]
    assert row["rate_per_1k_steps_ci_low"] < row["rate_per_1k_steps_ci_high"]
