"""spectra.png: normalised singular values (s_i / sum s, mean over layers and heads) of q and k at
init, at the PR minimum and at the end, for one trial per arm (lowest seed at the arm's best LR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..labels import tensor_label
from ..paradox import BASELINE
from .common import best_lr_map, empty_panel, lr_label, plt, save_titled, sweep_arms


def _chosen_trials(finals: pl.DataFrame, best_lr: dict) -> dict[tuple, str]:
    """{arm: trial_id}: the lowest completed seed at the arm's best LR."""
    out = {}
    done = finals.filter(pl.col("status") == "completed")
    for arm, lr in best_lr.items():
        g = done.filter(
            (pl.col("optimizer") == arm[0])
            & (pl.col("qk_norm") == arm[1])
            & (pl.col("width") == arm[2])
            & (pl.col("lr") == lr)
        ).sort("seed")
        if g.height:
            out[arm] = (g.get_column("trial_id")[0], g.get_column("seed")[0], lr)
    return out


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
    per_trial: pl.DataFrame,
    finals: pl.DataFrame,
    best: pl.DataFrame,
    path: Path,
    partial=False,
    tensors=("q", "k"),
) -> Path:
    """Normalised spectra of q and k at init, at the PR minimum and at the end, one trial per arm.

    `results` is an `analysis.loading.Results` (its spectra are read for the chosen trials only,
    through `Results.collect`: a part that fails to read is skipped and named); an arm's trial is
    its lowest completed seed at the arm's best LR (`best`). The minimum is the step of the trial's
    q (k) PR minimum from the collapse fits; the nearest step with a recorded spectrum is drawn and
    its step named in the legend."""
    arms = sweep_arms(finals)
    chosen = _chosen_trials(finals, best_lr_map(best))
    ids = [v[0] for v in chosen.values()]
    spec = (
        results.collect("spectra", lambda lf: lf.filter(pl.col("tensor").is_in(list(tensors))), trials=ids)
        if ids
        else pl.DataFrame()
    )
    mean = _mean_spectra(spec) if spec.height else {}
    rec_steps: dict[tuple, list[int]] = {}
    for tid, t, step in mean:
        rec_steps.setdefault((tid, t), []).append(step)
    mins = {}
    if per_trial.height:
        for tid, t, s in (
            per_trial.filter(pl.col("metric") == "pr").select("trial_id", "tensor", "min_step").iter_rows()
        ):
            mins[(tid, t)] = s
    pairs = sorted({(a[0], a[1]) for a in arms}, key=lambda p: (p[0], p[1] != BASELINE, p[1]))
    pairs = pairs or [("-", "-")]
    widths = sorted({a[2] for a in arms}) or [0]
    cols = [(w, t) for w in widths for t in tensors]
    fig, axes = plt.subplots(
        len(pairs), len(cols), figsize=(max(2.7 * len(cols), 7.5), 2.3 * len(pairs) + 0.4), squeeze=False
    )
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
            picks = [  # greys, not the variants' colours (common.VARIANT_COLOURS)
                ("init", steps[0], "0.6", "--"),
                ("PR min", s_min, "0.35", ":"),
                ("final", steps[-1], "black", "-"),
            ]
            for name, s, colour, ls in picks:
                if s is None:
                    continue
                v = mean[(tid, t, s)]
                ax.plot(np.arange(1, v.size + 1), v, ls, color=colour, lw=1.3, label=f"{name} (step {s})", alpha=0.9)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{title}\nseed {seed}, LR {lr_label(lr)}", fontsize=7)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(r"share of the spectrum $s_i / \sum_j s_j$", fontsize=7)
            if i == len(pairs) - 1:
                ax.set_xlabel("singular value index i", fontsize=8)
            ax.legend(fontsize=6)
    return save_titled(
        fig, path, "Normalised singular values of q, k (mean over layers and heads): init, PR minimum, final", partial
    )
