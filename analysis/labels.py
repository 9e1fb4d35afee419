"""Words for column names, for figures and papers: `final_pr_q` -> "final PR of q / d_head",
`final_val_loss` -> "final val loss (nats/token)", `qk_norm` -> "QK variant".

Plain text with the symbols d_head, d_model, W_q, W_k written as here; `mathtext` turns them into
matplotlib math ($d_\\mathrm{head}$) for the figures and `tex_header` into LaTeX for tables/*.tex.
Imports nothing from the analysis: the figures and the tables both use it.
"""

from __future__ import annotations

import re

TENSORS = {"q": "q", "k": "k", "wq": "W_q", "wk": "W_k"}
STAGES = {"sphere": "sphere ", "pre": "pre-norm ", None: ""}
_PR = re.compile(r"^(final|init|delta)_pr_(q|k|wq|wk)(?:_(sphere|pre))?(?:_(corrected|centred))?$")
_WHEN = {"final": "final ", "init": "step-0 ", "delta": "change from step 0 of "}
_KIND = {"corrected": " (bias-corrected)", "centred": " (centred)", None: ""}
METRICS = {
    "final_val_loss": "final val loss (nats/token)",
    "mean_loss": "final val loss, mean over seeds (nats/token)",
    "init_loss": "loss at init (nats/token)",
    "best_loss": "best val loss (nats/token)",
    "final_norm_cv_q_pre": "final CV of the pre-norm q token norms",
    "final_norm_cv_k_pre": "final CV of the pre-norm k token norms",
}
HEADERS = {
    "optimizer": "Optimizer",
    "qk_norm": "QK variant",
    "reference": "Reference",
    "width": "Width",
    "depth": "Depth",
    "d_head": "d_head",
    "lr": "LR",
    "lrs": "LRs",
    "best_lr": "Best LR",
    "lr_min": "Lowest LR",
    "lr_max": "Highest LR",
    "n_lrs": "LRs",
    "seed": "Seed",
    "init_key": "Init",
    "metric": "Metric",
    "tensor": "Tensor",
    "layer": "Layer",
    "term": "Term",
    "selection": "Selection",
    "family": "Holm family",
    "n": "n",
    "n_pairs": "Pairs",
    "n_units": "Units",
    "n_trials": "Trials",
    "n_seeds": "Seeds",
    "n_clusters": "Clusters",
    "n_select": "Seeds choosing",
    "n_diverged": "Diverged",
    "n_fit_ok": "Fitted",
    "n_censored": "Censored",
    "n_censored_fast": "Censored (fast)",
    "n_too_few_points": "Too few points",
    "n_censored_slow": "Censored (slow)",
    "n_no_fall": "No fall",
    "n_failed": "Failed",
    "rate_note": "Note",
    "mean_diff": "Mean diff.",
    "coef": "Coef.",
    "se": "SE",
    "p_value": "p",
    "p_holm": "p (Holm)",
    "p_wilcoxon": "p (Wilcoxon)",
    "sd_diff": "SD of diff.",
    "dz": "d_z",
    "n_excluded_diverged": "Lost (diverged)",
    "n_excluded_other": "Lost (other)",
    "held_out": "Held out",
    "interior": "Interior",
    "edge": "Edge",
    "sd_loss": "SD of loss",
    "lr_sensitivity": "LR sensitivity",
    "rank_loss": "Rank (loss)",
    "rank_pr": "Rank (sphere PR)",
    "not_worse_loss": "Not worse (loss)",
    "pick": "Pick",
    "resid_dof": "Resid. dof",
    "cov_type": "Covariance",
    "rate_per_1k_steps": "Rate (per 1k steps)",
    "rate_per_m_tokens": "Rate (per M tokens)",
    "rate_lower_bound_per_1k": "Rate lower bound (per 1k steps)",
    "rate_median_censored_per_1k": "Median rate, censored ranked (per 1k steps)",
    "min_norm": "Min PR / d_head",
    "final_norm": "Final PR / d_head",
    "qk_clip_tau": "tau",
}
_WORDS = {"pr": "PR", "lr": "LR", "ci": "CI", "cv": "CV", "qk": "QK", "sd": "SD", "m": "M", "n": "n", "dof": "dof"}
_MATH = {  # plain symbol -> matplotlib mathtext / LaTeX math
    "d_head": r"$d_\mathrm{head}$",
    "d_model": r"$d_\mathrm{model}$",
    "W_q": r"$W_q$",
    "W_k": r"$W_k$",
    "d_z": r"$d_z$",
}


def metric_label(name: str) -> str:
    """A metric (a finals column) in words with its unit: "final sphere PR of q / d_head"."""
    if name in METRICS:
        return METRICS[name]
    m = _PR.match(name)
    if m:
        when, tensor, stage, kind = m.groups()
        return f"{_WHEN[when]}{STAGES[stage]}PR of {TENSORS[tensor]} / d_head{_KIND[kind]}"
    return words(name)


def tensor_label(tensor: str) -> str:
    """A probe tensor: q_sphere -> "q on the sphere", q_pre -> "q before the norm", wq -> "W_q"."""
    base, _, stage = tensor.partition("_")
    name = TENSORS.get(base, base)
    return {"sphere": f"{name} on the sphere", "pre": f"{name} before the norm"}.get(stage, name)


def words(name: str) -> str:
    """Any snake_case name in words: rate_per_1k_steps -> "rate per 1k steps"."""
    return " ".join(_WORDS.get(w, w) for w in name.split("_"))


def header(column: str) -> str:
    """A table column's header: readable words, never snake_case."""
    if column in HEADERS:
        return HEADERS[column]
    if column.startswith("effect_"):
        return "Effect on " + metric_label(column.removeprefix("effect_"))
    if column in METRICS or _PR.match(column):
        label = metric_label(column)
        return label[:1].upper() + label[1:]
    text = words(column)
    return text[:1].upper() + text[1:]


def mathtext(text: str) -> str:
    """The symbols of a label as matplotlib math ($d_\\mathrm{head}$, $W_q$)."""
    for plain, math in _MATH.items():
        text = text.replace(plain, math)
    return text


def tex_math(escaped: str) -> str:
    """The symbols of LaTeX-escaped text (d\\_head) as LaTeX math."""
    if "\\_" not in escaped:  # every symbol has an underscore: a cell without one (a number) has none
        return escaped
    for plain, math in _MATH.items():
        escaped = escaped.replace(plain.replace("_", r"\_"), math)
    return escaped
