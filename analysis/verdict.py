"""The paradox tables and verdict.json (its sentences: analysis.headline).

Rules (also written into verdict.json under "rules"):
- The deciding selection is each arm (optimizer, qk_norm, width[, init]) at its own best LR
  (lowest mean final val loss over seeds, a diverged seed counting as the loss at init), pairs
  matched on (optimizer, width, seed). The top-level fields of a comparison come from it.
- better_loss: final_val_loss mean_diff (variant minus none) < 0 with p_holm < alpha;
- worse_rank: final_pr_q and final_pr_k both have mean_diff < 0 with p_holm < alpha
  (the activation PRs; wq/wk are reported but do not decide);
- paradox: both. directions: lower / higher / no_difference per deciding metric.
- `pooled` holds the same judgement on pairs pooled over LRs (paradox.csv); it never decides,
  and every metric where it disagrees with the deciding selection is listed and said.
- fewer than MIN_PAIRS pairs: state "not_enough_data", no test, every flag false.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from .breakdown import cell_table, layer_table
from .finals import ROBUST_PR
from .headline import headline
from .interaction import did_table
from .judge import comparisons, direction, judge
from .paradox import ALPHA, BASELINE, MIN_PAIRS, ROBUST_METRICS, paradox_table
from .regression import MIN_CLUSTERS, regress
from .sensitivity import arm_keys, bracketing, lr_curve
from .tables import fmt


@dataclass(frozen=True)
class ParadoxResults:
    """Every table the verdict reads (all Polars)."""

    pooled: pl.DataFrame  # paradox.csv: pairs on (width, lr, seed), all LRs; never decides alone
    best: pl.DataFrame  # the deciding table: each arm at its best LR per width
    robust: pl.DataFrame  # bias-corrected and centred q/k PR, both selections
    cells: pl.DataFrame  # per-cell effects, per-width best-LR rows and the deciding rows
    layers: pl.DataFrame  # best-LR effects of final PR q/k per layer
    did: pl.DataFrame  # interaction: difference in differences, both selections
    brackets: pl.DataFrame  # each arm's best LR and whether the LR grid brackets it
    regression: pl.DataFrame  # clustered OLS (run only with >= MIN_CLUSTERS seeds)


def paradox_results(finals: pl.DataFrame, best_lrs: pl.DataFrame, layers: pl.DataFrame | None = None) -> ParadoxResults:
    """Every table the verdict reads, from the per-trial finals, each arm's best LR (`best_lrs`,
    analysis.sensitivity.best_lrs) and the per-layer finals (`layers`, optional)."""
    pooled = paradox_table(finals, "all_lrs")
    best = paradox_table(finals, "best_lr", best=best_lrs)
    robust = pl.concat(
        [paradox_table(finals, s, metrics=ROBUST_METRICS, best=best_lrs) for s in ("all_lrs", "best_lr")]
    )
    return ParadoxResults(
        pooled=pooled,
        best=best,
        robust=robust,
        cells=cell_table(finals, best_lrs, best),
        layers=layer_table(layers if layers is not None else pl.DataFrame(), best_lrs),
        did=pl.concat([did_table(finals, s, best_lrs) for s in ("best_lr", "all_lrs")]),
        brackets=bracketing(lr_curve(finals), best_lrs),
        regression=pl.concat([regress(finals, "all_lrs"), regress(finals, "best_lr", best_lrs)]),
    )


def clean(obj):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


# ---- pieces of one comparison ---------------------------------------------------------------
def _brackets(br: pl.DataFrame, opt: str, var: str) -> dict:
    """lr_bracketed (every width, both the variant's and none's arm interior), the edges, and
    each arm's best LR per width."""
    rows = br.filter((pl.col("optimizer") == opt) & pl.col("qk_norm").is_in([var, BASELINE]))
    extra = [c for c in arm_keys(br) if c not in ("optimizer", "qk_norm", "width")]
    edges, best = [], {}
    for r in rows.iter_rows(named=True):
        w = str(r["width"]) + "".join(f" {c}={r[c]}" for c in extra)
        best.setdefault(r["qk_norm"], {})[w] = r["best_lr"]
        if not r["interior"]:
            edges.append(
                {k: r[k] for k in ("qk_norm", "width", "best_lr", "edge", "lr_min", "lr_max", "n_lrs", *extra)}
            )
    widths = set(rows.filter(pl.col("qk_norm") == var).get_column("width").to_list())
    both = widths and widths == set(rows.filter(pl.col("qk_norm") == BASELINE).get_column("width").to_list())
    return dict(lr_bracketed=bool(both and not edges), lr_edges=edges, best_lrs=best)


