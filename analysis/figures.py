"""The report's four figures (matplotlib, Agg backend: no display needed).

- pr_over_training.png: PR / d_head of q and k over steps, per arm: median over the arm's
  completed trials (all LRs) with an interquartile band; rows optimizer x tensor, columns width.
- loss_vs_pr.png: final val loss against final PR / d_head per completed trial, coloured by
  optimizer x qk_norm, marker size by width.
- lr_sensitivity.png: final val loss (mean over seeds, diverged counted as the loss at init)
  against LR per arm; crosses mark LRs where some seed diverged.
- collapse_rate_vs_width.png: fitted collapse rate of the q and k PR per 1k steps against
  width, arm medians with 95% bootstrap intervals, log-log axes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from .paradox import BASELINE, variants  # noqa: E402

OPT_STYLE = {0: "-", 1: "--", 2: ":", 3: "-."}


def _colours(finals: pl.DataFrame) -> dict[tuple[str, str], tuple]:
    """One colour per (optimizer, qk_norm), stable for a given set of arms."""
    opts = sorted(set(finals.get_column("optimizer").drop_nulls().to_list()))
    qks = [BASELINE] + variants(finals)
    cmap = plt.get_cmap("tab10" if len(opts) * len(qks) <= 10 else "tab20")
    keys = [(o, q) for o in opts for q in qks]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _by_arm(df: pl.DataFrame, colours: dict):
    """(optimizer, qk_norm), rows: in the legend order (optimizer, then none first)."""
    keys = list(colours) + sorted(set(df.select("optimizer", "qk_norm").iter_rows()) - set(colours))
    for o, q in keys:
        g = df.filter((pl.col("optimizer") == o) & (pl.col("qk_norm") == q))
        if g.height:
            yield (o, q), g


def _empty(ax, text="no data"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path, title: str, partial: bool) -> Path:
    fig.suptitle(title + ("  [PARTIAL: sweep not finished]" if partial else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pr_over_training(curves: pl.DataFrame, finals: pl.DataFrame, path: Path, partial=False) -> Path:
    meta = finals.filter(pl.col("status") == "completed").select(
        "trial_id", "optimizer", "qk_norm", "width", "d_head")
    df = (
        curves.filter((pl.col("name") == "pr") & pl.col("tensor").is_in(["q", "k"]))
        .join(meta, on="trial_id", how="inner")
        .with_columns((pl.col("value") / pl.col("d_head")).alias("v"))
        .group_by("optimizer", "qk_norm", "width", "tensor", "step")
        .agg(pl.col("v").median().alias("med"), pl.col("v").quantile(0.25).alias("lo"),
             pl.col("v").quantile(0.75).alias("hi"), pl.len().alias("n"))
        .sort("step")
    )
    opts = sorted(set(meta.get_column("optimizer").to_list())) or ["-"]
    widths = sorted(set(meta.get_column("width").to_list())) or [0]
    rows = [(o, t) for o in opts for t in ("q", "k")]
    fig, axes = plt.subplots(len(rows), len(widths), figsize=(max(3.6 * len(widths), 7.5), 2.6 * len(rows)),
                             squeeze=False, sharex=True)
    colours = _colours(finals)
    for i, (o, t) in enumerate(rows):
        for j, w in enumerate(widths):
            ax = axes[i, j]
            sub = df.filter((pl.col("optimizer") == o) & (pl.col("tensor") == t) & (pl.col("width") == w))
            if sub.height == 0:
                _empty(ax)
                continue
            for q in [BASELINE] + variants(sub):
                g = sub.filter(pl.col("qk_norm") == q)
                if g.height == 0:
                    continue
                c = colours.get((o, q), "k")
                x = g.get_column("step").to_numpy()
                ax.plot(x, g.get_column("med").to_numpy(), color=c, label=q, lw=1.6)
                ax.fill_between(x, g.get_column("lo").to_numpy(), g.get_column("hi").to_numpy(),
                                color=c, alpha=0.2, lw=0)
            ax.set_title(f"{o}, {t}, width {w}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("PR / d_head")
            if i == len(rows) - 1:
                ax.set_xlabel("step")
            if j == len(widths) - 1:
                ax.legend(title=f"{o}: qk_norm", fontsize=7, title_fontsize=7)
    return _save(fig, path, "PR over training (median and IQR over trials, all LRs)", partial)


def loss_vs_pr(finals: pl.DataFrame, path: Path, partial=False) -> Path:
    done = finals.filter(pl.col("status") == "completed")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), squeeze=False)
    colours = _colours(finals)
    widths = sorted(set(done.get_column("width").to_list()))
    size = {w: 22 + 22 * i for i, w in enumerate(widths)}
    for ax, t in zip(axes[0], ("q", "k")):
        col = f"final_pr_{t}"
        d = done.filter(pl.col(col).is_not_null() & pl.col("final_val_loss").is_not_null())
        if d.height == 0:
            _empty(ax)
            continue
        for (o, q), g in _by_arm(d, colours):
            ax.scatter(g.get_column(col).to_numpy(), g.get_column("final_val_loss").to_numpy(),
                       s=[size[w] for w in g.get_column("width").to_list()],
                       color=colours.get((o, q), "k"), alpha=0.75, label=f"{o} / {q}",
                       edgecolors="none")
        ax.set_xlabel(f"final PR of {t} / d_head")
        ax.set_ylabel("final val loss")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    by = dict(zip(labels, handles))
    if by:
        axes[0, 1].legend(by.values(), by.keys(), fontsize=8, title="optimizer / qk_norm")
    return _save(fig, path, "Final loss vs final PR per trial (marker size: width)", partial)


def lr_sensitivity(curve: pl.DataFrame, path: Path, partial=False, finals=None) -> Path:
    widths = sorted(set(curve.get_column("width").to_list())) or [0]
    fig, axes = plt.subplots(1, len(widths), figsize=(max(4.2 * len(widths), 8), 3.8), squeeze=False)
    colours = _colours(finals if finals is not None else curve)
    opts = sorted(set(curve.get_column("optimizer").to_list()))
    for ax, w in zip(axes[0], widths):
        sub = curve.filter(pl.col("width") == w)
        if sub.height == 0:
            _empty(ax)
            continue
        for (o, q), g in _by_arm(sub, colours):
            g = g.sort("lr")
            c = colours.get((o, q), "k")
            ls = OPT_STYLE.get(opts.index(o) % 4, "-")
            ax.plot(g.get_column("lr").to_numpy(), g.get_column("mean_loss").to_numpy(), ls,
                    color=c, marker="o", ms=3, label=f"{o} / {q}")
            dv = g.filter(pl.col("n_diverged") > 0)
            if dv.height:
                ax.scatter(dv.get_column("lr").to_numpy(), dv.get_column("mean_loss").to_numpy(),
                           marker="x", s=50, color=c, zorder=3)
        init = sub.get_column("init_loss").drop_nulls()
        if init.len():
            ax.axhline(float(init.mean()), color="grey", ls=":", lw=1, label="loss at init")
        ax.set_xscale("log")
        lrs = sorted(set(sub.get_column("lr").to_list()))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(lrs, [f"{x:.0e}" for x in lrs], fontsize=7, rotation=45)
        ax.set_title(f"width {w}", fontsize=9)
        ax.set_xlabel("peak LR")
        ax.set_ylabel("final val loss (mean over seeds)")
        ax.grid(alpha=0.3)
    if axes[0, -1].get_legend_handles_labels()[0]:
        axes[0, -1].legend(fontsize=7)
    return _save(fig, path, "Loss vs LR per arm (x: some seed diverged, counted as loss at init)",
                 partial)


def collapse_rate_vs_width(per_arm: pl.DataFrame, path: Path, partial=False, finals=None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    colours = _colours(finals) if finals is not None else {}
    ok = per_arm.height and "metric" in per_arm.columns
    opts = sorted(set(per_arm.get_column("optimizer").to_list())) if ok else []
    for ax, t in zip(axes[0], ("q", "k")):
        sub = per_arm.filter((pl.col("metric") == "pr") & (pl.col("tensor") == t)
                             & pl.col("rate_per_1k_steps").is_not_null()) if ok else per_arm
        if not ok or sub.height == 0:
            _empty(ax, "no collapse fits")
            continue
        for (o, q), g in _by_arm(sub, colours):
            g = g.sort("width")
            x = g.get_column("width").to_numpy()
            y = g.get_column("rate_per_1k_steps").to_numpy()
            lo = y - g.get_column("rate_per_1k_steps_ci_low").fill_null(np.nan).to_numpy()
            hi = g.get_column("rate_per_1k_steps_ci_high").fill_null(np.nan).to_numpy() - y
            ax.errorbar(x, y, yerr=np.nan_to_num(np.vstack([lo, hi])), color=colours.get((o, q), "k"),
                        ls=OPT_STYLE.get(opts.index(o) % 4, "-"), marker="o", ms=4, capsize=3,
                        label=f"{o} / {q}")
        ax.set_xscale("log", base=2)
        ws = sorted(set(sub.get_column("width").to_list()))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ws, [str(w) for w in ws])
        r = sub.get_column("rate_per_1k_steps")
        if (r > 0).all() and r.max() / r.min() > 4:  # log axis only where it helps reading
            ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_ylabel(f"collapse rate of {t} PR (per 1k steps)")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path, "Collapse rate vs width (arm median, 95% bootstrap CI)", partial)
