"""The alternatives to QK-Norm in the report (issue 20): QK-Clip and the logit soft-cap compared with
none like every variant, Muon with per-head orthogonalisation as its own optimizer arm, the ranking of
every variant, the claim "the alternative gives QK-Norm's loss benefit without its rank effect" (its
rule, and its error rates simulated on per-trial finals: the measured figures are in
docs/analysis.md), the max-logit figure and QK-Clip's activity, checked by hand on the written rows."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest

from analysis.alternatives import RANKING_COLUMNS, clip_heads, clip_summary
from analysis.answers import QUESTION
from analysis.arms import MUON_PER_HEAD
from analysis.claims import alternative_claim, alternative_verdict
from analysis.features import as_strings
from analysis.judge import judge
from analysis.lr_selection import held_out_lrs
from analysis.paradox import paradox_table, select
from analysis.report import analyse, write_report
from analysis.sensitivity import best_lrs
from analysis.summary import markdown
from analysis.verdict import build_verdict, paradox_results
from benchmarks.synthetic_results import Effect, SyntheticSpec, trial_finals, write_results
from trainer.schema import METRICS_DIR, TRIALS_FILE

CLAIM = "alternative_loss_without_rank_effect"
OPTS = ("adamw", "muon", MUON_PER_HEAD)
VARIANTS = ("none", "rms", "qk_clip", "softcap")
TAU, CAP = 30.0, 25.0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """3 optimizers (plain and per-head Muon) x 4 variants x 2 widths x 3 LRs x 3 seeds. The raw max
    logit rises to ~50, so QK-Clip (tau 30) fires, except under plain Muon (its qk_clip logits stay
    low: the clip never fires there); QK-Clip lowers AdamW's loss and leaves the rank; QK-Norm
    lowers AdamW's loss and rank; only per-head Muon's rms lowers the loss (pooling it with plain
    Muon would dilute the effect)."""
    root = tmp_path_factory.mktemp("alternatives")
    spec = SyntheticSpec(
        optimizers=OPTS,
        qk_norms=VARIANTS,
        widths=(64, 128),
        lrs=(3e-3, 1e-2, 3e-2),
        seeds=(0, 1, 2),
        steps=100,
        eval_every=20,
        logit_growth=40.0,
        qk_clip_tau=TAU,
        logit_softcap=CAP,
        spectra="last",
        junk_files=False,
        effects={
            ("adamw", "rms"): Effect(loss=-0.05, pr=-0.05),
            ("adamw", "qk_clip"): Effect(loss=-0.05),
            ("muon", "qk_clip"): Effect(logit=-40.0),
            (MUON_PER_HEAD, "rms"): Effect(loss=-0.08),
        },
    )
    write_results(spec, root / "sweep")
    r = analyse(root / "sweep", n_boot=200)
    write_report(r, root / "out")
    return dict(spec=spec, r=r, dir=root / "sweep", out=root / "out")


# ---- Muon per head: its own arm -----------------------------------------------------------------
def test_per_head_muon_is_its_own_arm_and_never_paired_with_plain_muon(sweep):
    r = sweep["r"]
    on_disk = pl.read_parquet(sweep["dir"] / TRIALS_FILE)
    assert set(on_disk["optimizer"]) == {"adamw", "muon"}  # the trainer writes "muon" for both
    per_head = on_disk["config_json"].str.json_path_match("$.muon_per_head") == "true"
    trials = r.results.trials
    assert set(trials["optimizer"]) == set(OPTS)
    assert (trials["muon_per_head"] == (trials["optimizer"] == MUON_PER_HEAD)).all()
    assert trials.filter(pl.col("muon_per_head")).height == per_head.sum() == 4 * 2 * 3 * 3
    for table in (r.finals, r.status, r.paradox_best, r.best_lrs, r.variant_ranking):
        assert MUON_PER_HEAD in set(table["optimizer"]), table.columns
    # every deciding comparison holds 2 widths x 3 seeds: per-head trials are not pooled with plain ones
    dec = r.paradox_best.filter(pl.col("metric") == "final_val_loss")
    assert dec.height == 3 * 3 and (dec["n_pairs"] == 6).all()
    loss = {(o, q): e for o, q, e in dec.select("optimizer", "qk_norm", "mean_diff").iter_rows()}
    assert loss[(MUON_PER_HEAD, "rms")] < -0.05 and abs(loss[("muon", "rms")]) < 0.03
    # the difference in differences compares each non-AdamW optimizer with AdamW
    did = r.interaction.filter((pl.col("selection") == "best_lr") & (pl.col("metric") == "final_val_loss"))
    assert set(did["optimizer"]) == {"muon", MUON_PER_HEAD} and set(did["reference"]) == {"adamw"}
    assert set(r.verdict["scope"]["optimizers"]) == set(OPTS)
    assert r.verdict["rules"]["optimizer_label"]


def test_a_muon_config_without_the_flag_stays_plain_muon():
    from analysis.arms import label_optimizers

    df = pl.DataFrame(
        {
            "optimizer": ["muon", "muon", "adamw", "muon"],
            "config_json": ['{"muon_per_head": true}', '{"muon_per_head": false}', '{"muon_per_head": true}', None],
        }
    )
    out = label_optimizers(df)
    assert out["optimizer"].to_list() == [MUON_PER_HEAD, "muon", "adamw", "muon"]
    assert out["muon_per_head"].to_list() == [True, False, False, False]


# ---- the ranking ---------------------------------------------------------------------------------
def test_the_ranking_has_every_variant_per_optimizer_and_width(sweep):
    rank = sweep["r"].variant_ranking
    assert rank.columns == RANKING_COLUMNS
    assert rank.height == len(OPTS) * 3 * len(VARIANTS)  # widths 64, 128 and all widths (null)
    for (o, w), g in rank.group_by("optimizer", "width"):
        assert g["qk_norm"].to_list() == list(VARIANTS), (o, w)  # report order, none first
        assert sorted(g["rank_loss"].to_list()) == sorted(g["final_val_loss"].rank("min").cast(pl.Int64).to_list())
        assert g["rank_loss"].min() == 1 and g["rank_pr"].min() == 1
        assert g["pick"].sum() >= 1 and g.filter(pl.col("pick"))["not_worse_loss"].all()
        best = g.filter(pl.col("rank_loss") == 1).row(0, named=True)
        assert best["not_worse_loss"]
        overlap = g["final_val_loss_ci_low"] <= best["final_val_loss_ci_high"]
        assert g["not_worse_loss"].to_list() == overlap.to_list()
    none = rank.filter(pl.col("qk_norm") == "none")
    assert none["effect_final_val_loss"].is_null().all() and none["n_pairs"].is_null().all()
    assert (rank["n_seeds"] == 3).all()


def test_ranking_values_come_from_the_held_out_trials_and_the_deciding_tables(sweep):
    r = sweep["r"]
    rank = r.variant_ranking
    chosen = select(r.finals, "best_lr", r.held_out_lrs)
    # a per-width row: the mean over the arm's seeds at their held-out LRs
    row = rank.filter((pl.col("optimizer") == "adamw") & (pl.col("width") == 128) & (pl.col("qk_norm") == "qk_clip"))
    trials = chosen.filter(
        (pl.col("optimizer") == "adamw") & (pl.col("width") == 128) & (pl.col("qk_norm") == "qk_clip")
    )
    assert row["final_val_loss"][0] == pytest.approx(trials["final_val_loss"].mean(), abs=1e-12)
    assert row["final_pr_q_sphere"][0] == pytest.approx(trials["final_pr_q_sphere"].mean(), abs=1e-12)
    # an all-widths row: each seed averaged over the widths, then the mean and t interval over seeds
    pooled = rank.filter(
        (pl.col("optimizer") == "adamw") & pl.col("width").is_null() & (pl.col("qk_norm") == "qk_clip")
    )
    seeds = (
        chosen.filter((pl.col("optimizer") == "adamw") & (pl.col("qk_norm") == "qk_clip"))
        .group_by("seed")
        .agg(pl.col("final_val_loss").mean())["final_val_loss"]
        .to_numpy()
    )
    half = 4.302652729911275 * seeds.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert pooled["final_val_loss"][0] == pytest.approx(seeds.mean(), abs=1e-12)
    assert pooled["final_val_loss_ci_high"][0] == pytest.approx(seeds.mean() + half, abs=1e-9)
    # effects: the deciding table for all widths, the per-width best-LR cells for one width
    dec = r.paradox_best.filter(
        (pl.col("optimizer") == "adamw") & (pl.col("qk_norm") == "qk_clip") & (pl.col("metric") == "final_val_loss")
    )
    assert pooled["effect_final_val_loss"][0] == pytest.approx(dec["mean_diff"][0])
    assert pooled["effect_final_val_loss_ci_low"][0] == pytest.approx(dec["ci_low"][0])
    cell = r.cells.filter(
        (pl.col("selection") == "best_lr")
        & (pl.col("optimizer") == "adamw")
        & (pl.col("qk_norm") == "qk_clip")
        & (pl.col("width") == 128)
        & (pl.col("metric") == "final_pr_k_sphere")
    )
    assert row["effect_final_pr_k_sphere"][0] == pytest.approx(cell["mean_diff"][0])
    # QK-Clip under AdamW: as low a loss as the best, and a higher sphere rank than QK-Norm
    assert pooled["not_worse_loss"][0] and pooled["pick"][0]


def test_the_ranking_and_clip_tables_are_written_and_in_the_api(sweep):
    out, r = sweep["out"], sweep["r"]
    for name in ("variant_ranking", "clip_activity"):
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0 and (out / "tables" / f"{name}.tex").exists()
        assert name in r.tables()
    csv = pl.read_csv(out / "tables" / "variant_ranking.csv")
    assert csv.columns == RANKING_COLUMNS and csv.height == r.variant_ranking.height
    summary = (out / "summary.md").read_text()
    assert "## Every variant ranked at its held-out best LR" in summary
    assert "| optimizer | qk_norm | lrs | n_seeds | val loss | sphere PR q | sphere PR k |" in summary


# ---- the claim -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loss,q,k,want",
    [
        ("lower", "no_difference", "no_difference", "supported"),
        ("lower", "higher", "no_difference", "supported"),  # a rank rise is no rank cost
        ("lower", "lower", "no_difference", "inconclusive"),  # one of q, k lower
        ("lower", "lower", "lower", "contradicted"),  # QK-Norm's rank cost too
        ("no_difference", "lower", "lower", "contradicted"),
        ("higher", "no_difference", "no_difference", "contradicted"),
        ("no_difference", "no_difference", "no_difference", "inconclusive"),
        ("not_enough_data", "not_enough_data", "not_enough_data", "inconclusive"),
    ],
)
def test_the_alternative_claim_rule(loss, q, k, want):
    assert alternative_verdict(loss, q, k) == want


def test_every_alternative_under_every_optimizer_is_answered(sweep):
    v = sweep["r"].verdict
    answers = {(c["optimizer"], c["variant"]): c for c in v["claims"] if c["id"] == CLAIM}
    assert set(answers) == {(o, a) for o in OPTS for a in ("qk_clip", "softcap")}
    assert answers[("adamw", "qk_clip")]["verdict"] == "supported"
    because = answers[("adamw", "qk_clip")]["because"]
    assert "val loss" in because and "sphere PR q" in because and "[" in because
    assert "for reference rms vs none under adamw: val loss" in because
    assert "the clip never fired in the compared trials under muon" in answers[("muon", "qk_clip")]["because"]
    assert not any(c["id"] == CLAIM and c["variant"] == "rms" for c in v["claims"])
    summary = (sweep["out"] / "summary.md").read_text()
    assert (
        "- QK-Clip (qk_clip) gives QK-Norm's loss benefit without its rank effect under adamw: **SUPPORTED**" in summary
    )
    assert "- The logit soft-cap (softcap) lowers the loss under adamw: **" in summary
    assert (
        "And do the alternatives to a norm in this sweep (QK-Clip (qk_clip), the logit soft-cap (softcap))" in summary
    )


# ---- the figure and the clip ---------------------------------------------------------------------
def test_the_max_logit_figure_is_drawn_and_the_bounds_hold(sweep):
    path = sweep["out"] / "figures" / "max_logit_over_training.png"
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert ((img[..., :3].max(-1) - img[..., :3].min(-1)) > 0.3).mean() > 0.002  # coloured lines
    assert "figures/max_logit_over_training.png" in (sweep["out"] / "summary.md").read_text()
    r = sweep["r"]
    logits = as_strings(r.features.logits).join(r.finals.select("trial_id", "optimizer", "qk_norm"), on="trial_id")
    top = dict(logits.group_by("qk_norm").agg(pl.col("value").max()).iter_rows())
    assert top["qk_clip"] <= TAU + 1e-9 and top["softcap"] <= CAP and top["none"] > 45  # the clip and the cap bound it


def _hand_clip(folder) -> pl.DataFrame:
    """clip_activity recomputed from the part files alone: each clip_fraction row weighted by the steps
    since the head's previous row, optimizer labelled from config_json."""
    m = pl.read_parquet(folder / METRICS_DIR / "*" / "*.parquet", hive_partitioning=False).with_columns(
        pl.col("trial_id").cast(pl.String)
    )
    t = pl.read_parquet(folder / TRIALS_FILE).select(
        pl.col("trial_id").cast(pl.String),  # Categorical on disk; the ids below are Python strings
        pl.when(pl.col("config_json").str.contains('"muon_per_head": true'))
        .then(pl.lit(MUON_PER_HEAD))
        .otherwise(pl.col("optimizer"))
        .alias("optimizer"),
        "width",
        "lr",
    )
    rows = []
    for (tid,), g in m.filter(pl.col("name") == "clip_fraction").group_by("trial_id"):
        for (_, _), h in g.group_by("layer", "head"):
            steps = np.sort(h["step"].to_numpy())
            frac = h.sort("step")["value"].to_numpy()
            span = np.diff(np.concatenate([[0], steps]))
            rows.append((tid, float(span.sum()), float((frac * span).sum())))
    heads = pl.DataFrame(rows, schema=["trial_id", "steps", "clipped"], orient="row")
    gamma = m.filter(pl.col("name") == "clip_gamma_min").group_by("trial_id").agg(pl.col("value").min().alias("g"))
    ever = heads.group_by("trial_id").agg((pl.col("clipped") > 0).sum().alias("ever"), pl.len().alias("n_heads"))
    per_trial = heads.group_by("trial_id").agg(pl.col("steps").sum(), pl.col("clipped").sum())
    return (
        per_trial.join(ever, on="trial_id")
        .join(gamma, on="trial_id")
        .join(t, on="trial_id")
        .group_by("optimizer", "width", "lr")
        .agg(
            (pl.col("clipped").sum() / pl.col("steps").sum()).alias("clip_fraction"),
            pl.col("g").min().alias("clip_gamma_min"),
            (pl.col("ever").sum() / pl.col("n_heads").sum()).alias("heads_ever_clipped"),
            pl.col("steps").sum().alias("head_steps"),
            pl.len().alias("n_trials"),
        )
        .sort("optimizer", "width", "lr")
    )


