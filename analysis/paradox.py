"""Paired statistics of the paradox: each QK-Norm variant against none, per optimizer.

A pair is two completed trials that differ only in qk_norm: same optimizer, width, lr and seed
("all_lrs", the pooled pairing of paradox.csv), or same optimizer, width and seed with each arm
at its own best LR for that width ("best_lr", the deciding selection: every arm tuned; the LRs
are chosen on held-out seeds, `analysis.lr_selection.held_out_lrs`, passed in as `best`). Pairs also match on the settings
fixed per sweep (depth, d_head, steps_planned) and on init_key, so trials with different
initialisations are never paired. Diverged trials are left out of pairs and counted.

For each (optimizer, variant, metric), over the n paired differences d_i (variant minus none):
mean_diff = mean(d), its 95% t interval mean +- t_{n-1} sd / sqrt(n), the paired t-test
(p_value), the Wilcoxon signed-rank test (p_wilcoxon, a check), sd_diff and dz = mean / sd.
Holm's correction runs within a family of one table (`family`): "decision" (final_val_loss and
the primary rank metric, the sphere PR final_pr_q_sphere and final_pr_k_sphere, of every
comparison: the tests the verdict rests on), "stages" (the as-used final_pr_q, final_pr_k and the
pre-norm final_pr_q_pre, final_pr_k_pre: reported with their directions, not deciding), "weights"
(final_pr_wq, final_pr_wk), the robustness PRs (one family per kind and stage), "init_relative"
(delta_pr_* of the sphere stage: final minus step 0; the other tensors' deltas in
"init_relative_other") and "norms" (the pre-norm token norms' coefficient of variation).
Fewer than MIN_PAIRS pairs: no interval, no test.

The same pairs, broken down per cell and per layer, are in `analysis.breakdown`; the optimizer x
QK-Norm interaction in `analysis.interaction`; judging a table in `analysis.judge`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from trainer.schema import QK_NORM_VARIANTS

from .finals import ALL_PR, DELTA_PR, NORM_CV, PRIMARY_PR, PRIMARY_ROBUST_PR, ROBUST_PR, SECONDARY_PR
from .sensitivity import arm_keys
from .stats import holm, paired_summary

METRICS = ("final_val_loss", *ALL_PR)  # loss, PR of q, k, wq, wk, then the sphere and pre-norm stages
DECIDE = ("final_val_loss", *PRIMARY_PR)  # the metrics the verdict rests on: loss and the sphere PR
SECONDARY = SECONDARY_PR  # the as-used and pre-norm PR: reported with their directions, not deciding
ROBUST_METRICS = (
    ROBUST_PR["corrected"] + ROBUST_PR["centred"] + PRIMARY_ROBUST_PR["corrected"] + PRIMARY_ROBUST_PR["centred"]
)
INIT_RELATIVE = DELTA_PR  # final minus step 0, per trial
FAMILY = {
    **{m: "decision" for m in DECIDE},
    **{m: "stages" for m in SECONDARY},
    "final_pr_wq": "weights",
    "final_pr_wk": "weights",
    **{m: kind for kind, ms in ROBUST_PR.items() for m in ms},
    **{m: f"sphere_{kind}" for kind, ms in PRIMARY_ROBUST_PR.items() for m in ms},
    **{m: "init_relative" if m.endswith("_sphere") else "init_relative_other" for m in DELTA_PR},
    **{m: "norms" for m in NORM_CV},
}
BASELINE = QK_NORM_VARIANTS[0]  # "none": every variant is compared with it
MIN_PAIRS = 3
ALPHA = 0.05
FIXED = ("depth", "d_head", "steps_planned", "init_key")
_ORDER = {q: i for i, q in enumerate(QK_NORM_VARIANTS)}  # report order
COLUMNS = [
    "optimizer",
    "qk_norm",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "p_wilcoxon",
    "sd_diff",
    "n_excluded_diverged",
    "n_excluded_other",
    "selection",
    "dz",
    "family",
]
_SCHEMA = {
    "optimizer": pl.String,
    "qk_norm": pl.String,
    "metric": pl.String,
    "selection": pl.String,
    "family": pl.String,
    "reference": pl.String,
    "n_pairs": pl.Int64,
    "n_excluded_diverged": pl.Int64,
    "n_excluded_other": pl.Int64,
    "width": pl.Int64,
    "layer": pl.Int64,
    "lr": pl.Float64,
    "init_key": pl.String,
    "n_units": pl.Int64,
    "lrs": pl.String,
}


def variants(finals: pl.DataFrame) -> list[str]:
    qs = set(finals.get_column("qk_norm").drop_nulls().to_list()) - {BASELINE}
    return sorted(qs, key=lambda q: (_ORDER.get(q, 99), q))


def optimizers(finals: pl.DataFrame) -> list[str]:
    return sorted(set(finals.get_column("optimizer").drop_nulls().to_list()))


def select(finals: pl.DataFrame, selection: str, best: pl.DataFrame | None = None) -> pl.DataFrame:
    """The trials a selection pairs: all of them ("all_lrs"), or each arm's trials at its best LR
    ("best_lr"; `best` must be given: analysis.lr_selection.held_out_lrs, one LR per arm and seed,
    or analysis.sensitivity.best_lrs, one LR per arm)."""
    if selection == "all_lrs":
        return finals
    if best is None:
        raise ValueError("selection 'best_lr' needs an LR table (analysis.lr_selection.held_out_lrs)")
    on = arm_keys(finals) + (["seed"] if "seed" in best.columns else [])
    return (
        finals.join(best.select(*on, "best_lr"), on=on, how="inner")
        .filter(pl.col("lr") == pl.col("best_lr"))
        .drop("best_lr")
    )


def pair_keys(finals: pl.DataFrame, selection: str) -> list[str]:
    on = ["optimizer", "width", "seed"] + (["lr"] if selection == "all_lrs" else [])
    # settings fixed per sweep (and the init): a mixed folder never pairs unlike trials
    return on + [c for c in FIXED if c in finals.columns]


def make_pairs(
    finals: pl.DataFrame,
    selection: str,
    metrics=METRICS,
    extra_keys: tuple[str, ...] = (),
    best: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Every candidate pair (any status): optimizer, qk_norm (the variant), the match keys,
    status_v / status_n, usable_v / usable_n (completed, with complete data), lr_v / lr_n, and
    <metric>_v, <metric>_n per metric. `best`: the best-LR table, for selection "best_lr"."""
    on = pair_keys(finals, selection) + list(extra_keys)
    df = select(finals, selection, best)
    usable = pl.col("status") == "completed"
    if "data_complete" in df.columns:  # metrics lost to an unreadable part: not final values
        usable = usable & pl.col("data_complete").fill_null(True)
    df = df.with_columns(usable.alias("usable"))
    metrics = [m for m in metrics if m in df.columns]
    cols = list(dict.fromkeys([*on, "qk_norm", "lr", "status", "usable", *metrics]))
    base = df.filter(pl.col("qk_norm") == BASELINE).select(cols).drop("qk_norm")
    var = df.filter(pl.col("qk_norm") != BASELINE).select(cols)
    rename_n = {c: f"{c}_n" for c in base.columns if c not in on}
    rename_v = {c: f"{c}_v" for c in var.columns if c not in on and c != "qk_norm"}
    out = var.rename(rename_v).join(base.rename(rename_n), on=on, how="inner")
    if "lr" in on:  # every pair has lr_v and lr_n
        out = out.with_columns(pl.col("lr").alias("lr_v"), pl.col("lr").alias("lr_n"))
    return out


