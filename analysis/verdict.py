"""verdict.json and its plain-words reading.

Rules (also written into verdict.json under "rules"):
- better_loss: final_val_loss mean_diff (variant minus none) < 0 with p_holm < alpha;
- worse_rank: final_pr_q and final_pr_k both have mean_diff < 0 with p_holm < alpha
  (the activation PRs; wq/wk are reported but do not decide);
- paradox: both. The top-level fields of each comparison come from paradox.csv (pairs on width,
  lr, seed); "best_lr" holds the same judgement at each arm's best LR per width.
- fewer than MIN_PAIRS pairs: state "not_enough_data", no test, every flag false.
"""

from __future__ import annotations

import math

import polars as pl

from .paradox import ALPHA, MIN_PAIRS, comparisons, judge


def clean(obj):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _interaction(reg: pl.DataFrame, alpha: float) -> dict:
    out: dict = {}
    terms = reg.filter(pl.col("term").str.contains(" x ").fill_null(False))
    for r in terms.iter_rows(named=True):
        v = r["term"].split(" x ")[0].removeprefix("qk_norm=")
        o = r["term"].split(" x ")[1].removeprefix("optimizer=")
        entry = {k: r[k] for k in ("coef", "ci_low", "ci_high", "p_value", "p_holm", "n",
                                   "n_clusters", "cov_type", "note")}
        entry["optimizer_changes_effect"] = bool(r["p_holm"] is not None and r["p_holm"] < alpha)
        out.setdefault(r["selection"], {}).setdefault(o, {}).setdefault(v, {})[r["metric"]] = entry
    return out


def build_verdict(table_all: pl.DataFrame, table_best: pl.DataFrame, reg: pl.DataFrame,
                  context: dict, alpha: float = ALPHA) -> dict:
    comps: dict = {}
    for opt, var in comparisons(table_all):
        j = judge(table_all, opt, var, alpha)
        j["best_lr"] = judge(table_best, opt, var, alpha) if table_best.height else None
        comps.setdefault(opt, {})[var] = j
    verdict = {
        **context,
        "alpha": alpha,
        "min_pairs": MIN_PAIRS,
        "rules": {
            "better_loss": "final_val_loss: mean_diff (variant minus none) < 0 and p_holm < alpha",
            "worse_rank": "final_pr_q and final_pr_k (PR / d_head at the last step, mean over "
                          "layers and heads) both: mean_diff < 0 and p_holm < alpha",
            "paradox": "better_loss and worse_rank",
            "test": "paired t-test (p_value); Wilcoxon signed-rank reported as p_wilcoxon",
            "interval": "95% percentile bootstrap of the mean difference, resampling pairs "
                        "(seeded)",
            "holm_family": "every test in one table: paradox.csv (top-level fields) or "
                           "tables/paradox_best_lr.csv (best_lr fields)",
            "pairs": "all_lrs: same optimizer, width, lr, seed; best_lr: same optimizer, width, "
                     "seed, each arm at its best LR for that width; only completed trials",
            "not_enough_data": f"fewer than {MIN_PAIRS} pairs: no test",
            "interaction": "OLS metric ~ qk_norm x optimizer + log(width) + log(lr), seed-"
                           "clustered errors; Holm over the interaction terms of one selection",
        },
        "comparisons": comps,
        "interaction": _interaction(reg, alpha),
    }
    verdict["headline"] = headline(verdict)
    return clean(verdict)


def _fx(e: dict | None, pct=False) -> str:
    if not e or e.get("mean_diff") is None:
        return "n/a"
    s = f"{e['mean_diff']:+.4g}"
    if e.get("ci_low") is not None:
        s += f" [95% CI {e['ci_low']:+.3g}, {e['ci_high']:+.3g}]"
    if e.get("p_holm") is not None:
        s += f", p_holm={e['p_holm']:.2g}"
    return s


def sentence(opt: str, var: str, j: dict, alpha: float) -> str:
    e = j["effects"]
    who = f"{opt}: qk_norm={var} vs none ({j['n_pairs']} pairs"
    who += f", {j['n_excluded_diverged']} lost to divergence)" if j["n_excluded_diverged"] else ")"
    loss = f"val loss {_fx(e.get('final_val_loss'))}"
    rank = f"PR/d_head q {_fx(e.get('final_pr_q'))}; k {_fx(e.get('final_pr_k'))}"
    state = j["state"]
    if state == "not_enough_data":
        return f"{who}: NOT ENOUGH DATA (fewer than {MIN_PAIRS} complete pairs); no test was run."
    if state == "paradox":
        return f"{who}: PARADOX SUPPORTED - lower loss and lower q/k rank. {loss}; {rank}."
    if state == "better_loss_only":
        return f"{who}: lower loss, but lower rank is not supported for both q and k. {loss}; {rank}."
    if state == "worse_rank_only":
        return f"{who}: lower q/k rank, but lower loss is not supported. {loss}; {rank}."
    if state == "other":
        return (f"{who}: no paradox; a significant difference in the other direction. "
                f"{loss}; {rank}.")
    return (f"{who}: NO EFFECT detected at alpha={alpha} after Holm (the intervals bound how "
            f"large an effect could be). {loss}; {rank}.")


def headline(verdict: dict) -> list[str]:
    alpha = verdict["alpha"]
    lines = []
    if verdict.get("partial"):
        lines.append("PARTIAL: the sweep has not finished (" + "; ".join(verdict.get("partial_reasons", []))
                     + "); these results use the trials finished so far.")
    for opt, per in verdict["comparisons"].items():
        for var, j in per.items():
            lines.append(sentence(opt, var, j, alpha))
    if not verdict["comparisons"]:
        lines.append("NOT ENOUGH DATA: no optimizer has both qk_norm=none and a QK-Norm variant.")
    for opt, per in verdict["interaction"].get("all_lrs", {}).items():
        for var, ms in per.items():
            changed = [m for m, e in ms.items() if e["optimizer_changes_effect"]]
            if changed:
                parts = [f"{m} by {ms[m]['coef']:+.3g} (p_holm={ms[m]['p_holm']:.2g})" for m in changed]
                lines.append(f"{opt} changes the effect of qk_norm={var} (interaction): "
                             + ", ".join(parts) + ".")
            else:
                notes = sorted({e["note"] for e in ms.values() if e.get("note")})
                lines.append(f"{opt} vs the baseline optimizer: no significant change of the "
                             f"qk_norm={var} effect on any metric (interaction, Holm)"
                             + (f"; {'; '.join(notes)}." if notes else "."))
    return lines
