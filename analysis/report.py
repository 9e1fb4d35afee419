"""`python -m analysis.report RESULTS_DIR [--out DIR]`: the report a researcher reads.

RESULTS_DIR is one sweep folder (trials.parquet, sweep.json, metrics/, spectra/), or a folder
holding exactly one. Writes into --out (default RESULTS_DIR/report):

    summary.md  paradox.csv  collapse.csv  verdict.json
    tables/*.csv, tables/*.tex   figures/*.png

and prints the key tables. Bad input (no such folder, no trials.parquet, a file that breaks the
schema contract) ends with one message and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

from trainer.schema import STATUSES

from . import figures
from .collapse import collapse_per_arm, collapse_per_trial, width_scaling
from .features import build_features, final_values
from .load import ResultsError, load_results
from .paradox import ALPHA, paradox_table
from .regression import regress
from .sensitivity import lr_curve, lr_sensitivity
from .summary import markdown, terminal
from .tables import write_table
from .verdict import build_verdict

ARM = ["optimizer", "qk_norm", "width"]


def status_table(trials: pl.DataFrame) -> pl.DataFrame:
    """Trials per arm and status (one column per status), plus the total."""
    counts = trials.group_by(*ARM, "status").len()
    wide = pl.DataFrame({**{c: [] for c in ARM}}, schema={"optimizer": pl.String, "qk_norm": pl.String,
                                                          "width": pl.Int64})
    if counts.height:
        wide = counts.pivot(on="status", index=ARM, values="len")
    for s in STATUSES:
        if s not in wide.columns:
            wide = wide.with_columns(pl.lit(0, pl.UInt32).alias(s))
    wide = wide.select(*ARM, *[pl.col(s).fill_null(0).cast(pl.Int64) for s in STATUSES])
    return wide.with_columns(pl.sum_horizontal(*STATUSES).alias("total")).sort(ARM)


def analyse(results_dir, n_boot: int = 2000, seed: int = 0, alpha: float = ALPHA) -> dict:
    """Everything the report shows, computed and held in memory (nothing written)."""
    res = load_results(results_dir)
    feats = build_features(res)
    finals = final_values(res.trials, feats)
    per_trial = collapse_per_trial(feats.curves, finals)
    per_arm = collapse_per_arm(per_trial, n_boot=min(n_boot, 1000), seed=seed)
    table_all = paradox_table(finals, "all_lrs", n_boot=n_boot, seed=seed)
    table_best = paradox_table(finals, "best_lr", n_boot=n_boot, seed=seed)
    reg = pl.concat([regress(finals, "all_lrs"), regress(finals, "best_lr")])
    by_status = {s: int(n) for s, n in res.trials.group_by("status").len().sort("status").iter_rows()}
    reasons = res.partial_reasons()
    design = {c: sorted(res.trials.get_column(c).drop_nulls().unique().to_list())
              for c in ("optimizer", "qk_norm", "width", "lr", "seed", "depth", "d_head", "steps_planned")}
    context = {
        "sweep": res.name,
        "results_dir": str(res.sweep_dir),
        "partial": bool(reasons),
        "partial_reasons": reasons,
        "design": design,
        "counts": {
            "trials": res.trials.height,
            "planned": (res.sweep or {}).get("n_trials"),
            "by_status": by_status,
            "metric_rows": feats.metric_rows,
            "duplicate_rows": feats.duplicate_rows,
            "duplicate_trial_rows": res.duplicate_trial_rows,
            "spectra_rows": feats.spectra_rows,
            "incomplete_trials": finals.filter(~pl.col("data_complete"))["trial_id"].to_list(),
            "skipped_files": [list(s) for s in res.skipped],
        },
    }
    verdict = build_verdict(table_all, table_best, reg, context, alpha)
    return dict(
        results=res, features=feats, finals=finals, collapse_trial=per_trial, collapse_arm=per_arm,
        scaling=width_scaling(per_trial), paradox=table_all, paradox_best=table_best,
        regression=reg, lr_curve=lr_curve(finals), sensitivity=lr_sensitivity(finals),
        status=status_table(res.trials), verdict=verdict,
    )


def collapse_csv(per_trial: pl.DataFrame, per_arm: pl.DataFrame) -> pl.DataFrame:
    """collapse.csv: level=trial rows (one per trial, metric, tensor), then level=arm rows
    (medians over an arm's completed trials, with *_ci_low / *_ci_high)."""
    t = per_trial.with_columns(pl.lit("trial").alias("level"))
    frames = [t]
    if per_arm.height:
        frames.append(per_arm.with_columns(pl.lit("arm").alias("level")))
    df = pl.concat(frames, how="diagonal_relaxed")
    first = ["level", "trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "status",
             "metric", "tensor", "n_trials", "n_fit_ok"]
    first = [c for c in first if c in df.columns]
    return df.select(first + [c for c in df.columns if c not in first])


def write_report(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tables, figs = out / "tables", out / "figures"
    tables.mkdir(exist_ok=True)
    figs.mkdir(exist_ok=True)
    partial = r["verdict"]["partial"]
    r["paradox"].write_csv(out / "paradox.csv")
    collapse_csv(r["collapse_trial"], r["collapse_arm"]).write_csv(out / "collapse.csv")
    (out / "verdict.json").write_text(json.dumps(r["verdict"], indent=2, allow_nan=False) + "\n")
    for name, key, caption in [
        ("status", "status", "Trials per arm and status"),
        ("paradox", "paradox", "Paired differences (variant minus none), all LRs"),
        ("paradox_best_lr", "paradox_best", "Paired differences at each arm's best LR per width"),
        ("regression", "regression", "metric ~ qk_norm x optimizer + log(width) + log(lr)"),
        ("collapse_by_arm", "collapse_arm", "Collapse fits per arm: medians, 95% bootstrap CI"),
        ("width_scaling", "scaling", "Log-log slopes over width"),
        ("lr_sensitivity", "sensitivity", "LR sensitivity per arm (Wortsman et al. 2023)"),
        ("loss_vs_lr", "lr_curve", "Final val loss per arm and LR"),
    ]:
        write_table(r[key], tables, name, caption)
    r["finals"].write_csv(tables / "finals.csv")  # one row per trial: CSV only
    finals = r["finals"]
    figures.pr_over_training(r["features"].curves, finals, figs / "pr_over_training.png", partial)
    figures.loss_vs_pr(finals, figs / "loss_vs_pr.png", partial)
    figures.lr_sensitivity(r["lr_curve"], figs / "lr_sensitivity.png", partial, finals)
    figures.collapse_rate_vs_width(r["collapse_arm"], figs / "collapse_rate_vs_width.png", partial,
                                   finals)
    (out / "summary.md").write_text(markdown(r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", help="a sweep folder (holding trials.parquet), or its parent")
    ap.add_argument("--out", help="report folder (default: RESULTS_DIR/report)")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ap.add_argument("--alpha", type=float, default=ALPHA, help="significance level (default 0.05)")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = ap.parse_args(argv)
    if args.n_boot < 100:
        print(f"error: --n-boot must be at least 100, got {args.n_boot}", file=sys.stderr)
        return 2
    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        r = analyse(args.results_dir, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else r["results"].sweep_dir / "report"
    r["out"] = str(out)
    write_report(r, out)
    if not args.quiet:
        sys.stdout.write(terminal(r))
        print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