def _robustness(robust: pl.DataFrame, opt: str, var: str, directions: dict, alpha: float) -> dict:
    out = {}
    t = robust.filter((pl.col("selection") == "best_lr") & (pl.col("optimizer") == opt) & (pl.col("qk_norm") == var))
    rows = {r["metric"]: r for r in t.iter_rows(named=True)}
    for kind, (mq, mk) in ROBUST_PR.items():
        rq, rk = rows.get(mq), rows.get(mk)
        avail = all(r is not None and r["n_pairs"] >= MIN_PAIRS for r in (rq, rk))
        dirs = {"final_pr_q": direction(rq, alpha), "final_pr_k": direction(rk, alpha)}
        out[kind] = dict(
            available=bool(avail),
            directions=dirs if avail else None,
            worse_rank=bool(avail and dirs["final_pr_q"] == dirs["final_pr_k"] == "lower"),
            survives=bool(avail and all(dirs[m] == directions[m] for m in dirs)),
            effects={
                m: {k: r.get(k) for k in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm")}
                for m, r in (("final_pr_q", rq), ("final_pr_k", rk))
                if r is not None
            },
        )
    return out


def _layers(layers: pl.DataFrame, opt: str, var: str, directions: dict, alpha: float) -> dict:
    """Per layer, the direction of the q and k PR effects at the best LR (Holm over the layer table),
    and whether every layer that can be tested agrees with the layer average's direction."""
    t = layers.filter((pl.col("optimizer") == opt) & (pl.col("qk_norm") == var)) if layers.height else layers
    per: dict = {}
    for r in t.iter_rows(named=True):
        per.setdefault(r["metric"], {})[str(r["layer"])] = direction(r, alpha)
    tested = [(m, d) for m, ds in per.items() for d in ds.values() if d != "not_enough_data"]
    return dict(
        directions=per,
        agree_with_average=bool(tested) and all(d == directions.get(m) for m, d in tested),
    )


def _interaction(did: pl.DataFrame, alpha: float, regression: pl.DataFrame) -> dict:
    out: dict = {"method": "difference_in_differences", "deciding": "best_lr"}
    for r in did.iter_rows(named=True):
        e = {k: r[k] for k in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "reference")}
        e["coef"] = r["mean_diff"]  # mean_diff under the name of the regression table's column
        e["direction"] = direction(r, alpha)
        e["optimizer_changes_effect"] = e["direction"] in ("lower", "higher")
        out.setdefault(r["selection"], {}).setdefault(r["optimizer"], {}).setdefault(r["qk_norm"], {})[r["metric"]] = e
    for s in ("best_lr", "all_lrs"):
        out.setdefault(s, {})
    ran = regression.filter(pl.col("term").is_not_null()) if regression.height else regression
    g = regression.get_column("n_clusters").drop_nulls()
    out["regression"] = dict(
        run=bool(ran.height),
        min_clusters=MIN_CLUSTERS,
        n_clusters=int(g.max()) if g.len() else 0,
        note=None
        if ran.height
        else f"clustered regression not run: fewer than {MIN_CLUSTERS} seed clusters (tables/regression.csv)",
    )
    return out


