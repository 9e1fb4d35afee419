"""The alternatives to QK-Norm side by side: every variant ranked, and what QK-Clip did.

`variant_ranking` (tables/variant_ranking.csv, Report.variant_ranking): per optimizer and width,
every variant (none and rms included) at its held-out best LR (analysis.lr_selection: each seed of an
arm at the LR chosen on its other seeds; the trials of the deciding pairs), one row per variant:

- `final_val_loss`, `final_pr_q_sphere`, `final_pr_k_sphere` (the primary PRs, / d_head): the mean
  over seeds with a 95% t interval (`*_ci_low`, `*_ci_high`), `n_seeds` completed trials with
  complete data, `lrs` the LRs those seeds took;
- `effect_<metric>` with `effect_<metric>_ci_low` / `_ci_high` and `n_pairs`: the paired effect of
  the variant minus none (null for none itself), from the deciding comparisons: per width the
  per-width best-LR rows of tables/paradox_cells.csv, and for the rows with `width` null (all
  widths) the deciding table, tables/paradox_best_lr.csv, itself;
- `rank_loss` (1 = the lowest mean loss) and `rank_pr` (1 = the highest mean of the sphere PR of q
  and k: the highest rank), ties sharing the lower rank;
- `not_worse_loss`: the variant's loss interval overlaps the interval of the variant with the
  lowest mean loss (a reading aid, not a test: overlapping intervals do not show equivalence);
- `pick`: not worse on loss and, among those, the highest sphere rank (`rank_pr` lowest).

Rows with `width` null pool the widths as the deciding comparison does: each seed's values are
averaged over the widths (a seed enters only with a usable trial at every width of its optimizer),
and the interval is over those seed means, so the widths' different losses do not widen it. With an
initialisation axis, `init_key` joins the group keys (the pooled effects then pool over inits).

`clip_activity` (tables/clip_activity.csv, Report.clip_activity): per (optimizer, width, lr,
qk_clip_tau) of the finished qk_clip trials, from the per-head `clip_fraction` and
`clip_gamma_min` rows (trainer.schema.CLIP_METRICS; each covers the optimizer steps since the
previous probe, so a row's weight is its span of steps):

- `clip_fraction`: the share of head-steps on which the clip fired, sum(fraction x span) / sum(span)
  over the probes, heads and seeds (the span-weighted mean of clip_fraction);
- `clip_gamma_min`: the smallest factor min(1, tau / S_max) applied (1: it never fired);
- `heads_ever_clipped`: the share of (seed, layer, head) that were clipped on at least one step;
- `n_trials` (finished qk_clip trials), `n_recorded` (those with clip rows), `head_steps` (the
  denominator of clip_fraction), `fired`, and `at_best_lr` (the LR is the arm's all-seeds best LR).

`clip_summary` turns it into verdict.json's `clip_activity` and the sentence summary.md and the
headline carry ("QK-Clip fired on 3.1% of head-steps (tau 30); ..."); where the clip never fired,
it says so plainly: qk_clip then trained exactly as none.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from trainer.schema import FINISHED_STATUSES

from .features import as_strings
from .finals import PRIMARY_PR
from .paradox import BASELINE, select, variants
from .stats import mean_ci
from .tables import fmt

RANK_METRICS = ("final_val_loss", *PRIMARY_PR)  # loss and the sphere PR of q and k
QK_CLIP, SOFTCAP = "qk_clip", "softcap"
RANKING_COLUMNS = [
    "optimizer",
    "width",
    "qk_norm",
    "lrs",
    "n_seeds",
    *[f"{m}{s}" for m in RANK_METRICS for s in ("", "_ci_low", "_ci_high")],
    "n_pairs",
    *[f"effect_{m}{s}" for m in RANK_METRICS for s in ("", "_ci_low", "_ci_high")],
    "rank_loss",
    "rank_pr",
    "not_worse_loss",
    "pick",
]
CLIP_COLUMNS = [
    "optimizer",
    "width",
    "lr",
    "qk_clip_tau",
    "n_trials",
    "n_recorded",
    "head_steps",
    "clip_fraction",
    "clip_gamma_min",
    "heads_ever_clipped",
    "fired",
    "at_best_lr",
]


# ---- the variants' settings -----------------------------------------------------------------
def variant_settings(trials: pl.DataFrame) -> pl.DataFrame:
    """trial_id, qk_clip_tau (qk_clip trials), logit_softcap (softcap trials): from config_json,
    null where the trial is not that variant or its config does not record it."""
    if "config_json" not in trials.columns:
        return trials.select(
            "trial_id", pl.lit(None, pl.Float64).alias("qk_clip_tau"), pl.lit(None, pl.Float64).alias("logit_softcap")
        )
    cfg = pl.col("config_json")
    setting = lambda path, variant: (  # noqa: E731
        pl.when(pl.col("qk_norm") == variant).then(cfg.str.json_path_match(path).cast(pl.Float64, strict=False))
    )
    return trials.select(
        "trial_id",
        setting("$.qk_clip_tau", QK_CLIP).alias("qk_clip_tau"),
        setting("$.logit_softcap", SOFTCAP).alias("logit_softcap"),
    )


# ---- the ranking ----------------------------------------------------------------------------
def _inits(finals: pl.DataFrame) -> list[str]:
    return ["init_key"] if "init_key" in finals.columns and finals.get_column("init_key").n_unique() > 1 else []


def _usable(df: pl.DataFrame) -> pl.DataFrame:
    ok = pl.col("status") == "completed"
    if "data_complete" in df.columns:
        ok = ok & pl.col("data_complete").fill_null(True)
    return df.filter(ok)


def _summaries(units: pl.DataFrame, keys: list[str]) -> list[dict]:
    """Per group of `keys`: n_seeds, lrs and the mean with a t interval of every RANK_METRICS column."""
    rows = []
    for g, df in units.group_by(keys, maintain_order=True):
        row = dict(zip(keys, g))
        row["n_seeds"] = int(df.get_column(RANK_METRICS[0]).drop_nulls().drop_nans().len())
        row["lrs"] = ", ".join(fmt(x) for x in sorted(set(df.get_column("lrs").to_list())))
        for m in RANK_METRICS:
            x = df.get_column(m).drop_nulls().drop_nans().to_numpy().astype(float)
            mean, lo, hi, _ = mean_ci(x) if x.size else (np.nan, np.nan, np.nan, np.nan)
            row.update({m: float(mean), f"{m}_ci_low": float(lo), f"{m}_ci_high": float(hi)})
        rows.append(row)
    return rows


def _wide_effects(long: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """One row per `keys` from rows per metric: n_pairs (of the loss) and effect_* per RANK_METRICS metric."""
    wide = None
    for m in RANK_METRICS:
        part = long.filter(pl.col("metric") == m).select(
            *keys,
            *([pl.col("n_pairs")] if m == RANK_METRICS[0] else []),
            pl.col("mean_diff").alias(f"effect_{m}"),
            pl.col("ci_low").alias(f"effect_{m}_ci_low"),
            pl.col("ci_high").alias(f"effect_{m}_ci_high"),
        )
        wide = part if wide is None else wide.join(part, on=keys, how="full", coalesce=True)
    return wide


def _with_effects(df: pl.DataFrame, cells: pl.DataFrame, deciding: pl.DataFrame, inits: list[str]) -> pl.DataFrame:
    """The ranking rows with n_pairs and effect_* joined: per width from the per-width best-LR rows of
    `cells` (init_key too, with an init axis), all widths (width null) from the deciding table."""
    per_width, pooled = df.filter(pl.col("width").is_not_null()), df.filter(pl.col("width").is_null())
    keys = ["optimizer", "width", "qk_norm", *inits]
    rows = (
        cells.filter((pl.col("selection") == "best_lr") & pl.col("metric").is_in(RANK_METRICS))
        if cells.height
        else cells
    )
    if rows.height and all(k in rows.columns for k in keys):
        per_width = per_width.join(_wide_effects(rows, keys), on=keys, how="left")
    if deciding.height:
        d = deciding.filter(pl.col("metric").is_in(RANK_METRICS))
        pooled = pooled.join(_wide_effects(d, ["optimizer", "qk_norm"]), on=["optimizer", "qk_norm"], how="left")
    return pl.concat([per_width, pooled], how="diagonal_relaxed")


def _ranks(df: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    """rank_loss, rank_pr, not_worse_loss and pick within each group."""
    loss, (q, k) = RANK_METRICS[0], PRIMARY_PR
    pr = (pl.col(q) + pl.col(k)) / 2
    over = lambda e: e.over(group, mapping_strategy="group_to_rows") if group else e  # noqa: E731
    best_mean = over(pl.col(loss).min())
    best_hi = over(pl.col(f"{loss}_ci_high").filter(pl.col(loss) == pl.col(loss).min()).first())
    df = df.with_columns(
        over(pl.col(loss).rank("min")).cast(pl.Int64).alias("rank_loss"),
        over(pr.rank("min", descending=True)).cast(pl.Int64).alias("rank_pr"),
        pl.when(pl.col(loss) == best_mean)
        .then(True)
        .when(pl.col(f"{loss}_ci_low").is_not_null() & best_hi.is_not_null())
        .then(pl.col(f"{loss}_ci_low") <= best_hi)
        .alias("not_worse_loss"),
    )
    top = over(pl.col("rank_pr").filter(pl.col("not_worse_loss").fill_null(False)).min())
    return df.with_columns(
        (pl.col("not_worse_loss").fill_null(False) & (pl.col("rank_pr") == top)).fill_null(False).alias("pick")
    )


def variant_ranking(
    finals: pl.DataFrame, held_out: pl.DataFrame, deciding: pl.DataFrame, cells: pl.DataFrame
) -> pl.DataFrame:
    """tables/variant_ranking.csv (the module's docstring). `held_out`: Report.held_out_lrs;
    `deciding`: Report.paradox_best; `cells`: Report.cells."""
    inits = _inits(finals)
    columns = [*RANKING_COLUMNS[:2], *inits, *RANKING_COLUMNS[2:]]
    schema = {c: pl.Float64 for c in columns}
    schema.update(optimizer=pl.String, qk_norm=pl.String, lrs=pl.String, init_key=pl.String, not_worse_loss=pl.Boolean)
    schema.update(width=pl.Int64, n_seeds=pl.Int64, n_pairs=pl.Int64, rank_loss=pl.Int64, rank_pr=pl.Int64)
    schema.update(pick=pl.Boolean)
    empty = pl.DataFrame(schema={c: schema[c] for c in columns})
    if finals.height == 0 or held_out.height == 0:
        return empty
    sel = _usable(select(finals, "best_lr", held_out)).with_columns(pl.col("lr").cast(pl.Float64).alias("lrs"))
    if sel.height == 0:
        return empty
    arm = ["optimizer", *inits, "qk_norm"]
    per_width = _summaries(sel.sort(*arm, "width", "seed"), ["optimizer", "width", *inits, "qk_norm"])
    # all widths: each seed's values averaged over the widths, seeds with a trial at every width
    widths = sel.group_by("optimizer").agg(pl.col("width").n_unique().alias("n_widths"))
    seeds = (
        sel.group_by(*arm, "seed")
        .agg(*[pl.col(m).mean() for m in RANK_METRICS], pl.col("width").n_unique().alias("n_w"), pl.col("lrs").first())
        .join(widths, on="optimizer")
        .filter(pl.col("n_w") == pl.col("n_widths"))
        .sort(*arm, "seed")
    )
    pooled = _summaries(seeds, arm) if seeds.height else []
    lr_text = {
        key: ", ".join(fmt(x) for x in sorted(set(g.get_column("lrs").to_list())))
        for key, g in sel.group_by(arm, maintain_order=True)
    }
    for row in pooled:  # the LRs any width took
        row["width"] = None
        row["lrs"] = lr_text.get(tuple(row[c] for c in arm), row["lrs"])
    df = pl.DataFrame(per_width + pooled, schema={c: schema[c] for c in columns if c in (per_width + pooled)[0]})
    df = df.fill_nan(None)
    df = _with_effects(df, cells, deciding, inits)
    for c in columns:
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, schema[c]).alias(c))
    df = df.with_columns(
        pl.when(pl.col("qk_norm") == BASELINE).then(None).otherwise(pl.col(c)).alias(c)
        for c in ["n_pairs", *[f"effect_{m}{s}" for m in RANK_METRICS for s in ("", "_ci_low", "_ci_high")]]
    )
    df = _ranks(df, ["optimizer", "width", *inits])
    order = {q: i for i, q in enumerate([BASELINE, *variants(finals)])}
    return (
        df.with_columns(pl.col("qk_norm").replace_strict(order, default=99, return_dtype=pl.Int64).alias("_o"))
        .sort("optimizer", *inits, "width", "_o", nulls_last=True)
        .select([pl.col(c).cast(schema[c]) for c in columns])
    )


def ranking_view(ranking: pl.DataFrame) -> pl.DataFrame:
    """The short version summary.md shows: the all-widths rows, each value with its interval."""
    if ranking.height == 0:
        return ranking
    rows = ranking.filter(pl.col("width").is_null()) if ranking["width"].null_count() else ranking

    def with_ci(m: str, prefix: str = "") -> pl.Expr:
        c = f"{prefix}{m}"
        txt = lambda e: e.map_elements(fmt, return_dtype=pl.String)  # noqa: E731
        return (
            pl.when(pl.col(c).is_null())
            .then(pl.lit(""))
            .when(pl.col(f"{c}_ci_low").is_null())
            .then(txt(pl.col(c)))
            .otherwise(
                pl.concat_str(
                    txt(pl.col(c)),
                    pl.lit(" ["),
                    txt(pl.col(f"{c}_ci_low")),
                    pl.lit(", "),
                    txt(pl.col(f"{c}_ci_high")),
                    pl.lit("]"),
                )
            )
        )

    loss, (q, k) = RANK_METRICS[0], PRIMARY_PR
    return rows.select(
        "optimizer",
        *(["init_key"] if "init_key" in rows.columns else []),
        "qk_norm",
        "lrs",
        "n_seeds",
        with_ci(loss).alias("val loss"),
        with_ci(q).alias("sphere PR q"),
        with_ci(k).alias("sphere PR k"),
        with_ci(loss, "effect_").alias("loss vs none"),
        with_ci(q, "effect_").alias("PR q vs none"),
        with_ci(k, "effect_").alias("PR k vs none"),
        "rank_loss",
        "rank_pr",
        "not_worse_loss",
        "pick",
    )


# ---- QK-Clip's activity -----------------------------------------------------------------------
def _per_head(clip: pl.DataFrame) -> pl.DataFrame:
    """trial_id, layer, head, steps (the optimizer steps the rows cover), clipped (steps clipped),
    gamma_min: each clip_fraction row weighted by its span, the steps since the previous row."""
    frac = (
        clip.filter(pl.col("name") == "clip_fraction")
        .sort("trial_id", "layer", "head", "step")
        .with_columns(
            (pl.col("step") - pl.col("step").shift(1).over("trial_id", "layer", "head").fill_null(0)).alias("span")
        )
        .group_by("trial_id", "layer", "head")
        .agg(pl.col("span").sum().alias("steps"), (pl.col("value") * pl.col("span")).sum().alias("clipped"))
    )
    gamma = (
        clip.filter(pl.col("name") == "clip_gamma_min")
        .group_by("trial_id", "layer", "head")
        .agg(pl.col("value").min().alias("gamma_min"))
    )
    return frac.join(gamma, on=["trial_id", "layer", "head"], how="full", coalesce=True)


def clip_heads(clip: pl.DataFrame, finals: pl.DataFrame, settings: pl.DataFrame) -> pl.DataFrame:
    """One row per finished qk_clip trial and head with clip rows (a trial without any: one row with
    nulls): the trial's settings (optimizer, width, lr, seed, qk_clip_tau) and `_per_head`'s values."""
    trials = (
        finals.filter((pl.col("qk_norm") == QK_CLIP) & pl.col("status").is_in(FINISHED_STATUSES))
        .select("trial_id", "optimizer", "width", "lr", "seed", *_inits(finals))
        .join(settings.select("trial_id", "qk_clip_tau"), on="trial_id", how="left")
    )
    if trials.height == 0:
        return trials.with_columns(
            pl.lit(None, pl.Int16).alias("layer"),
            pl.lit(None, pl.Int16).alias("head"),
            *[pl.lit(None, pl.Float64).alias(c) for c in ("steps", "clipped", "gamma_min")],
        )
    heads = _per_head(as_strings(clip).filter(pl.col("trial_id").is_in(trials.get_column("trial_id").implode())))
    return trials.join(heads, on="trial_id", how="left")


def clip_activity(heads: pl.DataFrame, best: pl.DataFrame | None = None) -> pl.DataFrame:
    """tables/clip_activity.csv from `clip_heads` (the module's docstring); `best`: Report.best_lrs
    (for `at_best_lr`)."""
    inits = ["init_key"] if "init_key" in heads.columns else []
    keys = ["optimizer", "width", "lr", "qk_clip_tau", *inits]
    columns = [*CLIP_COLUMNS[:4], *inits, *CLIP_COLUMNS[4:]]
    if heads.height == 0:
        schema = {c: pl.Float64 for c in columns}
        schema.update(optimizer=pl.String, init_key=pl.String, width=pl.Int64, fired=pl.Boolean, at_best_lr=pl.Boolean)
        schema.update(n_trials=pl.Int64, n_recorded=pl.Int64, head_steps=pl.Int64)
        return pl.DataFrame(schema={c: schema[c] for c in columns})
    recorded = pl.col("steps").is_not_null() & (pl.col("steps") > 0)
    df = (
        heads.group_by(keys)
        .agg(
            pl.col("trial_id").n_unique().cast(pl.Int64).alias("n_trials"),
            pl.col("trial_id").filter(recorded).n_unique().cast(pl.Int64).alias("n_recorded"),
            pl.col("steps").filter(recorded).sum().cast(pl.Int64).alias("head_steps"),
            pl.col("clipped").filter(recorded).sum().alias("_clipped"),
            pl.col("gamma_min").min().alias("clip_gamma_min"),
            (pl.col("clipped") > 0).filter(recorded).mean().alias("heads_ever_clipped"),
        )
        .with_columns(
            pl.when(pl.col("head_steps") > 0).then(pl.col("_clipped") / pl.col("head_steps")).alias("clip_fraction"),
        )
        .with_columns(pl.when(pl.col("n_recorded") > 0).then(pl.col("_clipped") > 0).alias("fired"))
    )
    at_best = pl.lit(None, pl.Boolean)
    if best is not None and best.height:
        b = best.filter(pl.col("qk_norm") == QK_CLIP).select("optimizer", "width", *inits, "best_lr").unique()
        by = ["optimizer", "width", *inits]
        df = df.join(b.group_by(by).agg(pl.col("best_lr")), on=by, how="left")
        at_best = pl.col("best_lr").list.contains(pl.col("lr"))
    df = df.with_columns(at_best.fill_null(False).alias("at_best_lr"))
    return df.select(columns).sort("optimizer", "width", "lr", "qk_clip_tau", *inits)


def _share(heads: pl.DataFrame) -> float | None:
    """The share of head-steps clipped over `heads` (null: nothing recorded)."""
    rec = heads.filter(pl.col("steps").is_not_null() & (pl.col("steps") > 0))
    steps = rec.get_column("steps").sum() if rec.height else 0
    return float(rec.get_column("clipped").sum() / steps) if steps else None


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if 0 < x < 0.01 else f"{100 * x:.1f}%"


def clip_summary(heads: pl.DataFrame, deciding_trials: list[str] | None = None) -> dict | None:
    """verdict.json's `clip_activity` (None without qk_clip trials): taus, recorded, fired,
    head_step_share, never_fired ([{optimizer, width}] where it fired at no LR), deciding_share
    ({optimizer: share over the trials of the deciding pairs, the held-out best LRs}) and `sentence`."""
    if heads.height == 0:
        return None
    taus = sorted(set(heads.get_column("qk_clip_tau").drop_nulls().to_list()))
    tau_txt = "tau " + (", ".join(fmt(float(t)) for t in taus) if taus else "not recorded")
    share = _share(heads)
    out: dict = {"taus": taus, "recorded": share is not None, "head_step_share": share}
    if share is None:
        out.update(fired=None, never_fired=[], deciding_share={})
        out["sentence"] = (
            f"QK-Clip ({tau_txt}): its activity is not recorded in these results (no clip_fraction rows), "
            "so whether it fired is unknown."
        )
        return out
    never = []
    for (o, w), g in heads.group_by("optimizer", "width", maintain_order=True):
        if _share(g) == 0:
            never.append({"optimizer": o, "width": w})
    never.sort(key=lambda d: (d["optimizer"], d["width"]))
    deciding = {}
    if deciding_trials is not None:
        sel = heads.filter(pl.col("trial_id").is_in(list(deciding_trials)))
        for (o,), g in sel.group_by("optimizer", maintain_order=True):
            deciding[o] = _share(g)
        deciding = dict(sorted(deciding.items()))
    out.update(fired=share > 0, never_fired=never, deciding_share=deciding)
    if share == 0:
        out["sentence"] = (
            f"QK-Clip NEVER FIRED ({tau_txt}): no head's largest logit exceeded tau on any step, so the "
            "qk_clip trials trained exactly as none would, and their comparisons with none measure noise only."
        )
        return out
    s = f"QK-Clip fired on {_pct(share)} of head-steps ({tau_txt})"
    if deciding:
        s += "; in the trials the verdict compares (held-out best LRs): " + ", ".join(
            f"not recorded under {o}" if v is None else (f"{_pct(v)} under {o}" if v else f"never under {o}")
            for o, v in deciding.items()
        )
    if never:
        by_opt: dict[str, list[str]] = {}
        for d in never:
            by_opt.setdefault(d["optimizer"], []).append(str(d["width"]))
        s += "; it never fired under " + "; ".join(
            f"{o} at width{'s' if len(ws) > 1 else ''} {', '.join(ws)}" for o, ws in by_opt.items()
        )
        s += " (at any LR: there qk_clip trained as none)"
    out["sentence"] = s + "."
    return out
