"""The report in five lines: the question, the answer with its interval, the scope, what to do, and
where the details are. summary.md opens with them, the terminal prints them first, and
`python -m analysis.report DIR --brief` prints only them.

Everything comes from verdict.json (analysis.verdict): the deciding comparison of the main QK-Norm
variant (rms when the sweep has it; analysis.claims reads the same one) per optimizer, with its
effects and 95% t intervals; `scope`; the advice claims; the warnings. Nothing is computed here.
"""

from __future__ import annotations

from .arms import ALTERNATIVES, variant_name
from .paradox import BASELINE

LABELS = ("Question", "Answer", "Scope", "What to do", "Details")
QUESTION = (
    "does QK-Norm buy a lower loss at the price of a lower rank of attention's q and k (the sphere PR / "
    "d_head: the paradox), and does the optimizer (AdamW, Muon) change that?"
)
SHORT = {"final_val_loss": "val loss", "final_pr_q_sphere": "sphere PR q", "final_pr_k_sphere": "sphere PR k"}
STATES = {
    "paradox": "PARADOX (lower loss and lower sphere rank)",
    "no_effect": "no effect detected",
    "better_loss_only": "lower loss, no rank change detected",
    "worse_rank_only": "lower sphere rank, no loss change detected",
    "not_enough_data": "NOT ENOUGH DATA",
}
ADVICE = {  # (claim id, verdict) -> what to do
    ("advice_adamw_keep_qk_norm", "supported"): "with AdamW keep QK-Norm (it lowered the loss; watch the rank)",
    ("advice_adamw_keep_qk_norm", "contradicted"): "with AdamW QK-Norm raised the loss here: leave it out",
    ("advice_adamw_keep_qk_norm", "inconclusive"): "with AdamW the data do not yet say whether to keep QK-Norm",
    ("advice_muon_drop_qk_norm", "supported"): "with Muon consider dropping QK-Norm",
    ("advice_muon_drop_qk_norm", "contradicted"): "with Muon keep QK-Norm (it lowered the loss)",
    ("advice_muon_drop_qk_norm", "inconclusive"): "with Muon the data do not yet say whether to drop QK-Norm",
}
MORE_DATA = (
    "to decide, add seeds (--set grid.seed=[0,1,2,3,4,5]) or run a larger sweep (python -m orchestrator.sweep "
    "--config default)"
)


def main_variant(verdict: dict) -> str | None:
    """The QK-Norm variant the brief answers for: rms when the sweep compares it, else the first."""
    variants = list(dict.fromkeys(v for per in verdict.get("comparisons", {}).values() for v in per))
    return "rms" if "rms" in variants else (variants[0] if variants else None)


def _interval(e: dict | None) -> str:
    if not e or e.get("mean_diff") is None:
        return "n/a"
    if e.get("ci_low") is None:
        return f"{e['mean_diff']:+.3g} (no interval)"
    return f"{e['mean_diff']:+.3g} [95% CI {e['ci_low']:+.3g}, {e['ci_high']:+.3g}]"


def _state(j: dict) -> str:
    return STATES.get(j["state"], j["state"].replace("_", " "))


def answer(verdict: dict) -> str:
    """The answer for the main variant, per optimizer: the deciding state, and the val loss and sphere
    PR effects (variant minus none) with their 95% t intervals and the number of pairs."""
    var = main_variant(verdict)
    comps = {o: per[var] for o, per in verdict.get("comparisons", {}).items() if var in per}
    partial = "PARTIAL (the sweep has not finished): " if verdict.get("partial") else ""
    if not comps:
        return partial + "NOT ENOUGH DATA: no optimizer has both qk_norm=none and a QK-Norm variant."
    paradox = [o for o, j in comps.items() if j.get("paradox")]
    if paradox:
        overall = f"the paradox holds under {', '.join(paradox)}"
    elif all(j["state"] == "not_enough_data" for j in comps.values()):
        overall = f"NOT ENOUGH DATA (fewer than {verdict.get('min_pairs', 3)} pairs at the best LR)"
    else:
        overall = "no paradox detected"
    parts = []
    for opt, j in comps.items():
        if j["state"] == "not_enough_data":
            parts.append(f"{opt} ({j['n_pairs']} pairs): {_state(j)}")
            continue
        effects = ", ".join(f"{SHORT[m]} {_interval(j['effects'].get(m))}" for m in SHORT)
        parts.append(f"{opt} ({j['n_pairs']} pairs): {_state(j)}; {effects}")
    who = f"{variant_name(var)} ({var}) minus {BASELINE} at each arm's held-out best LR"
    return f"{partial}{overall}. {who}: " + "; ".join(parts) + "."


