"""Simulations for the like-for-like rules (issue 18): the sphere PR decides, the best LR is chosen on
held-out seeds, matched-LR and init-relative effects sit beside the deciding ones, and the theory's
claims are answered. Each rule: its false-positive rate on null data, its power on a planted
effect, and the coverage of its interval, on per-trial finals simulated in memory (the
measured figures are in docs/analysis.md)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis.claims import claims
from analysis.judge import judge, state_of
from analysis.lr_selection import held_out_lrs
from analysis.paradox import paradox_table
from analysis.sensitivity import best_lrs
from analysis.verdict import build_verdict, paradox_results
from benchmarks.synthetic_results import Effect, SyntheticSpec, trial_finals

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
OPTS = ("adamw", "muon")
SPHERE = ("final_pr_q_sphere", "final_pr_k_sphere")


def finals_of(**kw) -> pl.DataFrame:
    kw.setdefault("lrs", LRS)
    kw.setdefault("seeds", (0, 1, 2, 3))
    return pl.DataFrame(trial_finals(SyntheticSpec(**kw)), infer_schema_length=None)


def verdict_of(df: pl.DataFrame) -> dict:
    best = best_lrs(df)
    return build_verdict(paradox_results(df, best, held_out_lrs(df, best)), {"partial": False})


def claim(v: dict, claim_id: str, optimizer: str | None = None) -> dict:
    return next(c for c in v["claims"] if c["id"] == claim_id and c["optimizer"] == optimizer)


def loss_rows(df: pl.DataFrame, best: pl.DataFrame) -> list[dict]:
    table = paradox_table(df, "best_lr", wilcoxon=False, best=best)
    return table.filter(pl.col("metric") == "final_val_loss").to_dicts()


# ---- held-out LR selection ---------------------------------------------------------------------
FLAT = {(o, "rms"): Effect(curvature_mult=0.0) for o in OPTS}  # QK-Norm's loss is flat over LR


def flat_vs_sharp(n_sets: int) -> dict[str, dict[str, float]]:
    """No true loss difference: both arms have the same minimum, but QK-Norm's loss is flat over LR
    (its best LR is wherever the noise is lowest) and none's is a sharp bowl. Per comparison (2 per
    dataset): the share with a significant 'lower' loss at p < 0.05 (one tail of the raw paired t)
    and at p_holm < 0.05 (the verdict's decision), the two-sided raw rate, the mean difference, and
    the coverage of the interval of the true difference, 0."""
    out = {}
    for rule in ("same_seed", "held_out"):
        raw = holm = two = cover = 0
        bias = []
        for i in range(n_sets):
            df = finals_of(rng_seed=60_000 + i, effects=FLAT, widths=(64, 128, 256))
            best = best_lrs(df) if rule == "same_seed" else held_out_lrs(df)
            for r in loss_rows(df, best):
                raw += r["p_value"] < 0.05 and r["mean_diff"] < 0
                holm += r["p_holm"] < 0.05 and r["mean_diff"] < 0
                two += r["p_value"] < 0.05
                cover += r["ci_low"] <= 0 <= r["ci_high"]
                bias.append(r["mean_diff"])
        n = 2 * n_sets
        out[rule] = dict(
            lower_raw=raw / n, lower_holm=holm / n, two_sided=two / n, coverage=cover / n, bias=float(np.mean(bias))
        )
    return out


@pytest.mark.slow
def test_held_out_selection_keeps_the_false_positive_rate_where_same_seed_selection_does_not():
    rates = flat_vs_sharp(200)
    print("flat vs sharp loss curves, 200 datasets x 2 comparisons:", rates)
    same, held = rates["same_seed"], rates["held_out"]
    # the trap is real: choosing on the tested seeds biases the flat arm's loss low
    assert same["bias"] < -0.003 and same["lower_raw"] >= 0.15
    # held out: no bias, and the verdict's decision stays within 5%
    assert abs(held["bias"]) < 0.001
    assert held["lower_holm"] <= 0.05 and held["lower_raw"] <= 0.08
    # its interval: the selection makes pairs of one width mildly dependent (measured ~0.92 here,
    # ~0.94 where both curves are bowls; see docs/analysis.md)
    assert held["coverage"] >= 0.89


def test_held_out_lrs_leave_the_tested_seed_out():
    df = finals_of(effects=FLAT, rng_seed=3)
    held = held_out_lrs(df)
    assert held.height == df.select("optimizer", "qk_norm", "width", "seed").unique().height
    assert held["held_out"].all() and (held["n_select"] == 3).all()  # the chosen LR's mean over 3 other seeds
    # recompute one choice by hand: the mean over the other seeds' losses, argmin over LR
    row = held.filter((pl.col("optimizer") == "adamw") & (pl.col("qk_norm") == "rms") & (pl.col("width") == 64)).row(
        0, named=True
    )
    others = df.filter(
        (pl.col("optimizer") == "adamw")
        & (pl.col("qk_norm") == "rms")
        & (pl.col("width") == 64)
        & (pl.col("seed") != row["seed"])
    )
    means = others.group_by("lr").agg(pl.col("final_val_loss").mean()).sort("final_val_loss", "lr")
    assert row["best_lr"] == means["lr"][0]


def test_one_seed_falls_back_to_its_own_choice_and_the_verdict_says_so():
    v = verdict_of(finals_of(seeds=(0,), widths=(64, 128, 256)))
    j = v["comparisons"]["adamw"]["rms"]
    assert j["lr_selection"]["rule"] == "held_out_seed" and not j["lr_selection"]["held_out"]
    assert any("no held-out selection possible" in w for w in v["warnings"])


# ---- the primary metric: the sphere -------------------------------------------------------------
AS_USED_ONLY = {("adamw", "rms"): Effect(pr_stage={"as_used": -0.05, "pre": -0.05})}


def test_a_post_norm_rank_change_without_a_sphere_change_is_not_a_rank_change():
    rank_calls = as_used_lower = 0
    n_sets = 40
    for i in range(n_sets):
        v = verdict_of(finals_of(rng_seed=70_000 + i, effects=AS_USED_ONLY))
        j = v["comparisons"]["adamw"]["rms"]
        rank_calls += j["worse_rank"] or claim(v, "lower_rank", "adamw")["verdict"] == "supported"
        as_used_lower += j["directions"]["final_pr_q"] == j["directions"]["final_pr_k"] == "lower"
    print(f"as-used-only rank change: worse_rank claimed {rank_calls}/{n_sets}, as-used lower {as_used_lower}/{n_sets}")
    assert rank_calls <= 0.05 * n_sets  # the sphere did not move: never a rank change
    assert as_used_lower >= 0.9 * n_sets  # and the secondary stage still shows what moved
    assert v["primary_metric"] == "sphere" and v["deciding_metrics"] == ["final_val_loss", *SPHERE]


# ---- matched LR --------------------------------------------------------------------------------
SHIFTED = {(o, "rms"): Effect(lr_mult=10**-0.5) for o in OPTS}  # QK-Norm's best LR a half decade lower


@pytest.mark.slow
def test_matched_lr_finds_no_difference_where_pr_depends_only_on_lr():
    """PR falls with LR (pr_lr_slope) and QK-Norm's best LR is lower: at the best LRs its PR is
    higher only because its LR is lower. Matched-LR must not call that a difference; the best-LR
    comparison does (that is the trap), and the headline names the disagreement."""
    best_higher = matched_calls = 0
    n_sets = 60
    for i in range(n_sets):
        v = verdict_of(finals_of(rng_seed=80_000 + i, effects=SHIFTED, pr_lr_slope=-0.1))
        for opt in OPTS:
            j = v["comparisons"][opt]["rms"]
            best_higher += all(j["directions"][m] == "higher" for m in SPHERE)
            matched_calls += any(j["matched_lr"]["directions"][m] != "no_difference" for m in SPHERE)
    n = 2 * n_sets
    print(f"PR by LR only: best-LR 'higher' {best_higher}/{n}, matched-LR any direction {matched_calls}/{n}")
    assert best_higher >= 0.9 * n
    assert matched_calls <= 0.05 * n
    assert any("BEST-LR AND MATCHED-LR DISAGREE" in s for s in v["headline"])


@pytest.mark.slow
def test_matched_lr_power_and_coverage_on_a_planted_effect():
    planted = -0.02
    effects = {(o, "rms"): Effect(lr_mult=10**-0.5, pr=planted) for o in OPTS}
    found = covered = total = 0
    for i in range(60):
        v = verdict_of(finals_of(rng_seed=90_000 + i, effects=effects, pr_lr_slope=-0.1))
        for opt in OPTS:
            m = v["comparisons"][opt]["rms"]["matched_lr"]
            found += all(m["directions"][k] == "lower" for k in SPHERE)
            e = m["effects"]["final_pr_q_sphere"]
            covered += e["ci_low"] <= planted <= e["ci_high"]
            total += 1
    print(f"matched LR, planted {planted}: power {found}/{total}, coverage {covered}/{total}")
    assert found >= 0.8 * total
    assert covered >= 0.9 * total


# ---- init-relative -----------------------------------------------------------------------------
@pytest.mark.slow
def test_init_relative_false_positives_and_power():
    null_calls = found = 0
    n_sets = 60
    for i in range(n_sets):
        v = verdict_of(finals_of(rng_seed=100_000 + i))
        null_calls += any(
            v["comparisons"][o]["rms"]["init_relative"]["directions"][f"delta_pr_{t}"] != "no_difference"
            for o in OPTS
            for t in ("q_sphere", "k_sphere")
        )
        v = verdict_of(finals_of(rng_seed=110_000 + i, effects={("adamw", "rms"): Effect(pr=-0.02)}))
        side = v["comparisons"]["adamw"]["rms"]["init_relative"]
        found += side["directions"]["delta_pr_q_sphere"] == side["directions"]["delta_pr_k_sphere"] == "lower"
    print(f"init-relative: null any direction {null_calls}/{n_sets}, power at -0.02 {found}/{n_sets}")
    assert null_calls <= 0.05 * n_sets
    assert found >= 0.8 * n_sets


# ---- the claims ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_adamw_collapses_more_false_positives_and_power():
    null_supported = null_contradicted = found = 0
    n_sets = 60
    for i in range(n_sets):
        v = verdict_of(finals_of(rng_seed=120_000 + i))
        c = claim(v, "adamw_collapses_more")["verdict"]
        null_supported += c == "supported"
        null_contradicted += c == "contradicted"
        v = verdict_of(finals_of(rng_seed=130_000 + i, effects={("adamw", "rms"): Effect(pr=-0.03)}))
        found += claim(v, "adamw_collapses_more")["verdict"] == "supported"
    print(
        f"adamw_collapses_more: null supported {null_supported}, contradicted {null_contradicted}; power {found}/{n_sets}"
    )
    assert null_supported <= 0.05 * n_sets and null_contradicted <= 0.05 * n_sets
    assert found >= 0.8 * n_sets


def test_a_sphere_collapse_under_adamw_only_answers_every_claim():
    v = verdict_of(finals_of(rng_seed=7, effects={("adamw", "rms"): Effect(loss=-0.03, pr=-0.04)}))
    answers = {(c["id"], c["optimizer"]): c["verdict"] for c in v["claims"]}
    assert answers[("lower_loss", "adamw")] == "supported" and answers[("lower_rank", "adamw")] == "supported"
    assert answers[("lower_rank", "muon")] == "inconclusive"
    assert answers[("adamw_collapses_more", None)] == "supported"
    assert answers[("advice_adamw_keep_qk_norm", "adamw")] == "supported"
    assert answers[("advice_muon_drop_qk_norm", "muon")] == "inconclusive"
    assert v["comparisons"]["adamw"]["rms"]["state"] == "paradox"
    for c in v["claims"]:
        assert c["because"] and set(c) == {"id", "optimizer", "variant", "verdict", "because"}
    assert "[" in claim(v, "lower_loss", "adamw")["because"]  # the effect with its interval


def _judgement(loss: str, q: str, k: str) -> dict:
    effects = {
        m: {"n_pairs": 8, "mean_diff": 0.0, "ci_low": -0.01, "ci_high": 0.01, "p_holm": 0.5}
        for m in ("final_val_loss", *SPHERE)
    }
    return {
        "state": state_of(loss, q, k),
        "n_pairs": 8,
        "directions": {"final_val_loss": loss, SPHERE[0]: q, SPHERE[1]: k},
        "effects": effects,
    }


@pytest.mark.parametrize(
    "muon_loss,muon_rank,want",
    [
        ("lower", "no_difference", "contradicted"),  # QK-Norm helps Muon's loss: dropping it costs loss
        ("higher", "no_difference", "supported"),  # QK-Norm hurts Muon's loss
        ("no_difference", "lower", "supported"),  # costs rank, buys no loss
        ("no_difference", "no_difference", "inconclusive"),
    ],
)
def test_the_advice_for_muon_is_judged_from_loss_and_rank_together(muon_loss, muon_rank, want):
    comps = {"muon": {"rms": _judgement(muon_loss, muon_rank, muon_rank)}}
    answer = next(c for c in claims(comps, {}) if c["id"] == "advice_muon_drop_qk_norm")
    assert answer["verdict"] == want


@pytest.mark.parametrize(
    "dirs,state",
    [
        (("lower", "lower", "lower"), "paradox"),
        (("lower", "no_difference", "no_difference"), "better_loss_only"),
        (("no_difference", "lower", "lower"), "worse_rank_only"),
        (("no_difference", "no_difference", "no_difference"), "no_effect"),
        (("no_difference", "higher", "higher"), "higher_rank_only"),
        (("lower", "higher", "no_difference"), "better_loss_higher_rank"),
        (("higher", "lower", "higher"), "worse_loss_mixed_rank"),
        (("no_difference", "lower", "no_difference"), "lower_rank_q_only"),
    ],
)
def test_states_say_what_was_found(dirs, state):
    assert state_of(*dirs) == state


def test_judge_reports_the_secondary_stages_beside_the_deciding_metrics():
    df = finals_of(effects={("adamw", "rms"): Effect(pr=-0.05)}, rng_seed=2)
    j = judge(paradox_table(df, "best_lr", best=held_out_lrs(df)), "adamw", "rms")
    assert set(j["directions"]) >= {
        "final_val_loss",
        *SPHERE,
        "final_pr_q",
        "final_pr_k",
        "final_pr_q_pre",
        "final_pr_k_pre",
    }
    assert j["worse_rank"] and j["directions"]["final_pr_q"] == "lower"


@pytest.mark.parametrize(
    "lrs, why",
    [({"64": [0.002, 0.008]}, "best LRs differ"), ({"64": [0.032], "128": [0.032]}, "same best LR at every width")],
)
def test_the_matched_lr_disagreement_names_its_true_reason(lrs, why):
    from analysis.headline import _matched_words

    j = {
        "matched_lr": {
            "lrs": lrs,
            "disagreements": {"final_pr_q_sphere": {"matched_lr": "higher", "best_lr": "no_difference"}},
        }
    }
    line = _matched_words("muon", "rms", j)
    assert "BEST-LR AND MATCHED-LR DISAGREE" in line and why in line
