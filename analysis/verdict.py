"""The paradox tables and verdict.json (its sentences: analysis.headline; its claims: analysis.claims).

Rules (also written into verdict.json under "rules"):
- The primary rank metric is the sphere PR (q and k with unit rows, no gain: the same object in
  every arm). The as-used and pre-norm PRs are reported beside it with their directions.
- The deciding selection is each arm (optimizer, qk_norm, width[, init]) at its best LR chosen on
  held-out seeds (analysis.lr_selection), pairs matched on (optimizer, width, seed). The top-level
  fields of a comparison come from it.
- better_loss: final_val_loss mean_diff (variant minus none) < 0 with p_holm < alpha;
- worse_rank: the sphere PR of q and of k both have mean_diff < 0 with p_holm < alpha;
- paradox: both. directions: lower / higher / no_difference per metric.
- `matched_lr` compares both arms at the same LRs (analysis.matched), `init_relative` the change
  from each trial's step 0; `pooled` pairs over every LR (paradox.csv). None of them decides;
  the verdict names where they disagree with the deciding selection.
- fewer than MIN_PAIRS pairs: state "not_enough_data", no test, every flag false.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from .breakdown import cell_table, layer_table
from .claims import claims
from .finals import PRIMARY_PR, PRIMARY_ROBUST_PR, PRIMARY_STAGE
from .headline import headline
from .interaction import did_table
from .judge import comparisons, direction, judge
from .lr_selection import RULE as LR_SELECTION
from .matched import matched_lrs_by_width, matched_table
from .paradox import ALPHA, BASELINE, DECIDE, INIT_RELATIVE, MIN_PAIRS, ROBUST_METRICS, SECONDARY, paradox_table
from .regression import MIN_CLUSTERS, regress
from .sensitivity import arm_keys, bracketing, lr_curve
from .tables import fmt

EFFECT_KEYS = ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm")  # what verdict.json keeps of a row


@dataclass(frozen=True)
class ParadoxResults:
    """Every table the verdict reads (all Polars)."""

    pooled: pl.DataFrame  # paradox.csv: pairs on (width, lr, seed), all LRs; never decides alone
    best: pl.DataFrame  # the deciding table: each arm at its held-out best LR per width
    matched: pl.DataFrame  # both arms at the same LRs, from one arm's best LR to the other's
    init_relative: pl.DataFrame  # final minus step 0 per trial, paired as the deciding table
    held_out: pl.DataFrame  # the LR each arm takes for each seed (analysis.lr_selection)
    robust: pl.DataFrame  # bias-corrected and centred q/k PR, both selections
    cells: pl.DataFrame  # per-cell effects, per-width best-LR rows and the deciding rows
    layers: pl.DataFrame  # best-LR effects of final PR q/k per layer
    did: pl.DataFrame  # interaction: difference in differences, both selections
    brackets: pl.DataFrame  # each arm's best LR and whether the LR grid brackets it
    regression: pl.DataFrame  # clustered OLS (run only with >= MIN_CLUSTERS seeds)


def paradox_results(
    finals: pl.DataFrame, best_lrs: pl.DataFrame, held_out: pl.DataFrame, layers: pl.DataFrame | None = None
) -> ParadoxResults:
    """Every table the verdict reads, from the per-trial finals, each arm's all-seeds best LR
    (`best_lrs`, analysis.sensitivity.best_lrs: bracketing and the matched LRs), the LR each arm
    takes for each seed (`held_out`, analysis.lr_selection.held_out_lrs: every deciding pair) and
    the per-layer finals (`layers`, optional)."""
    best = paradox_table(finals, "best_lr", best=held_out)
    robust = pl.concat(
        [paradox_table(finals, s, metrics=ROBUST_METRICS, best=held_out) for s in ("all_lrs", "best_lr")]
    )
    return ParadoxResults(
        pooled=paradox_table(finals, "all_lrs"),
        best=best,
        matched=matched_table(finals, best_lrs),
        init_relative=paradox_table(finals, "best_lr", metrics=INIT_RELATIVE, best=held_out),
        held_out=held_out,
        robust=robust,
        cells=cell_table(finals, held_out, best),
        layers=layer_table(layers if layers is not None else pl.DataFrame(), held_out),
        did=pl.concat([did_table(finals, s, held_out) for s in ("best_lr", "all_lrs")]),
        brackets=bracketing(lr_curve(finals), best_lrs),
        regression=pl.concat([regress(finals, "all_lrs"), regress(finals, "best_lr", held_out)]),
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
    """The primary rank metric's directions recomputed from its bias-corrected and its centred PR
    (keyed, like `directions`, by the primary metric's names)."""
    out = {}
    t = robust.filter((pl.col("selection") == "best_lr") & (pl.col("optimizer") == opt) & (pl.col("qk_norm") == var))
    rows = {r["metric"]: r for r in t.iter_rows(named=True)}
    for kind, robust_metrics in PRIMARY_ROBUST_PR.items():
        found = [rows.get(m) for m in robust_metrics]
        avail = all(r is not None and r["n_pairs"] >= MIN_PAIRS for r in found)
        dirs = {m: direction(r, alpha) for m, r in zip(PRIMARY_PR, found)}
        out[kind] = dict(
            available=bool(avail),
            directions=dirs if avail else None,
            worse_rank=bool(avail and all(d == "lower" for d in dirs.values())),
            survives=bool(avail and all(dirs[m] == directions[m] for m in dirs)),
            effects={m: {k: r.get(k) for k in EFFECT_KEYS} for m, r in zip(PRIMARY_PR, found) if r is not None},
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
        e = {k: r[k] for k in (*EFFECT_KEYS, "reference")}
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


def _side(table: pl.DataFrame, opt: str, var: str, alpha: float, n_key: str = "n_pairs") -> dict:
    """{directions, effects} of one comparison in a side table (matched LR, init-relative), each
    metric judged in its own Holm family; `n_key` counts the replicates of a row."""
    rows = {
        r["metric"]: {**r, "n_pairs": r[n_key]}
        for r in table.filter((pl.col("optimizer") == opt) & (pl.col("qk_norm") == var)).iter_rows(named=True)
    }
    return dict(
        directions={m: direction(r, alpha) for m, r in rows.items()},
        effects={m: {k: r.get(k) for k in EFFECT_KEYS} for m, r in rows.items()},
    )


def _matched(matched: pl.DataFrame, opt: str, var: str, directions: dict, alpha: float) -> dict:
    """matched_lr: the LRs compared per width, directions and effects (n_pairs = (width, seed)
    units), and the metrics whose direction differs from the deciding (best-LR) one."""
    side = _side(matched, opt, var, alpha, n_key="n_units")
    rows = matched.filter((pl.col("optimizer") == opt) & (pl.col("qk_norm") == var))
    lrs = matched_lrs_by_width(rows.get_column("lrs")[0] if rows.height else None)
    testable = {"lower", "higher", "no_difference"}
    disagree = {
        m: {"matched_lr": d, "best_lr": directions[m]}
        for m, d in side["directions"].items()
        if m in directions and d != directions[m] and {d, directions[m]} <= testable
    }
    return dict(lrs=lrs, **side, disagreements=disagree)


def _lr_selection(held_out: pl.DataFrame, opt: str, var: str) -> dict:
    rows = held_out.filter((pl.col("optimizer") == opt) & pl.col("qk_norm").is_in([var, BASELINE]))
    return dict(
        rule="held_out_seed",
        how=LR_SELECTION,
        held_out=bool(rows.height) and bool(rows.get_column("held_out").all()),
        seeds_not_held_out=int((~rows.get_column("held_out")).sum()) if rows.height else 0,
    )


def build_verdict(t: ParadoxResults, context: dict, alpha: float = ALPHA) -> dict:
    comps: dict = {}
    warnings: list[str] = []
    for opt, var in comparisons(t.pooled):
        j = judge(t.best, opt, var, alpha)
        j["selection"] = "best_lr"
        j["lr_selection"] = _lr_selection(t.held_out, opt, var)
        j["best_lr"] = judge(t.best, opt, var, alpha)  # the deciding judgement again, under its selection's name
        j["pooled"] = judge(t.pooled, opt, var, alpha)
        j["disagreements"] = {
            m: {"pooled": j["pooled"]["directions"][m], "best_lr": d}
            for m, d in j["directions"].items()
            if m in j["pooled"]["directions"] and d != j["pooled"]["directions"][m]
        }
        j["matched_lr"] = _matched(t.matched, opt, var, j["directions"], alpha)
        j["init_relative"] = _side(t.init_relative, opt, var, alpha)
        j.update(_brackets(t.brackets, opt, var))
        j["robustness"] = _robustness(t.robust, opt, var, j["directions"], alpha)
        j["layers"] = _layers(t.layers, opt, var, j["directions"], alpha)
        comps.setdefault(opt, {})[var] = j
        if not j["lr_selection"]["held_out"]:
            warnings.append(
                f"WARNING: {opt}/{var}: {j['lr_selection']['seeds_not_held_out']} seed(s) of an arm with a "
                "single seed: its LR was chosen on the seed it is tested on (no held-out selection possible)."
            )
    for r in t.brackets.filter(~pl.col("interior")).iter_rows(named=True):
        where = "highest" if r["edge"] == "high" else "lowest"
        init = f" (init {r['init_key']})" if "init_key" in r and t.brackets["init_key"].n_unique() > 1 else ""
        warnings.append(
            f"WARNING: the LR grid does not bracket {r['optimizer']}/{r['qk_norm']} width "
            f"{r['width']}{init}: its best LR {fmt(r['best_lr'])} is the {where} LR tried "
            f"({fmt(r['lr_min'])}..{fmt(r['lr_max'])}, {r['n_lrs']} LRs); the optimum may lie "
            "outside the grid, and best-LR comparisons are then not at the tuned optimum."
        )
    primary = t.best.filter(pl.col("metric").is_in(PRIMARY_PR)) if t.best.height else t.best
    if t.best.height and not (primary.height and (primary.get_column("n_pairs") > 0).any()):
        warnings.append(
            "WARNING: these results do not record the primary rank metric (the sphere stage q_sphere, "
            "k_sphere, written by the trainer since the three q/k stages were added): the rank claims "
            "are not judged; run the sweep again with the current trainer."
        )
    interaction = _interaction(t.did, alpha, t.regression)
    verdict = {
        **context,
        "alpha": alpha,
        "min_pairs": MIN_PAIRS,
        "primary_metric": PRIMARY_STAGE,
        "deciding_metrics": list(DECIDE),
        "secondary_metrics": list(SECONDARY),
        "deciding_selection": "best_lr",
        "rules": RULES,
        "comparisons": comps,
        "interaction": interaction,
        "claims": claims(comps, interaction, context.get("clip_activity")),
        "warnings": warnings,
    }
    verdict["headline"] = headline(verdict)
    return clean(verdict)


RULES = {
    "primary_metric": "sphere: the PR of q and k with every token's vector scaled to unit length and no "
    "gain (final_pr_q_sphere, final_pr_k_sphere: PR / d_head at the last step, mean over layers and "
    "heads), the same object in every arm; the as-used (after QK-Norm, gain included) and the "
    "pre-norm (x Wq) PRs are secondary: reported with their directions, never deciding",
    "deciding_selection": "best_lr: each arm (optimizer, qk_norm, width, and init when it varies) "
    "at its best LR chosen on held-out seeds (lr_selection); pairs on optimizer, width, seed. "
    "better_loss, worse_rank, paradox, state, directions, effects and n_pairs "
    "come from it (tables/paradox_best_lr.csv; `best_lr` repeats it)",
    "lr_selection": LR_SELECTION,
    "better_loss": "final_val_loss: mean_diff (variant minus none) < 0 and p_holm < alpha",
    "worse_rank": "final_pr_q_sphere and final_pr_k_sphere both: mean_diff < 0 and p_holm < alpha",
    "paradox": "better_loss and worse_rank",
    "state": "what was found, in words: paradox, better_loss_only, worse_rank_only, no_effect, or "
    "<loss>_<rank> / <part>_only with loss better_loss | worse_loss and rank worse_rank | "
    "higher_rank | mixed_rank | lower_rank_q | lower_rank_k (only that one lower); not_enough_data",
    "directions": "per metric: lower / higher (p_holm < alpha with that sign), "
    "no_difference, or not_enough_data (fewer than min_pairs pairs); a rank "
    "increase is 'higher', never worse_rank",
    "matched_lr": "both arms at the same (width, lr), every LR from one arm's all-seeds best LR to "
    "the other's where neither diverged; the paired differences averaged over those LRs per "
    "(width, seed) unit, then a t interval and paired t over the units (n_pairs counts units), Holm "
    "within each family; `disagreements` names the metrics whose direction differs from best_lr",
    "init_relative": "final minus step 0 of each trial's PR (delta_pr_*), paired as the deciding "
    "selection; Holm within the init_relative family (the sphere stage's deltas; the other tensors' "
    "in init_relative_other)",
    "pooled": "the same judgement on pairs pooled over every LR (same optimizer, width, lr, "
    "seed; paradox.csv). It never decides; `disagreements` lists the metrics whose "
    "direction differs from the deciding selection's",
    "test": "paired t-test (p_value); Wilcoxon signed-rank reported as p_wilcoxon",
    "interval": "95% t interval of the mean paired difference (mean +- t_{n-1} sd / sqrt(n)), "
    "consistent with the paired t-test",
    "holm_family": "within one table (paradox.csv, or tables/paradox_best_lr.csv for the "
    "deciding fields): the decision metrics (final_val_loss, final_pr_q_sphere, "
    "final_pr_k_sphere) of every optimizer and variant form one family; the secondary stage PRs "
    "(as used, pre-norm) another; the weight PRs (wq, wk) another; robustness PRs one family per "
    "kind and stage",
    "pairs": "only completed trials with complete data; matched also on depth, d_head, "
    "steps_planned and init_key (never across different init / init_std)",
    "lr_bracketed": "true only when the variant's and none's best LR is interior to that arm's "
    "LR grid (an LR tried below and above it) at every width",
    "robustness": "the primary (sphere) PR directions recomputed from its bias-corrected PR "
    "(pr - pr_bias, split-half jackknife) and from its pr_centred; survives = same directions "
    "as the uncorrected sphere PR; available = false for results without these metrics",
    "layers": "per layer, the best-LR directions of the sphere and as-used q/k PR "
    "(tables/paradox_layers.csv, Holm over that table); agree_with_average = every testable layer "
    "has the layer average's direction",
    "not_enough_data": f"fewer than {MIN_PAIRS} pairs: no test",
    "interaction": "per matched pair of pairs, d = (O_variant - O_none) - (adamw_variant - "
    "adamw_none), same width and seed (best_lr: each arm at its held-out best LR; "
    "all_lrs: also the same lr); paired t, t interval, Holm within each "
    "selection's decision metrics; optimizer_changes_effect = p_holm < alpha. "
    f"The clustered OLS runs only with >= {MIN_CLUSTERS} seed clusters",
    "claims": "analysis.claims: lower_loss, lower_rank (per optimizer and variant), "
    "alternative_loss_without_rank_effect (per optimizer and alternative: qk_clip, softcap), "
    "adamw_collapses_more, advice_adamw_keep_qk_norm, advice_muon_drop_qk_norm; each supported | "
    "contradicted | inconclusive from the deciding directions and the difference in differences",
    "alternative_loss_without_rank_effect": "supported: val loss 'lower' and neither sphere PR (q, k) "
    "'lower'; contradicted: val loss 'higher', or both sphere PRs 'lower'; else inconclusive",
    "optimizer_label": "a Muon trial with muon_per_head true in config_json is the optimizer "
    "'muon_per_head': its own arm, never paired or pooled with plain Muon",
    "scope": "what was run; the answers hold for that scope only",
}
