"""spectra.png: normalised singular values (s_i / sum s, mean over layers and heads) of q and k at
init, at the PR minimum and at the end, for one trial per arm (lowest seed at the arm's best LR).
One legend for the figure (the three lines are the same in every panel); each panel's title gives
the steps drawn (init / PR minimum / final). Each row (one optimizer and variant) shares its y axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..collapse import min_steps
from ..labels import tensor_label
from ..paradox import BASELINE
from .common import (
    ARM_KEYS,
    best_lr_frame,
    best_lr_map,
    empty_panel,
    finish,
    lr_label,
    plt,
    step_label,
    suptitle,
    sweep_arms,
    x_labels_outer,
)

# The three spectra of a panel, in this order: {name: (colour, line style, legend words)}; greys, not
# the variants' colours (common.VARIANT_COLOURS). Their steps are in each panel's title.
PICKS = {
    "init": ("0.6", "--", "init (first step in each title)"),
    "min": ("0.35", ":", "nearest the PR minimum (second step)"),
    "final": ("black", "-", "final (third step)"),
}


def _chosen_trials(finals: pl.DataFrame, best_lr: dict) -> dict[tuple, str]:
    """{arm: (trial_id, seed, lr)}: the lowest completed seed at the arm's best LR (one join and
    one group_by, not a filter per arm)."""
    done = finals.filter(pl.col("status") == "completed")
    if done.height == 0 or not best_lr:
        return {}
    first = (
        done.join(best_lr_frame(best_lr, done), on=[*ARM_KEYS, "lr"], how="inner")
        .sort("seed", "trial_id")
        .group_by(*ARM_KEYS, maintain_order=True)
        .agg(pl.col("trial_id").first(), pl.col("seed").first(), pl.col("lr").first())
    )
    return {(o, q, w): (tid, seed, lr) for o, q, w, tid, seed, lr in first.iter_rows()}


def _mean_spectra(spec: pl.DataFrame) -> dict[tuple, np.ndarray]:
    """{(trial_id, tensor, step): mean over layers and heads of s / sum(s)}."""
    out = {}
    for (tid, t, step), g in spec.group_by("trial_id", "tensor", "step"):
        s = [np.asarray(x, float) for x in g.get_column("sigma").to_list()]
        n = min(len(x) for x in s)
        if n == 0:
            continue
        a = np.stack([x[:n] for x in s])
        tot = a.sum(1, keepdims=True)
        a = np.divide(a, tot, out=np.full_like(a, np.nan), where=tot > 0)
        out[(tid, t, int(step))] = np.nanmean(a, axis=0)
    return out


def spectra(
    results,
    curves: pl.DataFrame,
    finals: pl.DataFrame,
    best: pl.DataFrame,
    path: Path,
    partial=False,
    tensors=("q", "k"),
) -> Path:
    """Normalised spectra of q and k at init, at the PR minimum and at the end, one trial per arm.

    `results` is an `analysis.loading.Results` (its spectra are read for the chosen trials only,
    through `Results.spectra_of`, once per report: a part that fails to read is skipped and named); an arm's trial is
    its lowest completed seed at the arm's best LR (`best`). The minimum is the step of the trial's
    q (k) PR minimum as the collapse fits find it (analysis.collapse.min_steps, from `curves`, the
    features' curves); the nearest step with a recorded spectrum is drawn and
    its step named in the panel's title ("steps init / PR minimum / final")."""
    arms = sweep_arms(finals)
    chosen = _chosen_trials(finals, best_lr_map(best))
    ids = [v[0] for v in chosen.values()]
    spec = results.spectra_of(ids).filter(pl.col("tensor").is_in(list(tensors))) if ids else pl.DataFrame()
    mean = _mean_spectra(spec) if spec.height else {}
    rec_steps: dict[tuple, list[int]] = {}
    for tid, t, step in mean:
        rec_steps.setdefault((tid, t), []).append(step)
    mins = min_steps(curves, ids, tensors)  # the collapse fits' min_step, for these trials alone
    pairs = sorted({(a[0], a[1]) for a in arms}, key=lambda p: (p[0], p[1] != BASELINE, p[1]))
    pairs = pairs or [("-", "-")]
    widths = sorted({a[2] for a in arms}) or [0]
    cols = [(w, t) for w in widths for t in tensors]
    fig, axes = plt.subplots(  # one y scale per row (one optimizer and variant): its labels on the left only
        len(pairs), len(cols), figsize=(max(2.7 * len(cols), 7.5), 2.3 * len(pairs) + 0.4), squeeze=False, sharey="row"
    )
    drawn_any = False
    shown = [[False] * len(cols) for _ in pairs]
    for i, (o, q) in enumerate(pairs):
        for j, (w, t) in enumerate(cols):
            ax = axes[i, j]
            title = f"{o} / {q}, width {w}, {tensor_label(t)}"
            c = chosen.get((o, q, w))
            if c is None:
                empty_panel(ax, "no completed trial at the best LR")
                ax.set_title(title, fontsize=7.5)
                continue
            tid, seed, lr = c
            steps = sorted(rec_steps.get((tid, t), []))
            if not steps:
                empty_panel(ax, f"seed {seed}, lr {lr_label(lr)}:\nno spectra recorded")
                ax.set_title(title, fontsize=7.5)
                continue
            m = mins.get((tid, t))
            s_min = min(steps, key=lambda s: abs(s - m)) if m is not None else None
            picks = [(s, *PICKS[name]) for name, s in zip(PICKS, (steps[0], s_min, steps[-1]))]
            for s, colour, ls, _ in picks:
                if s is None:
                    continue
                v = mean[(tid, t, s)]
                ax.plot(np.arange(1, v.size + 1), v, ls, color=colour, lw=1.3, alpha=0.9)
            drawn_any = shown[i][j] = True
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            # minor grid lines at 2 and 5 of each decade: a third of the ticks of 2..9 to lay out and draw
            ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # 0, 10, 20, 30: index ticks
            ax.grid(alpha=0.3, which="both")
            at = " / ".join(step_label(s) if s is not None else "-" for s, *_ in picks)
            ax.set_title(f"{title}\nseed {seed}, LR {lr_label(lr)}; steps {at}", fontsize=7)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(r"share of the spectrum $s_i / \sum_j s_j$", fontsize=7)
            if i == len(pairs) - 1:
                ax.set_xlabel("singular value index i", fontsize=8)
    x_labels_outer(axes, shown)  # the same index axis (1 to d_head) in every panel
    if drawn_any:  # one legend for the figure: the same three lines in every panel
        handles = [Line2D([], [], color=c, ls=ls, lw=1.3, label=words) for c, ls, words in PICKS.values()]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    suptitle(fig, "Normalised singular values of q, k (mean over layers and heads): init, PR minimum, final", partial)
    finish(fig, path, rect=(0, 0.3 / fig.get_figheight() if drawn_any else 0, 1, 1))
    return path
