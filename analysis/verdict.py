"""The paradox tables, verdict.json and its plain-words reading.

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

from .features import ROBUST_PR
from .paradox import (
    ALPHA,
    BASELINE,
    DECIDE,
    MIN_PAIRS,
    ROBUST_METRICS,
    cell_table,
    comparisons,
    did_table,
    direction,
    judge,
    layer_table,
    paradox_table,
)
from .regression import MIN_CLUSTERS, regress
from .sensitivity import arm_keys, bracketing, lr_curve
from .tables import fmt

NAMES = {"final_val_loss": "val loss", "final_pr_q": "PR q", "final_pr_k": "PR k"}
WORDS = {"lower": "lower", "higher": "higher", "no_difference": "no difference", "not_enough_data": "not enough data"}


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


def paradox_results(finals: pl.DataFrame, layers: pl.DataFrame | None = None) -> ParadoxResults:
    pooled = paradox_table(finals, "all_lrs")
    best = paradox_table(finals, "best_lr")
    robust = pl.concat([paradox_table(finals, s, metrics=ROBUST_METRICS) for s in ("all_lrs", "best_lr")])
    return ParadoxResults(
        pooled=pooled,
        best=best,
        robust=robust,
        cells=cell_table(finals, best),
        layers=layer_table(layers if layers is not None else pl.DataFrame()),
        did=pl.concat([did_table(finals, s) for s in ("best_lr", "all_lrs")]),
        brackets=bracketing(lr_curve(finals)),
        regression=pl.concat([regress(finals, "all_lrs"), regress(finals, "best_lr")]),
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
        e["coef"] = r["mean_diff"]  # the name the regression version used
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
        j["best_lr"] = judge(t.best, opt, var, alpha)  # kept: the same judgement, by its old name
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


# ---- words ----------------------------------------------------------------------------------
def _fx(e: dict | None) -> str:
    if not e or e.get("mean_diff") is None:
        return "n/a"
    s = f"{e['mean_diff']:+.3g}"
    if e.get("ci_low") is not None:
        s += f" [95% CI {e['ci_low']:+.3g}, {e['ci_high']:+.3g}]"
    if e.get("p_value") is not None:
        s += f", p={e['p_value']:.2g}"
    if e.get("p_holm") is not None:
        s += f", p_holm={e['p_holm']:.2g}"
    return s


def _metric_words(directions: dict, effects: dict) -> str:
    return "; ".join(f"{NAMES.get(m, m)} {WORDS[d]} {_fx(effects.get(m))}" for m, d in directions.items())


def sentence(opt: str, var: str, j: dict, alpha: float) -> str:
    who = f"{opt}: qk_norm={var} vs none at each arm's best LR ({j['n_pairs']} pairs"
    who += f", {j['n_excluded_diverged']} lost to divergence)" if j["n_excluded_diverged"] else ")"
    state = j["state"]
    if state == "not_enough_data":
        return f"{who}: NOT ENOUGH DATA (fewer than {MIN_PAIRS} complete pairs at the best LR); no test was run."
    body = _metric_words(j["directions"], j["effects"])
    tail = {
        "paradox": "paradox: PARADOX SUPPORTED (lower loss and lower q and k rank)",
        "better_loss_only": "paradox: not supported (lower loss, but not lower rank of both q and k)",
        "worse_rank_only": "paradox: not supported (lower q and k rank, but not lower loss)",
        "other": "paradox: not supported (no lower loss, no lower rank; see the higher metrics)",
        "no_effect": f"paradox: not supported; NO EFFECT detected at alpha={alpha} after Holm "
        "(the intervals bound how large an effect could be)",
    }[state]
    return f"{who}: {body}; {tail}."


def _robust_words(opt: str, var: str, j: dict) -> str:
    parts = []
    for kind, label in (("corrected", "bias correction (pr - pr_bias)"), ("centred", "centring")):
        r = j["robustness"][kind]
        if not r["available"]:
            parts.append(f"{label}: unavailable (not recorded in these results)")
        elif r["survives"]:
            parts.append(f"{label}: the q/k directions survive")
        else:
            ch = [
                f"{NAMES[m]} {WORDS[j['directions'][m]]} -> {WORDS[d]}"
                for m, d in r["directions"].items()
                if d != j["directions"][m]
            ]
            parts.append(f"{label}: CHANGES " + ", ".join(ch))
    return f"{opt} qk_norm={var} robustness of the rank result: " + "; ".join(parts) + "."


def _layer_words(opt: str, var: str, j: dict) -> str | None:
    per = j["layers"]["directions"]
    if not per:
        return None
    parts = []
    for metric in ("final_pr_q", "final_pr_k"):
        by_dir: dict[str, list[str]] = {}
        for layer, d in sorted(per.get(metric, {}).items(), key=lambda kv: int(kv[0])):
            by_dir.setdefault(WORDS[d], []).append(layer)
        parts.append(
            f"{NAMES[metric]} "
            + ", ".join(f"{w} in layer{'s' if len(ls) > 1 else ''} {', '.join(ls)}" for w, ls in by_dir.items())
        )
    agree = (
        "every layer agrees with the layer average"
        if j["layers"]["agree_with_average"]
        else "NOT every layer agrees with the layer average"
    )
    return (
        f"{opt} qk_norm={var} per layer at the best LR (Holm over tables/paradox_layers.csv): "
        + "; ".join(parts)
        + f"; {agree}."
    )


def _disagree_words(opt: str, var: str, j: dict) -> str | None:
    if not j["disagreements"] or j["state"] == "not_enough_data":
        return None
    parts = [
        f"{NAMES[m]} pooled {WORDS[d['pooled']]}, at the best LR {WORDS[d['best_lr']]}"
        for m, d in j["disagreements"].items()
    ]
    return (
        f"{opt} qk_norm={var}: POOLED AND BEST-LR DISAGREE: "
        + "; ".join(parts)
        + ". Pooling over LRs mixes in LRs where one arm is far from its optimum; the "
        "best-LR comparison decides."
    )


def headline(verdict: dict) -> list[str]:
    alpha = verdict["alpha"]
    lines = []
    if verdict.get("partial"):
        lines.append(
            "PARTIAL: the sweep has not finished ("
            + "; ".join(verdict.get("partial_reasons", []))
            + "); these results use the trials finished so far."
        )
    for opt, per in verdict["comparisons"].items():
        for var, j in per.items():
            lines.append(sentence(opt, var, j, alpha))
            if j["state"] != "not_enough_data":
                d = _disagree_words(opt, var, j)
                if d:
                    lines.append(d)
                lines.append(_robust_words(opt, var, j))
                layer_line = _layer_words(opt, var, j)
                if layer_line:
                    lines.append(layer_line)
            if not j["lr_bracketed"]:
                lines.append(
                    f"{opt} qk_norm={var}: LR grid not bracketing every arm's best LR "
                    f"({len(j['lr_edges'])} edge optima; see the warnings)."
                )
    if not verdict["comparisons"]:
        lines.append("NOT ENOUGH DATA: no optimizer has both qk_norm=none and a QK-Norm variant.")
    for opt, per in verdict["interaction"].get("best_lr", {}).items():
        for var, ms in per.items():
            e = ms.get("final_val_loss", {})
            ref = e.get("reference", "adamw")
            dec = {m: ms[m] for m in DECIDE if m in ms}
            n = max((x["n_pairs"] for x in dec.values()), default=0)
            if n < MIN_PAIRS:
                lines.append(
                    f"Interaction ({opt} vs {ref}, qk_norm={var}): NOT ENOUGH DATA "
                    f"({n} matched pairs of pairs at the best LR)."
                )
                continue
            body = _metric_words({m: x["direction"] for m, x in dec.items()}, dec)
            changed = [NAMES[m] for m, x in dec.items() if x["optimizer_changes_effect"]]
            verdict_ = (
                f"{opt} CHANGES the qk_norm={var} effect on " + ", ".join(changed)
                if changed
                else f"no significant change of the qk_norm={var} effect"
            )
            lines.append(
                f"Interaction, difference in differences ({opt} minus {ref}, at each "
                f"arm's best LR, {n} pairs of pairs): {body}; {verdict_} (Holm)."
            )
    return lines
