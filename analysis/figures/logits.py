"""max_logit_over_training.png: the largest attention logit over training, per variant.

One panel per optimizer (columns) and width x LR choice (rows): each variant at its best LR, and
at the highest LR of the grid, where plain attention's logits grow most and the clip and the cap
act. In each, every variant's `max_logit` (the logit entering the softmax, after the cap for
softcap; the largest over layers and heads, the quantity tau and the cap bound head by head, on the
probe's held-out batch at the regular probes): each seed a thin line, the mean over seeds a thick one, in the variant's
colour of every other figure. Dashed horizontal lines mark QK-Clip's tau (`qk_clip_tau`) and the
soft-cap (`logit_softcap`) of the trials drawn, in their arm's colour: the clip and the cap should
bound the curves of their variants. Each optimizer's curves in its line style (common.OPT_LINESTYLES).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .common import (
    arm_colours,
    best_lr_map,
    empty_panel,
    lr_label,
    opt_linestyle,
    plt,
    save_titled,
    seeds_and_mean,
    sweep_arms,
)


def _logit_frame(logits: pl.DataFrame, finals: pl.DataFrame, settings: pl.DataFrame) -> pl.DataFrame:
    """max_logit (head mean) per completed or diverged trial and step, with the trial's settings."""
    meta = finals.filter(pl.col("status").is_in(["completed", "diverged"])).select(
        "trial_id", "optimizer", "qk_norm", "width", "lr", "seed"
    )
    if settings.height:
        meta = meta.join(settings, on="trial_id", how="left")
    else:
        meta = meta.with_columns(pl.lit(None, pl.Float64).alias(c) for c in ("qk_clip_tau", "logit_softcap"))
    return (
        logits.join(meta, on="trial_id", how="inner")
        .filter(pl.col("value").is_finite())
        .select(
            "trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "qk_clip_tau", "logit_softcap", "step", "value"
        )
        .sort("trial_id", "step")
    )


def max_logit_over_training(
    logits: pl.DataFrame, finals: pl.DataFrame, best: pl.DataFrame, settings: pl.DataFrame, path: Path, partial=False
) -> Path:
    """The figure (the module's docstring). `logits`: Features.logits; `best`: Report.best_lrs;
    `settings`: analysis.alternatives.variant_settings of the trials (tau and cap per trial)."""
    df = _logit_frame(logits, finals, settings)
    best_lr = best_lr_map(best)
    arms = sweep_arms(finals)
    opts = sorted({a[0] for a in arms}) or ["-"]
    widths = sorted({a[2] for a in arms}) or [0]
    top_lr = {w: g.get_column("lr").max() for (w,), g in df.group_by("width")} if df.height else {}
    rows = [(w, which) for w in widths for which in ("best", "top")]
    fig, axes = plt.subplots(len(rows), len(opts), figsize=(max(4.2 * len(opts), 7.5), 3.2 * len(rows)), squeeze=False)
    colours = arm_colours(finals) if finals.height else {}
    for i, (w, which) in enumerate(rows):
        for j, o in enumerate(opts):
            ax = axes[i, j]
            drawn, missing, bounds = False, [], {}
            where = (
                "each variant at its best LR"
                if which == "best"
                else f"at the grid's highest LR, {lr_label(top_lr.get(w))}"
            )
            for ao, q, aw in arms:
                if ao != o or aw != w:
                    continue
                lr = best_lr.get((o, q, w)) if which == "best" else top_lr.get(w)
                g = (
                    df.filter(
                        (pl.col("optimizer") == o)
                        & (pl.col("qk_norm") == q)
                        & (pl.col("width") == w)
                        & (pl.col("lr") == lr)
                    )
                    if lr is not None
                    else df.clear()
                )
                if g.height == 0:
                    missing.append(q)
                    continue
                seeds_and_mean(
                    ax, g, colours.get((o, q), "k"), f"{q} at LR {lr_label(lr)}", opt_linestyle(o), value="value"
                )
                c = colours.get((o, q), "k")
                for col, what in (("qk_clip_tau", "tau"), ("logit_softcap", "cap")):
                    for v in g.get_column(col).drop_nulls().unique().sort().to_list():
                        bounds[(what, float(v), q)] = c
                drawn = True
            if not drawn:
                empty_panel(ax, f"{o}, width {w}: no max_logit recorded {where.replace('each variant ', '')}")
                continue
            for (what, v, q), c in bounds.items():
                ax.axhline(v, color=c, ls="--", lw=1.2, label=f"{what} {v:g} ({q})")
            if missing:
                ax.text(0.02, 0.02, "no data: " + ", ".join(missing), transform=ax.transAxes, fontsize=7, color="grey")
            ax.set_title(f"{o}, width {w} ({where})", fontsize=8.5)
            ax.set_yscale("symlog", linthresh=10)  # tens at the best LR, thousands where the LR is too high
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("largest attention logit (entering the softmax)", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel("training step")
            ax.legend(fontsize=6.5, title="QK variant (thin: seeds; dashed: tau / cap)", title_fontsize=6.5)
    return save_titled(
        fig, path, "Largest attention logit over training (largest over layers and heads, mean over seeds)", partial
    )
