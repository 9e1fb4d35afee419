"""From raw metric rows to what the statistics use: head-averaged curves and final values.

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

from trainer.schema import METRICS_KEY, SPECTRUM_METRICS, TENSORS

from .load import METRICS_PL, Results, find_unreadable, overlapping, scan

RANK_METRICS = SPECTRUM_METRICS  # pr, pr_cov, erank, stable_rank
FINAL_PR = tuple(f"final_pr_{t}" for t in ("q", "k", "wq", "wk"))  # pr / d_head, last step


@dataclass
class Features:
    curves: pl.DataFrame  # trial_id, step, name, tensor, value (mean over layers x heads), n
    val_loss: pl.DataFrame  # trial_id, step, value
    ends: pl.DataFrame  # trial_id, name (train_loss | tokens), step_first, first, step_last, last
    duplicate_rows: int  # rows dropped as duplicate keys
    deduplicated_trials: list[str]  # trial folders read through the deduplicating path
    metric_rows: int  # rows in the part files read (from their footers)
    spectra_rows: int


def _queries(lf: pl.LazyFrame) -> list[pl.LazyFrame]:
    per_head = pl.col("layer").is_not_null() & pl.col("head").is_not_null()
    curves = (
        lf.filter(pl.col("name").is_in(RANK_METRICS) & pl.col("tensor").is_in(TENSORS) & per_head)
        .group_by("trial_id", "step", "name", "tensor")
        .agg(pl.col("value").mean(), pl.len().alias("n"))
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
        )
    )
    return [curves, val, ends]


def _dedupe(lf: pl.LazyFrame) -> pl.LazyFrame:
    # Within a group Polars keeps the input order, and the scan is oldest part first.
    return lf.group_by(list(METRICS_KEY)).agg(pl.col("value").last())


def _overfull(curves: pl.DataFrame, val: pl.DataFrame, trials: pl.DataFrame) -> set[str]:
    """Trials whose fast-path groups hold more rows than one per layer and head."""
    expected = trials.select(
        "trial_id", (pl.col("depth") * pl.col("n_heads")).alias("expected")
    )
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
    *slow, n_raw, n_dd = pl.collect_all(
        _queries(dd) + [raw.select(pl.len()), dd.select(pl.len())]
    )
    slow_ids = set()
    for f in slow:
        slow_ids |= set(f.get_column("trial_id").unique().to_list())
    frames = [
        pl.concat([f.filter(~pl.col("trial_id").is_in(list(slow_ids))), s], how="vertical")
        for f, s in zip(fast, slow)
    ]
    return frames, int(n_raw.item() - n_dd.item()), suspects


def build_features(res: Results) -> Features:
    """Collect curves and losses; a part that fails to read is skipped, named, and the rest kept."""
    suspects = overlapping(res.metric_parts)
    for attempt in range(2):
        try:
            frames, dup, suspects = _collect(res, suspects)
            break
        except (pl.exceptions.PolarsError, OSError):
            bad = find_unreadable(res.metric_parts, METRICS_PL)
            if attempt or not bad:
                raise
            for path, reason in bad:
                res.skip(path, reason)
    curves, val, ends = frames
    return Features(
        curves=curves.sort("trial_id", "name", "tensor", "step"),
        val_loss=val.select("trial_id", "step", "value").sort("trial_id", "step"),
        ends=ends,
        duplicate_rows=dup,
        deduplicated_trials=sorted(suspects),
        metric_rows=sum(p.rows for p in res.metric_parts),
        spectra_rows=sum(p.rows for p in res.spectra_parts),
    )


def final_values(trials: pl.DataFrame, feats: Features) -> pl.DataFrame:
    """One row per trial: its settings, final val loss, final PR / d_head of q, k, wq, wk
    (mean over layers and heads at the trial's last step with that metric), loss at init and
    tokens per step."""
    pr_last = feats.curves.filter(pl.col("name") == "pr").group_by("trial_id").agg(
        pl.col("step").max().alias("last_pr_step"))
    pr = (
        feats.curves.filter(pl.col("name") == "pr")
        .group_by("trial_id", "tensor")
        .agg(pl.col("value").sort_by("step").last())
        .pivot(on="tensor", index="trial_id", values="value")
    )
    for t in TENSORS:
        if t not in pr.columns:
            pr = pr.with_columns(pl.lit(None, pl.Float64).alias(t))
    pr = pr.select("trial_id", *[pl.col(t).alias(f"final_pr_{t}") for t in ("q", "k", "wq", "wk")])
    val = feats.val_loss.group_by("trial_id").agg(
        pl.col("step").max().alias("last_val_step"),
        pl.col("value").sort_by("step").last().alias("last_val_loss"),
        pl.col("value").filter(pl.col("step") == 0).first().alias("val_loss_0"),
    )
    train0 = feats.ends.filter((pl.col("name") == "train_loss") & (pl.col("step_first") == 0)).select(
        "trial_id", pl.col("first").alias("train_loss_0")
    )
    tokens = feats.ends.filter(
        (pl.col("name") == "tokens") & (pl.col("step_last") > pl.col("step_first"))
    ).select(
        "trial_id",
        ((pl.col("last") - pl.col("first")) / (pl.col("step_last") - pl.col("step_first"))).alias(
            "tokens_per_step_m"
        ),
    )
    finite = lambda c: pl.when(pl.col(c).is_finite()).then(pl.col(c))  # noqa: E731
    # A completed trial whose metrics stop before steps_done lost parts (skipped as unreadable):
    # its last values are not final values, so they are left out (data_complete = false).
    reached = lambda c: pl.col(c).is_not_null() & (pl.col(c) >= pl.col("steps_done"))  # noqa: E731
    complete = (pl.col("status") != "completed") | pl.col("steps_done").is_null() | (
        reached("last_pr_step") & reached("last_val_step"))
    df = (
        trials.join(pr, on="trial_id", how="left")
        .join(pr_last, on="trial_id", how="left")
        .join(val, on="trial_id", how="left")
        .join(train0, on="trial_id", how="left")
        .join(tokens, on="trial_id", how="left")
        .with_columns(
            # the last recorded val_loss; trials.final_val_loss when the metrics have none
            pl.coalesce(finite("last_val_loss"), finite("final_val_loss")).alias("final_val_loss"),
            pl.coalesce(finite("val_loss_0"), finite("train_loss_0")).alias("init_loss"),
            pl.coalesce(
                "tokens_per_step_m",
                pl.when(pl.col("steps_done") > 0).then(pl.col("tokens") / pl.col("steps_done")),
            ).alias("tokens_per_step"),
            *[(pl.col(c) / pl.col("d_head")).alias(c) for c in FINAL_PR],
            complete.alias("data_complete"),
        )
        .with_columns(
            pl.when(pl.col("data_complete")).then(pl.col(c)).alias(c)
            for c in ("final_val_loss", *FINAL_PR)
        )
    )
    return df.select(
        "trial_id", "optimizer", "qk_norm", "width", "depth", "n_heads", "d_head", "lr", "seed",
        "status", "steps_planned", "steps_done", "diverged_step", "data_complete",
        "final_val_loss", *FINAL_PR, "init_loss", "tokens_per_step",
    )
