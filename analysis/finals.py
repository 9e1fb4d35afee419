"""Final values per trial and per layer: what the paired statistics compare.

`final_values` gives one row per trial: its settings, the final val loss, the final PR / d_head
of every probed tensor (wq, wk and the three stages of q and k: mean over layers and heads at
the trial's last step with that metric), the same at step 0 (init_pr_*) and the change from init
(delta_pr_* = final - init), the pre-norm token norms' coefficient of variation, the robustness
PRs, the loss at init and tokens per step. A completed trial whose metrics stop early or have
gaps is marked data_complete = false and its final values are left out (null).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import polars as pl

from trainer.cadence import eval_steps
from trainer.schema import STAGES, TENSORS

from .features import LAYER_TENSORS, Features, as_strings

FINAL_PR = tuple(f"final_pr_{t}" for t in ("q", "k", "wq", "wk"))  # pr / d_head, last step
# The three stages of q and k (trainer.schema.STAGES): stage -> (final PR of q, of k) / d_head.
STAGE_PR = {stage: tuple(f"final_pr_{t}" for t in pair) for stage, pair in STAGES.items()}
PRIMARY_STAGE = "sphere"  # the pre-registered primary rank metric: q, k with unit rows, no gain
PRIMARY_PR = STAGE_PR[PRIMARY_STAGE]
SECONDARY_PR = STAGE_PR["as_used"] + STAGE_PR["pre"]
ALL_PR = tuple(dict.fromkeys((*FINAL_PR, *PRIMARY_PR, *SECONDARY_PR)))
INIT_PR = tuple(f"init_pr_{t}" for t in TENSORS)  # pr / d_head at step 0
DELTA_PR = tuple(f"delta_pr_{t}" for t in TENSORS)  # final minus step 0, / d_head
NORM_CV = tuple(f"final_norm_cv_{t}" for t in STAGES["pre"])  # sd / mean of the pre-norm token norms
# Robustness of the activation PR: bias-corrected (pr - pr_bias) and centred (pr_centred), both /
# d_head at the last step, for the as-used q, k and for the primary stage; null for results written
# before the trainer recorded them.
ROBUST_PR = {
    "corrected": tuple(f"final_pr_{t}_corrected" for t in ("q", "k")),
    "centred": tuple(f"final_pr_{t}_centred" for t in ("q", "k")),
}
PRIMARY_ROBUST_PR = {
    kind: tuple(f"final_pr_{t}_{kind}" for t in STAGES[PRIMARY_STAGE]) for kind in ("corrected", "centred")
}
INIT_COLS = ("init", "init_std", "init_key")  # from config_json; init_key pairs like with like
ROBUST_COLS = ROBUST_PR["corrected"] + ROBUST_PR["centred"]
PRIMARY_ROBUST_COLS = PRIMARY_ROBUST_PR["corrected"] + PRIMARY_ROBUST_PR["centred"]
STAGE_COLS = tuple(c for c in ALL_PR if c not in FINAL_PR)  # the stage PRs beyond FINAL_PR
# Everything per trial that is left out (null) when its data are incomplete.
LAYER_PR = tuple(f"final_pr_{t}" for t in LAYER_TENSORS)  # per layer: as used, and the primary stage
FINAL_COLS = (
    "final_val_loss",
    *FINAL_PR,
    *STAGE_COLS,
    *INIT_PR,
    *DELTA_PR,
    *NORM_CV,
    *ROBUST_COLS,
    *PRIMARY_ROBUST_COLS,
)


def final_values(trials: pl.DataFrame, feats: Features) -> pl.DataFrame:
    """One row per trial: its settings, final val loss, final PR / d_head of q, k, wq, wk
    (mean over layers and heads at the trial's last step with that metric), loss at init and
    tokens per step."""
    pr_last = (
        feats.curves.filter(pl.col("name") == "pr").group_by("trial_id").agg(pl.col("step").max().alias("last_pr_step"))
    )
    ends = (
        feats.curves.filter(pl.col("name") == "pr")
        .group_by("trial_id", "tensor")
        .agg(
            pl.col("value").sort_by("step").last().alias("final"),
            pl.col("value").filter(pl.col("step") == 0).first().alias("init"),
        )
    )
    pr = ends.pivot(on="tensor", index="trial_id", values=["final", "init"])
    for t in TENSORS:
        for end in ("final", "init"):
            if f"{end}_{t}" not in pr.columns:
                pr = pr.with_columns(pl.lit(None, pl.Float64).alias(f"{end}_{t}"))
    pr = pr.select(
        "trial_id",
        *[pl.col(f"final_{t}").alias(f"final_pr_{t}") for t in TENSORS],
        *[pl.col(f"init_{t}").alias(f"init_pr_{t}") for t in TENSORS],
    )
    val = feats.val_loss.group_by("trial_id").agg(
        pl.col("step").max().alias("last_val_step"),
        pl.col("value").sort_by("step").last().alias("last_val_loss"),
        pl.col("value").filter(pl.col("step") == 0).first().alias("val_loss_0"),
    )
    train0 = feats.ends.filter((pl.col("name") == "train_loss") & (pl.col("step_first") == 0)).select(
        "trial_id", pl.col("first").alias("train_loss_0")
    )
    tokens = feats.ends.filter((pl.col("name") == "tokens") & (pl.col("step_last") > pl.col("step_first"))).select(
        "trial_id",
        ((pl.col("last") - pl.col("first")) / (pl.col("step_last") - pl.col("step_first"))).alias("tokens_per_step_m"),
    )
    robust = _robust_finals(feats.activation, pr)
    norm_cv = _norm_cv_finals(feats.activation)
    finite = lambda c: pl.when(pl.col(c).is_finite()).then(pl.col(c))  # noqa: E731
    # A completed trial whose metrics stop before steps_done lost parts (skipped as unreadable):
    # its last values are not final values, so they are left out (data_complete = false).
    reached = lambda c: pl.col(c).is_not_null() & (pl.col(c) >= pl.col("steps_done"))  # noqa: E731
    # ... and so does one with a gap: fewer distinct probe or train_loss steps than its config's
    # schedule (trainer.cadence) gives, or a step below 0. A schedule config_json does not give is not counted.
    counted = lambda have, want: pl.col(want).is_null() | (pl.col(have).fill_null(0) == pl.col(want))  # noqa: E731
    complete = (
        (pl.col("status") != "completed")
        | pl.col("steps_done").is_null()
        | (
            reached("last_pr_step")
            & reached("last_val_step")
            & counted("n_pr_steps", "probes_expected")
            & counted("n_train_steps", "train_expected")
            & (pl.col("first_step").fill_null(0) >= 0)
        )
    )
    probe_steps = (
        feats.curves.filter((pl.col("name") == "pr") & (pl.col("tensor") == "q"))
        .group_by("trial_id")
        .agg(pl.col("step").n_unique().alias("n_pr_steps"), pl.col("step").min().alias("first_step"))
    )
    train_steps = feats.ends.filter(pl.col("name") == "train_loss").select(
        "trial_id", pl.col("n_steps").alias("n_train_steps")
    )
    df = (
        trials.join(as_strings(pr), on="trial_id", how="left")
        .join(as_strings(pr_last), on="trial_id", how="left")
        .join(as_strings(probe_steps), on="trial_id", how="left")
        .join(as_strings(train_steps), on="trial_id", how="left")
        .join(expected_steps(trials), on="trial_id", how="left")
        .join(as_strings(val), on="trial_id", how="left")
        .join(as_strings(train0), on="trial_id", how="left")
        .join(as_strings(tokens), on="trial_id", how="left")
        .join(as_strings(robust), on="trial_id", how="left")
        .join(as_strings(norm_cv), on="trial_id", how="left")
        .with_columns(*init_columns(trials))
        .with_columns(
            # the last recorded val_loss; trials.final_val_loss when the metrics have none
            pl.coalesce(finite("last_val_loss"), finite("final_val_loss")).alias("final_val_loss"),
            pl.coalesce(finite("val_loss_0"), finite("train_loss_0")).alias("init_loss"),
            pl.coalesce(
                "tokens_per_step_m",
                pl.when(pl.col("steps_done") > 0).then(pl.col("tokens") / pl.col("steps_done")),
            ).alias("tokens_per_step"),
            *[
                (pl.col(c) / pl.col("d_head")).alias(c)
                for c in (*FINAL_PR, *STAGE_COLS, *INIT_PR, *ROBUST_COLS, *PRIMARY_ROBUST_COLS)
            ],
            complete.alias("data_complete"),
        )
        .with_columns((pl.col(f"final_pr_{t}") - pl.col(f"init_pr_{t}")).alias(f"delta_pr_{t}") for t in TENSORS)
        .with_columns(pl.when(pl.col("data_complete")).then(pl.col(c)).alias(c) for c in FINAL_COLS)
    )
    return df.select(
        "trial_id",
        "optimizer",
        "qk_norm",
        "width",
        "depth",
        "n_heads",
        "d_head",
        "lr",
        "seed",
        "status",
        "steps_planned",
        "steps_done",
        "diverged_step",
        "data_complete",
        "final_val_loss",
        *FINAL_PR,
        "init_loss",
        "tokens_per_step",
        *ROBUST_COLS,
        *INIT_COLS,
        *STAGE_COLS,
        *INIT_PR,
        *DELTA_PR,
        *NORM_CV,
        *PRIMARY_ROBUST_COLS,
    ).sort("trial_id")


def expected_steps(trials: pl.DataFrame) -> pl.DataFrame:
    """trial_id, probes_expected, train_expected: how many distinct probe steps (trainer.cadence) and
    train_loss steps (every log_every, and the last) a completed trial's config_json schedules;
    null when the config does not say (results written before these fields existed)."""
    rows = []
    cols = trials.select("trial_id", "steps_done", "config_json") if "config_json" in trials.columns else None
    for tid, done, text in cols.iter_rows() if cols is not None else []:
        probes = train = None
        try:
            c = json.loads(text) if text else {}
            steps, every, log_every = int(c["steps"]), int(c["eval_every"]), int(c["log_every"])
            if done is not None and int(done) == steps and steps > 0 and every > 0 and log_every > 0:
                cfg = SimpleNamespace(steps=steps, eval_every=every, eval_schedule=c["eval_schedule"])
                probes = len(eval_steps(cfg))
                train = len(set(range(0, steps, log_every)) | {steps - 1})
        except (KeyError, TypeError, ValueError):
            pass
        rows.append((tid, probes, train))
    return pl.DataFrame(
        rows, schema={"trial_id": pl.String, "probes_expected": pl.Int64, "train_expected": pl.Int64}, orient="row"
    )


def init_columns(trials: pl.DataFrame) -> list[pl.Expr]:
    """init, init_std (from config_json; null when not recorded) and init_key, one string that
    pairs and arm keys match on, so trials with different initialisations are never paired."""
    if "config_json" in trials.columns:
        cfg = pl.col("config_json")
        init = cfg.str.json_path_match("$.init")
        std = cfg.str.json_path_match("$.init_std").cast(pl.Float64, strict=False)
    else:
        init, std = pl.lit(None, pl.String), pl.lit(None, pl.Float64)
    key = pl.concat_str(init.fill_null("?"), std.cast(pl.String).fill_null("?"), separator=":")
    return [init.alias("init"), std.alias("init_std"), key.alias("init_key")]


def _robust_finals(activation: pl.DataFrame, pr: pl.DataFrame) -> pl.DataFrame:
    """trial_id, ROBUST_COLS and PRIMARY_ROBUST_COLS in PR units (not yet / d_head): pr - pr_bias
    and pr_centred of the as-used and the sphere q and k at the last step with that metric; null
    where the trial has no such rows."""
    last = (
        activation.filter(pl.col("name").is_in(["pr_bias", "pr_centred"]))
        .group_by("trial_id", "name", "tensor")
        .agg(pl.col("value").sort_by("step").last())
        .with_columns(pl.concat_str("name", "tensor", separator="_").alias("col"))
    )
    tensors = LAYER_TENSORS
    wide = pr.select("trial_id", *[f"final_pr_{t}" for t in tensors])
    if last.height:
        wide = wide.join(
            last.pivot(on="col", index="trial_id", values="value"), on="trial_id", how="full", coalesce=True
        )
    exprs = []
    for t in tensors:
        for c in (f"pr_bias_{t}", f"pr_centred_{t}"):
            if c not in wide.columns:
                wide = wide.with_columns(pl.lit(None, pl.Float64).alias(c))
        exprs += [
            (pl.col(f"final_pr_{t}") - pl.col(f"pr_bias_{t}")).alias(f"final_pr_{t}_corrected"),
            pl.col(f"pr_centred_{t}").alias(f"final_pr_{t}_centred"),
        ]
    return wide.select("trial_id", *exprs)


def _norm_cv_finals(activation: pl.DataFrame) -> pl.DataFrame:
    """trial_id and NORM_CV: norm_cv of q_pre and k_pre (mean over layers and heads) at the last
    step with that metric; null where the trial has none."""
    last = (
        activation.filter(pl.col("name") == "norm_cv")
        .group_by("trial_id", "tensor")
        .agg(pl.col("value").sort_by("step").last())
    )
    wide = last.pivot(on="tensor", index="trial_id", values="value") if last.height else last.select("trial_id")
    for t in STAGES["pre"]:
        if t not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(t))
    return wide.select("trial_id", *[pl.col(t).alias(f"final_norm_cv_{t}") for t in STAGES["pre"]])


def layer_finals(finals: pl.DataFrame, feats: Features) -> pl.DataFrame:
    """One row per (trial, layer): the final PR of q and k as used and on the sphere (LAYER_PR) of
    that layer (mean over its heads) / d_head at the trial's last step, for trials whose final
    values are complete."""
    tensors = LAYER_TENSORS
    lay = (
        feats.layers.group_by("trial_id", "layer", "tensor")
        .agg(pl.col("value").sort_by("step").last())
        .pivot(on="tensor", index=["trial_id", "layer"], values="value")
    )
    for t in tensors:
        if t not in lay.columns:
            lay = lay.with_columns(pl.lit(None, pl.Float64).alias(t))
    keep = [c for c in finals.columns if c not in FINAL_COLS or c == "final_val_loss"]
    return (
        finals.select(keep)
        .join(as_strings(lay), on="trial_id", how="inner")
        .with_columns(
            *[
                pl.when(pl.col("data_complete")).then(pl.col(t) / pl.col("d_head")).alias(f"final_pr_{t}")
                for t in tensors
            ]
        )
        .drop(*tensors)
        .sort("trial_id", "layer")
    )
