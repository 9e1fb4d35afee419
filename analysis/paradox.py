"""Paired statistics of the paradox: each QK-Norm variant against none, per optimizer.

A pair is two completed trials that differ only in qk_norm: same optimizer, width, lr and seed
("all_lrs", the pooled pairing of paradox.csv), or same optimizer, width and seed with each arm
at its own best LR for that width ("best_lr", the deciding selection: every arm tuned). Pairs
also match on the settings fixed per sweep (depth, d_head, steps_planned) and on init_key, so
trials with different initialisations are never paired. Diverged trials are left out of pairs
and counted.

For each (optimizer, variant, metric): the mean paired difference (variant minus none), its 95%
t interval, the paired t-test (p_value), the Wilcoxon signed-rank test (p_wilcoxon, a check),
sd_diff and dz = mean / sd. Holm's correction runs within a family of one table (`family`):
"decision" (final_val_loss, final_pr_q, final_pr_k of every comparison: the tests the verdict
rests on), "weights" (final_pr_wq, final_pr_wk: reported, not deciding), "corrected" and
"centred" (the robustness PRs). Fewer than MIN_PAIRS pairs: no interval, no test.

Also here: per-cell effects (optimizer, variant, width, lr; seeds as replicates), per-layer
effects at the best LR, and the optimizer x QK-Norm interaction as a per-pair
difference-in-differences.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from trainer.schema import QK_NORM_VARIANTS

from .features import FINAL_PR, ROBUST_PR
from .sensitivity import arm_keys, best_lrs, lr_curve
from .stats import holm, paired_summary

METRICS = ("final_val_loss", *FINAL_PR)
DECIDE = ("final_val_loss", "final_pr_q", "final_pr_k")  # the metrics the verdict rests on
ROBUST_METRICS = ROBUST_PR["corrected"] + ROBUST_PR["centred"]
FAMILY = {
    **{m: "decision" for m in DECIDE},
    "final_pr_wq": "weights",
    "final_pr_wk": "weights",
    **{m: kind for kind, ms in ROBUST_PR.items() for m in ms},
}
BASELINE = QK_NORM_VARIANTS[0]  # "none": every variant is compared with it
MIN_PAIRS = 3
ALPHA = 0.05
SELECTIONS = ("all_lrs", "best_lr")
FIXED = ("depth", "d_head", "steps_planned", "init_key")
_ORDER = {q: i for i, q in enumerate(QK_NORM_VARIANTS)}  # report order
STAT_COLS = ["n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_wilcoxon", "sd_diff", "dz"]
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
CELL_COLUMNS = [
    "optimizer",
    "qk_norm",
    "width",
    "lr",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "selection",
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
}


def variants(finals: pl.DataFrame) -> list[str]:
    qs = set(finals.get_column("qk_norm").drop_nulls().to_list()) - {BASELINE}
    return sorted(qs, key=lambda q: (_ORDER.get(q, 99), q))


def optimizers(finals: pl.DataFrame) -> list[str]:
    return sorted(set(finals.get_column("optimizer").drop_nulls().to_list()))


def select(finals: pl.DataFrame, selection: str) -> pl.DataFrame:
    """The trials a selection pairs: all of them, or each arm's trials at its best LR."""
    if selection == "all_lrs":
        return finals
    best = best_lrs(lr_curve(finals))
    return (
        finals.join(best, on=arm_keys(finals), how="inner")
        .filter(pl.col("lr") == pl.col("best_lr"))
        .drop("best_lr", "best_loss")
    )


def pair_keys(finals: pl.DataFrame, selection: str) -> list[str]:
    on = ["optimizer", "width", "seed"] + (["lr"] if selection == "all_lrs" else [])
    # settings fixed per sweep (and the init): a mixed folder never pairs unlike trials
    return on + [c for c in FIXED if c in finals.columns]


def make_pairs(finals: pl.DataFrame, selection: str, metrics=METRICS, extra_keys: tuple[str, ...] = ()) -> pl.DataFrame:
    """Every candidate pair (any status): optimizer, qk_norm (the variant), the match keys,
    status_v / status_n, usable_v / usable_n (completed, with complete data), lr_v / lr_n, and
    <metric>_v, <metric>_n per metric."""
    on = pair_keys(finals, selection) + list(extra_keys)
    df = select(finals, selection)
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


def _diffs(p: pl.DataFrame, metric: str, usable_only: bool = True) -> np.ndarray:
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


def _summary(d: np.ndarray, wilcoxon: bool = True) -> dict:
    out = paired_summary(d, min_n=MIN_PAIRS, wilcoxon=wilcoxon)
    if d.size < MIN_PAIRS:  # not enough data: no interval, no test
        out.update(ci_low=np.nan, ci_high=np.nan, p_value=np.nan, p_wilcoxon=np.nan, dz=np.nan)
    return out


