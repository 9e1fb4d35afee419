"""Loss against learning rate per arm, each arm's best LR, and LR sensitivity (Wortsman et al. 2023).

`best_lrs` chooses each arm's best LR on all its seeds: the report calls it once (Report.best_lrs)
and passes the table to the descriptive tables and figures "at the best LR" (bracketing, LR
sensitivity, width scaling, PR curves). The paired comparisons that decide use the held-out
choice of analysis.lr_selection instead.

LR sensitivity of an arm = mean over its LR grid of min(L(lr), L_init) - min over lr of L(lr),
where L(lr) is the final val loss and L_init the loss at initialisation. A diverged trial counts
as L_init (min(inf, L_init)); L(lr) averages over seeds after that clipping. Trials still
running, pruned or failed are left out.

An arm is (optimizer, qk_norm, width), plus `init_key` when the finals carry it (a sweep that
varies init / init_std tunes each initialisation separately and never mixes them).

Bracketing: an arm's best LR is interior when its LR grid (the LRs with a finished trial) has
an LR below and an LR above it; an optimum at the lowest or highest LR tried (or a grid of fewer
than 3 LRs) is an edge optimum, and the true optimum may lie outside the grid.
"""

from __future__ import annotations

import polars as pl

from trainer.schema import ARM, FINISHED_STATUSES


def arm_keys(df: pl.DataFrame) -> list[str]:
    """The columns that define an arm in this frame: ARM, plus init_key when present."""
    return [*ARM, *(["init_key"] if "init_key" in df.columns else [])]


def clipped_losses(finals: pl.DataFrame) -> pl.DataFrame:
    """The finished trials with complete data, with `loss` = min(final val loss, the arm's loss at
    init) (a diverged trial counts as the loss at init; a null loss stays null) and arm_init_loss."""
    ARM = arm_keys(finals)  # noqa: N806
    init = finals.group_by(*ARM).agg(pl.col("init_loss").mean().alias("arm_init_loss"))
    keep = pl.col("status").is_in(FINISHED_STATUSES)
    if "data_complete" in finals.columns:  # metrics cut short by a skipped part: no final loss
        keep = keep & pl.col("data_complete").fill_null(True)
    df = finals.filter(keep).join(init, on=ARM, how="left")
    loss = pl.when(pl.col("status") == "diverged").then(pl.col("arm_init_loss")).otherwise(pl.col("final_val_loss"))
    # min(L, L_init); a null init means no clipping, a null loss stays null
    clipped = pl.when(loss.is_not_null()).then(pl.min_horizontal(loss, pl.col("arm_init_loss")))
    return df.with_columns(clipped.alias("loss"))


def lr_curve(finals: pl.DataFrame) -> pl.DataFrame:
    """Per (arm, lr): mean clipped final val loss over seeds (`clipped_losses`), and counts."""
    ARM = arm_keys(finals)  # noqa: N806
    return (
        clipped_losses(finals)
        .group_by(*ARM, "lr")
        .agg(
            pl.col("loss").mean().alias("mean_loss"),
            pl.col("loss").std().alias("sd_loss"),
            pl.col("loss").is_not_null().sum().alias("n_seeds"),
            (pl.col("status") == "diverged").sum().alias("n_diverged"),
            pl.col("arm_init_loss").first().alias("init_loss"),
        )
        .sort(*ARM, "lr")
    )


def best_lrs(finals: pl.DataFrame) -> pl.DataFrame:
    """Each arm's best LR: the one place the report chooses it (analysis.report.analyse calls it
    once; every table and figure at "the best LR" reads its result).

        best_lr(arm) = argmin over lr of mean_loss(arm, lr)

    with mean_loss the seed mean of the clipped final val loss (`lr_curve`); LRs whose mean is
    null or NaN are left out, and a tie goes to the lower LR. Columns: the arm keys (`arm_keys`),
    best_lr, best_loss (that mean)."""
    curve = lr_curve(finals)
    ARM = arm_keys(curve)  # noqa: N806
    return (
        curve.filter(pl.col("mean_loss").is_not_null() & pl.col("mean_loss").is_not_nan())
        .sort(*ARM, "mean_loss", "lr")
        .group_by(*ARM, maintain_order=True)
        .first()
        .select(*ARM, pl.col("lr").alias("best_lr"), pl.col("mean_loss").alias("best_loss"))
    )


def lr_sensitivity(curve: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """Per arm: the grid (n_lrs, lr_min, lr_max), best_lr and best_loss (from `best`, the
    `best_lrs` table), init_loss, n_diverged and lr_sensitivity = mean_loss over the grid minus
    best_loss (the module's formula), from `curve` (`lr_curve`)."""
    ARM = arm_keys(curve)  # noqa: N806
    return (
        curve.group_by(*ARM)
        .agg(
            pl.len().alias("n_lrs"),
            pl.col("lr").min().alias("lr_min"),
            pl.col("lr").max().alias("lr_max"),
            pl.col("mean_loss").mean().alias("mean_loss_over_grid"),
            pl.col("n_diverged").sum().alias("n_diverged"),
            pl.col("init_loss").first().alias("init_loss"),
        )
        .join(best, on=ARM, how="left")
        .with_columns((pl.col("mean_loss_over_grid") - pl.col("best_loss")).alias("lr_sensitivity"))
        .select(*ARM, "n_lrs", "lr_min", "lr_max", "best_lr", "best_loss", "init_loss", "lr_sensitivity", "n_diverged")
        .sort(*ARM)
    )


def bracketing(curve: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """Per arm of `best` (the `best_lrs` table): best_lr, best_loss, the grid's lr_min / lr_max /
    n_lrs (the LRs of `curve` with a mean loss), and `interior` (an LR tried below and above the
    best), `edge` ("low", "high" or null)."""
    ARM = arm_keys(curve)  # noqa: N806
    ok = curve.filter(pl.col("mean_loss").is_not_null() & pl.col("mean_loss").is_not_nan())
    grid = ok.group_by(*ARM).agg(
        pl.len().alias("n_lrs"), pl.col("lr").min().alias("lr_min"), pl.col("lr").max().alias("lr_max")
    )
    return (
        best.join(grid, on=ARM, how="left")
        .with_columns(
            ((pl.col("best_lr") > pl.col("lr_min")) & (pl.col("best_lr") < pl.col("lr_max"))).alias("interior"),
            pl.when(pl.col("best_lr") <= pl.col("lr_min"))
            .then(pl.lit("low"))
            .when(pl.col("best_lr") >= pl.col("lr_max"))
            .then(pl.lit("high"))
            .alias("edge"),
        )
        .sort(*ARM)
    )
