"""PR / d_head of q and k over training: at each arm's best LR (pr_over_training.png) and per LR
(pr_by_lr_q.png, pr_by_lr_k.png). Every seed a thin line, the mean over seeds a thick one; a
symlog step axis so the dense early probes show."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..labels import mathtext, tensor_label
from .common import (
    arm_colours,
    best_lr_map,
    empty_panel,
    lr_label,
    opt_linestyle,
    plt,
    pr_label,
    save_titled,
    seeds_and_mean,
    step_axis,
    sweep_arms,
)

STEP_LABEL = "training step (symlog axis)"


def _pr_frame(curves: pl.DataFrame, finals: pl.DataFrame, tensors=("q", "k")) -> pl.DataFrame:
    """The PR / d_head of `tensors` per completed trial and step, with the trial's settings."""
    meta = finals.filter(pl.col("status") == "completed").select(
        "trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "d_head"
    )
    return (
        curves.filter((pl.col("name") == "pr") & pl.col("tensor").is_in(list(tensors)))
        .join(meta, on="trial_id", how="inner")
        .with_columns((pl.col("value") / pl.col("d_head")).alias("v"))
        .select("trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "tensor", "step", "v")
        .sort("trial_id", "tensor", "step")
    )


def _step_axis(ax, df: pl.DataFrame) -> None:
    step_axis(ax, df.get_column("step").max() if df.height else 1)
    ax.grid(alpha=0.3)


def pr_over_training(
    curves: pl.DataFrame, finals: pl.DataFrame, best: pl.DataFrame, path: Path, partial=False, tensors=("q", "k")
) -> Path:
    """PR / d_head over steps at each arm's best LR (`best`, the best-LR table): rows optimizer x
    tensor (`tensors`: the q and k of one stage), columns width."""
    df = _pr_frame(curves, finals, tensors)
    best_lr = best_lr_map(best)
    arms = sweep_arms(finals)
    opts = sorted({a[0] for a in arms}) or ["-"]
    widths = sorted({a[2] for a in arms}) or [0]
    rows = [(o, t) for o in opts for t in tensors]
    fig, axes = plt.subplots(
        len(rows), len(widths), figsize=(max(3.8 * len(widths), 7.5), 2.7 * len(rows)), squeeze=False
    )
    colours = arm_colours(finals) if finals.height else {}
    for i, (o, t) in enumerate(rows):
        for j, w in enumerate(widths):
            ax = axes[i, j]
            missing = []
            drawn = False
            for ao, q, aw in arms:
                if ao != o or aw != w:
                    continue
                lr = best_lr.get((o, q, w))
                g = (
                    df.filter(
                        (pl.col("optimizer") == o)
                        & (pl.col("qk_norm") == q)
                        & (pl.col("width") == w)
                        & (pl.col("tensor") == t)
                        & (pl.col("lr") == lr)
                    )
                    if lr is not None
                    else df.clear()
                )
                if g.height == 0:
                    missing.append(q)
                    continue
                seeds_and_mean(ax, g, colours.get((o, q), "k"), f"{q} at LR {lr_label(lr)}", opt_linestyle(o))
                drawn = True
            if not drawn:
                empty_panel(ax, f"{o}, width {w}: no completed trials")
                continue
            if missing:
                ax.text(
                    0.02,
                    0.02,
                    "no completed trials: " + ", ".join(missing),
                    transform=ax.transAxes,
                    fontsize=7,
                    color="grey",
                )
            ax.set_title(f"{o}, {tensor_label(t)}, width {w} (each arm at its best LR)", fontsize=8)
            _step_axis(ax, df)
            if j == 0:
                ax.set_ylabel(pr_label(t), fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel(STEP_LABEL)
            ax.legend(fontsize=6.5, title="QK variant (thin: each seed)", title_fontsize=6.5)
    title = mathtext("PR / d_head of q and k over training, each arm at its best LR (thin: seeds; thick: their mean)")
    return save_titled(fig, path, title, partial)


def pr_by_lr(
    curves: pl.DataFrame, finals: pl.DataFrame, best: pl.DataFrame, path: Path, tensor: str = "q", partial=False
) -> Path:
    """PR / d_head of one tensor over steps, one panel per (optimizer, width) x LR; a panel's title
    names the arms whose best LR (`best`) it is."""
    df = _pr_frame(curves, finals, (tensor,))
    best_lr = best_lr_map(best)
    arms = sweep_arms(finals)
    cells = sorted({(a[0], a[2]) for a in arms}) or [("-", 0)]
    lrs = sorted(finals.get_column("lr").drop_nulls().unique().to_list()) if finals.height else []
    lrs = lrs or [None]
    fig, axes = plt.subplots(
        len(cells), len(lrs), figsize=(max(2.9 * len(lrs), 7.5), 2.4 * len(cells)), squeeze=False, sharey="row"
    )
    colours = arm_colours(finals) if finals.height else {}
    for i, (o, w) in enumerate(cells):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            best_here = [q for (ao, q, aw) in arms if ao == o and aw == w and best_lr.get((o, q, w)) == lr]
            missing = []
            drawn = False
            for ao, q, aw in arms:
                if ao != o or aw != w:
                    continue
                g = df.filter(
                    (pl.col("optimizer") == o)
                    & (pl.col("qk_norm") == q)
                    & (pl.col("width") == w)
                    & (pl.col("lr") == lr)
                )
                if g.height == 0:
                    missing.append(q)
                    continue
                seeds_and_mean(ax, g, colours.get((o, q), "k"), q, opt_linestyle(o))
                drawn = True
            title = f"{o}, width {w}, LR {lr_label(lr) if lr is not None else '-'}"
            if best_here:
                title += "\nbest LR of: " + ", ".join(best_here)
            if not drawn:
                empty_panel(ax, "no completed trials")
                ax.set_title(title, fontsize=7.5)
                continue
            if missing:
                ax.text(
                    0.02, 0.02, "no data: " + ", ".join(missing), transform=ax.transAxes, fontsize=6.5, color="grey"
                )
            ax.set_title(title, fontsize=7.5)
            _step_axis(ax, df)
            if j == 0:
                ax.set_ylabel(pr_label(tensor), fontsize=7)
            if i == len(cells) - 1:
                ax.set_xlabel(STEP_LABEL, fontsize=8)
            if j == 0:
                ax.legend(fontsize=6, title="QK variant (thin: each seed)", title_fontsize=6)
    title = f"{pr_label(tensor)} over training at every LR (thin: seeds; thick: their mean)"
    return save_titled(fig, path, title, partial)
