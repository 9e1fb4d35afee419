"""summary.md and the terminal digest: the same key tables, in Markdown and in plain text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from .alternatives import ranking_view
from .answers import claim_lines, opening
from .brief import markdown_lines, terminal_lines
from .interaction import DID_COLUMNS
from .matched import MATCHED_COLUMNS
from .paradox import COLUMNS, DECIDE
from .tables import fmt, to_markdown, to_text

if TYPE_CHECKING:  # report.py imports this module
    from .report import Report

PARADOX_VIEW = COLUMNS[: COLUMNS.index("p_wilcoxon") + 1]  # the contract columns of paradox.csv
MATCHED_VIEW = [c for c in MATCHED_COLUMNS if c not in ("n_pairs", "sd_diff", "family")]
DECIDE_VIEW = list(DECIDE)
DID_VIEW = [c for c in DID_COLUMNS if c not in ("sd_diff", "family")]
ARM_VIEW = [
    "optimizer",
    "qk_norm",
    "width",
    "lr",
    "tensor",
    "n_trials",
    "n_fit_ok",
    "n_censored",
    "rate_per_1k_steps",
    "rate_per_1k_steps_ci_low",
    "rate_per_1k_steps_ci_high",
    "rate_note",
    "min_step",
    "min_norm",
    "final_norm",
    "recovery",
]


def code_span(text: str) -> str:
    """`text` as a Markdown code span that survives backticks inside it (a results path may hold
    them): fenced by one more backtick than its longest run, padded with spaces when it needs it
    (CommonMark 6.1)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest or text.startswith(" ") or text.endswith(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def key_tables(r: Report) -> list[tuple[str, pl.DataFrame, str]]:
    """(title, table, note) in reading order."""
    arm = r.collapse_arm
    if arm.height:
        arm = arm.filter((pl.col("metric") == "pr") & pl.col("tensor").is_in(["q", "k"]))
        arm = arm.select([c for c in ARM_VIEW if c in arm.columns])
    inter = r.regression.filter(pl.col("term").str.contains(" x ").fill_null(False)).select(
        "selection", "metric", "term", "coef", "ci_low", "ci_high", "p_value", "p_holm", "n", "n_clusters"
    )
    cells = r.cells.filter(pl.col("metric").is_in(DECIDE_VIEW))
    tables = [
        ("Trials by status and arm", r.status, ""),
        (
            "Deciding: paired differences at each arm's held-out best LR per width (tables/paradox_best_lr.csv)",
            r.paradox_best.select(PARADOX_VIEW + ["family"]),
            "Pairs share optimizer, width and seed; for each seed, each arm (optimizer, qk_norm, width) "
            "at the LR with its lowest mean final val loss over its other seeds (a diverged seed "
            "counts as the loss at init). PR metrics are PR / d_head at the last step, averaged over "
            "layers and heads: _sphere (unit rows, no gain: the primary metric), plain (as attention "
            "uses them), _pre (before the norm), wq/wk (weights). Interval: 95% t interval; p_value: "
            "paired t-test; p_holm: Holm within each family (decision: loss and the sphere PR). The "
            "verdict rests on the decision rows.",
        ),
        (
            "Every variant ranked at its held-out best LR, all widths (tables/variant_ranking.csv)",
            ranking_view(r.variant_ranking),
            "Mean over seeds [95% t interval] of the final val loss and the sphere PR / d_head of q and k "
            "(each seed's values averaged over the widths; per width in the CSV); effects vs none from the "
            "deciding table. rank_loss 1 = lowest loss; rank_pr 1 = highest sphere PR (mean of q and k). "
            "not_worse_loss: the loss interval overlaps the best variant's (a reading aid, not a test); "
            "pick: not worse on loss and the highest sphere rank among those.",
        ),
        (
            "Matched LRs: both arms at the same LRs, between their optima (tables/paradox_matched_lr.csv)",
            r.matched.select(MATCHED_VIEW),
            "Every LR from one arm's best LR to the other's where neither diverged; paired differences "
            "averaged over those LRs per (width, seed) unit (n_units), then a t interval over the "
            "units. Where it disagrees with the best-LR table at a width with two or more LRs, the "
            "best LRs differ and PR moves with LR; with one LR per width the two differ in power.",
        ),
        (
            "Change from init: final minus step 0, held-out best LR (tables/paradox_init_relative.csv)",
            r.init_relative.select(PARADOX_VIEW),
            "delta_pr_*: each trial's final PR / d_head minus its own at step 0 (every arm starts "
            "from the same weights per seed), paired as the deciding table; Holm within the family.",
        ),
        (
            "Pooled over LRs: paired differences, variant minus none (paradox.csv)",
            r.paradox.select(PARADOX_VIEW),
            "Pairs share optimizer, width, lr and seed, at every LR. Pooling mixes in LRs where an "
            "arm is far from its optimum; it never decides alone (disagreements are named in the "
            "verdict).",
        ),
        (
            "Best LR per arm and LR bracketing (tables/lr_bracketing.csv)",
            r.brackets,
            "interior: an LR below and above the best was tried. An edge optimum (edge low/high) "
            "means the best LR may lie outside the grid.",
        ),
        (
            "Per-cell paired differences, seeds as replicates (tables/paradox_cells.csv)",
            cells,
            "selection cell: one (width, lr) cell; best_lr: one width, each arm at its best LR "
            "(lr = the variant's); deciding: the verdict's rows. p_value unadjusted.",
        ),
        (
            "Does the optimizer change the QK-Norm effect? Difference in differences (tables/interaction.csv)",
            r.interaction.select(DID_VIEW),
            "d = (O_variant - O_none) - (ref_variant - ref_none) per matched pair of pairs (same "
            "width and seed; all_lrs also the same lr; best_lr each arm at its best LR). t interval, "
            "paired t, Holm within each selection's decision metrics.",
        ),
    ]
    if r.clip_activity.height:
        tables.append(
            (
                "QK-Clip activity per optimizer, width and LR (tables/clip_activity.csv)",
                r.clip_activity,
                "clip_fraction: share of head-steps on which the clip fired (each probe's clip_fraction "
                "weighted by the steps it covers); clip_gamma_min: smallest factor min(1, tau / S_max); "
                "heads_ever_clipped: share of (seed, layer, head) clipped at least once.",
            )
        )
    if inter.height:
        tables.append(
            (
                "Clustered regression interaction terms (tables/regression.csv)",
                inter,
                "OLS metric ~ qk_norm x optimizer + log(width) + log(lr), seed-clustered "
                "errors (run only with >= 20 seed clusters).",
            )
        )
    tables += [
        (
            "Robustness: bias-corrected (pr - pr_bias) and centred q/k PR (tables/paradox_robustness.csv)",
            r.robust.select(PARADOX_VIEW + ["selection"]),
            "Empty n_pairs (0) where the results do not record pr_bias / pr_centred.",
        ),
        (
            "Per-layer final PR q/k at the best LR (tables/paradox_layers.csv)",
            r.layers,
            "Same pairs as the deciding table, one row per layer; Holm over this table.",
        ),
    ]
    return tables + [
        (
            "Collapse of q/k PR per arm and LR (collapse.csv, level=arm)",
            arm,
            "Fit: exponential decay to a floor over the fall phase up to the minimum, only with >= 5 "
            "points; a fall too fast for the probe spacing is censored (counted in n_censored, with a "
            "rate lower bound), never dropped. rate: geometric mean over fitted seeds, 95% t interval "
            "on log rate. min_norm, final_norm: PR / d_head. recovery: (final - min) / (initial - min).",
        ),
        (
            "Width scaling: log-log slope over width (tables/width_scaling.csv)",
            r.scaling.filter(pl.col("tensor").is_in(["q", "k"])) if r.scaling.height else r.scaling,
            "OLS of log(quantity) on log(width) (+ log(lr)), HC1 95% intervals.",
        ),
        (
            "LR sensitivity per arm (tables/lr_sensitivity.csv)",
            r.sensitivity,
            "Wortsman et al. 2023: mean over the LR grid of min(loss, loss at init) minus the best "
            "loss; diverged trials count as the loss at init.",
        ),
    ]


def _view(df: pl.DataFrame) -> pl.DataFrame:
    """A table as shown: init_key only when the sweep varies the initialisation."""
    if "init_key" in df.columns and df.get_column("init_key").n_unique() <= 1:
        return df.drop("init_key")
    return df


FIGURES_SHOWN = (  # (file stem, alt text) of the figures summary.md shows at its end
    ("pr_over_training", "PR over training"),
    ("loss_vs_pr", "Loss vs PR"),
    ("lr_sensitivity", "Loss vs LR"),
    ("collapse_rate_vs_width", "Collapse rate vs width"),
    ("max_logit_over_training", "Max logit over training"),
)


def markdown(r: Report, figure_format: str | None = "png") -> str:
    """summary.md: the five lines (analysis.brief), the title, the question, answers, scope and advice
    judged, the deciding comparison drawn (forest), then the data, verdict, tables and figures.
    `figure_format`: the extension the figures were written with (png, svg, pdf); None when the
    report drew none (`--no-figures`): no figure is shown or named."""
    v = r.verdict
    title = f"# QK-Norm collapse report: {v['sweep']}"
    if v["partial"]:
        title += " (PARTIAL)"
    lines = markdown_lines(v, figure_format) + ["", title, ""]
    if v["partial"]:
        lines += [
            "> **Partial results.** "
            + "; ".join(v["partial_reasons"])
            + ". Everything below uses the trials that have finished.",
            "",
        ]
    lines += opening(v)
    if figure_format is not None:
        lines += [
            "## The deciding comparison, drawn",
            "",
            "Paired effects, variant minus none, with 95% t intervals: per (width, LR) cell, at each arm's "
            "best LR per width, and the deciding row (each arm at its held-out best LR, all widths).",
            "",
            f"![The deciding comparison: paired effects, variant minus none](figures/forest.{figure_format})",
            "",
        ]
    c = v["counts"]
    lines += [
        "## Data",
        "",
        f"- Results folder: {code_span(str(v['results_dir']))}",
        "- Design: " + "; ".join(f"{k} {', '.join(fmt(x) for x in vals)}" for k, vals in v["design"].items() if vals),
        f"- Trials: {c['trials']}" + (f" ({_by_status(c)})" if c["by_status"] else "") + _planned(c),
        f"- Metric rows read: {c['metric_rows']:,}; duplicate keys resolved (last written wins): "
        f"{c['duplicate_rows']:,}; spectra rows: {c['spectra_rows']:,}",
        f"- Part files skipped (unreadable, a symlink, or in another trial's folder): {len(c['skipped_files'])}",
    ]
    lines += [f"  - {code_span(str(p))}: {why}" for p, why in c["skipped_files"]]
    if c["incomplete_trials"]:
        lines.append(
            f"- Completed trials left out because their metrics stop before steps_done "
            f"(a part was skipped): {', '.join(c['incomplete_trials'])}"
        )
    lines += ["", "## Verdict", ""] + [f"- {s}" for s in v["headline"]] + [""]
    if v.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in v["warnings"]] + [""]
    lines += [
        "Rules: judged at each arm's best LR per width, chosen on held-out seeds (for each seed, "
        "the LR with the lowest mean loss over the arm's other seeds; pairs on optimizer, width, "
        "seed), never on pairs pooled over LRs. better loss = final val loss lower (variant minus "
        f"none < 0) at p_holm < {v['alpha']}; worse rank = final sphere PR / d_head of both q and k "
        f"lower at p_holm < {v['alpha']} (the primary metric; the as-used and pre-norm PRs are "
        "reported beside it); paradox = both; a significant rank increase is reported as "
        '"higher". Matched-LR and init-relative effects are shown beside the deciding ones and '
        "never decide. Intervals: 95% t intervals of the mean paired difference. Fewer than "
        f'{v["min_pairs"]} pairs: not enough data. "No difference" means none was detected; the '
        "confidence intervals say how large an effect the data still allow.",
        "",
    ]
    for title_, df, note in key_tables(r):
        lines += [f"## {title_}", ""]
        if note:
            lines += [note, ""]
        lines += [to_markdown(_view(df), max_rows=60), ""]
    if figure_format is not None:
        lines += ["## Figures", ""]
        for stem, alt in FIGURES_SHOWN:
            lines += [f"![{alt}](figures/{stem}.{figure_format})", ""]
    figure_files = "" if figure_format is None else f"; `figures/*.{figure_format}`"
    lines += [
        "## Files",
        "",
        "- `paradox.csv`, `verdict.json`, `collapse.csv` (level=trial and level=arm rows)",
        f"- `tables/*.csv` and `tables/*.tex`{figure_files}",
        "- Methods: docs/analysis.md in the project.",
        "",
    ]
    return "\n".join(lines)


