"""max_logit_over_training.png: the largest attention logit over training, per variant.

One panel per optimizer (columns) and width x LR choice (rows): each variant at its best LR, and
at the highest LR of the grid, where plain attention's logits grow most and the clip and the cap
act. In each, every variant's `max_logit` (the logit entering the softmax, after the cap for
softcap; the largest over layers and heads, the quantity tau and the cap bound head by head, on the
probe's held-out batch at the regular probes): the mean over seeds a thick line and, up to
common.MAX_SEED_LINES seeds per variant, each seed a thin line; past that (a study) a band of the
middle 95% of the seeds per step (2.5th to 97.5th percentile) and the common.SAMPLED_SEEDS lowest
seeds as thin lines, all in the variant's colour of every other figure. Dashed horizontal lines mark QK-Clip's tau (`qk_clip_tau`) and the
soft-cap (`logit_softcap`) of the trials drawn, in their arm's colour: the clip and the cap should
bound the curves of their variants. Each optimizer's curves in its line style (common.OPT_LINESTYLES).
Legends at a fixed place (lower right: the logits grow over training).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..features import as_strings
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
    save_titled,
    seed_lines,
    seeds_note,
    seeds_title,
    sweep_arms,
)

LEGEND_LOC = "lower right"  # the logits grow over training: the lower right stays clear


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
        as_strings(logits)
        .join(meta, on="trial_id", how="inner")
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
    top_lr = dict(df.group_by("width").agg(pl.col("lr").max()).iter_rows()) if df.height else {}
    # every line group of the figure at once: (which, optimizer, qk_norm, width), which "best" or "top"
    keys = ("which", *ARM_KEYS)
    top = pl.DataFrame(
        {"width": list(top_lr), "lr": list(top_lr.values())},
        schema={"width": df.schema["width"], "lr": df.schema["lr"]},
    )
    chosen = pl.concat(
        [
            df.join(best_lr_frame(best_lr, df), on=[*ARM_KEYS, "lr"], how="inner").with_columns(which=pl.lit("best")),
            df.join(top, on=["width", "lr"], how="inner").with_columns(which=pl.lit("top")),
        ]
    )
    groups = seed_lines(chosen, keys, "value")
    bounds_of = {
        tuple(r[:4]): (r[4], r[5])
        for r in chosen.group_by(keys)
        .agg(
            pl.col("qk_clip_tau").drop_nulls().unique().sort(),
            pl.col("logit_softcap").drop_nulls().unique().sort(),
        )
        .iter_rows()
    }
    rows = [(w, which) for w in widths for which in ("best", "top")]
    fig, axes = plt.subplots(len(rows), len(opts), figsize=(max(4.2 * len(opts), 7.5), 3.2 * len(rows)), squeeze=False)
    colours = arm_colours(finals) if finals.height else {}
    any_summarised = False
    for i, (w, which) in enumerate(rows):
        for j, o in enumerate(opts):
            ax = axes[i, j]
            missing, bounds, entries = [], {}, []
            where = (
                "each variant at its best LR"
                if which == "best"
                else f"at the grid's highest LR, {lr_label(top_lr.get(w))}"
            )
            for ao, q, aw in arms:
                if ao != o or aw != w:
                    continue
                lr = best_lr.get((o, q, w)) if which == "best" else top_lr.get(w)
                g = groups.get((which, o, q, w)) if lr is not None else None
                if g is None:
                    missing.append(q)
                    continue
                c = colours.get((o, q), "k")
                entries.append((g, c, f"{q} at LR {lr_label(lr)}", opt_linestyle(o)))
                for what, values in zip(("tau", "cap"), bounds_of.get((which, o, q, w), ((), ()))):
                    for v in values:
                        bounds[(what, float(v), q)] = c
            drawn = bool(entries)
            summarised = draw_seed_panel(ax, entries) if drawn else False
            if not drawn:
                empty_panel(ax, f"{o}, width {w}: no max_logit recorded {where.replace('each variant ', '')}")
                continue
            any_summarised |= summarised
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
            ax.legend(
                fontsize=6.5,
                title=f"QK variant ({'thin: seeds' if not summarised else seeds_note(True)}; dashed: tau / cap)",
                title_fontsize=6.5,
                loc=LEGEND_LOC,
            )
    title = "Largest attention logit over training (largest over layers and heads, mean over seeds)"
    return save_titled(fig, path, title + (seeds_title(True) if any_summarised else ""), partial)
