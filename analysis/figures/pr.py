"""PR / d_head of q and k over training: at each arm's best LR (pr_over_training.png) and per LR
(pr_by_lr_q.png, pr_by_lr_k.png). Every seed a thin line, the mean over seeds a thick one; a
symlog step axis so the dense early probes show."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from matplotlib.ticker import NullFormatter

from .common import arm_colours, best_lr_map, empty_panel, lr_label, plt, save_titled, sweep_arms


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


def _seeds_and_mean(ax, g: pl.DataFrame, colour, label: str) -> None:
    """Each seed a thin line, the mean over seeds (per step) a thick one."""
    for _, s in g.group_by("trial_id", maintain_order=True):
        ax.plot(s.get_column("step").to_numpy(), s.get_column("v").to_numpy(), color=colour, lw=0.6, alpha=0.35)
    m = g.group_by("step").agg(pl.col("v").mean(), pl.len().alias("n")).sort("step")
    n = g.get_column("trial_id").n_unique()
    ax.plot(
        m.get_column("step").to_numpy(), m.get_column("v").to_numpy(), color=colour, lw=1.8, label=f"{label} (n={n})"
    )


def _step_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=10, linscale=0.6)
    ax.xaxis.set_minor_formatter(NullFormatter())
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
                _seeds_and_mean(ax, g, colours.get((o, q), "k"), f"{q} @ lr {lr_label(lr)}")
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
            ax.set_title(f"{o}, {t}, width {w} (each arm at its best LR)", fontsize=8)
            _step_axis(ax)
            if j == 0:
                ax.set_ylabel(f"PR({t}) / d_head")
            if i == len(rows) - 1:
                ax.set_xlabel("step (symlog)")
            ax.legend(fontsize=6.5, title="qk_norm (thin: seeds)", title_fontsize=6.5)
    return save_titled(fig, path, "PR over training at each arm's best LR (thin: seeds, thick: mean)", partial)


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
                _seeds_and_mean(ax, g, colours.get((o, q), "k"), q)
                drawn = True
            title = f"{o}, w{w}, lr {lr_label(lr) if lr is not None else '-'}"
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
            _step_axis(ax)
            if j == 0:
                ax.set_ylabel(f"PR({tensor}) / d_head", fontsize=8)
            if i == len(cells) - 1:
                ax.set_xlabel("step (symlog)", fontsize=8)
            if j == 0:
                ax.legend(fontsize=6, title="thin: seeds", title_fontsize=6)
    return save_titled(fig, path, f"PR of {tensor} over training per LR (thin: seeds, thick: mean)", partial)