def build_verdict(t: ParadoxResults, context: dict, alpha: float = ALPHA) -> dict:
    comps: dict = {}
    warnings: list[str] = []
    for opt, var in comparisons(t.pooled):
        j = judge(t.best, opt, var, alpha)
        j["selection"] = "best_lr"
        j["best_lr"] = judge(t.best, opt, var, alpha)  # the deciding judgement again, under its selection's name
        j["pooled"] = judge(t.pooled, opt, var, alpha)
        j["disagreements"] = {
            m: {"pooled": j["pooled"]["directions"][m], "best_lr": d}
            for m, d in j["directions"].items()
            if d != j["pooled"]["directions"][m]
        }
        j.update(_brackets(t.brackets, opt, var))
        j["robustness"] = _robustness(t.robust, opt, var, j["directions"], alpha)
        j["layers"] = _layers(t.layers, opt, var, j["directions"], alpha)
        comps.setdefault(opt, {})[var] = j
    for r in t.brackets.filter(~pl.col("interior")).iter_rows(named=True):
        where = "highest" if r["edge"] == "high" else "lowest"
        init = f" (init {r['init_key']})" if "init_key" in r and t.brackets["init_key"].n_unique() > 1 else ""
        warnings.append(
            f"WARNING: the LR grid does not bracket {r['optimizer']}/{r['qk_norm']} width "
            f"{r['width']}{init}: its best LR {fmt(r['best_lr'])} is the {where} LR tried "
            f"({fmt(r['lr_min'])}..{fmt(r['lr_max'])}, {r['n_lrs']} LRs); the optimum may lie "
            "outside the grid, and best-LR comparisons are then not at the tuned optimum."
        )
    verdict = {
        **context,
        "alpha": alpha,
        "min_pairs": MIN_PAIRS,
        "deciding_selection": "best_lr",
        "rules": RULES,
        "comparisons": comps,
        "interaction": _interaction(t.did, alpha, t.regression),
        "warnings": warnings,
    }
    verdict["headline"] = headline(verdict)
    return clean(verdict)


RULES = {
    "deciding_selection": "best_lr: each arm (optimizer, qk_norm, width, and init when it varies) "
    "at its own best LR (lowest mean final val loss over seeds; a diverged "
    "seed counts as the loss at init); pairs on optimizer, width, seed. "
    "better_loss, worse_rank, paradox, state, directions, effects and n_pairs "
    "come from it (tables/paradox_best_lr.csv; `best_lr` repeats it)",
    "better_loss": "final_val_loss: mean_diff (variant minus none) < 0 and p_holm < alpha",
    "worse_rank": "final_pr_q and final_pr_k (PR / d_head at the last step, mean over "
    "layers and heads) both: mean_diff < 0 and p_holm < alpha",
    "paradox": "better_loss and worse_rank",
    "directions": "per deciding metric: lower / higher (p_holm < alpha with that sign), "
    "no_difference, or not_enough_data (fewer than min_pairs pairs); a rank "
    "increase is 'higher', never worse_rank",
    "pooled": "the same judgement on pairs pooled over every LR (same optimizer, width, lr, "
    "seed; paradox.csv). It never decides; `disagreements` lists the metrics whose "
    "direction differs from the deciding selection's",
    "test": "paired t-test (p_value); Wilcoxon signed-rank reported as p_wilcoxon",
    "interval": "95% t interval of the mean paired difference (mean +- t_{n-1} sd / sqrt(n)), "
    "consistent with the paired t-test",
    "holm_family": "within one table (paradox.csv, or tables/paradox_best_lr.csv for the "
    "deciding fields): the decision metrics (final_val_loss, final_pr_q, "
    "final_pr_k) of every optimizer and variant form one family; the weight PRs "
    "(wq, wk) another; robustness PRs one family per kind",
    "pairs": "only completed trials with complete data; matched also on depth, d_head, "
    "steps_planned and init_key (never across different init / init_std)",
    "lr_bracketed": "true only when the variant's and none's best LR is interior to that arm's "
    "LR grid (an LR tried below and above it) at every width",
    "robustness": "the deciding selection's q/k PR directions recomputed from the bias-corrected "
    "activation PR (pr - pr_bias, split-half jackknife) and from pr_centred; "
    "survives = same directions as the uncorrected PR; available = false for "
    "results without these metrics",
    "layers": "per layer, the best-LR q/k PR directions (tables/paradox_layers.csv, Holm over that "
    "table); agree_with_average = every testable layer has the layer average's direction",
    "not_enough_data": f"fewer than {MIN_PAIRS} pairs: no test",
    "interaction": "per matched pair of pairs, d = (O_variant - O_none) - (adamw_variant - "
    "adamw_none), same width and seed (best_lr: each arm at its best LR; "
    "all_lrs: also the same lr); paired t, t interval, Holm within each "
    "selection's decision metrics; optimizer_changes_effect = p_holm < alpha. "
    f"The clustered OLS runs only with >= {MIN_CLUSTERS} seed clusters",
}