def pair_diffs(p: pl.DataFrame, metric: str, usable_only: bool = True) -> np.ndarray:
    """Finite variant-minus-none differences of the usable pairs in p (all of p's pairs when
    usable_only is false: the caller filtered them)."""
    if f"{metric}_v" not in p.columns:
        return np.empty(0)
    done = p.filter(pl.col("usable_v") & pl.col("usable_n")) if usable_only else p
    d = (
        done.get_column(f"{metric}_v").cast(pl.Float64).to_numpy()
        - done.get_column(f"{metric}_n").cast(pl.Float64).to_numpy()
    )
    return d[np.isfinite(d)]


def effect_stats(d: np.ndarray, wilcoxon: bool = True) -> dict:
    """paired_summary of the differences d; with fewer than MIN_PAIRS, the mean only."""
    out = paired_summary(d, min_n=MIN_PAIRS, wilcoxon=wilcoxon)
    if d.size < MIN_PAIRS:  # not enough data: no interval, no test
        out.update(ci_low=np.nan, ci_high=np.nan, p_value=np.nan, p_wilcoxon=np.nan, dz=np.nan)
    return out


def effect_frame(rows: list[dict], columns: list[str], family_holm: bool = True) -> pl.DataFrame:
    """Rows to a frame with the given columns; p_holm within each family of the table."""
    schema = {c: _SCHEMA.get(c, pl.Float64) for c in columns}
    if not rows:
        return pl.DataFrame(schema=schema)
    df = pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], schema=schema)
    if family_holm and "p_holm" in columns:
        p = df.get_column("p_value").fill_null(np.nan).to_numpy().astype(float)
        fam = df.get_column("family").to_numpy()
        adj = np.full(p.shape, np.nan)
        for f in set(fam):
            idx = fam == f
            adj[idx] = holm(p[idx])
        df = df.with_columns(pl.Series("p_holm", adj))
    # NaN is "not computed"; write it as null so CSV readers see an empty cell
    return df.fill_nan(None)


def paradox_table(
    finals: pl.DataFrame,
    selection: str = "all_lrs",
    n_boot: int | None = None,
    seed=None,
    metrics=METRICS,
    wilcoxon: bool = True,
    best: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per (optimizer, variant, metric), columns COLUMNS. `best`: the best-LR table, for
    selection "best_lr". n_boot and seed are unused: the interval is a t interval, the same on
    every run. wilcoxon=False skips the Wilcoxon check (p_wilcoxon null; the simulations do not
    need it)."""
    pairs = make_pairs(finals, selection, metrics, best=best)
    rows = []
    for opt in optimizers(finals):
        for var in variants(finals.filter(pl.col("optimizer") == opt)):
            p = pairs.filter((pl.col("optimizer") == opt) & (pl.col("qk_norm") == var))
            sv, sn = p.get_column("status_v"), p.get_column("status_n")
            done = p.get_column("usable_v") & p.get_column("usable_n")
            div = (sv == "diverged") | (sn == "diverged")
            usable = p.filter(done)
            for metric in metrics:
                rows.append(
                    dict(
                        optimizer=opt,
                        qk_norm=var,
                        metric=metric,
                        selection=selection,
                        family=FAMILY.get(metric, metric),
                        n_excluded_diverged=int(div.sum()),
                        n_excluded_other=int((~done & ~div).sum()),
                        **effect_stats(pair_diffs(usable, metric, False), wilcoxon),
                    )
                )
    return effect_frame(rows, COLUMNS)
