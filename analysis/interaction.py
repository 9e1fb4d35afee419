"""Does the optimizer change the QK-Norm effect? The difference in differences of matched pairs.

Needs no seed clusters (the clustered regression of `analysis.regression` runs only with many);
the pairs are those of `analysis.paradox`, matched once more across optimizers.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .paradox import FAMILY, METRICS, effect_frame, effect_stats, make_pairs, optimizers, pair_keys, variants

DID_COLUMNS = [
    "selection",
    "optimizer",
    "reference",
    "qk_norm",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "sd_diff",
    "family",
]


def did_table(finals: pl.DataFrame, selection: str, best: pl.DataFrame | None = None) -> pl.DataFrame:
    """Does the optimizer change the QK-Norm effect? Per matched pair of pairs:

        d = (O_variant - O_none) - (ref_variant - ref_none)

    with ref = adamw (else the first optimizer) and O each other optimizer; the two pairs share
    width and seed (and lr in "all_lrs"; in "best_lr" each of the four arms is at its own best LR
    for that width), and the fixed settings. mean_diff is the mean d: how much O shifts the
    variant's effect. t interval, paired t-test, Holm within the selection's family (decision
    metrics; weight PRs apart). `best`: the best-LR table, for selection "best_lr"."""
    opts = optimizers(finals)
    if len(opts) < 2:
        return effect_frame([], DID_COLUMNS)
    ref = "adamw" if "adamw" in opts else opts[0]
    pairs = make_pairs(finals, selection, best=best).filter(pl.col("usable_v") & pl.col("usable_n"))
    keys = [k for k in pair_keys(finals, selection) if k != "optimizer"] + ["qk_norm"]
    diff = pairs.select("optimizer", *keys, *[(pl.col(f"{m}_v") - pl.col(f"{m}_n")).alias(m) for m in METRICS])
    base = diff.filter(pl.col("optimizer") == ref).drop("optimizer")
    rows = []
    for opt in opts:
        if opt == ref:
            continue
        j = diff.filter(pl.col("optimizer") == opt).drop("optimizer").join(base, on=keys, how="inner", suffix="_ref")
        for var in variants(finals):
            g = j.filter(pl.col("qk_norm") == var)
            if g.height == 0 and var not in variants(finals.filter(pl.col("optimizer") == opt)):
                continue
            for m in METRICS:
                d = g.get_column(m).cast(pl.Float64).to_numpy() - g.get_column(f"{m}_ref").cast(pl.Float64).to_numpy()
                rows.append(
                    dict(
                        selection=selection,
                        optimizer=opt,
                        reference=ref,
                        qk_norm=var,
                        metric=m,
                        family=FAMILY[m],
                        **effect_stats(d[np.isfinite(d)], wilcoxon=False),
                    )
                )
    return effect_frame(rows, DID_COLUMNS)
