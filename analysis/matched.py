"""Matched-LR comparisons: both arms at the same LR, beside the best-LR ones.

PR falls steeply with LR, so when two arms' best LRs differ, a best-LR rank difference is mostly
the LR difference. Here the variant and none are compared at the same (width, lr) on the same
seed, at every LR of the grid from one arm's best LR to the other's, inclusive (the all-seeds best
LR of analysis.sensitivity.best_lrs, per width), where both arms are stable (no trial of either arm
diverged at that width and LR). With x_{w,s,lr} the paired difference (variant minus none) of
width w, seed s at lr, each (width, seed) is one unit,

    u_{w,s} = mean over the matched LRs of width w of x_{w,s,lr},

and the effect is the mean of the units with its 95% t interval and paired t-test (the units are
independent replicates; LRs of one seed are not). Holm within each family of the table, as in
analysis.paradox. The same settings fixed per sweep (depth, d_head, steps, init) are matched.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .paradox import BASELINE, FAMILY, METRICS, effect_frame, effect_stats, make_pairs, pair_keys
from .sensitivity import arm_keys

MATCHED_COLUMNS = [
    "optimizer",
    "qk_norm",
    "metric",
    "n_pairs",
    "n_units",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "sd_diff",
    "family",
    "lrs",
]


def matched_lrs(finals: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """Per (optimizer, variant, width[, init_key]) and lr: the LRs from one arm's best LR to the
    other's where neither arm has a diverged trial. Columns: optimizer, qk_norm (the variant),
    width, init_key when present, lr."""
    arm = arm_keys(finals)
    extra = [c for c in arm if c not in ("optimizer", "qk_norm", "width")]
    by = ["optimizer", "width", *extra]
    b = best.select(*arm, "best_lr")
    lo_hi = (
        b.filter(pl.col("qk_norm") != BASELINE)
        .join(b.filter(pl.col("qk_norm") == BASELINE).drop("qk_norm"), on=by, suffix="_n")
        .select(
            *by,
            "qk_norm",
            pl.min_horizontal("best_lr", "best_lr_n").alias("lo"),
            pl.max_horizontal("best_lr", "best_lr_n").alias("hi"),
        )
    )
    diverged = finals.group_by(*arm, "lr").agg((pl.col("status") == "diverged").any().alias("div"))
    div_v = diverged.filter(pl.col("qk_norm") != BASELINE).rename({"div": "div_v"})
    div_n = diverged.filter(pl.col("qk_norm") == BASELINE).drop("qk_norm").rename({"div": "div_n"})
    grid = finals.select(*by, "lr").unique()
    return (
        lo_hi.join(grid, on=by)
        .filter((pl.col("lr") >= pl.col("lo")) & (pl.col("lr") <= pl.col("hi")))
        .join(div_v, on=[*by, "qk_norm", "lr"], how="left")
        .join(div_n, on=[*by, "lr"], how="left")
        .filter(~(pl.col("div_v").fill_null(False) | pl.col("div_n").fill_null(False)))
        .select(*by, "qk_norm", "lr")
        .sort(*by, "qk_norm", "lr")
    )


def matched_table(finals: pl.DataFrame, best: pl.DataFrame, metrics=METRICS) -> pl.DataFrame:
    """One row per (optimizer, variant, metric), columns MATCHED_COLUMNS; `lrs` lists the matched
    LRs per width ("64: 0.002, 0.008; 128: 0.002")."""
    lrs = matched_lrs(finals, best)
    pairs = make_pairs(finals, "all_lrs", metrics).filter(pl.col("usable_v") & pl.col("usable_n"))
    on = [c for c in lrs.columns if c in pairs.columns]
    pairs = pairs.join(lrs, on=on, how="semi")
    unit = [k for k in pair_keys(finals, "all_lrs") if k != "lr"]
    rows = []
    for (opt, var), group in lrs.group_by("optimizer", "qk_norm", maintain_order=True):
        p = pairs.filter((pl.col("optimizer") == opt) & (pl.col("qk_norm") == var))
        listed = "; ".join(
            f"{w}: " + ", ".join(f"{x:g}" for x in g.get_column("lr").to_list())
            for (w,), g in group.group_by("width", maintain_order=True)
        )
        present = [m for m in metrics if f"{m}_v" in p.columns]
        diffs = p.select(*unit, "lr", *[(pl.col(f"{m}_v") - pl.col(f"{m}_n")).alias(m) for m in present])
        # sorted before and after the means, so that the sums run in one order: the same to the last digit
        units = diffs.sort(*unit, "lr").group_by(unit, maintain_order=True).agg(pl.col(present).mean()).sort(unit)
        for m in metrics:
            d = units.get_column(m).cast(pl.Float64).to_numpy() if m in units.columns else np.empty(0)
            stats = effect_stats(d[np.isfinite(d)], wilcoxon=False)
            stats["n_units"] = stats.pop("n_pairs")
            rows.append(
                dict(
                    optimizer=opt, qk_norm=var, metric=m, n_pairs=p.height, family=FAMILY.get(m, m), lrs=listed, **stats
                )
            )
    return effect_frame(rows, MATCHED_COLUMNS)


def matched_lrs_by_width(lrs_text: str | None) -> dict[str, list[float]]:
    """The `lrs` cell of matched_table as {width: [lr, ...]}."""
    out: dict[str, list[float]] = {}
    for part in (lrs_text or "").split("; "):
        if ": " in part:
            w, values = part.split(": ", 1)
            out[w] = [float(x) for x in values.split(", ") if x]
    return out
