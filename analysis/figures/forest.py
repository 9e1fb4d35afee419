"""forest.png: paired effects (variant minus none) with 95% intervals per (width, lr) cell, at each
arm's best LR per width and the deciding (pooled best-LR) row; one panel per optimizer x variant
(rows) and metric (columns), from the per-cell table (`Report.cells`). Each variant in its colour of
every figure; the marker says the selection (circle: cell, diamond: best LR per width, square with
a black edge: the deciding row)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from ..labels import mathtext, metric_label
from ..paradox import DECIDE
from .common import arm_colours, empty_panel, finish, lr_label, plt, save_titled, suptitle

FOREST_METRICS = DECIDE  # the deciding metrics: loss and the sphere PR of q and k
AS_USED = ("final_val_loss", "final_pr_q", "final_pr_k")  # results without the sphere stage


def _forest_label(r: dict) -> str:
    if r["selection"] == "deciding":
        return "deciding: best LR, all widths"
    w = f"width {r['width']}" if r.get("width") is not None else "all widths"
    init = f" [{r['init_key']}]" if r.get("init_key") else ""
    if r["selection"] == "best_lr":
        lr = f" ({lr_label(r['lr'])})" if r.get("lr") is not None else ""
        return f"{w}, best LR{lr}{init}"
    return (f"{w}, LR {lr_label(r['lr'])}" if r.get("lr") is not None else f"{w}, LR ?") + init


def forest_plot(cells: pl.DataFrame, path: Path, partial=False) -> Path:
    """Paired effects (variant minus none) with 95% intervals: one panel per optimizer x variant
    (rows) and metric (columns); within a panel one line per (width, lr) cell, then the arm's
    best LR per width (diamonds), then the deciding pooled best-LR row (a square). Rows without
    an interval (too few pairs) get a hollow marker and their n."""
    found = (
        cells.filter(pl.col("mean_diff").is_not_null()).get_column("metric").unique().to_list() if cells.height else []
    )
    metrics = [m for m in (FOREST_METRICS if set(FOREST_METRICS[1:]) & set(found) else AS_USED) if m in found]
    groups = cells.select("optimizer", "qk_norm").unique().sort("optimizer", "qk_norm").rows() if cells.height else []
    if not metrics or not groups:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        empty_panel(ax, "no paired effects (no pairs of none and a variant)")
        return save_titled(fig, path, "Paired effects (variant minus none)", partial)
    order = {"cell": 0, "best_lr": 1, "deciding": 2}
    entries = {}
    # one partition of the cells, not a filter per panel
    parts = cells.filter(pl.col("metric").is_in(metrics)).partition_by("optimizer", "qk_norm", "metric", as_dict=True)
    for o, q in groups:
        g = [r for m in metrics if (o, q, m) in parts for r in parts[(o, q, m)].iter_rows(named=True)]
        keys = sorted(  # (selection, width, lr, init_key): an init axis gets a row per init
            {(r["selection"], r.get("width"), r.get("lr"), r.get("init_key")) for r in g},
            key=lambda k: (
                order.get(k[0], 3) == 2,
                k[1] if k[1] is not None else 1e9,
                order.get(k[0], 3),
                k[2] if k[2] is not None else 0,
                k[3] or "",
            ),
        )
        entries[(o, q)] = keys
    heights = [0.8 + 0.22 * len(entries[k]) for k in groups]
    fig, axes = plt.subplots(
        len(groups),
        len(metrics),
        squeeze=False,
        figsize=(3.6 * len(metrics) + 1.6, sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
    )
    styles = {"cell": ("o", 4, 0.9), "best_lr": ("D", 5, 1.2), "deciding": ("s", 7, 2.0)}  # marker, size, line width
    colours = arm_colours(cells)
    for i, (o, q) in enumerate(groups):
        keys = entries[(o, q)]
        ypos = {k: len(keys) - 1 - n for n, k in enumerate(keys)}
        colour = colours.get((o, q), "grey")
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            part = parts.get((o, q, metric))
            # the intervals and markers of one selection drawn together: one line per kind of mark
            marks: dict[tuple, tuple[list, list]] = {}
            for r in part.iter_rows(named=True) if part is not None else ():
                y = ypos[(r["selection"], r.get("width"), r.get("lr"), r.get("init_key"))]
                sel = r["selection"] if r["selection"] in styles else "cell"
                x, lo, hi = r.get("mean_diff"), r.get("ci_low"), r.get("ci_high")
                if x is None or not np.isfinite(x):
                    ax.text(
                        0.98,
                        y,
                        f"n={r.get('n_pairs', 0)}: no estimate",
                        ha="right",
                        va="center",
                        fontsize=6,
                        color="grey",
                        transform=blended_transform_factory(ax.transAxes, ax.transData),
                    )
                    continue
                if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                    xs, ys = marks.setdefault((sel, "ci"), ([], []))
                    xs += [lo, hi, np.nan]
                    ys += [y, y, np.nan]
                    xs, ys = marks.setdefault((sel, "filled"), ([], []))
                else:
                    xs, ys = marks.setdefault((sel, "hollow"), ([], []))
                    ax.text(x, y + 0.3, f"n={r.get('n_pairs', 0)}, no CI", fontsize=5.5, color="grey", ha="center")
                xs.append(x)
                ys.append(y)
            for (sel, kind), (xs, ys) in sorted(marks.items(), key=lambda m: (order[m[0][0]], m[0][1] != "ci")):
                marker, ms, lw = styles[sel]
                edge = "black" if sel == "deciding" else colour
                if kind == "ci":
                    ax.plot(xs, ys, color=colour, lw=lw)
                elif kind == "filled":
                    ax.plot(xs, ys, marker=marker, color=colour, mec=edge, ms=ms, ls="none")
                else:
                    ax.plot(xs, ys, marker=marker, mfc="white", mec=edge, ms=ms, ls="none")
            ax.axvline(0, color="grey", lw=0.8, ls=":")
            ax.set_ylim(-0.7, len(keys) - 0.3)
            if j == 0:
                ax.set_yticks(
                    list(ypos.values()),
                    [_forest_label(dict(selection=s, width=w, lr=lr, init_key=i)) for s, w, lr, i in ypos],
                    fontsize=6.5,
                )
            else:  # the rows line up with the first column's labels; no ticks of their own to lay out
                ax.set_yticks([])
            ax.grid(alpha=0.3, axis="x")
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(mathtext(f"{o}: {q} minus none\n{metric_label(metric)}"), fontsize=8)
            if i == len(groups) - 1:
                ax.set_xlabel("mean paired difference, variant minus none (95% t CI)", fontsize=7.5)
    handles = [
        Line2D(
            [], [], marker=m, color="grey", mec="black" if sel == "deciding" else "grey", ls="-", lw=w, ms=s, label=lab
        )
        for (sel, (m, s, w)), lab in zip(
            styles.items(), ("per (width, LR) cell", "best LR per width", "deciding: held-out best LR, all widths")
        )
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    suptitle(fig, "Paired effects, variant minus none (seeds as replicates)", partial)
    finish(fig, path, rect=(0, 0.03, 1, 1))
    return path