def scope_line(verdict: dict) -> str:
    """widths, depth, d_head, steps, tokens per trial, data, seeds, optimizers and variants run."""
    s = verdict.get("scope") or {}
    if not s:
        return "unknown (no scope in verdict.json)."
    if not s.get("optimizers"):  # every finished trial has one (analysis.contract): none finished
        return "no trial has finished, so the answer covers nothing yet."

    def join(values) -> str:
        return ", ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values or []) or "none"

    data = s.get("data") or {}
    corpus = data.get("corpus") or "unknown data"
    if data.get("train_tokens"):
        corpus += f" ({data['train_tokens']:,} training tokens)"
    return (
        f"width {join(s.get('widths'))}, depth {join(s.get('depths'))}, d_head {join(s.get('d_heads'))}, "
        f"{join(s.get('steps'))} steps ({join(s.get('tokens_per_trial'))} tokens per trial), {corpus}, "
        f"{len(s.get('seeds') or [])} seed{'' if len(s.get('seeds') or []) == 1 else 's'}, optimizers {join(s.get('optimizers'))}, qk_norm "
        f"{join(s.get('variants'))}; the answer holds for this scope only."
    )


def _none_completed(verdict: dict) -> str | None:
    """The next step when no trial completed: more seeds would not help, the failures, the
    divergences (or the wait) come first; None when some trial completed."""
    by_status = (verdict.get("counts") or {}).get("by_status") or {}
    if not by_status or by_status.get("completed"):
        return None
    if set(by_status) == {"failed"}:
        return (
            f"every trial failed ({by_status['failed']}): nothing to compare; read their error column in "
            "trials.parquet (tables/status.csv counts them per arm), fix the cause and run the sweep again."
        )
    if set(by_status) == {"diverged"}:
        return f"every trial diverged ({by_status['diverged']}): nothing to compare; run the sweep with lower LRs."
    counts = ", ".join(f"{k} {n}" for k, n in by_status.items())
    return f"no trial has completed ({counts}): nothing to compare yet; see tables/status.csv and trials.parquet."


def todo(verdict: dict) -> str:
    """The theory's advice as judged, then the next step when the data do not decide."""
    none_completed = _none_completed(verdict)
    if none_completed:
        return none_completed
    claims = verdict.get("claims", [])
    advice = [ADVICE[(c["id"], c["verdict"])] for c in claims if (c["id"], c["verdict"]) in ADVICE]
    steps = []
    answered = [c for c in claims if not c["id"].startswith("advice_")]
    if not answered or all(c["verdict"] == "inconclusive" for c in answered):
        steps.append(MORE_DATA)
    if any("bracket" in w for w in verdict.get("warnings", [])):
        steps.append("widen the LR grid where an arm's best LR is at its edge (the WARNING lines)")
    if not verdict.get("comparisons"):
        steps = ["run a sweep with qk_norm none and rms under AdamW and Muon (python -m orchestrator.sweep)"]
    return "; ".join(advice + steps) + "." if advice or steps else "nothing to change: see the answers."


def brief_lines(verdict: dict, details: str) -> list[str]:
    """The five lines, plain text: `Question: ...`, `Answer: ...`, `Scope: ...`, `What to do: ...`,
    `Details: <details>`."""
    var = main_variant(verdict)
    question = QUESTION
    alternatives = [a for a in ALTERNATIVES if a in ((verdict.get("scope") or {}).get("variants") or [])]
    if alternatives:
        names = ", ".join(f"{variant_name(a)} ({a})" for a in alternatives)
        question = question[:-1] + f"; and do {names} give QK-Norm's loss benefit without the rank cost?"
    if var and var != "rms":
        question += f" (Answered for qk_norm={var}.)"
    sentences = [
        text[:1].upper() + text[1:] for text in (question, answer(verdict), scope_line(verdict), todo(verdict))
    ]
    texts = (*sentences, details)  # the details start with a path, kept as it is written
    return [f"{label}: {text}" for label, text in zip(LABELS, texts)]


def markdown_lines(verdict: dict, figure_format: str | None = "png") -> list[str]:
    """summary.md's first five lines: the brief as a list, its labels in bold. `figure_format`
    None: the report drew no figures (`--no-figures`), and names none."""
    forest = "" if figure_format is None else f"figures/forest.{figure_format} (the deciding comparison, drawn); "
    details = (
        f"the sections below (every claim, the warnings, the tables); {forest}"
        "verdict.json (every number); methods: docs/analysis.md in the project."
    )
    return [f"- **{line.split(': ', 1)[0]}:** {line.split(': ', 1)[1]}" for line in brief_lines(verdict, details)]


def terminal_lines(verdict: dict, out, figure_format: str | None = "png") -> list[str]:
    """The terminal's first five lines (and all of `--brief`): the same brief, the files by path
    (`figure_format` None: no figures drawn, none named)."""
    forest = "" if figure_format is None else f"{out}/figures/forest.{figure_format} (the deciding comparison, drawn); "
    details = (
        f"{out}/summary.md (every claim, the warnings, the tables); {forest}"
        f"{out}/verdict.json (every number); methods: docs/analysis.md."
    )
    return brief_lines(verdict, details)


def plain(markdown_line: str) -> str:
    """A markdown_lines line as the terminal prints it (no list marker, no bold)."""
    return markdown_line.removeprefix("- ").replace("**", "")
