"""verdict.json's `headline`: the verdict in sentences, one per comparison, disagreement,
robustness check, per-layer reading and interaction (summary.md and the terminal print them)."""

from __future__ import annotations

from .finals import LAYER_PR
from .paradox import DECIDE, MIN_PAIRS, SECONDARY

NAMES = {
    "final_val_loss": "val loss",
    "final_pr_q_sphere": "sphere PR q",
    "final_pr_k_sphere": "sphere PR k",
    "final_pr_q": "as-used PR q",
    "final_pr_k": "as-used PR k",
    "final_pr_q_pre": "pre-norm PR q",
    "final_pr_k_pre": "pre-norm PR k",
    "delta_pr_q_sphere": "sphere PR q change from init",
    "delta_pr_k_sphere": "sphere PR k change from init",
}
WORDS = {"lower": "lower", "higher": "higher", "no_difference": "no difference", "not_enough_data": "not enough data"}


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
    who = f"{opt}: qk_norm={var} vs none at each arm's held-out best LR ({j['n_pairs']} pairs"
    who += f", {j['n_excluded_diverged']} lost to divergence)" if j["n_excluded_diverged"] else ")"
    state = j["state"]
    if state == "not_enough_data":
        loss = j["effects"].get("final_val_loss") or {}
        rank = [j["effects"].get(m) or {} for m in DECIDE[1:]]
        if (loss.get("n_pairs") or 0) >= MIN_PAIRS and not any(r.get("n_pairs") for r in rank):
            return (
                f"{who}: the primary rank metric (sphere PR) is not in these results (written before the "
                f"probe recorded it), so the rank and the paradox are not judged; val loss "
                f"{WORDS[j['directions']['final_val_loss']]} {_fx(loss)}."
            )
        return f"{who}: NOT ENOUGH DATA (fewer than {MIN_PAIRS} complete pairs at the best LR); no test was run."
    body = _metric_words({m: j["directions"][m] for m in DECIDE}, j["effects"])
    if state == "paradox":
        tail = "paradox: PARADOX SUPPORTED (lower loss and lower sphere rank of q and k)"
    elif state == "no_effect":
        tail = (
            f"paradox: not supported; NO EFFECT detected at alpha={alpha} after Holm "
            "(the intervals bound how large an effect could be)"
        )
    else:
        tail = f"paradox: not supported ({state.replace('_', ' ')})"
    return f"{who}: {body}; {tail}."


def _stage_words(opt: str, var: str, j: dict) -> str | None:
    shown = {m: d for m, d in j["directions"].items() if m in SECONDARY}
    if not shown:
        return None
    return f"{opt} qk_norm={var} other stages (secondary, not deciding): " + _metric_words(shown, j["effects"]) + "."


def _matched_words(opt: str, var: str, j: dict) -> str | None:
    m = j.get("matched_lr") or {}
    dis = {k: d for k, d in (m.get("disagreements") or {}).items() if k in DECIDE}  # all of them: verdict.json
    if not dis:
        return None
    lrs = "; ".join(f"width {w}: {', '.join(f'{x:g}' for x in v)}" for w, v in (m.get("lrs") or {}).items())
    parts = [
        f"{NAMES.get(k, k)} at matched LRs {WORDS[d['matched_lr']]}, at the best LR {WORDS[d['best_lr']]}"
        for k, d in dis.items()
    ]
    if any(len(v) > 1 for v in (m.get("lrs") or {}).values()):
        why = (
            "The two arms' best LRs differ, and PR moves with LR: at the same LR the difference is the "
            "one QK-Norm itself makes."
        )
    else:  # one LR per width: the same cells, so the two differ only in LR selection per seed and power
        why = (
            "Both arms have the same best LR at every width: the matched comparison uses it for every "
            "seed, the best-LR one each seed's held-out choice, so the two differ in power, not in LR."
        )
    return (
        f"{opt} qk_norm={var}: BEST-LR AND MATCHED-LR DISAGREE: " + "; ".join(parts) + f" (matched LRs {lrs}). " + why
    )


def _init_words(opt: str, var: str, j: dict) -> str | None:
    side = j.get("init_relative") or {}
    keys = [k for k in ("delta_pr_q_sphere", "delta_pr_k_sphere") if k in side.get("directions", {})]
    if not keys:
        return None
    return (
        f"{opt} qk_norm={var} change from each trial's step 0 (init-relative): "
        + _metric_words({k: side["directions"][k] for k in keys}, side["effects"])
        + "."
    )


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
                f"{NAMES.get(m, m)} {WORDS[j['directions'][m]]} -> {WORDS[d]}"
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
    for metric in LAYER_PR:
        if metric not in per:
            continue
        by_dir: dict[str, list[str]] = {}
        for layer, d in sorted(per.get(metric, {}).items(), key=lambda kv: int(kv[0])):
            by_dir.setdefault(WORDS[d], []).append(layer)
        parts.append(
            f"{NAMES.get(metric, metric)} "
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
        f"{NAMES.get(m, m)} pooled {WORDS[d['pooled']]}, at the best LR {WORDS[d['best_lr']]}"
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
                for extra in (
                    _stage_words(opt, var, j),
                    _matched_words(opt, var, j),
                    _init_words(opt, var, j),
                    _disagree_words(opt, var, j),
                ):
                    if extra:
                        lines.append(extra)
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
    clip = verdict.get("clip_activity")  # only for sweeps with qk_clip trials (analysis.alternatives)
    if clip and clip.get("sentence"):
        lines.append(clip["sentence"])
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
            changed = [NAMES.get(m, m) for m, x in dec.items() if x["optimizer_changes_effect"]]
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