def test_clip_activity_matches_a_hand_computation(sweep):
    got = sweep["r"].clip_activity
    want = _hand_clip(sweep["dir"])
    assert got.height == want.height == len(OPTS) * 2 * 3  # (optimizer, width, lr), qk_clip trials only
    assert got.select("optimizer", "width", "lr").equals(want.select("optimizer", "width", "lr"))
    assert (got["qk_clip_tau"] == TAU).all() and (got["n_trials"] == 3).all() and (got["n_recorded"] == 3).all()
    for c in ("clip_fraction", "clip_gamma_min", "heads_ever_clipped", "head_steps"):
        np.testing.assert_allclose(
            got[c].to_numpy().astype(float), want[c].to_numpy().astype(float), atol=1e-12, err_msg=c
        )
    assert got.filter(pl.col("optimizer") == "muon")["fired"].not_().all()
    assert got.filter(pl.col("optimizer") != "muon")["fired"].all()
    assert got.filter(pl.col("optimizer") != "muon")["clip_fraction"].min() > 0.1
    assert got.group_by("optimizer", "width").agg(pl.col("at_best_lr").sum())["at_best_lr"].to_list() == [1] * 6


def test_the_summary_says_how_often_the_clip_fired(sweep):
    clip = sweep["r"].verdict["clip_activity"]
    hand = _hand_clip(sweep["dir"])
    share = float((hand["clip_fraction"] * hand["head_steps"]).sum() / hand["head_steps"].sum())
    assert clip["head_step_share"] == pytest.approx(share, abs=1e-12)
    assert clip["fired"] is True and clip["taus"] == [TAU] and clip["deciding_share"]["muon"] == 0
    assert clip["never_fired"] == [{"optimizer": "muon", "width": 64}, {"optimizer": "muon", "width": 128}]
    line = clip["sentence"]
    assert line.startswith(f"QK-Clip fired on {100 * share:.1f}% of head-steps (tau 30)")
    assert "it never fired under muon at widths 64, 128" in line
    assert line in sweep["r"].verdict["headline"]
    assert f"- {line}" in (sweep["out"] / "summary.md").read_text()
    assert "## QK-Clip activity per optimizer, width and LR" in (sweep["out"] / "summary.md").read_text()