def _frame(rows: list[dict], columns: list[str], family_holm: bool = True) -> pl.DataFrame:
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
) -> pl.DataFrame:
    """One row per (optimizer, variant, metric). n_boot and seed are accepted for callers of the
    bootstrap version; the interval is now the t interval (deterministic). wilcoxon=False skips
    the Wilcoxon check (p_wilcoxon null; the simulations, which do not need it)."""
    pairs = make_pairs(finals, selection, metrics)
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
                        **_summary(_diffs(usable, metric, False), wilcoxon),
                    )
                )
    return _frame(rows, COLUMNS)


# ---- per cell, per layer ------------------------------------------------------------------
def cell_table(finals: pl.DataFrame, deciding: pl.DataFrame | None = None) -> pl.DataFrame:
    """Report.cells / tables/paradox_cells.csv, for a forest plot. Rows:

    selection "cell": one per (optimizer, variant, width, lr, metric), seeds as replicates (pairs
      on width, lr, seed); with an init axis, one per init too (init_key), never pooled;
    selection "best_lr": one per (optimizer, variant, width, metric) (and init), each arm at its own
      best LR for that width; `lr` is the variant's best LR (none's best LR is in
      tables/lr_bracketing.csv);
    selection "deciding": the deciding rows (width and lr null), pooled over widths: the
      best-LR table the verdict uses (p_value unadjusted here; p_holm in paradox_best_lr.csv).
    p_value is the paired t-test of the row, not corrected for the many cells.
    """
    rows = []
    inits = ("init_key",) if "init_key" in finals.columns and finals.get_column("init_key").n_unique() > 1 else ()
    for selection, by in (("all_lrs", ("width", "lr_v", *inits)), ("best_lr", ("width", *inits))):
        pairs = make_pairs(finals, selection)
        if pairs.height == 0:
            continue
        groups = pairs.select("optimizer", "qk_norm", *by).unique().sort("optimizer", "qk_norm", *by)
        for g in groups.iter_rows(named=True):
            p = pairs.filter(pl.all_horizontal(pl.col(c) == v for c, v in g.items()))
            lrs = p.get_column("lr_v").unique().to_list()
            for metric in METRICS:
                rows.append(
                    dict(
                        optimizer=g["optimizer"],
                        qk_norm=g["qk_norm"],
                        width=g["width"],
                        lr=lrs[0] if len(lrs) == 1 else None,
                        **({"init_key": g["init_key"]} if inits else {}),
                        metric=metric,
                        selection="cell" if selection == "all_lrs" else "best_lr",
                        **_summary(_diffs(p, metric), wilcoxon=False),
                    )
                )
    if deciding is not None and deciding.height:
        for r in deciding.filter(pl.col("metric").is_in(METRICS)).iter_rows(named=True):
            rows.append({**r, "width": None, "lr": None, "selection": "deciding"})
    df = _frame(rows, CELL_COLUMNS + (["init_key"] if inits else []), family_holm=False)
    order = {"cell": 0, "best_lr": 1, "deciding": 2}
    return (
        df.with_columns(pl.col("selection").replace_strict(order, return_dtype=pl.Int8).alias("_o"))
        .sort("optimizer", "qk_norm", "_o", "width", "lr", *inits, "metric", nulls_last=True)
        .drop("_o")
    )


LAYER_COLUMNS = [
    "optimizer",
    "qk_norm",
    "layer",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "sd_diff",
    "selection",
    "family",
]


def layer_table(layers: pl.DataFrame) -> pl.DataFrame:
    """tables/paradox_layers.csv: best-LR paired effects of final PR q / k per layer (the
    `layer_finals` rows; best LR chosen from the trial-level losses, as in the deciding table).
    Holm over every row of the table (family "layers")."""
    if layers.height == 0:
        return _frame([], LAYER_COLUMNS)
    trials = layers.unique("trial_id", keep="first")
    chosen = select(trials, "best_lr").get_column("trial_id")
    sel = layers.filter(pl.col("trial_id").is_in(chosen.implode()))
    # paired as the deciding table is: same optimizer, width and seed, each arm at its own best LR (sel
    # holds only best-LR trials, so the re-selection keeps them all)
    pairs = make_pairs(sel, "best_lr", ("final_pr_q", "final_pr_k"), extra_keys=("layer",))
    rows = []
    for g in (
        pairs.select("optimizer", "qk_norm", "layer")
        .unique()
        .sort("optimizer", "qk_norm", "layer")
        .iter_rows(named=True)
    ):
        p = pairs.filter(pl.all_horizontal(pl.col(c) == v for c, v in g.items()))
        for metric in ("final_pr_q", "final_pr_k"):
            rows.append(dict(**g, metric=metric, selection="best_lr", family="layers", **_summary(_diffs(p, metric))))
    return _frame(rows, LAYER_COLUMNS)


# ---- interaction: difference in differences -----------------------------------------------
DID_COLUMNS = [
    "selection",
    "optimizer",
    "reference",
    "qk_norm",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "sd_diff",
    "family",
]