TERMINAL_BODY_LINES = 40  # the most lines the terminal prints after the five (summary.md has the rest)
LISTED_SKIPS = 3  # skipped part files named on the terminal (summary.md and verdict.json name all)


def _capped(items: list[str], room: int, more: str) -> list[str]:
    """`items`, or as many as fit in `room` lines with a last line saying how many more `more` holds."""
    if len(items) <= room:
        return items
    keep = max(room - 1, 0)
    return items[:keep] + [f"... {len(items) - keep} more: {more}"]


def terminal(r: Report, out: Path, figure_format: str | None = "png", verbose: bool = False) -> str:
    """What the report prints after writing to `out`: the five lines first (analysis.brief; `--brief`
    prints only them), then at most TERMINAL_BODY_LINES lines: whether the results are partial, the
    trials, the theory's claims each with its decision, the warnings (edge optima, ...) and where the
    files are. The key tables and the verdict in full are in summary.md only; `verbose` prints the
    key tables too, before the claims (for a `--verbose` flag of the report command)."""
    v = r.verdict
    c = v["counts"]
    head = [
        "",
        f"== QK-Norm collapse report: {v['sweep']}" + (" (PARTIAL)" if v["partial"] else ""),
    ]
    if v["partial"]:
        head.append("PARTIAL: " + "; ".join(v["partial_reasons"]))
    head.append(
        f"trials {c['trials']}"
        + (f": {_by_status(c)}" if c["by_status"] else "")
        + _planned(c)
        + f"; metric rows {c['metric_rows']:,}; duplicates resolved {c['duplicate_rows']:,};"
        f" parts skipped {len(c['skipped_files'])}"
    )
    head += _capped(
        [f"  skipped {p}: {why}" for p, why in c["skipped_files"]], LISTED_SKIPS, "summary.md (Data) names them"
    )
    if c["incomplete_trials"]:
        ids = c["incomplete_trials"]
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        head.append(f"  left out (metrics stop before steps_done): {shown}")
    tail = [
        "-- Where the files are",
        f"the verdict in full, every claim and warning, and the key tables: {out}/summary.md",
        f"every table: {out}/tables/*.csv (and .tex); "
        + ("" if figure_format is None else f"figures: {out}/figures/*.{figure_format}; ")
        + f"every number: {out}/verdict.json",
        "",
        f"report written to {out}",
    ]
    claims = [line.removeprefix("- ").replace("**", "") for line in claim_lines(v)] or [
        "none judged: the sweep lacks the arms the claims need (see the answer above)"
    ]
    warnings = list(v.get("warnings", []))
    room = TERMINAL_BODY_LINES - len(head) - len(tail) - 1 - (1 if warnings else 0)  # minus the headers
    warning_room = min(len(warnings), max(3, room // 3))  # the warnings keep a share of the room
    claims = _capped(claims, max(room - warning_room, 2), f"{out}/summary.md (The answers)")
    tables = []
    if verbose:
        for title, df, _ in key_tables(r)[1:]:
            tables += [f"-- {title}", to_text(_view(df), max_rows=30)]
    body = [*tables, "-- The theory's claims", *claims]
    if warnings:
        body += ["-- Warnings", *_capped(warnings, max(room - len(claims), 2), f"{out}/summary.md (Warnings)")]
    return "\n".join(terminal_lines(v, out, figure_format) + head + body + tail) + "\n"


def _by_status(c: dict) -> str:
    """The trials by status, "completed 10, failed 2" (empty when there are none yet)."""
    return ", ".join(f"{k} {n}" for k, n in c["by_status"].items())


def _planned(c: dict) -> str:
    return f" of {c['planned']} planned" if c.get("planned") else ""
