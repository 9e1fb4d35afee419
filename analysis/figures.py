"""The report's figures (matplotlib, Agg backend: no display needed). Every arm
(optimizer, qk_norm, width) of the sweep is drawn in every figure; an arm without data or
without a fit is drawn as such (a note or a hollow marker), never left out.

- forest.png: paired effects (variant minus none) with 95% intervals per (width, lr) cell, at
  each arm's best LR and the deciding (pooled best-LR) row; one panel per optimizer x variant
  (rows) and metric (columns). Needs the per-cell table (`Report.cells`).
- pr_over_training.png: PR / d_head of q and k over steps at each arm's best LR (per width):
  every seed as a thin line, the mean over seeds as a thick one; symlog step axis so the dense
  early probes show.
- pr_by_lr_q.png, pr_by_lr_k.png: the same per LR, one panel per (optimizer, width) x LR.
- spectra.png: normalised singular values (s_i / sum s, mean over layers and heads) of q and k
  at init, at the PR minimum and at the end, for one trial per arm (lowest seed at the arm's
  best LR).
- loss_vs_pr.png: final val loss against final PR / d_head per completed trial.
- lr_sensitivity.png: final val loss (mean over seeds) against LR per arm, the grid's LRs as tick
  labels; stars mark each arm's best LR, crosses LRs where a seed diverged.
- collapse_rate_vs_width.png: fitted collapse rate of q and k PR per 1k steps against width, one
  column per LR and one at each arm's best LR (never pooled over LRs); filled markers: geometric
  mean of fitted seeds with a 95% t interval; hollow triangles: no fit, all falls too fast
  (censored) drawn at their rate lower bound; hollow circles on the axis: no fit for another
  reason. Labels give "censored k/n".
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from trainer.safeio import safe_mkdir, safe_write_bytes  # noqa: E402

from .paradox import BASELINE, variants  # noqa: E402
from .sensitivity import best_lrs, lr_curve  # noqa: E402

OPT_STYLE = {0: "-", 1: "--", 2: ":", 3: "-."}
FOREST_METRICS = ("final_val_loss", "final_pr_q", "final_pr_k")
ARM_KEYS = ("optimizer", "qk_norm", "width")


def lr_label(x: float) -> str:
    """The grid value as written: 1e-3, 5e-3, 2.5e-2 (never rounded to one digit)."""
    if x is None or not np.isfinite(x) or x <= 0:
        return str(x)
    e = math.floor(math.log10(x) + 1e-9)
    m = round(x / 10**e, 6)
    if m >= 10:
        m, e = m / 10, e + 1
    return f"{m:g}e{e}"


def _lr_axis(ax, lrs) -> None:
    """Log x axis whose ticks are exactly the LRs of the grid, labelled with their values."""
    lrs = sorted(set(float(x) for x in lrs))
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(lrs, [lr_label(x) for x in lrs], fontsize=7, rotation=45 if len(lrs) > 4 else 0)
    if lrs:
        ax.set_xlim(lrs[0] / 1.6, lrs[-1] * 1.6)


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


def _qk_order(finals: pl.DataFrame) -> list[str]:
    return [BASELINE] + variants(finals) if finals.height else [BASELINE]


def _arms(finals: pl.DataFrame) -> list[tuple[str, str, int]]:
    """Every (optimizer, qk_norm, width) of the sweep, in report order."""
    if finals.height == 0:
        return []
    order = {q: i for i, q in enumerate(_qk_order(finals))}
    arms = finals.select(*ARM_KEYS).unique().drop_nulls().rows()
    return sorted(arms, key=lambda a: (a[0], order.get(a[1], 99), a[2]))


def _best(finals: pl.DataFrame, best: pl.DataFrame | None) -> dict[tuple, float]:
    """{(optimizer, qk_norm, width): best LR} (lowest mean final val loss over seeds)."""
    if best is None:
        best = best_lrs(lr_curve(finals)) if finals.height else None
    if best is None or best.height == 0:
        return {}
    return {(o, q, w): lr for o, q, w, lr in best.select(*ARM_KEYS, "best_lr").iter_rows()}


def _empty(ax, text="no data"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", fontsize=8, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _savefig(fig, path: Path) -> None:
    """PNG bytes in memory, then one safe write: never through a symlink, never half a file."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    safe_write_bytes(path, buf.getvalue())


def _save(fig, path: Path, title: str, partial: bool) -> Path:
    fig.suptitle(title + ("  [PARTIAL: sweep not finished]" if partial else ""), fontsize=11)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


