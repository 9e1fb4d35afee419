"""The verdict's answers in plain words: what summary.md opens with and the terminal ends with.

The question the project asks, each of the theory's claims with its answer and its reason
(analysis.claims), the scope the answers hold for (analysis.scope), and the theory's two pieces of
advice, judged.
"""

from __future__ import annotations

from .arms import ALTERNATIVES, variant_name

QUESTION = (
    "Does QK-Norm buy a lower loss at the price of a lower rank of attention's q and k (the "
    '"paradox"), does AdamW make that collapse worse than Muon, and should a practitioner keep '
    "QK-Norm with AdamW and drop it with Muon? Rank is the participation ratio (sum s)^2 / sum s^2 "
    "of the singular values of each head's q and k with every token's vector scaled to unit length "
    "(the sphere: the same object in every arm), / d_head, at the end of training."
)
QUESTION_ALTERNATIVES = (
    "And do the alternatives to a norm in this sweep ({names}) give QK-Norm's loss benefit without its rank effect?"
)
# {name} is the variant in words (analysis.arms.VARIANT_NAMES: QK-Norm, QK-Clip, the logit soft-cap)
CLAIM_WORDS = {
    "lower_loss": "{name} ({variant}) lowers the loss under {optimizer}",
    "lower_rank": "{name} ({variant}) lowers the sphere rank of q and k under {optimizer}",
    "alternative_loss_without_rank_effect": "{name} ({variant}) gives QK-Norm's loss benefit without its "
    "rank effect under {optimizer}",
    "adamw_collapses_more": "QK-Norm ({variant}) lowers the sphere rank more under AdamW than under Muon",
    "advice_adamw_keep_qk_norm": "With AdamW, keep QK-Norm ({variant}), but watch the rank",
    "advice_muon_drop_qk_norm": "With Muon, consider dropping QK-Norm ({variant})",
}


def claim_lines(verdict: dict) -> list[str]:
    """One Markdown bullet per claim: the claim in words, the answer, and why."""
    out = []
    for c in verdict.get("claims", []):
        words = CLAIM_WORDS.get(c["id"], c["id"]).format(
            name=variant_name(c["variant"]), variant=c["variant"], optimizer=c["optimizer"]
        )
        words = words[:1].upper() + words[1:]  # "the logit soft-cap ..." opens a sentence
        out.append(f"- {words}: **{c['verdict'].upper()}**. {c['because']}.")
    return out


def opening(v: dict) -> list[str]:
    """What summary.md opens with: the question, the answers, the scope and the advice."""
    claims = claim_lines(v)
    advice = [line for line, c in zip(claims, v.get("claims", [])) if c["id"].startswith("advice_")]
    answers = [line for line, c in zip(claims, v.get("claims", [])) if not c["id"].startswith("advice_")]
    scope = v.get("scope", {}).get("sentence")
    alternatives = [a for a in ALTERNATIVES if a in (v.get("scope", {}).get("variants") or [])]
    question = QUESTION
    if alternatives:
        names = ", ".join(f"{variant_name(a)} ({a})" for a in alternatives)
        question += " " + QUESTION_ALTERNATIVES.format(names=names)
    lines = ["## The question", "", question, "", "## The answers", ""]
    lines += answers or ["- No comparison has enough data to answer."]
    lines += ["", "## Scope", "", scope or "Unknown.", "", "## The advice, judged", ""]
    lines += advice or ["- Not judged: the sweep lacks the arms it needs."]
    return lines + [""]
