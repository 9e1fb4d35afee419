"""The synthetic results generator itself (benchmarks.synthetic_results): the q/k stages it writes,
the in-memory finals that simulations use, and the planted LR traps (issue 18)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from benchmarks.synthetic_results import (
    DELTA_PR_COLS,
    INIT_PR_COLS,
    LEGACY_TENSORS,
    NORM_CV_COLS,
    SPHERE_ROBUST_COLS,
    STAGE_PR_COLS,
    Effect,
    SyntheticSpec,
    trial_finals,
    write_results,
)
from trainer.schema import (
    ACTIVATION_METRICS,
    ACTIVATION_TENSORS,
    AXIS_METRICS,
    METRICS_DIR,
    SPECTRA_DIR,
    SPECTRUM_METRICS,
    STAGE_METRICS,
    STAGES,
    TENSORS,
)

STAGE_TENSORS = ("q_pre", "k_pre", "q_sphere", "k_sphere")
PLANTED = {
    ("adamw", "rms"): Effect(pr=-0.03, pr_stage={"as_used": -0.05, "pre": 0.02}, norm_cv=0.1, pr_bias=0.01),
    ("muon", "rms"): Effect(pr_centred=0.02, pr_stage={"sphere": 0.04}, lr_mult=0.3),
}


def small(**kw) -> SyntheticSpec:
    base = dict(
        widths=(64,),
        lrs=(1e-2, 3e-2),
        seeds=(0, 1),
        steps=50,
        eval_every=25,
        spectra="ends",
        junk_files=False,
        effects=PLANTED,
    )
    return SyntheticSpec(**{**base, **kw})


def read(folder, sub: str) -> pl.DataFrame:
    df = pl.read_parquet(folder / sub / "*" / "*.parquet", hive_partitioning=False)
    return df.with_columns(pl.col("trial_id").cast(pl.String))


def finals(spec: SyntheticSpec) -> pl.DataFrame:
    return pl.DataFrame(trial_finals(spec), infer_schema_length=None).sort("trial_id")


def head_means(metrics: pl.DataFrame, d_head: int) -> pl.DataFrame:
    """Per trial: the head averages at step 0 and at the trial's last step, wide, named as
    trial_finals names them (pr / d_head; the other metrics as they are)."""
    per_head = metrics.filter(pl.col("layer").is_not_null() & pl.col("tensor").is_not_null())
    last = per_head.group_by("trial_id").agg(pl.col("step").max().alias("last"))
    means = (
        per_head.join(last, on="trial_id")
        .filter((pl.col("step") == 0) | (pl.col("step") == pl.col("last")))
        .group_by("trial_id", "step", "last", "name", "tensor")
        .agg(pl.col("value").mean())
        .with_columns(
            pl.when(pl.col("step") == 0).then(pl.lit("init")).otherwise(pl.lit("final")).alias("end"),
            pl.when(pl.col("name") == "norm_cv").then(pl.col("value")).otherwise(pl.col("value") / d_head),
        )
        .with_columns(pl.concat_str("end", "name", "tensor", separator="_").alias("col"))
    )
    return means.pivot(on="col", index="trial_id", values="value").sort("trial_id")


def test_a_written_folder_has_every_stage_tensor_and_norm_cv(tmp_path):
    spec = small()
    write_results(spec, tmp_path / "s")
    m = read(tmp_path / "s", METRICS_DIR)
    tensors = lambda *names: set(m.filter(pl.col("name").is_in(names))["tensor"].unique())  # noqa: E731
    assert tensors(*SPECTRUM_METRICS) == set(TENSORS)
    assert tensors(*AXIS_METRICS, *ACTIVATION_METRICS) == set(ACTIVATION_TENSORS)
    assert tensors(*STAGE_METRICS) == set(STAGES["pre"]) == {"q_pre", "k_pre"}
    # every stage tensor at every step, layer and head where q has rows, for every metric q has
    key = ["trial_id", "step", "name", "layer", "head"]
    q_rows = m.filter(pl.col("tensor") == "q").select(key).sort(key)
    for t in STAGE_TENSORS:
        assert m.filter(pl.col("tensor") == t, pl.col("name") != "norm_cv").select(key).sort(key).equals(q_rows), t
    cv = m.filter(pl.col("name") == "norm_cv", pl.col("tensor") == "q_pre").select(key).sort(key)
    assert cv.height == q_rows.filter(pl.col("name") == "pr").height > 0
    assert m.select(key + ["tensor"]).is_unique().all()
    s = read(tmp_path / "s", SPECTRA_DIR)
    assert set(s["tensor"]) == set(TENSORS)
    assert s.group_by("tensor").len()["len"].n_unique() == 1  # the same steps, layers, heads for each


def test_trial_finals_equal_the_head_averages_of_the_written_metrics(tmp_path):
    spec = small(point_noise=0.0, pr_lr_slope=-0.2, n_running=2, rate_noise=0.2)
    write_results(spec, tmp_path / "s")
    got = head_means(read(tmp_path / "s", METRICS_DIR), spec.d_head)
    want = finals(spec)
    assert got["trial_id"].to_list() == want["trial_id"].to_list()
    pairs = {f"final_pr_{t}": f"final_pr_{t}" for t in TENSORS}
    pairs |= {f"init_pr_{t}": f"init_pr_{t}" for t in TENSORS}
    pairs |= {f"final_norm_cv_{t}": f"final_norm_cv_{t}" for t in STAGES["pre"]}
    for t in ("q", "k", "q_sphere", "k_sphere"):
        pairs[f"final_pr_{t}_centred"] = f"final_pr_centred_{t}"
    for c in (*STAGE_PR_COLS, *INIT_PR_COLS, *NORM_CV_COLS, *SPHERE_ROBUST_COLS):
        assert c in want.columns
    for col, have in pairs.items():
        np.testing.assert_allclose(got[have].to_numpy(), want[col].to_numpy(), atol=1e-9, rtol=0, err_msg=col)
    for t in ("q", "k", "q_sphere", "k_sphere"):  # bias-corrected: pr - pr_bias
        corrected = got[f"final_pr_{t}"] - got[f"final_pr_bias_{t}"]
        np.testing.assert_allclose(corrected.to_numpy(), want[f"final_pr_{t}_corrected"].to_numpy(), atol=1e-9)
    assert (want["status"] == "running").sum() == 2  # their "final" is their last recorded step


def test_delta_is_final_minus_init_and_the_stages_sit_where_planted():
    spec = small(seeds=(0, 1, 2))
    df = finals(spec)
    for t, d in zip(TENSORS, DELTA_PR_COLS):
        np.testing.assert_allclose(df[d].to_numpy(), (df[f"final_pr_{t}"] - df[f"init_pr_{t}"]).to_numpy(), atol=1e-12)
    # k 0.02 above q at every stage; sphere +0.03 and pre -0.01 from the as-used q, before effects
    for q, k in STAGES.values():
        np.testing.assert_allclose((df[f"final_pr_{k}"] - df[f"final_pr_{q}"]).to_numpy(), 0.02, atol=1e-12)
        np.testing.assert_allclose((df[f"init_pr_{k}"] - df[f"init_pr_{q}"]).to_numpy(), 0.02, atol=1e-12)
    base = df.filter(pl.col("qk_norm") == "none")
    np.testing.assert_allclose((base["final_pr_q_sphere"] - base["final_pr_q"]).to_numpy(), 0.03, atol=1e-12)
    np.testing.assert_allclose((base["final_pr_q_pre"] - base["final_pr_q"]).to_numpy(), -0.01, atol=1e-12)
    # every stage starts at the same value in every arm
    for c in INIT_PR_COLS:
        assert df[c].n_unique() == 1, c


def test_a_stage_effect_moves_that_stage_only():
    post_only = Effect(pr_stage={"as_used": -0.05, "pre": -0.05})
    spec = small(effects={("adamw", "rms"): post_only}, pr_noise=0.0, rate_noise=0.0)
    df = finals(spec).filter(pl.col("optimizer") == "adamw")
    diff = lambda c: (  # noqa: E731
        df.filter(pl.col("qk_norm") == "rms")[c].to_numpy() - df.filter(pl.col("qk_norm") == "none")[c].to_numpy()
    )
    for t in ("q", "k", "q_pre", "k_pre"):
        np.testing.assert_allclose(diff(f"final_pr_{t}"), -0.05, atol=1e-12)
        np.testing.assert_allclose(diff(f"init_pr_{t}"), 0.0, atol=1e-12)
    for t in ("q_sphere", "k_sphere", "wq", "wk"):
        np.testing.assert_allclose(diff(f"final_pr_{t}"), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="pr_stage"):
        trial_finals(small(effects={("adamw", "rms"): Effect(pr_stage={"post": 0.1})}))


def test_pr_lr_slope_moves_final_pr_with_lr_and_not_init_pr():
    lrs = (1e-3, 1e-2, 1e-1)
    flat, sloped = finals(small(lrs=lrs)), finals(small(lrs=lrs, pr_lr_slope=-0.1))
    decades = np.log10(sloped["lr"].to_numpy() / 1e-2)
    for t in ("q", "k", "q_pre", "k_pre", "q_sphere", "k_sphere"):
        change = (sloped[f"final_pr_{t}"] - flat[f"final_pr_{t}"]).to_numpy()
        np.testing.assert_allclose(change, -0.1 * decades, atol=1e-12, err_msg=t)  # ramp = 1 at the end
        np.testing.assert_allclose(sloped[f"init_pr_{t}"].to_numpy(), flat[f"init_pr_{t}"].to_numpy(), atol=0)
    for t in ("wq", "wk"):  # weights: no LR dependence planted
        np.testing.assert_allclose(sloped[f"final_pr_{t}"].to_numpy(), flat[f"final_pr_{t}"].to_numpy(), atol=0)
    assert (sloped.filter(pl.col("lr") == 1e-1)["final_pr_q"] < sloped.filter(pl.col("lr") == 1e-3)["final_pr_q"]).all()


def test_curvature_mult_flattens_or_sharpens_the_loss_bowl_and_keeps_its_minimum():
    lrs = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    effects = {("adamw", "rms"): Effect(curvature_mult=0.0), ("muon", "rms"): Effect(curvature_mult=4.0)}
    df = finals(small(lrs=lrs, effects=effects, loss_noise=0.0, seeds=(0,)))
    loss = lambda o, q: df.filter(pl.col("optimizer") == o, pl.col("qk_norm") == q).sort("lr")["final_val_loss"]  # noqa: E731
    flat = loss("adamw", "rms").to_numpy()
    np.testing.assert_allclose(flat, flat[0], atol=0)  # flat over LR, no noise
    np.testing.assert_allclose(flat.min(), loss("adamw", "none").min(), atol=1e-12)  # same minimum
    sharp, base = loss("muon", "rms").to_numpy(), loss("muon", "none").to_numpy()
    np.testing.assert_allclose(sharp - sharp.min(), 4.0 * (base - base.min()), atol=1e-12)
    assert sharp.argmin() == base.argmin() and sharp.min() == pytest.approx(base.min(), abs=1e-12)


def test_stages_false_writes_no_stage_rows_and_leaves_the_stage_columns_null(tmp_path):
    spec = small(stages=False)
    write_results(spec, tmp_path / "s")
    m, s = read(tmp_path / "s", METRICS_DIR), read(tmp_path / "s", SPECTRA_DIR)
    assert set(m["tensor"].drop_nulls()) == set(s["tensor"]) == set(LEGACY_TENSORS)
    assert "norm_cv" not in set(m["name"])
    df = finals(spec)
    stage_cols = (*STAGE_PR_COLS, *NORM_CV_COLS, *SPHERE_ROBUST_COLS)
    stage_cols += tuple(f"{e}_pr_{t}" for e in ("init", "delta") for t in STAGE_TENSORS)
    assert all(df[c].is_null().all() for c in stage_cols)
    assert all(df[f"{e}_pr_{t}"].is_not_null().all() for e in ("init", "delta") for t in LEGACY_TENSORS)
    no_act = finals(small(activation_metrics=False))
    assert all(no_act[c].is_null().all() for c in SPHERE_ROBUST_COLS)
    assert no_act["final_pr_q_sphere"].is_not_null().all()


def test_the_stages_leave_the_legacy_rows_unchanged(tmp_path):
    """Adding the stages changes no value a results folder had before (point noise included)."""
    kw = dict(point_noise=0.003, n_duplicated=1)
    write_results(small(**kw), tmp_path / "new")
    write_results(small(stages=False, **kw), tmp_path / "old")
    key = ["trial_id", "step", "name", "layer", "head", "tensor"]
    legacy = pl.col("tensor").is_null() | pl.col("tensor").is_in(LEGACY_TENSORS)
    new = read(tmp_path / "new", METRICS_DIR).filter(legacy).sort(key + ["value"])
    old = read(tmp_path / "old", METRICS_DIR).sort(key + ["value"])
    assert new.equals(old)
    added = {*STAGE_PR_COLS, *INIT_PR_COLS, *DELTA_PR_COLS, *NORM_CV_COLS, *SPHERE_ROBUST_COLS}
    with_stages, without = finals(small(**kw)), finals(small(stages=False, **kw))
    assert with_stages.columns == without.columns
    legacy_cols = [c for c in with_stages.columns if c not in added]
    assert with_stages.select(legacy_cols).equals(without.select(legacy_cols))