# ---- PR over training ---------------------------------------------------------------------
def _pr_frame(curves: pl.DataFrame, finals: pl.DataFrame) -> pl.DataFrame:
    """q/k PR / d_head per completed trial and step, with the trial's settings."""
    meta = finals.filter(pl.col("status") == "completed").select(
        "trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "d_head"
    )
    return (
        curves.filter((pl.col("name") == "pr") & pl.col("tensor").is_in(["q", "k"]))
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
    curves: pl.DataFrame, finals: pl.DataFrame, path: Path, partial=False, best: pl.DataFrame | None = None
) -> Path:
    """PR / d_head over steps at each arm's best LR: rows optimizer x tensor, columns width."""
    df = _pr_frame(curves, finals)
    best_lr = _best(finals, best)
    arms = _arms(finals)
    opts = sorted({a[0] for a in arms}) or ["-"]
    widths = sorted({a[2] for a in arms}) or [0]
    rows = [(o, t) for o in opts for t in ("q", "k")]
    fig, axes = plt.subplots(
        len(rows), len(widths), figsize=(max(3.8 * len(widths), 7.5), 2.7 * len(rows)), squeeze=False
    )
    colours = _colours(finals) if finals.height else {}
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
                _empty(ax, f"{o}, width {w}: no completed trials")
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
    return _save(fig, path, "PR over training at each arm's best LR (thin: seeds, thick: mean)", partial)


def pr_by_lr(
    curves: pl.DataFrame,
    finals: pl.DataFrame,
    path: Path,
    tensor: str = "q",
    partial=False,
    best: pl.DataFrame | None = None,
) -> Path:
    """PR / d_head of one tensor over steps, one panel per (optimizer, width) x LR."""
    df = _pr_frame(curves, finals).filter(pl.col("tensor") == tensor)
    best_lr = _best(finals, best)
    arms = _arms(finals)
    cells = sorted({(a[0], a[2]) for a in arms}) or [("-", 0)]
    lrs = sorted(finals.get_column("lr").drop_nulls().unique().to_list()) if finals.height else []
    lrs = lrs or [None]
    fig, axes = plt.subplots(
        len(cells), len(lrs), figsize=(max(2.9 * len(lrs), 7.5), 2.4 * len(cells)), squeeze=False, sharey="row"
    )
    colours = _colours(finals) if finals.height else {}
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
                _empty(ax, "no completed trials")
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
    return _save(fig, path, f"PR of {tensor} over training per LR (thin: seeds, thick: mean)", partial)


# ---- forest plot --------------------------------------------------------------------------
def _forest_label(r: dict) -> str:
    if r["selection"] == "deciding":
        return "deciding: best LR, all widths"
    w = f"w{r['width']}" if r.get("width") is not None else "all w"
    init = f" [{r['init_key']}]" if r.get("init_key") else ""
    if r["selection"] == "best_lr":
        lr = f" ({lr_label(r['lr'])})" if r.get("lr") is not None else ""
        return f"{w} best LR{lr}{init}"
    return (f"{w} lr {lr_label(r['lr'])}" if r.get("lr") is not None else f"{w} lr ?") + init


