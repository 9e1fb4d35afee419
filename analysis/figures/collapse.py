"""collapse_rate_vs_width.png: the fitted collapse rate of q and k PR per 1k steps against width,
one column per LR and one at each arm's best LR (never pooled over LRs). Filled markers (the
optimizer's: circle AdamW, square Muon): the geometric mean of fitted seeds with a 95% t interval.
An arm with no fitted seed is drawn hollow, its marker saying why (the legend lists exactly the
markers drawn): an upward triangle, falls too fast to fit (censored fast), at the rate lower bound or
on the axis without one; a downward triangle on the axis, falls too slow to fit (censored slow); a
circle on the axis, no fall, failed fits or no completed trials. Labels give "censored k/n"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import blended_transform_factory

from ..labels import mathtext, tensor_label
from ..paradox import BASELINE
from .common import (
    arm_colours,
    best_lr_map,
    empty_panel,
    finish,
    lr_label,
    opt_linestyle,
    opt_marker,
    plt,
    suptitle,
    sweep_arms,
)

# Why an arm has no fitted rate -> its hollow marker and the legend's words for it.
NO_FIT_MARKERS = {"fast": "^", "slow": "v", "other": "o"}
NO_FIT_LEGEND = {
    "fast": "no fit, falls too fast (censored): at the rate lower bound, or on the axis without one",
    "slow": "no fit, falls too slow to fit (censored slow): on the axis",
    "other": "no fit (no fall, failed fits, no completed trials): on the axis",
}


def no_fit(r: dict | None) -> tuple[str, str]:
    """(kind, label) of an arm-and-LR row without a fitted rate: kind one of NO_FIT_MARKERS."""
    if not r:
        return "other", "no completed trials"
    n = r.get("n_trials") or 0
    if r.get("n_censored"):
        return "fast", f"no fit (censored fast {r['n_censored']}/{n})"
    if r.get("n_censored_slow"):
        return "slow", f"no fit (censored slow {r['n_censored_slow']}/{n})"
    parts = [f"{k.removeprefix('n_').replace('_', ' ')} {r[k]}" for k in ("n_no_fall", "n_failed") if r.get(k)]
    return "other", "no fit (" + (", ".join(parts) or f"0/{n} fitted") + ")"


def collapse_rate_vs_width(
    per_arm: pl.DataFrame,
    best: pl.DataFrame,
    path: Path,
    partial=False,
    finals=None,
    metric: str = "pr",
    tensors=("q", "k"),
) -> Path:
    """Rate per 1k steps against width: rows `tensors` (the q and k of one stage); one column per LR and one at each
    arm's best LR (`best`, drawn when `finals` is given). Every arm of `finals` is drawn at every
    width."""
    ok = per_arm.height > 0 and "metric" in per_arm.columns and "lr" in per_arm.columns
    ref = finals if finals is not None else (per_arm if ok else pl.DataFrame())
    arms = sweep_arms(ref) if ref.height else []
    colours = arm_colours(ref) if ref.height else {}
    best_lr = best_lr_map(best) if finals is not None and finals.height else {}
    lrs = sorted(ref.get_column("lr").drop_nulls().unique().to_list()) if ref.height and "lr" in ref.columns else []
    columns = [("lr", x) for x in lrs] + ([("best", None)] if best_lr else [])
    columns = columns or [("lr", None)]
    widths = sorted({a[2] for a in arms})
    fig, axes = plt.subplots(2, len(columns), figsize=(max(3.3 * len(columns), 8), 7.6), squeeze=False, sharey="row")
    pairs = sorted({(a[0], a[1]) for a in arms}, key=lambda p: (p[0], p[1] != BASELINE, p[1]))
    kinds_drawn: set[str] = set()
    # {tensor: {(optimizer, qk_norm, width, lr): row}}, the first row of each, read once (no filter per point)
    rows_of: dict[str, dict[tuple, dict]] = {}
    if ok:
        for r in per_arm.filter(pl.col("metric") == metric).iter_rows(named=True):
            rows_of.setdefault(r["tensor"], {}).setdefault((r["optimizer"], r["qk_norm"], r["width"], r["lr"]), r)
    for i, t in enumerate(tensors):
        for j, (kind, lr) in enumerate(columns):
            ax = axes[i, j]
            sub = rows_of.get(t) if ok else None
            name = tensor_label(t)
            title = (
                f"{name}, LR {lr_label(lr)}" if kind == "lr" and lr is not None else f"{name}, each arm at its best LR"
            )
            if not arms:
                empty_panel(ax, "no trials")
                ax.set_title(title, fontsize=8)
                continue
            notes = 0
            has_y = False  # anything in data coordinates on y (else the log axis has no range)
            for k, (o, q) in enumerate(pairs):
                colour = colours.get((o, q), "k")
                ls = opt_linestyle(o)
                xs, ys, los, his = [], [], [], []
                for w in widths:
                    if (o, q, w) not in arms:
                        continue
                    x_lr = lr if kind == "lr" else best_lr.get((o, q, w))
                    row = None
                    if sub is not None and x_lr is not None:
                        row = sub.get((o, q, w, x_lr))
                    rate = row.get("rate_per_1k_steps") if row else None
                    if rate is not None and np.isfinite(rate):
                        xs.append(w)
                        ys.append(rate)
                        lo, hi = row.get("rate_per_1k_steps_ci_low"), row.get("rate_per_1k_steps_ci_high")
                        los.append(rate - lo if lo is not None else 0.0)
                        his.append(hi - rate if hi is not None else 0.0)
                        if row.get("n_censored"):
                            ax.annotate(
                                f"+{row['n_censored']} censored",
                                (w, rate),
                                fontsize=5.5,
                                color=colour,
                                xytext=(4, -8),
                                textcoords="offset points",
                            )
                        continue
                    # no fit here: draw the arm anyway, its hollow marker saying why
                    why, label = no_fit(row)
                    kinds_drawn.add(why)
                    bound = row.get("rate_lower_bound_per_1k") if row else None
                    if why == "fast" and bound is not None and np.isfinite(bound) and bound > 0:
                        ax.plot([w], [bound], marker=NO_FIT_MARKERS[why], mfc="white", mec=colour, ms=7, ls="none")
                        has_y = True
                        ax.annotate(
                            label.replace("no fit (", "no fit\n("),
                            (w, bound),
                            fontsize=6,
                            color=colour,
                            ha="center",
                            va="top",
                            xytext=(0, -6 - 16 * (k % 3)),
                            textcoords="offset points",
                        )
                    else:
                        tr = blended_transform_factory(ax.transData, ax.transAxes)
                        yax = 0.04 + 0.07 * (notes % 6)
                        ax.plot(
                            [w],
                            [yax],
                            marker=NO_FIT_MARKERS[why],
                            mfc="white",
                            mec=colour,
                            ms=6,
                            ls="none",
                            transform=tr,
                            clip_on=False,
                        )
                        ax.text(w, yax, "  " + label, transform=tr, fontsize=5.5, color=colour, va="center")
                        notes += 1
                if xs:
                    has_y = True
                    ax.errorbar(
                        xs, ys, yerr=np.vstack([los, his]), color=colour, ls=ls, marker=opt_marker(o), ms=4, capsize=3
                    )
            ax.set_xscale("log", base=2)
            ax.xaxis.set_minor_formatter(NullFormatter())
            if widths:
                ax.set_xticks(widths, [str(w) for w in widths])
                ax.set_xlim(widths[0] / 1.4, widths[-1] * 2.2)
            if not has_y:
                ax.set_ylim(1, 100)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
            ax.set_title(title, fontsize=8.5)
            ax.grid(alpha=0.3, which="both")
            if i == 1:
                ax.set_xlabel(mathtext("model width d_model"))
            if j == 0:
                ax.set_ylabel(f"collapse rate of the PR of {name}\n(per 1k steps)", fontsize=8)
    handles = [
        Line2D(
            [], [], color=colours.get(p, "k"), ls=opt_linestyle(p[0]), marker=opt_marker(p[0]), label=f"{p[0]} / {p[1]}"
        )
        for p in pairs
    ]
    handles += [
        Line2D([], [], color="grey", marker=NO_FIT_MARKERS[k], mfc="white", ls="none", label=NO_FIT_LEGEND[k])
        for k in NO_FIT_MARKERS
        if k in kinds_drawn
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=7, frameon=False)
    for ax in axes.flat:  # one rate in a row (a sweep of one trial): a log axis of no height cannot be laid out
        lo, hi = ax.get_ylim()
        if ax.get_yscale() == "log" and 0 < lo and hi < 1.5 * lo:
            mid = (lo * hi) ** 0.5
            ax.set_ylim(mid / 3, mid * 3)
    suptitle(fig, "Collapse rate vs width at fixed LR (geometric mean of fitted seeds, 95% t CI)", partial)
    rows = -(-len(handles) // 3)
    finish(fig, path, rect=(0, 0.025 * rows + 0.02, 1, 1))
    return path
