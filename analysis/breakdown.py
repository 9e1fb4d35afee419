"""Where the paired effect lives: per (width, lr) cell, per width at the best LR, and per layer.

Same pairs and statistics as `analysis.paradox` (variant minus none, t interval, paired t-test),
on a subset of the pairs: seeds are the replicates of a cell. Init axes are never pooled.
"""

from __future__ import annotations

import polars as pl

from .finals import LAYER_PR
from .paradox import METRICS, effect_frame, effect_stats, make_pairs, pair_diffs, select

CELL_COLUMNS = [
    "optimizer",
    "qk_norm",
    "width",
    "lr",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "selection",
]
LAYER_COLUMNS = [
    "optimizer",
    "qk_norm",
    "layer",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "sd_diff",
    "selection",
    "family",
]


def cell_table(finals: pl.DataFrame, best: pl.DataFrame, deciding: pl.DataFrame | None = None) -> pl.DataFrame:
    """Report.cells / tables/paradox_cells.csv, for a forest plot. `best` is the best-LR table
    (analysis.sensitivity.best_lrs). Rows:

    selection "cell": one per (optimizer, variant, width, lr, metric), seeds as replicates (pairs
      on width, lr, seed); with an init axis, one per init too (init_key), never pooled;
    selection "best_lr": one per (optimizer, variant, width, metric) (and init), each arm at its own
      best LR for that width; `lr` is the variant's best LR (none's best LR is in
      tables/lr_bracketing.csv);
    selection "deciding": the deciding rows (width and lr null), pooled over widths: the
      best-LR table the verdict uses (p_value unadjusted here; p_holm in paradox_best_lr.csv).
    p_value is the paired t-test of the row, not corrected for the many cells.
    """
    rows = []
    inits = ("init_key",) if "init_key" in finals.columns and finals.get_column("init_key").n_unique() > 1 else ()
    for selection, by in (("all_lrs", ("width", "lr_v", *inits)), ("best_lr", ("width", *inits))):
        pairs = make_pairs(finals, selection, best=best)
        if pairs.height == 0:
            continue
        keys = ["optimizer", "qk_norm", *by]
        # one pass over the pairs (a filter per cell cost a third of a verdict): the cells in key
        # order, each cell's pairs in their order in `pairs` (a stable sort), as a filter keeps them
        for key, p in (
            pairs.sort(keys, maintain_order=True).partition_by(keys, maintain_order=True, as_dict=True).items()
        ):
            g = dict(zip(keys, key))
            lrs = p.get_column("lr_v").unique().to_list()
            usable = p.filter(pl.col("usable_v") & pl.col("usable_n"))
            for metric in METRICS:
                rows.append(
                    dict(
                        optimizer=g["optimizer"],
                        qk_norm=g["qk_norm"],
                        width=g["width"],
                        lr=lrs[0] if len(lrs) == 1 else None,
                        **({"init_key": g["init_key"]} if inits else {}),
                        metric=metric,
                        selection="cell" if selection == "all_lrs" else "best_lr",
                        **effect_stats(pair_diffs(usable, metric, usable_only=False), wilcoxon=False),
                    )
                )
    if deciding is not None and deciding.height:
        for r in deciding.filter(pl.col("metric").is_in(METRICS)).iter_rows(named=True):
            rows.append({**r, "width": None, "lr": None, "selection": "deciding"})
    df = effect_frame(rows, CELL_COLUMNS + (["init_key"] if inits else []), family_holm=False)
    order = {"cell": 0, "best_lr": 1, "deciding": 2}
    return (
        df.with_columns(pl.col("selection").replace_strict(order, return_dtype=pl.Int8).alias("_o"))
        .sort("optimizer", "qk_norm", "_o", "width", "lr", *inits, "metric", nulls_last=True)
        .drop("_o")
    )


def layer_table(layers: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """tables/paradox_layers.csv: best-LR paired effects of final PR q / k, as used and on the
    sphere (LAYER_PR), per layer (the
    `layer_finals` rows), each arm at the best LR of `best` (the table the deciding pairs use), so
    a layer's pairs are the deciding pairs. Holm over every row of the table (family "layers")."""
    if layers.height == 0:
        return effect_frame([], LAYER_COLUMNS)
    trials = layers.unique("trial_id", keep="first")
    chosen = select(trials, "best_lr", best).get_column("trial_id")
    sel = layers.filter(pl.col("trial_id").is_in(chosen.implode()))
    # paired as the deciding table is: same optimizer, width and seed, each arm at its own best LR (sel
    # holds only best-LR trials, so the re-selection keeps them all)
    pairs = make_pairs(sel, "best_lr", LAYER_PR, extra_keys=("layer",), best=best)
    rows = []
    for g in (
        pairs.select("optimizer", "qk_norm", "layer")
        .unique()
        .sort("optimizer", "qk_norm", "layer")
        .iter_rows(named=True)
    ):
        p = pairs.filter(pl.all_horizontal(pl.col(c) == v for c, v in g.items()))
        for metric in LAYER_PR:
            rows.append(
                dict(**g, metric=metric, selection="best_lr", family="layers", **effect_stats(pair_diffs(p, metric)))
            )
    return effect_frame(rows, LAYER_COLUMNS)
