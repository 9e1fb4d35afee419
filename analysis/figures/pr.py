"""PR / d_head of q and k over training: at each arm's best LR (pr_over_training.png) and per LR
(pr_by_lr_q.png, pr_by_lr_k.png). The mean over seeds a thick line; up to common.MAX_SEED_LINES
seeds per arm, every seed a thin line; past that (a study), a band of the middle 95% of the seeds
per step (2.5th to 97.5th percentile) and the common.SAMPLED_SEEDS lowest seeds as thin lines, so
the cost of a figure does not grow with the seeds. A symlog step axis so the dense early probes
show; legends at a fixed place (lower left: the curves fall)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..features import as_strings
from ..labels import mathtext, tensor_label
from .common import (
    ARM_KEYS,
    arm_colours,
    best_lr_frame,
    best_lr_map,
    draw_seed_panel,
    empty_panel,
    lr_label,
    opt_linestyle,
    plt,
    pr_label,
    save_titled,
    seed_lines,
    seeds_note,
    seeds_title,
    step_axis,
    sweep_arms,
    x_labels_outer,
)

STEP_LABEL = "training step (symlog axis)"
LEGEND_LOC = "lower left"  # PR falls over training: the lower left stays clear


def pr_frame(curves: pl.DataFrame, finals: pl.DataFrame, tensors=("q", "k")) -> pl.DataFrame:
    """The PR / d_head of `tensors` per completed trial and step, with the trial's settings (draw_all
    reads it once for the three PR figures: `frame`)."""
    meta = finals.filter(pl.col("status") == "completed").select(
        "trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "d_head"
    )
    return (
        as_strings(curves.filter((pl.col("name") == "pr") & pl.col("tensor").is_in(list(tensors))))
        .join(meta, on="trial_id", how="inner")
        .with_columns((pl.col("value") / pl.col("d_head")).alias("v"))
        .select("trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "tensor", "step", "v")
        .sort("trial_id", "tensor", "step")
    )


def _step_axis(ax, df: pl.DataFrame, sparse: bool = False) -> None:
    step_axis(ax, df.get_column("step").max() if df.height else 1, sparse)
    ax.grid(alpha=0.3)


def pr_over_training(
    curves: pl.DataFrame,
    finals: pl.DataFrame,
    best: pl.DataFrame,
    path: Path,
    partial=False,
    tensors=("q", "k"),
    frame: pl.DataFrame | None = None,
) -> Path:
    """PR / d_head over steps at each arm's best LR (`best`, the best-LR table): rows optimizer x
    tensor (`tensors`: the q and k of one stage), columns width. `frame`: pr_frame of `tensors`
    when the caller has it (else read from `curves`)."""
    df = pr_frame(curves, finals, tensors) if frame is None else frame.filter(pl.col("tensor").is_in(list(tensors)))
    best_lr = best_lr_map(best)
    at_best = df.join(best_lr_frame(best_lr, df), on=[*ARM_KEYS, "lr"], how="inner")
    groups = seed_lines(at_best, (*ARM_KEYS, "tensor"), "v")
    arms = sweep_arms(finals)
    opts = sorted({a[0] for a in arms}) or ["-"]
    widths = sorted({a[2] for a in arms}) or [0]
    rows = [(o, t) for o in opts for t in tensors]
    fig, axes = plt.subplots(
        len(rows), len(widths), figsize=(max(3.8 * len(widths), 7.5), 2.7 * len(rows)), squeeze=False
    )
    colours = arm_colours(finals) if finals.height else {}
    any_summarised = False
    for i, (o, t) in enumerate(rows):
        for j, w in enumerate(widths):
            ax = axes[i, j]
            missing = []
            entries = []
            for ao, q, aw in arms:
                if ao != o or aw != w:
                    continue
                lr = best_lr.get((o, q, w))
                g = groups.get((o, q, w, t)) if lr is not None else None
                if g is None:
                    missing.append(q)
                    continue
                entries.append((g, colours.get((o, q), "k"), f"{q} at LR {lr_label(lr)}", opt_linestyle(o)))
            drawn = bool(entries)
            summarised = draw_seed_panel(ax, entries) if drawn else False
            if not drawn:
                empty_panel(ax, f"{o}, width {w}: no completed trials")
                continue
            any_summarised |= summarised
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
            ax.legend(fontsize=6.5, title=f"QK variant ({seeds_note(summarised)})", title_fontsize=6.5, loc=LEGEND_LOC)
    title = mathtext(f"PR / d_head of q and k over training, each arm at its best LR{seeds_title(any_summarised)}")
    return save_titled(fig, path, title, partial)


def pr_by_lr(
    curves: pl.DataFrame,
    finals: pl.DataFrame,
    best: pl.DataFrame,
    path: Path,
    tensor: str = "q",
    partial=False,
    frame: pl.DataFrame | None = None,
) -> Path:
    """PR / d_head of one tensor over steps, one panel per (optimizer, width) x LR; a panel's title
    names the arms whose best LR (`best`) it is. `frame`: pr_frame of (at least) `tensor` when the
    caller has it (else read from `curves`)."""
    df = pr_frame(curves, finals, (tensor,)) if frame is None else frame.filter(pl.col("tensor") == tensor)
    groups = seed_lines(df, ARM_KEYS + ("lr",), "v")
    best_lr = best_lr_map(best)
    arms = sweep_arms(finals)
    cells = sorted({(a[0], a[2]) for a in arms}) or [("-", 0)]
    lrs = sorted(finals.get_column("lr").drop_nulls().unique().to_list()) if finals.height else []
    lrs = lrs or [None]
    fig, axes = plt.subplots(
        len(cells), len(lrs), figsize=(max(2.9 * len(lrs), 7.5), 2.4 * len(cells)), squeeze=False, sharey="row"
    )
    colours = arm_colours(finals) if finals.height else {}
    any_summarised = False
    shown = [[False] * len(lrs) for _ in cells]
    for i, (o, w) in enumerate(cells):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            best_here = [q for (ao, q, aw) in arms if ao == o and aw == w and best_lr.get((o, q, w)) == lr]
            missing = []
            entries = []
            for ao, q, aw in arms:
                if ao != o or aw != w:
                    continue
                g = groups.get((o, q, w, lr)) if lr is not None else None
                if g is None:
                    missing.append(q)
                    continue
                entries.append((g, colours.get((o, q), "k"), q, opt_linestyle(o)))
            drawn = bool(entries)
            summarised = draw_seed_panel(ax, entries) if drawn else False
            title = f"{o}, width {w}, LR {lr_label(lr) if lr is not None else '-'}"
            if best_here:
                title += "\nbest LR of: " + ", ".join(best_here)
            if not drawn:
                empty_panel(ax, "no completed trials")
                ax.set_title(title, fontsize=7.5)
                continue
            shown[i][j] = True
            any_summarised |= summarised
            if missing:
                ax.text(
                    0.02, 0.02, "no data: " + ", ".join(missing), transform=ax.transAxes, fontsize=6.5, color="grey"
                )
            ax.set_title(title, fontsize=7.5)
            _step_axis(ax, df, sparse=True)  # 2.9 in wide: 0, 1, 10, 100, ... do not run together
            if j == 0:
                ax.set_ylabel(pr_label(tensor), fontsize=7)
            if i == len(cells) - 1:
                ax.set_xlabel(STEP_LABEL, fontsize=8)
            if j == 0:
                ax.legend(fontsize=6, title=f"QK variant ({seeds_note(summarised)})", title_fontsize=6, loc=LEGEND_LOC)
    x_labels_outer(axes, shown)  # every panel has the same step axis
    title = f"{pr_label(tensor)} over training at every LR{seeds_title(any_summarised)}"
    return save_titled(fig, path, title, partial)
