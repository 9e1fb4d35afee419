"""The theory's claims, answered one by one: supported, contradicted or inconclusive, and why.

Each claim is judged from the deciding comparisons (each arm at the LR chosen on held-out seeds,
pairs on width and seed, Holm within the decision family) and the difference in differences, so
its answer is exactly what the tables show. "inconclusive" means the data neither support nor
contradict it at alpha: not evidence that there is no effect (the intervals say how large an
effect the data still allow). Per optimizer o and QK-Norm variant v against none:

- lower_loss (o, v): QK-Norm lowers the final val loss. supported: the val loss direction is
  "lower"; contradicted: "higher"; else inconclusive.
- lower_rank (o, v): QK-Norm lowers the rank of q and k on the unit sphere (the primary metric,
  PR of q_sphere and k_sphere / d_head). supported: both "lower"; contradicted: at least one
  "higher" and neither "lower"; else inconclusive.
- adamw_collapses_more (v = rms, or the first variant): QK-Norm's sphere-PR effect is more
  negative under AdamW than under Muon, i.e. the difference in differences (Muon's effect minus
  AdamW's) is positive. supported: "higher" for both q and k; contradicted: at least one "lower"
  and neither "higher"; else inconclusive.
- advice_adamw_keep_qk_norm: the theory's "with AdamW keep QK-Norm, but watch the rank".
  supported: QK-Norm lowers AdamW's loss; contradicted: it raises it; else inconclusive. The
  because names what happens to the rank (the part to watch).
- advice_muon_drop_qk_norm: the theory's "with Muon consider dropping QK-Norm". supported:
  QK-Norm raises Muon's loss, or does not lower it while it lowers Muon's sphere rank (it costs
  rank and buys no loss); contradicted: QK-Norm lowers Muon's loss (dropping it would cost loss);
  else inconclusive.
- alternative_loss_without_rank_effect (o, v for v an alternative to a norm: qk_clip, softcap,
  analysis.arms.ALTERNATIVES): the alternative gives QK-Norm's loss benefit without its rank effect.
  supported: the val loss direction is "lower" and neither sphere-PR direction (q, k) is "lower";
  contradicted: the val loss direction is "higher", or both sphere-PR directions are "lower" (it
  costs the rank as QK-Norm is said to); else inconclusive (among them: a lower loss with one of q, k
  lower, and no loss change). The because names the three effects with their intervals and, when
  the sweep has rms under o, rms's effect on the loss for reference; for qk_clip it adds when the
  clip never fired in the compared trials (then qk_clip trained as none).
"""

from __future__ import annotations

from .arms import ALTERNATIVES
from .finals import PRIMARY_PR
from .paradox import MIN_PAIRS

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
LOSS = "final_val_loss"
NAMES = {LOSS: "val loss", PRIMARY_PR[0]: "sphere PR q", PRIMARY_PR[1]: "sphere PR k"}


def effect_text(e: dict | None, name: str) -> str:
    """'val loss -0.039 [-0.059, -0.020], p_holm 0.0012'."""
    if not e or e.get("mean_diff") is None:
        return f"{name} not estimated"
    s = f"{name} {e['mean_diff']:+.3g}"
    if e.get("ci_low") is not None:
        s += f" [{e['ci_low']:+.3g}, {e['ci_high']:+.3g}]"
    if e.get("p_holm") is not None:
        s += f", p_holm {e['p_holm']:.2g}"
    return s


def _claim(claim_id: str, optimizer: str | None, variant: str | None, verdict: str, because: str) -> dict:
    return {"id": claim_id, "optimizer": optimizer, "variant": variant, "verdict": verdict, "because": because}


def _pairs_text(j: dict) -> str:
    return f"{j['n_pairs']} pairs at held-out best LRs"


def lower_loss(opt: str, var: str, j: dict) -> dict:
    d = j["directions"][LOSS]
    verdict = {"lower": SUPPORTED, "higher": CONTRADICTED}.get(d, INCONCLUSIVE)
    because = f"{var} vs none under {opt}: {effect_text(j['effects'].get(LOSS), NAMES[LOSS])} ({_pairs_text(j)})"
    return _claim("lower_loss", opt, var, verdict, because)


def _rank_verdict(dirs: list[str], down: str = "lower", up: str = "higher") -> str:
    if all(d == down for d in dirs):
        return SUPPORTED
    if up in dirs and down not in dirs:
        return CONTRADICTED
    return INCONCLUSIVE


def lower_rank(opt: str, var: str, j: dict) -> dict:
    verdict = _rank_verdict([j["directions"][m] for m in PRIMARY_PR])
    effects = "; ".join(effect_text(j["effects"].get(m), NAMES[m]) for m in PRIMARY_PR)
    return _claim("lower_rank", opt, var, verdict, f"{var} vs none under {opt}: {effects} ({_pairs_text(j)})")


def adamw_collapses_more(interaction: dict, var: str) -> dict:
    per = interaction.get("best_lr", {}).get("muon", {}).get(var)
    if not per or not all(m in per for m in PRIMARY_PR):
        return _claim(
            "adamw_collapses_more", None, var, INCONCLUSIVE, "the sweep has no matched AdamW and Muon pairs of pairs"
        )
    verdict = _rank_verdict([per[m]["direction"] for m in PRIMARY_PR], down="higher", up="lower")
    effects = "; ".join(effect_text(per[m], NAMES[m]) for m in PRIMARY_PR)
    n = min(per[m]["n_pairs"] for m in PRIMARY_PR)
    because = (
        f"Muon's {var} effect minus AdamW's (difference in differences, {n} pairs of pairs): {effects}; "
        "positive = QK-Norm lowers the sphere rank more under AdamW"
    )
    return _claim("adamw_collapses_more", None, var, verdict, because)


