"""Loss against rank and against LR: loss_vs_pr.png (final val loss against final PR / d_head per
completed trial) and lr_sensitivity.png (final val loss, mean over seeds, against LR per arm;
stars mark each arm's best LR, crosses LRs where a seed diverged)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .common import (
    arm_colours,
    best_lr_map,
    by_arm,
    empty_panel,
    label,
    lr_axis,
    opt_linestyle,
    opt_marker,
    plt,
    save_titled,
    sweep_arms,
)


def loss_vs_pr(finals: pl.DataFrame, path: Path, partial=False, tensors=("q", "k")) -> Path:
    """Final val loss against the final PR / d_head of `tensors` (one panel each), one point per
    trial: colour the QK variant, marker the optimizer, size the width."""
    done = finals.filter(pl.col("status") == "completed")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), squeeze=False)
    colours = arm_colours(finals)
    widths = sorted(set(done.get_column("width").to_list()))
    size = {w: 22 + 22 * i for i, w in enumerate(widths)}
    for ax, t in zip(axes[0], tensors):
        col = f"final_pr_{t}"
        d = done.filter(pl.col(col).is_not_null() & pl.col("final_val_loss").is_not_null())
        if d.height == 0:
            empty_panel(ax)
            continue
        for (o, q), g in by_arm(d, colours):
            ax.scatter(
                g.get_column(col).to_numpy(),
                g.get_column("final_val_loss").to_numpy(),
                s=[size[w] for w in g.get_column("width").to_list()],
                color=colours.get((o, q), "k"),
                marker=opt_marker(o),
                alpha=0.75,
                label=f"{o} / {q}",
                edgecolors="none",
            )
        ax.set_xlabel(label(col))
        ax.set_ylabel(label("final_val_loss"))
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    by = dict(zip(labels, handles))
    if by:
        axes[0, 1].legend(  # beside the panels, not over a cloud of points
            by.values(),
            by.keys(),
            fontsize=8,
            title="optimizer / QK variant",
            loc="upper left",
            bbox_to_anchor=(1.02, 1),
        )
    return save_titled(fig, path, "Final loss vs final PR, one point per trial (marker size: width)", partial)


def lr_sensitivity(curve: pl.DataFrame, best: pl.DataFrame, path: Path, partial=False, finals=None) -> Path:
    """Loss vs LR per arm (`curve`, the lr_curve table), one panel per width; the grid's LRs are the
    tick labels, a star marks each arm's best LR (`best`)."""
    ref = finals if finals is not None else curve
    arms = sweep_arms(ref) if ref.height else []
    widths = sorted({a[2] for a in arms}) or [0]
    fig, axes = plt.subplots(1, len(widths), figsize=(max(4.4 * len(widths), 8), 4.0), squeeze=False)
    colours = arm_colours(ref) if ref.height else {}
    grid = sorted(ref.get_column("lr").drop_nulls().unique().to_list()) if ref.height else []
    best_lr = best_lr_map(best) if ref.height else {}
    for ax, w in zip(axes[0], widths):
        sub = curve.filter(pl.col("width") == w) if curve.height else curve
        drawn = False
        for o, q, aw in arms:
            if aw != w:
                continue
            c = colours.get((o, q), "k")
            ls = opt_linestyle(o)
            g = (
                sub.filter(
                    (pl.col("optimizer") == o) & (pl.col("qk_norm") == q) & pl.col("mean_loss").is_not_null()
                ).sort("lr")
                if sub.height
                else sub
            )
            if g.height == 0:
                ax.plot([], [], ls, color=c, label=f"{o} / {q}: no finished trials")
                continue
            drawn = True
            ax.plot(
                g.get_column("lr").to_numpy(),
                g.get_column("mean_loss").to_numpy(),
                ls,
                color=c,
                marker=opt_marker(o),
                ms=3,
                label=f"{o} / {q}",
            )
            b = best_lr.get((o, q, w))
            bb = g.filter(pl.col("lr") == b) if b is not None else g.clear()
            if bb.height:
                ax.scatter(
                    bb.get_column("lr").to_numpy(),
                    bb.get_column("mean_loss").to_numpy(),
                    marker="*",
                    s=110,
                    color=c,
                    edgecolors="black",
                    linewidths=0.5,
                    zorder=4,
                )
            dv = g.filter(pl.col("n_diverged") > 0)
            if dv.height:
                ax.scatter(
                    dv.get_column("lr").to_numpy(),
                    dv.get_column("mean_loss").to_numpy(),
                    marker="x",
                    s=50,
                    color=c,
                    zorder=3,
                )
        init = sub.get_column("init_loss").drop_nulls() if sub.height else pl.Series([], dtype=pl.Float64)
        ys = sub.get_column("mean_loss").drop_nulls().drop_nans() if sub.height else init
        if init.len():
            li = float(init.mean())
            lo_y, hi_y = (float(ys.min()), float(ys.max())) if ys.len() else (li, li)
            if li <= hi_y + 1.0 * max(hi_y - lo_y, 0.05):  # in range: draw it
                ax.axhline(li, color="grey", ls=":", lw=1, label="loss at init")
            else:  # far above the curves: say it rather than squash them
                ax.text(
                    0.02,
                    0.97,
                    f"loss at init {li:.3g} (above the axis)",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="grey",
                    va="top",
                )
        if not drawn:
            ax.text(0.5, 0.5, "no finished trials", transform=ax.transAxes, ha="center", color="grey")
        lr_axis(ax, grid)
        ax.set_title(f"width {w}", fontsize=9)
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(label("mean_loss"))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="upper center")  # between the arms of a U
    return save_titled(
        fig, path, "Loss vs LR per arm (star: best LR; x: some seed diverged, counted as loss at init)", partial
    )
