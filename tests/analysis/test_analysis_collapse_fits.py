"""Collapse fits are honest: planted rates come back, unresolved falls are censored (counted,
never dropped), no fit on fewer than parameters + 2 points, fits are stratified by LR."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis.collapse import censored_median, collapse_per_arm, collapse_per_trial
from analysis.decay import MIN_FIT_POINTS, N_PARAMS, fit_decay
from analysis.scaling import width_scaling

# The trainer's dense early cadence (trainer/cadence.py, eval_every 25, 300 steps).
DENSE = np.array([0, 1, 2, 3, 4, 7, 10, 15, 23, *range(25, 301, 25)], float)
REGULAR = np.arange(0, 301, 25, dtype=float)
D_HEAD = 32


def sweep(
    rates: dict[tuple, float],
    seeds=range(4),
    steps=DENSE,
    noise=0.003,
    floor=0.35,
    init=0.8,
    rate_noise=0.0,
    rng_seed=0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """In-memory curves and finals: per (optimizer, qk_norm, width, lr) a planted rate per 1k
    steps; q and k PR / d_head = floor + (init - floor) exp(-rate t) + noise."""
    rng = np.random.default_rng(rng_seed)
    curves, finals = [], []
    for (o, q, w, lr), r in rates.items():
        for s in seeds:
            tid = f"{o}_{q}_{w}_{lr:g}_{s}"
            finals.append(
                dict(
                    trial_id=tid,
                    optimizer=o,
                    qk_norm=q,
                    width=w,
                    lr=lr,
                    seed=s,
                    d_head=D_HEAD,
                    status="completed",
                    data_complete=True,
                    tokens_per_step=2048.0,
                )
            )
            rate = r / 1000 * float(np.exp(rate_noise * rng.standard_normal()))
            for t in ("q", "k"):
                v = floor + (init - floor) * np.exp(-rate * steps)
                v = (v + noise * rng.standard_normal(steps.size)) * D_HEAD
                curves += [
                    dict(trial_id=tid, step=int(st), name="pr", tensor=t, value=float(x)) for st, x in zip(steps, v)
                ]
    return pl.DataFrame(curves), pl.DataFrame(finals)


def fits(rates, **kw) -> pl.DataFrame:
    curves, finals = sweep(rates, **kw)
    return collapse_per_trial(curves, finals)


@pytest.mark.parametrize(
    "steps,tau",
    [(DENSE, 3.0), (DENSE, 10.0), (DENSE, 30.0), (DENSE, 100.0), (REGULAR, 50.0), (REGULAR, 100.0)],
    ids=["dense-3", "dense-10", "dense-30", "dense-100", "regular-50", "regular-100"],
)
def test_resolved_planted_decays_are_recovered_within_10_percent(steps, tau):
    """Time constants from 3 probe spacings up: fitted, rate within 10%, interval around it."""
    rate = 1000 / tau
    df = fits({("adamw", "none", 64, 1e-2): rate}, steps=steps)
    assert (df["fit_status"] == "fitted").all(), df["fit_status"].to_list()
    np.testing.assert_allclose(df["rate_per_1k_steps"], rate, rtol=0.10)
    assert (df["rate_ci_low_per_1k"] <= df["rate_per_1k_steps"]).all()
    assert (df["rate_per_1k_steps"] <= df["rate_ci_high_per_1k"]).all()
    assert (df["resid_dof"] == df["n_fall"] - N_PARAMS).all() and (df["resid_dof"] >= 2).all()
    arm = collapse_per_arm(df).filter(pl.col("tensor") == "q").row(0, named=True)
    assert arm["n_fit_ok"] == 4 and arm["n_censored"] == 0
    assert arm["rate_per_1k_steps"] == pytest.approx(rate, rel=0.10)
    assert arm["rate_per_1k_steps_ci_low"] < arm["rate_per_1k_steps"] < arm["rate_per_1k_steps_ci_high"]


@pytest.mark.parametrize(
    "steps,tau", [(DENSE, 0.3), (REGULAR, 5.0), (REGULAR, 12.0)], ids=["dense-0.3", "regular-5", "regular-12"]
)
def test_fast_fall_is_censored_not_fitted_not_dropped_and_counted(steps, tau):
    """A time constant shorter than the probe spacing: every trial keeps its row, none is
    fitted, each has a rate lower bound at or below the true rate, and the arm counts them."""
    rate = 1000 / tau
    slow = 1000 / 100
    df = fits({("adamw", "none", 64, 1e-2): slow, ("adamw", "rms", 64, 1e-2): rate}, steps=steps)
    fast = df.filter(pl.col("qk_norm") == "rms")
    assert fast.height == 4 * 2  # 4 seeds x (q, k): nothing dropped
    assert set(fast["fit_status"]) <= {"censored_fast", "too_few_points"}
    assert fast["censored"].all()
    assert fast["rate_per_1k_steps"].null_count() == fast.height  # no fitted rate shown
    assert fast["r2"].null_count() == fast.height
    lb = fast["rate_lower_bound_per_1k"]
    assert lb.null_count() == 0 and (lb > 0).all() and (lb <= rate).all()
    arm = collapse_per_arm(df).filter(pl.col("tensor") == "q")
    a = {r["qk_norm"]: r for r in arm.iter_rows(named=True)}
    assert a["rms"]["n_trials"] == 4 and a["rms"]["n_censored"] == 4 and a["rms"]["n_fit_ok"] == 0
    assert a["rms"]["rate_per_1k_steps"] is None
    assert a["rms"]["rate_lower_bound_per_1k"] == pytest.approx(lb.min())
    assert "no fit" in a["rms"]["rate_note"] and "4/4" in a["rms"]["rate_note"]
    assert a["none"]["n_fit_ok"] == 4 and a["none"]["n_censored"] == 0


def test_partly_censored_arm_counts_both_and_says_the_mean_is_biased():
    curves1, finals1 = sweep({("muon", "rms", 64, 1e-2): 1000 / 20}, seeds=range(3))
    curves2, finals2 = sweep({("muon", "rms", 64, 1e-2): 1000 / 0.3}, seeds=range(3, 5), rng_seed=1)
    df = collapse_per_trial(pl.concat([curves1, curves2]), pl.concat([finals1, finals2]))
    a = collapse_per_arm(df).filter(pl.col("tensor") == "q").row(0, named=True)
    assert (a["n_trials"], a["n_fit_ok"], a["n_censored"]) == (5, 3, 2)
    assert "biased low" in a["rate_note"]
    # 3 fitted below 2 censored-fast: the median (3rd of 5) is the largest fitted rate
    assert a["rate_median_censored_per_1k"] == pytest.approx(
        df.filter((pl.col("tensor") == "q") & (pl.col("fit_status") == "fitted"))["rate_per_1k_steps"].max()
    )


def test_no_fit_below_parameters_plus_two_points():
    """Random fall phases of every length: `fitted` only with >= N_PARAMS + 2 points, R^2 only
    with residual degrees of freedom."""
    assert MIN_FIT_POINTS == N_PARAMS + 2
    rng = np.random.default_rng(5)
    t = np.tile(np.arange(0, 400, 20.0), (300, 1))
    y = np.empty_like(t)
    imins = rng.integers(1, t.shape[1], 300)
    for i, m in enumerate(imins):  # clean exponential fall up to index m, then a rise
        tau = rng.uniform(10, 200)
        fall = 0.3 + 0.5 * np.exp(-t[i] / tau)
        y[i] = np.where(np.arange(t.shape[1]) <= m, fall, fall[m] + 0.001 * (np.arange(t.shape[1]) - m))
        y[i] += 1e-4 * rng.standard_normal(t.shape[1])
    got = fit_decay(t, y)
    fitted = got["status"] == "fitted"
    assert fitted.any()
    assert (got["n_fall"][fitted] >= MIN_FIT_POINTS).all()
    assert not np.isin(got["status"][got["n_fall"] < MIN_FIT_POINTS], ["fitted"]).any()
    assert np.isnan(got["r2"][got["resid_dof"] < 1]).all()
    few = (got["n_fall"] >= 3) & (got["n_fall"] < MIN_FIT_POINTS)
    assert (got["status"][few] == "too_few_points").all()
    assert (got["rate_lower_bound"][few] > 0).all()  # censored, with a bound
    assert (got["status"][got["n_fall"] == 2] == "censored_fast").all()


def test_four_points_are_too_few_even_when_they_fit_perfectly():
    t = np.array([[0, 10, 20, 30, 40, 50.0]])
    y = 0.3 + 0.5 * np.exp(-t / 15)
    y[0, 4:] = [y[0, 3] + 0.01, y[0, 3] + 0.02]  # minimum at the 4th point
    got = fit_decay(t, y)
    assert got["status"][0] == "too_few_points"
    assert np.isnan(got["rate"][0]) and np.isnan(got["r2"][0]) and got["resid_dof"][0] == 0


def test_fits_are_stratified_by_lr_two_rates_two_rows():
    df = fits({("adamw", "none", 64, 1e-3): 15.0, ("adamw", "none", 64, 1e-2): 60.0})
    arm = collapse_per_arm(df).filter(pl.col("tensor") == "q").sort("lr")
    assert arm.height == 2 and arm["lr"].to_list() == [1e-3, 1e-2]
    np.testing.assert_allclose(arm["rate_per_1k_steps"], [15.0, 60.0], rtol=0.10)
    assert (arm["n_trials"] == 4).all()


def test_width_scaling_compares_widths_at_the_same_lr_and_at_the_best_lr():
    # exponent 0.5 at both LRs, but the level differs 4x between LRs: pooling would confound
    rates = {
        ("adamw", "none", w, lr): base * (w / 64) ** 0.5
        for lr, base in ((1e-3, 10.0), (1e-2, 40.0))
        for w in (64, 128, 256)
    }
    df = fits(rates, rate_noise=0.03)
    best = pl.DataFrame(
        {"optimizer": ["adamw"] * 3, "qk_norm": ["none"] * 3, "width": [64, 128, 256], "best_lr": [1e-3, 1e-2, 1e-3]}
    )
    s = width_scaling(df, best).filter((pl.col("tensor") == "q") & (pl.col("quantity") == "rate_per_1k_steps"))
    by = {(r["selection"], r["lr"]): r for r in s.iter_rows(named=True)}
    assert set(by) == {("lr", 1e-3), ("lr", 1e-2), ("best_lr", None)}
    for key in (("lr", 1e-3), ("lr", 1e-2)):
        r = by[key]
        assert r["n"] == 12 and r["n_widths"] == 3 and r["resid_dof"] == 10
        assert r["ci_low"] < 0.5 < r["ci_high"] and r["slope"] == pytest.approx(0.5, abs=0.1)
    assert by[("best_lr", None)]["n"] == 12  # one LR per width, never a pooled grid


def test_width_scaling_names_censored_falls():
    rates = {("adamw", "rms", 64, 1e-2): 20.0, ("adamw", "rms", 128, 1e-2): 3000.0}
    s = width_scaling(fits(rates)).filter((pl.col("tensor") == "q") & (pl.col("quantity") == "rate_per_1k_steps"))
    row = s.row(0, named=True)
    assert row["n_censored"] == 4 and "censored" in row["note"] and row["slope"] is None


def test_censored_median():
    assert censored_median(np.array([1.0, 2.0, 3.0]), 0, 0) == 2.0
    assert censored_median(np.array([1.0, 2.0, 3.0]), 2, 0) == 3.0
    assert np.isnan(censored_median(np.array([1.0]), 2, 0))
    assert censored_median(np.array([5.0, 6.0]), 1, 2) == 5.0


def mixed_curves(n=240, seed=7) -> tuple[np.ndarray, np.ndarray]:
    """Noisy planted falls on the dense and the regular cadence (some cut short: NaN padded),
    U shapes, steps down, flat and rising curves: every fit status and refinement path."""
    rng = np.random.default_rng(seed)
    t = np.full((n, DENSE.size), np.nan)
    y = np.full_like(t, np.nan)
    for i in range(n):
        steps = (DENSE, REGULAR)[i % 2][: rng.integers(6, DENSE.size + 1)]
        tau = 10 ** rng.uniform(-0.5, 3)
        v = 0.3 + 0.5 * np.exp(-steps / tau)
        kind = i % 6
        if kind == 1:  # U shape: back up after a minimum
            k = rng.integers(2, steps.size)
            v[k:] = v[k] + 0.001 * (steps[k:] - steps[k])
        elif kind == 2:  # a step down
            v = np.r_[0.8, np.full(steps.size - 1, 0.3)]
        elif kind == 3:  # flat or rising
            v = 0.5 + rng.choice([0.0, 1e-3]) * steps
        t[i, : steps.size] = steps
        y[i, : steps.size] = v + rng.choice([1e-4, 3e-3, 3e-2]) * rng.standard_normal(steps.size)
    return t, y


def test_a_curve_fit_does_not_depend_on_the_curves_fitted_with_it():
    """Curves are fitted in blocks, those sharing steps together: a curve fitted alone, or
    among others in any order, gets the same fit (to rounding: 1e-7 where the SSE profile is
    flat, e.g. the far end of a wide interval)."""
    t, y = mixed_curves()
    together = fit_decay(t, y)
    assert len(set(together["status"])) >= 4
    order = np.random.default_rng(0).permutation(len(t))
    shuffled = fit_decay(t[order], y[order])
    alone = [fit_decay(t[i : i + 1], y[i : i + 1]) for i in range(len(t))]
    for k, v in together.items():
        if k == "status":
            assert (shuffled[k] == v[order]).all()
            assert [a[k][0] for a in alone] == list(v)
        else:
            np.testing.assert_allclose(shuffled[k], v[order], rtol=1e-7, equal_nan=True, err_msg=k)
            np.testing.assert_allclose([a[k][0] for a in alone], v, rtol=1e-7, equal_nan=True, err_msg=k)


def profile_sse(t: np.ndarray, y: np.ndarray, rate: float) -> float:
    """SSE of the least-squares (floor, amplitude) at a rate, from the residuals."""
    X = np.c_[np.ones_like(t), np.exp(-rate * (t - t[0]))]
    return float(np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2))


def test_rate_is_the_least_squares_optimum_and_the_interval_ends_are_on_the_threshold():
    """Against the SSE profile computed independently (residuals of lstsq): the fitted rate is
    its minimum (scipy's bounded search) to 1e-6, and the interval's ends are where it crosses
    SSE_min * (1 + F(0.95; 1, dof) / dof)."""
    from scipy import optimize, stats

    t, y = mixed_curves(seed=11)
    got = fit_decay(t, y)
    fitted = np.flatnonzero(got["status"] == "fitted")
    assert fitted.size >= 40
    for i in fitted:
        fall = np.isfinite(y[i]) & (np.arange(y.shape[1]) <= np.nanargmin(y[i]))
        ti, yi = t[i, fall], y[i, fall]
        x = np.log(got["rate"][i])
        best = optimize.minimize_scalar(
            lambda u, ti=ti, yi=yi: profile_sse(ti, yi, np.exp(u)),
            bounds=(x - 0.2, x + 0.2),
            method="bounded",
            options={"xatol": 1e-10},
        )
        assert got["rate"][i] == pytest.approx(np.exp(best.x), rel=1e-6)
        sse = profile_sse(ti, yi, got["rate"][i])
        assert sse <= best.fun * (1 + 1e-9)
        dof = fall.sum() - N_PARAMS
        thr = sse * (1 + stats.f.ppf(0.95, 1, dof) / dof)
        for end in ("rate_ci_low", "rate_ci_high"):
            assert profile_sse(ti, yi, got[end][i]) == pytest.approx(thr, rel=1e-6)


def test_curves_in_any_row_order_give_the_same_table():
    """collapse_per_trial skips its sort when the curves come sorted (the usual case) and sorts
    them when not: the table is the same."""
    curves, finals = sweep({("adamw", "none", 64, 1e-2): 30.0, ("muon", "rms", 128, 1e-3): 3000.0})
    ref = collapse_per_trial(curves.sort("trial_id", "name", "tensor", "step"), finals)
    assert ref.equals(collapse_per_trial(curves, finals))
    assert ref.equals(collapse_per_trial(curves.sample(fraction=1.0, shuffle=True, seed=3), finals))