def _rank_words(j: dict) -> str:
    dirs = {j["directions"].get(m, "not_enough_data") for m in PRIMARY_PR}
    if dirs == {"not_enough_data"}:
        return "the sphere rank is not in these results"
    if dirs == {"lower"}:
        return "it lowers the sphere rank of q and k"
    if "higher" in dirs and "lower" not in dirs:
        return "it raises the sphere rank"
    if "lower" in dirs:
        return "it lowers the sphere rank of one of q, k"
    return "no sphere-rank change was detected"


def _loss_judged(j: dict | None) -> bool:
    return j is not None and ((j["effects"].get(LOSS) or {}).get("n_pairs") or 0) >= MIN_PAIRS


def advice_adamw(j: dict | None, var: str) -> dict:
    if not _loss_judged(j):
        return _claim("advice_adamw_keep_qk_norm", "adamw", var, INCONCLUSIVE, "not enough AdamW pairs to judge")
    d = j["directions"][LOSS]
    verdict = {"lower": SUPPORTED, "higher": CONTRADICTED}.get(d, INCONCLUSIVE)
    because = f"under AdamW {effect_text(j['effects'].get(LOSS), NAMES[LOSS])}; {_rank_words(j)}"
    return _claim("advice_adamw_keep_qk_norm", "adamw", var, verdict, because)


def advice_muon(j: dict | None, var: str) -> dict:
    if not _loss_judged(j):
        return _claim("advice_muon_drop_qk_norm", "muon", var, INCONCLUSIVE, "not enough Muon pairs to judge")
    d = j["directions"][LOSS]
    rank_down = all(j["directions"].get(m) == "lower" for m in PRIMARY_PR)
    if d == "lower":
        verdict = CONTRADICTED
    elif d == "higher" or (d == "no_difference" and rank_down):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    because = f"under Muon {effect_text(j['effects'].get(LOSS), NAMES[LOSS])}; {_rank_words(j)}"
    return _claim("advice_muon_drop_qk_norm", "muon", var, verdict, because)


def alternative_verdict(loss: str, q: str, k: str) -> str:
    """alternative_loss_without_rank_effect from the deciding directions of the val loss and the
    sphere PR of q and k (the module's docstring)."""
    if loss == "higher" or q == k == "lower":
        return CONTRADICTED
    if loss == "lower" and "lower" not in (q, k):
        return SUPPORTED
    return INCONCLUSIVE


def alternative_claim(opt: str, var: str, j: dict, rms: dict | None = None, clip: dict | None = None) -> dict:
    """Does the alternative `var` give QK-Norm's loss benefit without its rank effect under `opt`?
    `rms`: the rms comparison under `opt` (its loss effect is named for reference); `clip`:
    verdict.json's clip_activity (qk_clip only: says when the clip never fired)."""
    claim_id = "alternative_loss_without_rank_effect"
    if j["state"] == "not_enough_data":
        n = min((j["effects"].get(m) or {}).get("n_pairs") or 0 for m in (LOSS, *PRIMARY_PR))
        why = f"{var} vs none under {opt}: {n} complete pairs with the val loss and the sphere PR"
        return _claim(claim_id, opt, var, INCONCLUSIVE, why)
    verdict = alternative_verdict(*(j["directions"][m] for m in (LOSS, *PRIMARY_PR)))
    effects = "; ".join(effect_text(j["effects"].get(m), NAMES[m]) for m in (LOSS, *PRIMARY_PR))
    because = f"{var} vs none under {opt}: {effects} ({_pairs_text(j)})"
    if rms is not None and _loss_judged(rms):
        because += f"; for reference rms vs none under {opt}: {effect_text(rms['effects'].get(LOSS), NAMES[LOSS])}"
    share = ((clip or {}).get("deciding_share") or {}).get(opt) if var == "qk_clip" else None
    if share == 0:
        because += f"; the clip never fired in the compared trials under {opt}, so qk_clip trained as none there"
    return _claim(claim_id, opt, var, verdict, because)


def claims(comparisons: dict, interaction: dict, clip: dict | None = None) -> list[dict]:
    """verdict.json's `claims`: lower_loss and lower_rank per (optimizer, variant) (and
    alternative_loss_without_rank_effect for the alternatives to a norm), then the three claims
    about the main QK-Norm variant (rms when the sweep has it). `clip`: verdict.json's clip_activity."""
    out = []
    for opt, per in comparisons.items():
        for var, j in per.items():
            if j["state"] != "not_enough_data" or _loss_judged(j):
                out.append(lower_loss(opt, var, j))
            else:
                loss_n = (j["effects"].get(LOSS) or {}).get("n_pairs") or 0
                out.append(
                    _claim("lower_loss", opt, var, INCONCLUSIVE, f"{var} vs none under {opt}: {loss_n} complete pairs")
                )
            if j["state"] != "not_enough_data":
                out.append(lower_rank(opt, var, j))
            else:
                n = min((j["effects"].get(m) or {}).get("n_pairs") or 0 for m in PRIMARY_PR)
                why = f"{var} vs none under {opt}: {n} complete pairs with the sphere PR"
                out.append(_claim("lower_rank", opt, var, INCONCLUSIVE, why))
            if var in ALTERNATIVES:
                out.append(alternative_claim(opt, var, j, per.get("rms"), clip))
    variants = list(dict.fromkeys(v for per in comparisons.values() for v in per))
    main = "rms" if "rms" in variants else (variants[0] if variants else None)
    if main is None:
        return out
    out.append(adamw_collapses_more(interaction, main))
    out.append(advice_adamw(comparisons.get("adamw", {}).get(main), main))
    out.append(advice_muon(comparisons.get("muon", {}).get(main), main))
    return out
