"""Reading the part files: raw metric rows reduced to head-averaged curves and losses (`Features`).

Everything heavy happens in Polars: rows are reduced to one value per (trial, step, metric,
tensor), the mean over layers and heads, before anything reaches numpy.

Duplicate keys (the same trial_id, step, name, layer, head, tensor twice, as a replay after a
restore can leave behind) are resolved "last written wins": parts are scanned oldest first and
the last row of a key is kept. Deduplicating ten million rows costs more than the rest of the
report, so it runs only where duplicates can be: trials with two parts whose step ranges overlap
(seen in the footers), and trials where the fast path finds more rows than layers x heads in a
head average or two val_loss rows at one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from trainer.schema import (
    ACTIVATION_METRICS,
    ACTIVATION_TENSORS,
    CLIP_METRICS,
    METRICS_DIR,
    METRICS_KEY,
    SPECTRA_DIR,
    SPECTRUM_METRICS,
    STAGE_METRICS,
    STAGES,
    TENSORS,
)

from .contract import METRICS_PL, overlapping, scan
from .loading import Results

RANK_METRICS = SPECTRUM_METRICS  # pr, pr_cov, erank, stable_rank
# The q and k read per layer and for robustness: as attention uses them, and on the unit sphere (the
# primary rank metric, analysis.finals.PRIMARY_STAGE).
LAYER_TENSORS = ("q", "k", *STAGES["sphere"])


@dataclass
class Features:
    curves: pl.DataFrame  # trial_id, step, name, tensor, value (mean over layers x heads), n
    activation: pl.DataFrame  # the same for pr_centred, pr_bias, pr_centred_bias and norm_cv (q/k stages); may be empty
    layers: pl.DataFrame  # trial_id, step, layer, tensor (LAYER_TENSORS), value: pr, mean over heads
    val_loss: pl.DataFrame  # trial_id, step, value
    ends: pl.DataFrame  # trial_id, name (train_loss | tokens), step_first, first, step_last, last
    # trial_id, step, value: max_logit, the largest over layers and heads (regular probes): what QK-Clip's
    # tau and the soft-cap bound, head by head
    logits: pl.DataFrame
    clip: pl.DataFrame  # trial_id, step, name (CLIP_METRICS), layer, head, value: per head, qk_clip trials only
    duplicate_rows: int  # rows dropped as duplicate keys
    deduplicated_trials: list[str]  # trial folders read through the deduplicating path
    metric_rows: int  # rows in the part files read (from their footers)
    spectra_rows: int


def head_mean() -> pl.Expr:
    """The mean of `value` over a group's layers and heads (nulls left out, as mean() does), summed in
    (layer, head) order by a running sum. A group's rows can reach the aggregation in a layout that
    varies run to run (the part files are scanned in parallel), and Polars' own mean() then summed
    them differently: the same report gave pr_centred and norm_cv means that differed in the last
    bit. A running sum in a fixed order is the same every time."""
    v = pl.col("value").sort_by("layer", "head").drop_nulls()
    return (v.cum_sum().last() / v.len()).alias("value")


def _queries(lf: pl.LazyFrame) -> list[pl.LazyFrame]:
    per_head = pl.col("layer").is_not_null() & pl.col("head").is_not_null()
    curves = (
        lf.filter(pl.col("name").is_in(RANK_METRICS) & pl.col("tensor").is_in(TENSORS) & per_head)
        .group_by("trial_id", "step", "name", "tensor")
        .agg(head_mean(), pl.len().alias("n"))
    )
    model = pl.col("layer").is_null() & pl.col("head").is_null() & pl.col("tensor").is_null()
    val = (
        lf.filter((pl.col("name") == "val_loss") & model)
        .group_by("trial_id", "step")
        .agg(pl.col("value").last(), pl.len().alias("n"))
    )
    ends = (
        lf.filter(pl.col("name").is_in(["train_loss", "tokens"]) & model)
        .group_by("trial_id", "name")
        .agg(
            pl.col("step").min().alias("step_first"),
            pl.col("value").sort_by("step").first().alias("first"),
            pl.col("step").max().alias("step_last"),
            pl.col("value").sort_by("step").last().alias("last"),
            pl.col("step").n_unique().alias("n_steps"),  # completeness: a lost middle part shows here
        )
    )
    activation = (
        lf.filter(
            pl.col("name").is_in(ACTIVATION_METRICS + STAGE_METRICS)
            & pl.col("tensor").is_in(ACTIVATION_TENSORS)
            & per_head
        )
        .group_by("trial_id", "step", "name", "tensor")
        .agg(head_mean(), pl.len().alias("n"))
    )
    layers = (
        lf.filter((pl.col("name") == "pr") & pl.col("tensor").is_in(LAYER_TENSORS) & per_head)
        .group_by("trial_id", "step", "layer", "tensor")
        .agg(head_mean())
    )
    logits = (
        lf.filter((pl.col("name") == "max_logit") & pl.col("tensor").is_null() & per_head)
        .group_by("trial_id", "step")
        .agg(pl.col("value").max())
    )
    clip = lf.filter(pl.col("name").is_in(CLIP_METRICS) & pl.col("tensor").is_null() & per_head).select(
        "trial_id", "step", "name", "layer", "head", "value"
    )
    return [curves, val, ends, activation, layers, logits, clip]


def _dedupe(lf: pl.LazyFrame) -> pl.LazyFrame:
    # Within a group Polars keeps the input order, and the scan is oldest part first. The groups
    # come out in an order that varies run to run, so sort them: the head means downstream then
    # sum in one order and the report is the same to the last digit every time.
    return lf.group_by(list(METRICS_KEY)).agg(pl.col("value").last()).sort(list(METRICS_KEY))


def _overfull(curves: pl.DataFrame, val: pl.DataFrame, trials: pl.DataFrame) -> set[str]:
    """Trials whose fast-path groups hold more rows than one per layer and head."""
    expected = trials.select("trial_id", (pl.col("depth") * pl.col("n_heads")).alias("expected"))
    over = (
        curves.join(expected, on="trial_id", how="left")
        .filter(pl.col("expected").is_not_null() & (pl.col("n") > pl.col("expected")))
        .get_column("trial_id")
        .unique()
        .to_list()
    )
    over += val.filter(pl.col("n") > 1).get_column("trial_id").unique().to_list()
    return set(over)


def _collect(res: Results, suspects: set[str]) -> tuple[list[pl.DataFrame], int, set[str]]:
    clean = [p for p in res.metric_parts if p.folder not in suspects]
    fast = pl.collect_all(_queries(scan(clean, METRICS_PL)))
    over = _overfull(fast[0], fast[1], res.trials)
    if over:
        suspects = suspects | {f"trial_id={t}" for t in over}
        fast = [f.filter(~pl.col("trial_id").is_in(list(over))) for f in fast]
    slow_parts = [p for p in res.metric_parts if p.folder in suspects]
    if not slow_parts:
        return fast, 0, suspects
    raw = scan(slow_parts, METRICS_PL)
    dd = _dedupe(raw)
    *slow, n_raw, n_dd = pl.collect_all(_queries(dd) + [raw.select(pl.len()), dd.select(pl.len())])
    slow_ids = set()
    for f in slow:
        slow_ids |= set(f.get_column("trial_id").unique().to_list())
    frames = [
        pl.concat([f.filter(~pl.col("trial_id").is_in(list(slow_ids))), s], how="vertical") for f, s in zip(fast, slow)
    ]
    return frames, int(n_raw.item() - n_dd.item()), suspects


def build_features(res: Results) -> Features:
    """Collect curves and losses through `Results.read`: a part that fails to read (a corrupt page,
    a part removed since the listing) is skipped, named and counted, and the rest kept."""
    suspects = overlapping(res.metric_parts)
    frames, dup, suspects = res.read(METRICS_DIR, lambda: _collect(res, suspects))
    curves, val, ends, activation, layers, logits, clip = frames
    return Features(
        curves=curves.sort("trial_id", "name", "tensor", "step"),
        activation=activation.sort("trial_id", "name", "tensor", "step"),
        layers=layers.sort("trial_id", "layer", "tensor", "step"),
        val_loss=val.select("trial_id", "step", "value").sort("trial_id", "step"),
        ends=ends.sort("trial_id", "name"),
        logits=logits.sort("trial_id", "step"),
        clip=clip.sort("trial_id", "name", "layer", "head", "step"),
        duplicate_rows=dup,
        deduplicated_trials=sorted(suspects),
        metric_rows=sum(p.rows for p in res.metric_parts),
        spectra_rows=sum(p.rows for p in res.spectra_parts),
    )


def check_drawn_spectra(res: Results, finals: pl.DataFrame, best: pl.DataFrame) -> int:
    """Read, through `Results.read`, the spectra parts of the trials the spectra figure draws (each
    arm's lowest completed seed at its best LR: analysis.figures.spectra) before the verdict is
    built: a part that fails to read (a corrupt page, a part removed by a compaction since the
    listing) is skipped and named here, so the report says partial, and the figure reads the parts
    that are left. Returns the rows read."""
    if not res.spectra_parts or best.height == 0:
        return 0
    keys = [k for k in ("optimizer", "qk_norm", "width", "init_key") if k in best.columns and k in finals.columns]
    chosen = (
        finals.filter(pl.col("status") == "completed")
        .join(best.select(*keys, pl.col("best_lr").alias("lr")), on=[*keys, "lr"], how="semi", nulls_equal=True)
        .sort("seed")
        .group_by(keys, maintain_order=True)
        .first()
    )
    ids = chosen.get_column("trial_id").to_list()
    if not ids:
        return 0
    return res.collect(SPECTRA_DIR, trials=ids).height