def test_a_clip_that_never_fired_is_said_plainly(tmp_path):
    spec = SyntheticSpec(
        optimizers=("adamw",),
        qk_norms=("none", "qk_clip"),
        widths=(64,),
        lrs=(1e-2, 3e-2),
        seeds=(0, 1),
        steps=50,
        spectra="last",
        junk_files=False,
    )  # the default tau (100) is far above the synthetic logits (~5-15)
    write_results(spec, tmp_path / "s")
    r = analyse(tmp_path / "s", n_boot=200)
    clip = r.verdict["clip_activity"]
    assert clip["fired"] is False and clip["head_step_share"] == 0
    assert clip["sentence"].startswith("QK-Clip NEVER FIRED (tau 100)") and "exactly as none" in clip["sentence"]
    assert clip["sentence"] in markdown(r)
    assert not r.clip_activity["fired"].any() and (r.clip_activity["clip_gamma_min"] == 1).all()


def test_clip_without_recorded_rows_is_unknown_not_silent():
    finals = pl.DataFrame(
        {
            "trial_id": ["a", "b"],
            "optimizer": ["adamw", "adamw"],
            "qk_norm": ["qk_clip", "none"],
            "width": [64, 64],
            "lr": [1e-2, 1e-2],
            "seed": [0, 0],
            "status": ["completed", "completed"],
        }
    )
    settings = pl.DataFrame({"trial_id": ["a", "b"], "qk_clip_tau": [30.0, None], "logit_softcap": [None, None]})
    clip = pl.DataFrame(
        schema={
            "trial_id": pl.String,
            "step": pl.Int64,
            "name": pl.String,
            "layer": pl.Int16,
            "head": pl.Int16,
            "value": pl.Float64,
        }
    )
    summary = clip_summary(clip_heads(clip, finals, settings))
    assert summary["recorded"] is False and "not recorded" in summary["sentence"]


