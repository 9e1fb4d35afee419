"""Held-out LR selection: each seed's pair uses the LRs chosen on the other seeds.

Choosing an arm's best LR on the same seeds that are then compared favours an arm whose loss is
flat over LR: its best LR is wherever noise happened to be lowest on those seeds (the winner's
curse), so its selected losses are biased low, and a comparison with a sharply tuned arm finds a
"better loss" that is not there. Cross-fitting removes the bias: for every arm and seed s,

    lr*(arm, s) = argmin over lr of  mean over seeds s' != s of loss(arm, lr, s')

with loss the clipped final val loss of `analysis.sensitivity.clipped_losses` (a diverged trial
counts as the loss at init), ties to the lower LR, and seed s of the arm is then taken at
lr*(arm, s). No seed both selects and is tested. An arm with a single seed has nothing to hold
out: its seed is taken at the arm's own best LR and `held_out` is false there (the verdict says
so). `held_out_lrs` is computed once per report (Report.held_out_lrs) and every deciding table
("best_lr" selection) pairs on it.
"""

from __future__ import annotations

import polars as pl

from .sensitivity import arm_keys, best_lrs, clipped_losses

RULE = (
    "held_out_seed: each seed's pair takes every arm at the LR with the lowest mean clipped final "
    "val loss over the arm's OTHER seeds (leave one seed out; a diverged seed counts as the loss at "
    "init; ties to the lower LR), so no seed both selects the LR and tests the effect"
)


def held_out_lrs(finals: pl.DataFrame, best: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (arm, seed): the arm keys, seed, best_lr (chosen without this seed), held_out
    (false: the arm has no other seed, so `best`'s all-seeds LR is used) and n_select (trials the
    choice averaged over). `best` is analysis.sensitivity.best_lrs (computed here when not given)."""
    best = best_lrs(finals) if best is None else best
    arm = arm_keys(finals)
    df = (  # sorted, so that every sum runs in one order: the same choice to the last digit
        clipped_losses(finals)
        .filter(pl.col("loss").is_not_null() & pl.col("loss").is_not_nan())
        .sort(*arm, "lr", "seed")
    )
    cells = df.group_by(*arm, "lr", maintain_order=True).agg(pl.col("loss").sum().alias("total"), pl.len().alias("n"))
    seeds = finals.select(*arm, "seed").unique()
    own = df.select(*arm, "seed", "lr", pl.col("loss").alias("own"))
    held = (
        seeds.join(cells, on=arm, how="inner")
        .join(own, on=[*arm, "seed", "lr"], how="left")
        .with_columns((pl.col("n") - pl.col("own").is_not_null().cast(pl.UInt32)).alias("n_select"))
        .filter(pl.col("n_select") > 0)
        .with_columns(((pl.col("total") - pl.col("own").fill_null(0.0)) / pl.col("n_select")).alias("mean_other"))
        .sort(*arm, "seed", "mean_other", "lr")
        .group_by(*arm, "seed", maintain_order=True)
        .first()
        .select(*arm, "seed", pl.col("lr").alias("best_lr"), pl.lit(True).alias("held_out"), "n_select")
    )
    fallback = (
        seeds.join(held.select(*arm, "seed"), on=[*arm, "seed"], how="anti")
        .join(best.select(*arm, "best_lr"), on=arm, how="inner")
        .with_columns(pl.lit(False).alias("held_out"), pl.lit(0, pl.UInt32).alias("n_select"))
    )
    return pl.concat([held, fallback.select(held.columns)], how="vertical").sort(*arm, "seed")