def forest_plot(cells: pl.DataFrame, path: Path, partial=False) -> Path:
    """Paired effects (variant minus none) with 95% intervals: one panel per optimizer x variant
    (rows) and metric (columns); within a panel one line per (width, lr) cell, then the arm's
    best LR per width (diamonds), then the deciding pooled best-LR row (a square). Rows without
    an interval (too few pairs) get a hollow marker and their n."""
    metrics = [m for m in FOREST_METRICS if cells.height and m in set(cells.get_column("metric").to_list())]
    groups = cells.select("optimizer", "qk_norm").unique().sort("optimizer", "qk_norm").rows() if cells.height else []
    if not metrics or not groups:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        _empty(ax, "no paired effects (no pairs of none and a variant)")
        return _save(fig, path, "Paired effects (variant minus none)", partial)
    order = {"cell": 0, "best_lr": 1, "deciding": 2}
    entries = {}
    for o, q in groups:
        g = cells.filter((pl.col("optimizer") == o) & (pl.col("qk_norm") == q) & pl.col("metric").is_in(metrics))
        keys = sorted(  # (selection, width, lr, init_key): an init axis gets a row per init
            {(r["selection"], r.get("width"), r.get("lr"), r.get("init_key")) for r in g.iter_rows(named=True)},
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
    styles = {"cell": ("o", "tab:blue", 4), "best_lr": ("D", "tab:red", 5), "deciding": ("s", "black", 6)}
    for i, (o, q) in enumerate(groups):
        keys = entries[(o, q)]
        ypos = {k: len(keys) - 1 - n for n, k in enumerate(keys)}
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            g = cells.filter((pl.col("optimizer") == o) & (pl.col("qk_norm") == q) & (pl.col("metric") == metric))
            for r in g.iter_rows(named=True):
                y = ypos[(r["selection"], r.get("width"), r.get("lr"), r.get("init_key"))]
                marker, colour, ms = styles.get(r["selection"], ("o", "grey", 4))
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
                    ax.plot([lo, hi], [y, y], color=colour, lw=1.2)
                    ax.plot([x], [y], marker=marker, color=colour, ms=ms, ls="none")
                else:
                    ax.plot([x], [y], marker=marker, mfc="white", mec=colour, ms=ms, ls="none")
                    ax.text(x, y + 0.3, f"n={r.get('n_pairs', 0)}, no CI", fontsize=5.5, color="grey", ha="center")
            ax.axvline(0, color="grey", lw=0.8, ls=":")
            ax.set_ylim(-0.7, len(keys) - 0.3)
            ax.set_yticks(
                list(ypos.values()),
                [_forest_label(dict(selection=s, width=w, lr=lr, init_key=i)) for s, w, lr, i in ypos]
                if j == 0
                else [""] * len(ypos),
                fontsize=6.5,
            )
            ax.grid(alpha=0.3, axis="x")
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{o}: {q} - none, {metric}", fontsize=8)
            if i == len(groups) - 1:
                ax.set_xlabel("mean paired difference, 95% CI", fontsize=7.5)
    handles = [
        Line2D([], [], marker=m, color=c, ls="-", ms=s, label=lab)
        for (m, c, s), lab in zip(styles.values(), ("per (width, lr) cell", "best LR per width", "deciding (pooled)"))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(
        "Paired effects, variant minus none (seeds as replicates)"
        + ("  [PARTIAL: sweep not finished]" if partial else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _savefig(fig, path)
    plt.close(fig)
    return path


# ---- spectra ------------------------------------------------------------------------------
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
    results, per_trial: pl.DataFrame, finals: pl.DataFrame, path: Path, partial=False, best: pl.DataFrame | None = None
) -> Path:
    """Normalised spectra of q and k at init, at the PR minimum and at the end, one trial per arm.

    `results` is an `analysis.load.Results` (its lazy `spectra` scan is read for the chosen trials
    only). The minimum is the step of the trial's q (k) PR minimum from the collapse fits; the
    nearest step with a recorded spectrum is drawn and its step named in the legend."""
    arms = _arms(finals)
    chosen = _chosen_trials(finals, _best(finals, best))
    ids = [v[0] for v in chosen.values()]
    spec = (
        results.spectra.filter(pl.col("trial_id").is_in(ids) & pl.col("tensor").is_in(["q", "k"])).collect()
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
    cols = [(w, t) for w in widths for t in ("q", "k")]
    fig, axes = plt.subplots(
        len(pairs), len(cols), figsize=(max(2.7 * len(cols), 7.5), 2.3 * len(pairs) + 0.4), squeeze=False
    )
    for i, (o, q) in enumerate(pairs):
        for j, (w, t) in enumerate(cols):
            ax = axes[i, j]
            title = f"{o}/{q}, w{w}, {t}"
            c = chosen.get((o, q, w))
            if c is None:
                _empty(ax, "no completed trial at the best LR")
                ax.set_title(title, fontsize=7.5)
                continue
            tid, seed, lr = c
            steps = sorted(rec_steps.get((tid, t), []))
            if not steps:
                _empty(ax, f"seed {seed}, lr {lr_label(lr)}:\nno spectra recorded")
                ax.set_title(title, fontsize=7.5)
                continue
            m = mins.get((tid, t))
            s_min = min(steps, key=lambda s: abs(s - m)) if m is not None else None
            picks = [
                ("init", steps[0], "0.55", "--"),
                ("PR min", s_min, "tab:red", "-"),
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
            ax.set_title(f"{title}, seed {seed}, lr {lr_label(lr)}", fontsize=7.5)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("s_i / sum s", fontsize=8)
            if i == len(pairs) - 1:
                ax.set_xlabel("index i", fontsize=8)
            ax.legend(fontsize=6)
    return _save(
        fig, path, "Normalised singular values of q, k (mean over layers and heads): init, PR minimum, final", partial
    )


# ---- loss vs PR, LR sensitivity -----------------------------------------------------------
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
            ax.scatter(
                g.get_column(col).to_numpy(),
                g.get_column("final_val_loss").to_numpy(),
                s=[size[w] for w in g.get_column("width").to_list()],
                color=colours.get((o, q), "k"),
                alpha=0.75,
                label=f"{o} / {q}",
                edgecolors="none",
            )
        ax.set_xlabel(f"final PR of {t} / d_head")
        ax.set_ylabel("final val loss")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    by = dict(zip(labels, handles))
    if by:
        axes[0, 1].legend(by.values(), by.keys(), fontsize=8, title="optimizer / qk_norm")
    return _save(fig, path, "Final loss vs final PR per trial (marker size: width)", partial)


def lr_sensitivity(curve: pl.DataFrame, path: Path, partial=False, finals=None) -> Path:
    """Loss vs LR per arm, one panel per width; the grid's LRs are the tick labels."""
    ref = finals if finals is not None else curve
    arms = _arms(ref) if ref.height else []
    widths = sorted({a[2] for a in arms}) or [0]
    fig, axes = plt.subplots(1, len(widths), figsize=(max(4.4 * len(widths), 8), 4.0), squeeze=False)
    colours = _colours(ref) if ref.height else {}
    opts = sorted({a[0] for a in arms})
    grid = sorted(ref.get_column("lr").drop_nulls().unique().to_list()) if ref.height else []
    best = _best(ref, best_lrs(curve) if curve.height else None) if ref.height else {}
    for ax, w in zip(axes[0], widths):
        sub = curve.filter(pl.col("width") == w) if curve.height else curve
        drawn = False
        for o, q, aw in arms:
            if aw != w:
                continue
            c = colours.get((o, q), "k")
            ls = OPT_STYLE.get(opts.index(o) % 4, "-")
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
                marker="o",
                ms=3,
                label=f"{o} / {q}",
            )
            b = best.get((o, q, w))
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
        _lr_axis(ax, grid)
        ax.set_title(f"width {w}", fontsize=9)
        ax.set_xlabel("peak LR")
        ax.set_ylabel("final val loss (mean over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5)
    return _save(
        fig, path, "Loss vs LR per arm (star: best LR; x: some seed diverged, counted as loss at init)", partial
    )


# ---- collapse rate vs width ---------------------------------------------------------------
def _no_fit_reason(r: dict) -> str:
    n = r.get("n_trials") or 0
    if r.get("n_censored"):
        return f"no fit (censored {r['n_censored']}/{n})"
    parts = [
        f"{k.removeprefix('n_').replace('_', ' ')} {r[k]}"
        for k in ("n_censored_slow", "n_no_fall", "n_failed")
        if r.get(k)
    ]
    return "no fit (" + (", ".join(parts) or f"0/{n} fitted") + ")"


def collapse_rate_vs_width(
    per_arm: pl.DataFrame, path: Path, partial=False, finals=None, best: pl.DataFrame | None = None, metric: str = "pr"
) -> Path:
    """Rate per 1k steps against width: rows tensor q, k; one column per LR and one at each
    arm's best LR. Every arm of `finals` is drawn at every width."""
    ok = per_arm.height > 0 and "metric" in per_arm.columns and "lr" in per_arm.columns
    ref = finals if finals is not None else (per_arm if ok else pl.DataFrame())
    arms = _arms(ref) if ref.height else []
    colours = _colours(ref) if ref.height else {}
    opts = sorted({a[0] for a in arms})
    best_lr = _best(ref, best) if finals is not None and finals.height else {}
    lrs = sorted(ref.get_column("lr").drop_nulls().unique().to_list()) if ref.height and "lr" in ref.columns else []
    columns = [("lr", x) for x in lrs] + ([("best", None)] if best_lr else [])
    columns = columns or [("lr", None)]
    widths = sorted({a[2] for a in arms})
    fig, axes = plt.subplots(2, len(columns), figsize=(max(3.3 * len(columns), 8), 7.6), squeeze=False, sharey="row")
    pairs = sorted({(a[0], a[1]) for a in arms}, key=lambda p: (p[0], p[1] != BASELINE, p[1]))
    for i, t in enumerate(("q", "k")):
        for j, (kind, lr) in enumerate(columns):
            ax = axes[i, j]
            sub = per_arm.filter((pl.col("metric") == metric) & (pl.col("tensor") == t)) if ok else None
            title = f"{t}, lr {lr_label(lr)}" if kind == "lr" and lr is not None else f"{t}, each arm at its best LR"
            if not arms:
                _empty(ax, "no trials")
                ax.set_title(title, fontsize=8)
                continue
            notes = 0
            has_y = False  # anything in data coordinates on y (else the log axis has no range)
            for k, (o, q) in enumerate(pairs):
                colour = colours.get((o, q), "k")
                ls = OPT_STYLE.get(opts.index(o) % 4, "-")
                xs, ys, los, his = [], [], [], []
                for w in widths:
                    if (o, q, w) not in arms:
                        continue
                    x_lr = lr if kind == "lr" else best_lr.get((o, q, w))
                    row = None
                    if sub is not None and x_lr is not None:
                        g = sub.filter(
                            (pl.col("optimizer") == o)
                            & (pl.col("qk_norm") == q)
                            & (pl.col("width") == w)
                            & (pl.col("lr") == x_lr)
                        )
                        row = g.row(0, named=True) if g.height else None
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
                    # no fit here: draw the arm anyway
                    label = _no_fit_reason(row) if row else "no completed trials"
                    bound = row.get("rate_lower_bound_per_1k") if row else None
                    if bound is not None and np.isfinite(bound) and bound > 0:
                        ax.plot([w], [bound], marker="^", mfc="white", mec=colour, ms=7, ls="none")
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
                            marker="o",
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
                    ax.errorbar(xs, ys, yerr=np.vstack([los, his]), color=colour, ls=ls, marker="o", ms=4, capsize=3)
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
                ax.set_xlabel("width (d_model)")
            if j == 0:
                ax.set_ylabel(f"collapse rate of {t} PR (per 1k steps)")
    handles = [
        Line2D(
            [],
            [],
            color=colours.get(p, "k"),
            ls=OPT_STYLE.get(opts.index(p[0]) % 4, "-"),
            marker="o",
            label=f"{p[0]} / {p[1]}",
        )
        for p in pairs
    ]
    handles += [
        Line2D([], [], color="grey", marker="^", mfc="white", ls="none", label="no fit, censored: rate lower bound"),
        Line2D([], [], color="grey", marker="o", mfc="white", ls="none", label="no fit (other reason), at the axis"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)
    fig.suptitle(
        "Collapse rate vs width at fixed LR (geometric mean of fitted seeds, 95% t CI)"
        + ("  [PARTIAL: sweep not finished]" if partial else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _savefig(fig, path)
    plt.close(fig)
    return path


# ---- all of them --------------------------------------------------------------------------
FIGURES = (
    "forest",
    "pr_over_training",
    "pr_by_lr_q",
    "pr_by_lr_k",
    "spectra",
    "loss_vs_pr",
    "lr_sensitivity",
    "collapse_rate_vs_width",
)


def _label_inits(df: pl.DataFrame, finals: pl.DataFrame) -> pl.DataFrame:
    """With several initialisations in the sweep, each is its own arm: its key joins the qk_norm
    label ("rms [normal:0.02]") so that no figure pools over inits."""
    if (
        "init_key" not in finals.columns
        or finals.get_column("init_key").n_unique() < 2
        or "init_key" not in df.columns
        or "qk_norm" not in df.columns
    ):
        return df
    return df.with_columns(
        pl.concat_str(pl.col("qk_norm"), pl.lit(" ["), pl.col("init_key"), pl.lit("]")).alias("qk_norm")
    )


def draw_all(r, folder: Path) -> list[Path]:
    """Every figure of a `Report` into `folder`; forest.png only when the report has per-cell
    effects (`Report.cells`)."""
    folder = safe_mkdir(folder)
    partial = r.partial
    finals, lr_c, per_arm, per_trial = (
        _label_inits(df, r.finals) for df in (r.finals, r.lr_curve, r.collapse_arm, r.collapse_trial)
    )
    best = best_lrs(lr_c) if lr_c.height else None
    out = []
    cells = getattr(r, "cells", None)
    if cells is not None:
        out.append(forest_plot(cells, folder / "forest.png", partial))
    curves = r.features.curves
    out.append(pr_over_training(curves, finals, folder / "pr_over_training.png", partial, best))
    for t in ("q", "k"):
        out.append(pr_by_lr(curves, finals, folder / f"pr_by_lr_{t}.png", t, partial, best))
    out.append(spectra(r.results, per_trial, finals, folder / "spectra.png", partial, best))
    out.append(loss_vs_pr(finals, folder / "loss_vs_pr.png", partial))
    out.append(lr_sensitivity(lr_c, folder / "lr_sensitivity.png", partial, finals))
    out.append(collapse_rate_vs_width(per_arm, folder / "collapse_rate_vs_width.png", partial, finals, best))
    return out
