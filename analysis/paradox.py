"""Paired statistics of the paradox: each QK-Norm variant against none, per optimizer.

A pair is two completed trials that differ only in qk_norm: same optimizer, width, lr and seed
("all_lrs", the pairing of paradox.csv), or same optimizer, width and seed with each arm at its
own best LR for that width ("best_lr"). Diverged trials are left out of pairs and counted.

For each (optimizer, variant, metric): the mean paired difference (variant minus none), a 95%
percentile bootstrap interval resampling pairs (seeded), a paired t-test (p_value) and a Wilcoxon
signed-rank test (p_wilcoxon), and Holm's correction of p_value over every test in the table
(the family is the table: paradox.csv for all_lrs, tables/paradox_best_lr.csv for best_lr).
Fewer than MIN_PAIRS pairs: no interval, no test ("not enough data").
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .features import FINAL_PR
from .sensitivity import best_lrs, lr_curve
from .stats import bootstrap_ci, holm, paired_tests

METRICS = ("final_val_loss", *FINAL_PR)
BASELINE = "none"
MIN_PAIRS = 3
ALPHA = 0.05
SELECTIONS = ("all_lrs", "best_lr")
FIXED = ("depth", "d_head", "steps_planned")
_ORDER = {"none": 0, "rms": 1, "rms_frozen": 2, "layer": 3}
COLUMNS = ["optimizer", "qk_norm", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high",
           "p_value", "p_holm", "p_wilcoxon", "sd_diff", "n_excluded_diverged",
           "n_excluded_other", "selection"]


def variants(finals: pl.DataFrame) -> list[str]:
    qs = set(finals.get_column("qk_norm").drop_nulls().to_list()) - {BASELINE}
    return sorted(qs, key=lambda q: (_ORDER.get(q, 99), q))


def select(finals: pl.DataFrame, selection: str) -> pl.DataFrame:
    """The trials a selection pairs: all of them, or each arm's trials at its best LR."""
    if selection == "all_lrs":
        return finals
    best = best_lrs(lr_curve(finals))
    return finals.join(best, on=["optimizer", "qk_norm", "width"], how="inner").filter(
        pl.col("lr") == pl.col("best_lr")
    ).drop("best_lr", "best_loss")


def make_pairs(finals: pl.DataFrame, selection: str) -> pl.DataFrame:
    """Every candidate pair (any status): optimizer, qk_norm (the variant), the match keys,
    status_v / status_n, usable_v / usable_n (completed, with complete data), and
    <metric>_v, <metric>_n per metric."""
    on = ["optimizer", "width", "seed"] + (["lr"] if selection == "all_lrs" else [])
    # settings fixed per sweep: matching on them too keeps a mixed folder from pairing unlike trials
    on += [c for c in FIXED if c in finals.columns]
    df = select(finals, selection)
    usable = pl.col("status") == "completed"
    if "data_complete" in df.columns:  # metrics lost to an unreadable part: not final values
        usable = usable & pl.col("data_complete").fill_null(True)
    df = df.with_columns(usable.alias("usable"))
    cols = [*on, "qk_norm", "lr", "status", "usable", *METRICS]
    cols = list(dict.fromkeys(cols))
    base = df.filter(pl.col("qk_norm") == BASELINE).select(cols).drop("qk_norm")
    var = df.filter(pl.col("qk_norm") != BASELINE).select(cols)
    rename_n = {c: f"{c}_n" for c in base.columns if c not in on}
    rename_v = {c: f"{c}_v" for c in var.columns if c not in on and c != "qk_norm"}
    return var.rename(rename_v).join(base.rename(rename_n), on=on, how="inner")


