"""The report's figures (matplotlib, Agg backend: no display needed). Every arm
(optimizer, qk_norm, width) of the sweep is drawn in every figure; an arm without data or
without a fit is drawn as such (a note or a hollow marker), never left out. With several
initialisations in the sweep, each is its own arm (its key joins the qk_norm label).

- forest.png (forest.py): paired effects with 95% intervals per cell, per width at the best LR,
  and the deciding row.
- pr_over_training.png, pr_by_lr_q.png, pr_by_lr_k.png (pr.py): PR / d_head over training at
  each arm's best LR, and per LR.
- spectra.png (spectra.py): normalised singular values at init, PR minimum and end (one legend;
  each panel's title gives the three steps).
- loss_vs_pr.png, lr_sensitivity.png (lr.py): final loss against final PR, and against LR.
- collapse_rate_vs_width.png (collapse.py): the fitted collapse rate against width per LR and at
  the best LR.
- max_logit_over_training.png (logits.py): the largest attention logit over training per variant
  at its best LR, with QK-Clip's tau and the soft-cap drawn as dashed lines.

Seeds at scale: the figures with a curve per trial (the PR figures and max_logit) draw each arm's
mean over seeds as a thick line. An arm of up to common.MAX_SEED_LINES (8) seeds also draws each
seed as a thin line (a small sweep, as always); an arm of more is drawn as its mean, a band of the
middle 95% of its seeds per step (2.5th to 97.5th percentile: common.BAND_QUANTILES) and its
common.SAMPLED_SEEDS (3) lowest seeds, so that a panel holds a fixed number of artists however many
seeds (the legend title and the figure title say so). The means and bands are one Polars group_by
per figure (common.seed_lines); legends sit at fixed places, never matplotlib's "best" search, whose
cost grows with the lines. A study of 13,680 trials (95 seeds per arm) draws in about 11 s on a
2-core machine (52 s when every seed was a line), each figure in about 2 s or less.

Every figure at "the best LR" reads the report's one best-LR table (`Report.best_lrs`). Each QK
variant has one colour in every panel and figure (common.VARIANT_COLOURS), each optimizer one line
style and marker; axes and titles are in words with units (analysis.labels). Files are PNG at
common.PNG_DPI dpi, or SVG or PDF
(`draw_all(..., fmt)`, `python -m analysis.report --figure-format`).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from trainer.safeio import safe_mkdir
from trainer.schema import STAGES

from ..alternatives import variant_settings
from ..finals import PRIMARY_STAGE
from .collapse import collapse_rate_vs_width
from .common import FORMATS, PNG_DPI, VARIANT_COLOURS, arm_colours, figure_style, variant_colour
from .forest import forest_plot
from .logits import max_logit_over_training
from .lr import loss_vs_pr, lr_sensitivity
from .pr import pr_by_lr, pr_frame, pr_over_training
from .render import forked_rendering
from .spectra import spectra

FIGURES = (
    "forest",
    "pr_over_training",
    "pr_by_lr_q",
    "pr_by_lr_k",
    "spectra",
    "loss_vs_pr",
    "lr_sensitivity",
    "collapse_rate_vs_width",
    "max_logit_over_training",
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


__all__ = [
    "EARLY",
    "FIGURES",
    "FORMATS",
    "LATE",
    "PNG_DPI",
    "VARIANT_COLOURS",
    "arm_colours",
    "draw_all",
    "draw_early",
    "draw_late",
    "variant_colour",
]


# The figures drawn from the finals, the best LRs and the curves alone: `python -m analysis.report`
# draws them as soon as those are known, and their forked children render them while the report
# fits the collapse rates and tests the paradox (`draw_early`); the rest need those fits (`draw_late`).
LATE = ("forest", "collapse_rate_vs_width")  # the paired cells, the collapse fits
EARLY = tuple(f for f in FIGURES if f not in LATE)


def draw_all(r, folder: Path, fmt: str = "png") -> list[Path]:
    """Every figure of a `Report` (analysis.report.Report) into `folder`, in FIGURES order, as
    <name>.<fmt> (fmt one of FORMATS)."""
    with forked_rendering(len(FIGURES)):
        drawn = draw_early(r, folder, fmt) + draw_late(r, folder, fmt)
    return sorted(drawn, key=lambda p: FIGURES.index(p.stem))


def draw_early(r, folder: Path, fmt: str = "png") -> list[Path]:
    """The EARLY figures into `folder`. `r` is a Report, or anything with the fields these figures
    read, of the same names and meaning: results (its trials), features (curves, logits), finals,
    best_lrs, lr_curve, partial (analysis.report.Early, what the report has before its fits).
    Inside `forked_rendering` (draw_all, analysis.report.report_to) forked children render them
    and may still run on return; elsewhere each is rendered here, one after another."""
    folder = _figure_folder(folder, fmt)
    with objects_frozen(), figure_style():
        finals, lr_c, best = (_label_inits(df, r.finals) for df in (r.finals, r.lr_curve, r.best_lrs))
        curves, partial = r.features.curves, r.partial
        tensors = rank_tensors(curves)
        pr = pr_frame(curves, finals, tensors)  # read once for the three PR figures
        out = [pr_over_training(curves, finals, best, folder / f"pr_over_training.{fmt}", partial, tensors, pr)]
        for name, t in zip(("q", "k"), tensors):
            out.append(pr_by_lr(curves, finals, best, folder / f"pr_by_lr_{name}.{fmt}", t, partial, pr))
        out.append(spectra(r.results, curves, finals, best, folder / f"spectra.{fmt}", partial, tensors))
        out.append(loss_vs_pr(finals, folder / f"loss_vs_pr.{fmt}", partial, tensors))
        out.append(lr_sensitivity(lr_c, best, folder / f"lr_sensitivity.{fmt}", partial, finals))
        settings = variant_settings(r.results.trials)
        out.append(
            max_logit_over_training(
                r.features.logits, finals, best, settings, folder / f"max_logit_over_training.{fmt}", partial
            )
        )
        return out


def draw_late(r, folder: Path, fmt: str = "png") -> list[Path]:
    """The LATE figures of a `Report` into `folder`: the forest of paired effects and the collapse
    rate against width (rendered as `draw_early`'s)."""
    folder = _figure_folder(folder, fmt)
    with objects_frozen(), figure_style():
        partial = r.partial
        finals, best, per_arm = (_label_inits(df, r.finals) for df in (r.finals, r.best_lrs, r.collapse_arm))
        tensors = rank_tensors(r.features.curves)
        return [
            forest_plot(r.cells, folder / f"forest.{fmt}", partial),
            collapse_rate_vs_width(
                per_arm, best, folder / f"collapse_rate_vs_width.{fmt}", partial, finals, tensors=tensors
            ),
        ]


def _figure_folder(folder: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r}: one of {', '.join(FORMATS)}")
    return safe_mkdir(folder)


@contextmanager
def objects_frozen():
    """Python's objects alive before the figures are drawn kept out of the garbage collector's
    full collections while they are drawn (gc.freeze, undone after). Matplotlib makes many
    short-lived objects, which start about eight full collections per report, each walking every
    object of the process (the report's included): about 0.6 s of 11 s for a study of 13,680
    trials. Nothing is done when the process has frozen objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def rank_tensors(curves: pl.DataFrame) -> tuple[str, str]:
    """The q and k the figures draw: the primary (sphere) stage when the results record it, else
    the as-used q and k (results written before the probe recorded the stages)."""
    sphere = STAGES[PRIMARY_STAGE]
    present = set(curves.get_column("tensor").unique().to_list()) if curves.height else set()
    return sphere if set(sphere) <= present else ("q", "k")