def test_a_sweep_without_the_alternatives_reads_as_before(tmp_path):
    spec = SyntheticSpec(widths=(64,), lrs=(1e-2, 3e-2), seeds=(0, 1, 2), steps=50, spectra="last", junk_files=False)
    write_results(spec, tmp_path / "s")
    r = analyse(tmp_path / "s", n_boot=200)
    v = r.verdict
    assert "clip_activity" not in v and not any(c["id"] == CLAIM for c in v["claims"])
    assert set(r.results.trials["optimizer"]) == {"adamw", "muon"} and not r.results.trials["muon_per_head"].any()
    assert r.clip_activity.height == 0 and r.variant_ranking.height == 2 * 2 * 2  # 2 optimizers x (w64, all) x 2
    text = markdown(r)
    assert QUESTION + "\n" in text and "QK-Clip" not in text
    json.dumps(v, allow_nan=False)


# ---- simulations: the claim's error rates ---------------------------------------------------------
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SIM_OPTS = ("adamw", "muon")
ALTS = ("qk_clip", "softcap")


def finals_of(**kw) -> pl.DataFrame:
    kw.setdefault("lrs", LRS)
    kw.setdefault("seeds", (0, 1, 2, 3))
    kw.setdefault("qk_norms", VARIANTS)
    return pl.DataFrame(trial_finals(SyntheticSpec(**kw)), infer_schema_length=None)