def did_table(finals: pl.DataFrame, selection: str) -> pl.DataFrame:
    """Does the optimizer change the QK-Norm effect? Per matched pair of pairs:

        d = (O_variant - O_none) - (ref_variant - ref_none)

    with ref = adamw (else the first optimizer) and O each other optimizer; the two pairs share
    width and seed (and lr in "all_lrs"; in "best_lr" each of the four arms is at its own best LR
    for that width), and the fixed settings. mean_diff is the mean d: how much O shifts the
    variant's effect. t interval, paired t-test, Holm within the selection's family (decision
    metrics; weight PRs apart)."""
    opts = optimizers(finals)
    if len(opts) < 2:
        return _frame([], DID_COLUMNS)
    ref = "adamw" if "adamw" in opts else opts[0]
    pairs = make_pairs(finals, selection).filter(pl.col("usable_v") & pl.col("usable_n"))
    keys = [k for k in pair_keys(finals, selection) if k != "optimizer"] + ["qk_norm"]
    diff = pairs.select("optimizer", *keys, *[(pl.col(f"{m}_v") - pl.col(f"{m}_n")).alias(m) for m in METRICS])
    base = diff.filter(pl.col("optimizer") == ref).drop("optimizer")
    rows = []
    for opt in opts:
        if opt == ref:
            continue
        j = diff.filter(pl.col("optimizer") == opt).drop("optimizer").join(base, on=keys, how="inner", suffix="_ref")
        for var in variants(finals):
            g = j.filter(pl.col("qk_norm") == var)
            if g.height == 0 and var not in variants(finals.filter(pl.col("optimizer") == opt)):
                continue
            for m in METRICS:
                d = g.get_column(m).cast(pl.Float64).to_numpy() - g.get_column(f"{m}_ref").cast(pl.Float64).to_numpy()
                rows.append(
                    dict(
                        selection=selection,
                        optimizer=opt,
                        reference=ref,
                        qk_norm=var,
                        metric=m,
                        family=FAMILY[m],
                        **_summary(d[np.isfinite(d)], wilcoxon=False),
                    )
                )
    return _frame(rows, DID_COLUMNS)


# ---- verdict --------------------------------------------------------------------------------
def _sig(row: dict | None, sign: int, alpha: float) -> bool:
    return (
        row is not None
        and row["p_holm"] is not None
        and row["p_holm"] < alpha
        and row["mean_diff"] is not None
        and np.sign(row["mean_diff"]) == sign
    )


def direction(row: dict | None, alpha: float) -> str:
    """ "lower" / "higher" (significant at p_holm < alpha with that sign), "no_difference", or
    "not_enough_data" (fewer than MIN_PAIRS pairs: no test)."""
    if row is None or row["n_pairs"] < MIN_PAIRS:
        return "not_enough_data"
    if _sig(row, -1, alpha):
        return "lower"
    if _sig(row, 1, alpha):
        return "higher"
    return "no_difference"


def judge(table: pl.DataFrame, optimizer: str, variant: str, alpha: float = ALPHA, metrics=DECIDE) -> dict:
    """better_loss, worse_rank, paradox, directions and the effect sizes of one comparison.

    better_loss: metrics[0] (final_val_loss) mean_diff < 0 at p_holm < alpha.
    worse_rank: metrics[1] and metrics[2] (final_pr_q, final_pr_k) both mean_diff < 0 at
    p_holm < alpha. A significant rank increase is direction "higher", never worse_rank.
    paradox: both. state: paradox | better_loss_only | worse_rank_only | no_effect (no claim
    supported: not the same as evidence of no difference) | not_enough_data | other (no claim,
    but a significant effect in the other direction; see directions).
    """
    rows = {
        r["metric"]: r
        for r in table.filter((pl.col("optimizer") == optimizer) & (pl.col("qk_norm") == variant)).iter_rows(named=True)
    }
    loss, q, k = (rows.get(m) for m in metrics)
    enough = all(r is not None and r["n_pairs"] >= MIN_PAIRS for r in (loss, q, k))
    better_loss = enough and _sig(loss, -1, alpha)
    worse_rank = enough and _sig(q, -1, alpha) and _sig(k, -1, alpha)
    opposite = enough and (_sig(loss, 1, alpha) or _sig(q, 1, alpha) or _sig(k, 1, alpha))
    if not enough:
        state = "not_enough_data"
    elif better_loss and worse_rank:
        state = "paradox"
    elif better_loss:
        state = "better_loss_only"
    elif worse_rank:
        state = "worse_rank_only"
    elif opposite:
        state = "other"
    else:
        state = "no_effect"
    effects = {
        m: {
            k_: r.get(k_)
            for k_ in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "p_wilcoxon", "sd_diff", "dz")
        }
        for m, r in rows.items()
    }
    any_row = loss or q or k or {}
    return dict(
        state=state,
        better_loss=bool(better_loss),
        worse_rank=bool(worse_rank),
        paradox=bool(better_loss and worse_rank),
        directions={m: direction(rows.get(m), alpha) for m in metrics},
        n_pairs=int(loss["n_pairs"]) if loss else 0,
        n_excluded_diverged=int(any_row.get("n_excluded_diverged") or 0),
        n_excluded_other=int(any_row.get("n_excluded_other") or 0),
        effects=effects,
    )


def comparisons(table: pl.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table.get_column("optimizer").to_list(), table.get_column("qk_norm").to_list())))