def paradox_table(finals: pl.DataFrame, selection: str = "all_lrs", n_boot: int = 2000,
                  seed: int = 0) -> pl.DataFrame:
    pairs = make_pairs(finals, selection)
    rows = []
    for opt in sorted(set(finals.get_column("optimizer").drop_nulls().to_list())):
        for var in variants(finals.filter(pl.col("optimizer") == opt)):
            p = pairs.filter((pl.col("optimizer") == opt) & (pl.col("qk_norm") == var))
            sv, sn = p.get_column("status_v"), p.get_column("status_n")
            done = p.get_column("usable_v") & p.get_column("usable_n")
            div = (sv == "diverged") | (sn == "diverged")
            for metric in METRICS:
                d = (p.filter(done).get_column(f"{metric}_v") - p.filter(done).get_column(f"{metric}_n"))
                d = d.drop_nulls().drop_nans().to_numpy()
                row = dict(optimizer=opt, qk_norm=var, metric=metric, n_pairs=int(d.size),
                           mean_diff=float(d.mean()) if d.size else np.nan, ci_low=np.nan,
                           ci_high=np.nan, p_value=np.nan, p_wilcoxon=np.nan,
                           sd_diff=float(d.std(ddof=1)) if d.size > 1 else np.nan,
                           n_excluded_diverged=int(div.sum()),
                           n_excluded_other=int((~done & ~div).sum()), selection=selection)
                if d.size >= MIN_PAIRS:
                    _, row["ci_low"], row["ci_high"] = bootstrap_ci(
                        d, np.mean, n_boot=n_boot, seed=(seed, selection, opt, var, metric)
                    )
                    row["p_value"], row["p_wilcoxon"] = paired_tests(d)
                rows.append(row)
    schema = {c: pl.Float64 for c in COLUMNS}
    schema.update(optimizer=pl.String, qk_norm=pl.String, metric=pl.String, selection=pl.String,
                  n_pairs=pl.Int64, n_excluded_diverged=pl.Int64, n_excluded_other=pl.Int64)
    if not rows:
        return pl.DataFrame(schema=schema).select(COLUMNS)
    df = pl.DataFrame(rows, schema_overrides=schema)
    df = df.with_columns(pl.Series("p_holm", holm(df.get_column("p_value").to_numpy())))
    # NaN is "not computed"; write it as null so CSV readers see an empty cell
    return df.select(COLUMNS).fill_nan(None)


# ---- verdict --------------------------------------------------------------------------------
def _sig(row: dict | None, sign: int, alpha: float) -> bool:
    return (
        row is not None
        and row["p_holm"] is not None
        and row["p_holm"] < alpha
        and row["mean_diff"] is not None
        and np.sign(row["mean_diff"]) == sign
    )


def judge(table: pl.DataFrame, optimizer: str, variant: str, alpha: float = ALPHA) -> dict:
    """better_loss, worse_rank, paradox and the effect sizes of one comparison.

    better_loss: final_val_loss mean_diff < 0 at p_holm < alpha.
    worse_rank: final_pr_q and final_pr_k both have mean_diff < 0 at p_holm < alpha.
    paradox: both. state: paradox | better_loss_only | worse_rank_only | no_effect (no claim
    supported: not the same as evidence of no difference) | not_enough_data | other (a
    significant effect in the opposite direction; see effects).
    """
    rows = {r["metric"]: r for r in table.filter(
        (pl.col("optimizer") == optimizer) & (pl.col("qk_norm") == variant)).iter_rows(named=True)}
    loss, q, k = rows.get("final_val_loss"), rows.get("final_pr_q"), rows.get("final_pr_k")
    enough = all(r is not None and r["n_pairs"] >= MIN_PAIRS for r in (loss, q, k))
    better_loss = enough and _sig(loss, -1, alpha)
    worse_rank = enough and _sig(q, -1, alpha) and _sig(k, -1, alpha)
    opposite = enough and (_sig(loss, 1, alpha) or _sig(q, 1, alpha) or _sig(k, 1, alpha))
    if not enough:
        state = "not_enough_data"
    elif better_loss and worse_rank:
        state = "paradox"
    elif better_loss:
        state = "better_loss_only"
    elif worse_rank:
        state = "worse_rank_only"
    elif opposite:
        state = "other"
    else:
        state = "no_effect"
    effects = {
        m: {k_: r[k_] for k_ in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm",
                                  "p_wilcoxon")}
        for m, r in rows.items()
    }
    any_row = loss or q or k or {}
    return dict(
        state=state, better_loss=bool(better_loss), worse_rank=bool(worse_rank),
        paradox=bool(better_loss and worse_rank),
        n_pairs=int(loss["n_pairs"]) if loss else 0,
        n_excluded_diverged=int(any_row.get("n_excluded_diverged") or 0),
        n_excluded_other=int(any_row.get("n_excluded_other") or 0),
        effects=effects,
    )


def comparisons(table: pl.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table.get_column("optimizer").to_list(),
                                  table.get_column("qk_norm").to_list())))