def alternative_answers(df: pl.DataFrame) -> list[str]:
    """The claim per (optimizer, alternative), from the deciding table as the verdict judges it (the
    same Holm family; without the side tables the verdict also builds, which the claim does not read)."""
    table = paradox_table(df, "best_lr", wilcoxon=False, best=held_out_lrs(df))
    return [
        alternative_claim(o, a, judge(table, o, a), judge(table, o, "rms"))["verdict"] for o in SIM_OPTS for a in ALTS
    ]


def test_the_fast_simulation_path_answers_as_the_verdict_does():
    df = finals_of(
        rng_seed=5, effects={("adamw", "qk_clip"): Effect(loss=-0.03), ("muon", "softcap"): Effect(pr=-0.03)}
    )
    best = best_lrs(df)
    v = build_verdict(paradox_results(df, best, held_out_lrs(df, best)), {"partial": False})
    want = {(c["optimizer"], c["variant"]): c["verdict"] for c in v["claims"] if c["id"] == CLAIM}
    assert alternative_answers(df) == [want[(o, a)] for o in SIM_OPTS for a in ALTS]
    assert want[("adamw", "qk_clip")] == "supported"


def rates(n_sets: int, seed0: int, effects: dict) -> dict[str, float]:
    """Per claim (2 optimizers x 2 alternatives per dataset): the share of each answer, and the share
    of datasets with any 'supported'."""
    counts = {"supported": 0, "contradicted": 0, "inconclusive": 0}
    any_supported = 0
    for i in range(n_sets):
        answers = alternative_answers(finals_of(rng_seed=seed0 + i, effects=effects))
        assert len(answers) == len(SIM_OPTS) * len(ALTS)
        for a in answers:
            counts[a] += 1
        any_supported += "supported" in answers
    n = n_sets * len(SIM_OPTS) * len(ALTS)
    return {**{k: c / n for k, c in counts.items()}, "any_supported": any_supported / n_sets}


