"""summary.md and the terminal digest: the same key tables, in Markdown and in plain text."""

from __future__ import annotations

import polars as pl

from .tables import fmt, to_markdown, to_text

PARADOX_VIEW = ["optimizer", "qk_norm", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high",
                "p_value", "p_holm", "p_wilcoxon"]
ARM_VIEW = ["optimizer", "qk_norm", "width", "tensor", "n_trials", "n_fit_ok", "rate_per_1k_steps",
            "rate_per_1k_steps_ci_low", "rate_per_1k_steps_ci_high", "min_step", "min_norm",
            "final_norm", "recovery"]


def key_tables(r: dict) -> list[tuple[str, pl.DataFrame, str]]:
    """(title, table, note) in reading order; `r` is the report's results dict."""
    arm = r["collapse_arm"]
    if arm.height:
        arm = arm.filter((pl.col("metric") == "pr") & pl.col("tensor").is_in(["q", "k"]))
        arm = arm.select([c for c in ARM_VIEW if c in arm.columns])
    inter = r["regression"].filter(pl.col("term").str.contains(" x ").fill_null(False)).select(
        "selection", "metric", "term", "coef", "ci_low", "ci_high", "p_value", "p_holm",
        "n", "n_clusters")
    return [
        ("Trials by status and arm", r["status"], ""),
        ("Paradox: paired differences, variant minus none, all LRs (paradox.csv)",
         r["paradox"].select(PARADOX_VIEW),
         "Pairs share optimizer, width, lr and seed. PR metrics are PR / d_head at the last step, "
         "averaged over layers and heads. p_value: paired t-test; p_holm: Holm over this table."),
        ("Paradox at each arm's best LR per width (tables/paradox_best_lr.csv)",
         r["paradox_best"].select(PARADOX_VIEW),
         "Pairs share optimizer, width and seed; each arm at the LR with its lowest mean loss. "
         "Holm over this table."),
        ("Does the optimizer change the QK-Norm effect? Interaction terms (tables/regression.csv)",
         inter, "OLS metric ~ qk_norm x optimizer + log(width) + log(lr), seed-clustered errors; "
                "p_holm over the interaction terms of one selection."),
        ("Collapse of q/k PR per arm: medians over completed trials (collapse.csv, level=arm)", arm,
         "Fit: exponential decay to a floor up to the minimum. min_norm, final_norm: PR / d_head. "
         "recovery: (final - min) / (initial - min). Intervals: 95% bootstrap over trials."),
        ("Width scaling: log-log slope over width (tables/width_scaling.csv)",
         r["scaling"].filter(pl.col("tensor").is_in(["q", "k"])) if r["scaling"].height else r["scaling"],
         "OLS of log(quantity) on log(width) (+ log(lr)), HC1 95% intervals."),
        ("LR sensitivity per arm (tables/lr_sensitivity.csv)", r["sensitivity"],
         "Wortsman et al. 2023: mean over the LR grid of min(loss, loss at init) minus the best "
         "loss; diverged trials count as the loss at init."),
    ]


def markdown(r: dict) -> str:
    v = r["verdict"]
    title = f"# QK-Norm collapse report: {v['sweep']}"
    if v["partial"]:
        title += " (PARTIAL)"
    lines = [title, ""]
    if v["partial"]:
        lines += ["> **Partial results.** " + "; ".join(v["partial_reasons"]) +
                  ". Everything below uses the trials that have finished.", ""]
    c = v["counts"]
    lines += [
        "## Data", "",
        f"- Results folder: `{v['results_dir']}`",
        "- Design: " + "; ".join(f"{k} {', '.join(fmt(x) for x in vals)}"
                                 for k, vals in v["design"].items() if vals),
        f"- Trials: {c['trials']} ({', '.join(f'{k} {n}' for k, n in c['by_status'].items())})"
        + (f" of {c['planned']} planned" if c.get("planned") else ""),
        f"- Metric rows read: {c['metric_rows']:,}; duplicate keys resolved (last written wins): "
        f"{c['duplicate_rows']:,}; spectra rows: {c['spectra_rows']:,}",
        f"- Part files skipped as unreadable: {len(c['skipped_files'])}",
    ]
    lines += [f"  - `{p}`: {why}" for p, why in c["skipped_files"]]
    if c["incomplete_trials"]:
        lines.append(f"- Completed trials left out because their metrics stop before steps_done "
                     f"(a part was skipped): {', '.join(c['incomplete_trials'])}")
    lines += [
        "", "## Verdict", ""] + [f"- {s}" for s in v["headline"]] + [""]
    lines += [
        "Rules: better loss = final val loss lower (variant minus none < 0) at p_holm < "
        f"{v['alpha']}; worse rank = final PR / d_head of both q and k lower at p_holm < "
        f"{v['alpha']}; paradox = both. Fewer than {v['min_pairs']} pairs: not enough data. "
        "\"No effect\" means no difference was detected; the confidence intervals say how large "
        "an effect the data still allow.", "",
    ]
    for title_, df, note in key_tables(r):
        lines += [f"## {title_}", ""]
        if note:
            lines += [note, ""]
        lines += [to_markdown(df, max_rows=60), ""]
    lines += [
        "## Figures", "",
        "![PR over training](figures/pr_over_training.png)", "",
        "![Loss vs PR](figures/loss_vs_pr.png)", "",
        "![Loss vs LR](figures/lr_sensitivity.png)", "",
        "![Collapse rate vs width](figures/collapse_rate_vs_width.png)", "",
        "## Files", "",
        "- `paradox.csv`, `verdict.json`, `collapse.csv` (level=trial and level=arm rows)",
        "- `tables/*.csv` and `tables/*.tex`; `figures/*.png`",
        "- Methods: docs/analysis.md in the project.", "",
    ]
    return "\n".join(lines)


def terminal(r: dict) -> str:
    v = r["verdict"]
    out = [f"== QK-Norm collapse report: {v['sweep']}" + (" (PARTIAL)" if v["partial"] else "")]
    if v["partial"]:
        out.append("PARTIAL: " + "; ".join(v["partial_reasons"]))
    c = v["counts"]
    out.append("design: " + "; ".join(f"{k} {', '.join(fmt(x) for x in vals)}"
                                      for k, vals in v["design"].items() if vals))
    out.append(f"trials {c['trials']}: " + ", ".join(f"{k} {n}" for k, n in c["by_status"].items())
               + f"; metric rows {c['metric_rows']:,}; duplicates resolved {c['duplicate_rows']:,};"
               f" parts skipped {len(c['skipped_files'])}")
    for p, why in c["skipped_files"]:
        out.append(f"  skipped {p}: {why}")
    if c["incomplete_trials"]:
        out.append("  left out (metrics stop before steps_done): " + ", ".join(c["incomplete_trials"]))
    out.append("")
    for title, df, _ in key_tables(r)[1:]:
        out += [f"-- {title}", to_text(df, max_rows=30)]
    out.append("-- Verdict")
    out += [f"* {s}" for s in v["headline"]]
    out.append(f"\nreport written to {r['out']}")
    return "\n".join(out) + "\n"