@pytest.mark.slow
def test_alternative_claim_false_positive_rate_on_null_data():
    """No effect anywhere (none, rms, qk_clip, softcap alike): a 'supported' needs a Holm-significant
    lower loss, so its rate per claim stays at or below alpha (measured 0.25% per claim, 1.0% of
    datasets with any, 200 datasets x 4 claims)."""
    r = rates(200, 140_000, {})
    print("alternative claim, null, 200 datasets x 4 claims:", r)
    assert r["supported"] <= 0.05 and r["contradicted"] <= 0.05
    assert r["any_supported"] <= 0.06


@pytest.mark.slow
def test_alternative_claim_power_with_a_loss_effect_and_no_rank_effect():
    """The alternatives lower the loss by 0.02 (2 sd of a paired difference) and leave the sphere rank;
    QK-Norm lowers both (the paradox it is said to have): 8 pairs per comparison. Measured: supported
    86.0% per claim, contradicted 0.5% (100 datasets x 4 claims)."""
    effects = {(o, a): Effect(loss=-0.02) for o in SIM_OPTS for a in ALTS}
    effects |= {(o, "rms"): Effect(loss=-0.02, pr=-0.02) for o in SIM_OPTS}
    r = rates(100, 150_000, effects)
    print("alternative claim, loss -0.02 without a rank effect, 100 datasets x 4 claims:", r)
    assert r["supported"] >= 0.8 and r["contradicted"] <= 0.05


@pytest.mark.slow
def test_alternative_claim_is_contradicted_when_the_alternative_costs_the_rank_too():
    """The alternatives lower the loss and the sphere PR by 0.02 each (2 sd). Measured: contradicted
    85.8% per claim; supported 13.8%: "neither sphere PR lower" is a rank drop not detected, not one
    shown absent (with the loss found lower and the drop missed, about 0.86 x 0.14 of the claims).
    The because's intervals say how large a rank drop the data still allow."""
    effects = {(o, a): Effect(loss=-0.02, pr=-0.02) for o in SIM_OPTS for a in ALTS}
    r = rates(100, 160_000, effects)
    print("alternative claim, loss and sphere PR -0.02, 100 datasets x 4 claims:", r)
    assert r["contradicted"] >= 0.8 and r["supported"] <= 0.2
