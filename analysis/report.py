"""`python -m analysis.report RESULTS_DIR [RESULTS_DIR ...] [--out DIR]`: the report a researcher reads.

RESULTS_DIR is one sweep folder (trials.parquet, sweep.json, metrics/, spectra/), or a folder
holding exactly one, on a local disk or behind a pyarrow filesystem URI (s3://bucket/prefix/<sweep>).
Several folders of one study (`RESULTS_DIR RESULTS_DIR ...`: the chunks of a sweep run with --chunk
I/N) are read as one dataset (analysis.loading.combine) and need --out.
Writes into --out (default RESULTS_DIR/report, which for a URI is in the bucket too):

    summary.md  paradox.csv  collapse.csv  verdict.json
    tables/*.csv, tables/*.tex   figures/*.png (--figure-format svg or pdf: *.svg, *.pdf)

and prints five lines (the question, the answer, the scope, what to do, where the details are: all
that --brief prints), then the claims, warnings and where the files are (--verbose: and the key tables). Bad input (no such folder, no trials.parquet, a file
that breaks the schema contract) ends with one message and exit status 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs

from trainer.cli import ArgumentParser
from trainer.errors import ConfigError
from trainer.safeio import EXIT_ENVIRONMENT, check_out_dir, environment_problem, safe_mkdir, safe_write, safe_write_text
from trainer.schema import ARM, STATUSES

from . import figures
from .alternatives import clip_activity, clip_heads, clip_summary, variant_ranking, variant_settings
from .brief import terminal_lines
from .collapse import collapse_per_arm, collapse_per_trial
from .features import Features, build_features, check_drawn_spectra
from .figures.render import forked_rendering, wait_for_figures
from .finals import final_values, layer_finals
from .loading import Results, load_results
from .lr_selection import held_out_lrs
from .paradox import ALPHA, select
from .paths import ResultsError, UriPath, as_path, find_sweep_dir
from .scaling import width_scaling
from .scope import sweep_scope
from .sensitivity import best_lrs, lr_curve, lr_sensitivity
from .summary import markdown, terminal
from .tables import write_table
from .verdict import build_verdict, paradox_results


@dataclass(frozen=True)
class Report:
    """Everything the report shows, computed in memory by `analyse` (nothing written)."""

    results: Results  # the checked sweep folder: sweep.json, trials, the part files read
    features: Features  # PR curves, final metric values and row counts from the part files
    finals: pl.DataFrame  # one row per trial: final loss and PR / d_head (tables/finals.csv)
    best_lrs: pl.DataFrame  # each arm's best LR on all its seeds: brackets, LR sensitivity, figures
    held_out_lrs: pl.DataFrame  # each arm's LR for each seed, chosen on its other seeds: every deciding pair
    collapse_trial: pl.DataFrame  # collapse fit per trial, metric and tensor
    collapse_arm: pl.DataFrame  # fits per arm and LR: status counts, rates with t intervals
    scaling: pl.DataFrame  # log-log slopes over width (tables/width_scaling.csv)
    paradox: pl.DataFrame  # paired differences, variant minus none, all LRs (paradox.csv)
    paradox_best: pl.DataFrame  # the same at each arm's held-out best LR per width: the deciding table
    matched: pl.DataFrame  # both arms at the same LRs between their optima (analysis.matched)
    init_relative: pl.DataFrame  # final minus step 0 of every PR, paired as the deciding table
    regression: pl.DataFrame  # metric ~ qk_norm x optimizer + ..., both selections
    # (run only with >= 20 seed clusters)
    cells: pl.DataFrame  # paired effects per (width, lr) cell, per width at the best LR, and the
    # deciding rows (tables/paradox_cells.csv; columns in analysis.breakdown.CELL_COLUMNS)
    layers: pl.DataFrame  # best-LR paired effects of final PR q/k per layer
    interaction: pl.DataFrame  # optimizer x QK-Norm: difference in differences, both selections
    robust: pl.DataFrame  # bias-corrected and centred q/k PR effects, both selections
    brackets: pl.DataFrame  # each arm's best LR, and whether the LR grid brackets it
    lr_curve: pl.DataFrame  # final val loss per arm and LR
    sensitivity: pl.DataFrame  # LR sensitivity per arm
    status: pl.DataFrame  # trials per arm and status
    verdict: dict  # verdict.json, JSON-safe
    # every variant at its held-out best LR: loss and sphere PR with intervals, effects vs none, ranks
    variant_ranking: pl.DataFrame  # (tables/variant_ranking.csv; analysis.alternatives)
    clip_activity: pl.DataFrame  # QK-Clip per (optimizer, width, lr, tau): how often it fired (empty without qk_clip)

    @property
    def partial(self) -> bool:
        """True while the sweep has not finished (running trials, no finished_at, ...)."""
        return self.verdict["partial"]

    def tables(self) -> Tables:
        """Every table of the report by the name of the file it is written to: tables/<name>.csv
        (status, paradox_best_lr, paradox_cells, collapse_by_arm, loss_vs_lr, finals, ...) and
        collapse (collapse.csv); Polars DataFrames. The Report's field names (cells, collapse_arm,
        lr_curve, ...: the keys before) still work as keys, but are not listed."""
        frames = {name: df for name, df, _ in table_files(self)}
        frames["finals"] = self.finals  # tables/finals.csv
        frames["collapse"] = collapse_csv(self.collapse_trial, self.collapse_arm)  # collapse.csv
        aliases = {
            f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), pl.DataFrame)
        }
        return Tables(frames, aliases)


class Tables(dict):
    """`Report.tables()`: the frames by file name; a Report field name is an alias (not listed)."""

    def __init__(self, frames: dict[str, pl.DataFrame], aliases: dict[str, pl.DataFrame]):
        super().__init__(frames)
        self.aliases = aliases

    def __missing__(self, key: str) -> pl.DataFrame:
        if key in self.aliases:
            return self.aliases[key]
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        return super().__contains__(key) or key in self.aliases

    def get(self, key, default=None):
        return self[key] if key in self else default


def status_table(trials: pl.DataFrame) -> pl.DataFrame:
    """Trials per arm and status (one column per status), plus the total."""
    counts = trials.group_by(*ARM, "status").len()
    wide = pl.DataFrame(
        {**{c: [] for c in ARM}}, schema={"optimizer": pl.String, "qk_norm": pl.String, "width": pl.Int64}
    )
    if counts.height:
        wide = counts.pivot(on="status", index=list(ARM), values="len")
    for s in STATUSES:
        if s not in wide.columns:
            wide = wide.with_columns(pl.lit(0, pl.UInt32).alias(s))
    wide = wide.select(*ARM, *[pl.col(s).fill_null(0).cast(pl.Int64) for s in STATUSES])
    return wide.with_columns(pl.sum_horizontal(*STATUSES).alias("total")).sort(*ARM)


@dataclass(frozen=True)
class Early:
    """What the report knows before its fits (`analyse`'s `early` hook): enough to draw the figures
    of the finals, the best LRs and the curves (analysis.figures.draw_early), each field as the
    Report's of the same name."""

    results: Results
    features: Features
    finals: pl.DataFrame
    best_lrs: pl.DataFrame
    lr_curve: pl.DataFrame
    partial_reasons: list[str]

    @property
    def partial(self) -> bool:
        return bool(self.partial_reasons)


def partial_reasons(res: Results, finals: pl.DataFrame) -> list[str]:
    """Why the report is partial (empty when it is not): the results' own reasons (running trials,
    skipped parts, missing chunks, ...) and completed trials that miss metric steps."""
    reasons = res.partial_reasons()
    gaps = finals.filter(~pl.col("data_complete")).height
    if gaps:  # a completed trial with a lost or skipped part is not a finished result
        reasons.append(f"{gaps} completed trial(s) miss metric steps their schedule planned (incomplete_trials)")
    return reasons


def analyse(
    results_dir,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = ALPHA,
    cache: bool = True,
    early: Callable[[Early], object] | None = None,
) -> Report:
    """Load a sweep folder (or a list of folders of one study: analysis.loading.combine) and compute
    every table of the report (nothing written but the summary cache). `cache`: take the trials
    whose files are unchanged from each local folder's summary cache and write it afterwards
    (analysis.summary_cache); False reads every file and leaves the cache alone. `early(Early)` is
    called once the finals and the best LRs are known, before the fits (`python -m analysis.report`
    draws the figures that need no fits there, rendered by forked children while the fits run)."""
    res = load_results(results_dir, cache=cache)
    feats = build_features(res)
    finals = final_values(res.trials, feats)
    best = best_lrs(finals)  # the only place the best LRs are chosen; everything below reads them
    held_out = held_out_lrs(finals, best)
    curve = lr_curve(finals)
    check_drawn_spectra(res, finals, best)  # before `partial`: a spectra part that fails is skipped, partial
    reasons = partial_reasons(res, finals)  # nothing below skips a part
    if early is not None:
        early(Early(res, feats, finals, best, curve, reasons))
    per_trial = collapse_per_trial(feats.curves, finals)
    per_arm = collapse_per_arm(per_trial, n_boot=min(n_boot, 1000), seed=seed)
    px = paradox_results(finals, best, held_out, layer_finals(finals, feats))
    for problem in res.save_caches(feats):  # every file this report reads has been read by now
        print(f"warning: {problem}", file=sys.stderr)
    res.skipped.sort()  # one order, whichever parts the cache held
    heads = clip_heads(feats.clip, finals, variant_settings(res.trials))
    deciding = select(finals, "best_lr", held_out).filter(pl.col("status") == "completed")
    clip = clip_summary(heads, deciding.get_column("trial_id").to_list())
    by_status = {s: int(n) for s, n in res.trials.group_by("status").len().sort("status").iter_rows()}
    design = {
        c: sorted(res.trials.get_column(c).drop_nulls().unique().to_list())
        for c in ("optimizer", "qk_norm", "width", "lr", "seed", "depth", "d_head", "steps_planned")
    }
    context = {
        "sweep": res.name,
        "results_dir": res.location,  # the folder, or the folders read as one joined by ', '
        "partial": bool(reasons),
        "partial_reasons": reasons,
        "design": design,
        "scope": sweep_scope(res.trials, res.sweep),
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
    if clip is not None:  # only a sweep with qk_clip trials has the key
        context["clip_activity"] = clip
    verdict = build_verdict(px, context, alpha)
    return Report(
        results=res,
        features=feats,
        finals=finals,
        best_lrs=best,
        held_out_lrs=held_out,
        collapse_trial=per_trial,
        collapse_arm=per_arm,
        scaling=width_scaling(per_trial, best),
        paradox=px.pooled,
        paradox_best=px.best,
        matched=px.matched,
        init_relative=px.init_relative,
        regression=px.regression,
        cells=px.cells,
        layers=px.layers,
        interaction=px.did,
        robust=px.robust,
        brackets=px.brackets,
        lr_curve=curve,
        sensitivity=lr_sensitivity(curve, best),
        status=status_table(res.trials),
        verdict=verdict,
        variant_ranking=variant_ranking(finals, held_out, px.best, px.cells),
        clip_activity=clip_activity(heads, best),
    )


def collapse_csv(per_trial: pl.DataFrame, per_arm: pl.DataFrame) -> pl.DataFrame:
    """collapse.csv: level=trial rows (one per trial, metric, tensor), then level=arm rows
    (one per arm and LR over its completed trials, with *_ci_low / *_ci_high and fit-status
    counts; analysis.collapse.collapse_per_arm)."""
    t = per_trial.with_columns(pl.lit("trial").alias("level"))
    frames = [t]
    if per_arm.height:
        frames.append(per_arm.with_columns(pl.lit("arm").alias("level")))
    df = pl.concat(frames, how="diagonal_relaxed")
    first = [
        "level",
        "trial_id",
        "optimizer",
        "qk_norm",
        "width",
        "lr",
        "seed",
        "status",
        "metric",
        "tensor",
        "n_trials",
        "n_fit_ok",
    ]
    first = [c for c in first if c in df.columns]
    return df.select(first + [c for c in df.columns if c not in first])


def table_files(r: Report) -> list[tuple[str, pl.DataFrame, str]]:
    """(file name, frame, caption) of every tables/<name>.csv and .tex that write_report writes;
    Report.tables() is keyed by these names."""
    return [
        ("status", r.status, "Trials per arm and status"),
        ("paradox", r.paradox, "Paired differences (variant minus none), all LRs"),
        ("paradox_best_lr", r.paradox_best, "Paired differences at each arm's held-out best LR per width"),
        ("paradox_matched_lr", r.matched, "Paired differences at matched LRs, between the two arms' optima"),
        ("paradox_init_relative", r.init_relative, "Paired differences of the change from step 0, held-out best LR"),
        ("lr_held_out", r.held_out_lrs, "Each arm's LR for each seed, chosen on its other seeds"),
        ("regression", r.regression, "metric ~ qk_norm x optimizer + log(width) + log(lr)"),
        ("paradox_cells", r.cells, "Paired differences per (width, lr) cell and at the best LR"),
        ("paradox_layers", r.layers, "Paired differences of final PR per layer, best LR"),
        ("interaction", r.interaction, "Difference in differences: optimizer x QK-Norm"),
        ("paradox_robustness", r.robust, "Bias-corrected and centred q/k PR: paired differences"),
        ("lr_bracketing", r.brackets, "Best LR per arm and whether the LR grid brackets it"),
        (
            "collapse_by_arm",
            r.collapse_arm,
            "Collapse fits per arm and LR: fit-status counts, geometric-mean rate of fitted seeds "
            "(95% t CI on log rate), censored falls counted",
        ),
        ("width_scaling", r.scaling, "Log-log slopes over width at a fixed LR and at the best LR"),
        ("lr_sensitivity", r.sensitivity, "LR sensitivity per arm (Wortsman et al. 2023)"),
        ("loss_vs_lr", r.lr_curve, "Final val loss per arm and LR"),
        (
            "variant_ranking",
            r.variant_ranking,
            "Every variant at its held-out best LR: loss and sphere PR (95% t intervals over seeds), "
            "paired effects vs none, ranks on loss and on sphere PR",
        ),
        ("clip_activity", r.clip_activity, "QK-Clip: share of head-steps clipped, smallest factor, heads ever clipped"),
    ]


def write_report(r: Report, out: Path, figure_format: str | None = "png", early_drawn: bool = False) -> None:
    """Every report file, each written whole (temporary name, then rename) and never through a
    symlink: a crafted results folder cannot redirect a write outside `out` (trainer.safeio).
    `figure_format`: png (the default), svg or pdf (analysis.figures.FORMATS); None: no figures
    (`--no-figures`), and the figures an earlier report wrote to out/figures removed, so that the
    folder holds what summary.md names. `early_drawn`: the figures.EARLY figures are in out/figures
    already (`report_to`), only the others are drawn."""
    out = safe_mkdir(out)
    tables = safe_mkdir(out / "tables")
    # The figures first: the last ones are rendered and written by forked children (render.py)
    # while the tables are written here; every child has finished before summary.md.
    with forked_rendering(len(figures.FIGURES)):
        if figure_format is None:
            remove_figures(out / "figures")
        elif early_drawn:
            figures.draw_late(r, safe_mkdir(out / "figures"), figure_format)
        else:  # every figure: forest, PR at best LR and per LR, spectra, ...
            figures.draw_all(r, safe_mkdir(out / "figures"), figure_format)
        safe_write_text(out / "paradox.csv", r.paradox.write_csv())
        trial_and_arm = collapse_csv(r.collapse_trial, r.collapse_arm)
        safe_write(out / "collapse.csv", trial_and_arm.write_csv)  # 170 MB at 13,680 trials: streamed
        safe_write_text(out / "verdict.json", json.dumps(r.verdict, indent=2, allow_nan=False) + "\n")
        for name, df, caption in table_files(r):
            write_table(df, tables, name, caption)
        safe_write(tables / "finals.csv", r.finals.write_csv)  # one row per trial: CSV only
        wait_for_figures()  # also those drawn early, in report_to's children
    safe_write_text(out / "summary.md", markdown(r, figure_format))


def remove_figures(folder: Path) -> None:
    """Remove the figure files a report writes (figures.FIGURES in every format) from `folder`, and
    the folder when nothing else is left in it; anything else there is kept. A figure that is a
    symlink is unlinked, never followed. A file that cannot be removed is a ConfigError naming it
    (one line, exit 2), before any report file is written."""
    if folder.is_symlink() or not folder.is_dir():
        return
    try:
        for name in figures.FIGURES:
            for fmt in figures.FORMATS:
                path = folder / f"{name}.{fmt}"
                if path.is_symlink() or path.is_file():
                    path.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    except OSError as e:
        raise ConfigError(
            f"--no-figures: cannot remove {e.filename!r}, a figure an earlier report wrote ({e.strerror}); "
            "remove it or choose another --out"
        ) from None


def publish_report(r: Report, out, figure_format: str | None = "png", early_drawn: bool = False) -> Path | UriPath:
    """write_report into a local folder, or, for a URI (s3://...), into a temporary local folder
    that is then uploaded with pyarrow (each object one PUT); returns where the report is.
    `early_drawn`: as write_report's (a local folder only)."""
    target = as_path(out)
    if not isinstance(target, UriPath):
        write_report(r, target, figure_format, early_drawn)
        return target
    with tempfile.TemporaryDirectory(prefix="qk-report-") as tmp:
        write_report(r, Path(tmp), figure_format)
        target.fs.create_dir(target.key, recursive=True)
        pafs.copy_files(tmp, target.key, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.fs)
    return target


def check_out(results_dir, out) -> Path | None:
    """The local report folder (--out, or <sweep>/report), checked: not a symlink, not a file, not
    under a file. None for a URI (s3://...), which is checked when it is written."""
    target = out
    if target is None and isinstance(results_dir, (list, tuple)) and len(results_dir) > 1:
        raise ResultsError(f"{len(results_dir)} results folders are read as one study: --out DIR is required")
    if target is None:
        if isinstance(results_dir, (list, tuple)):
            results_dir = results_dir[0]
        found = find_sweep_dir(results_dir)
        if not isinstance(found, Path):
            return None
        target = found / "report"
    if "://" in str(target) and not str(target).startswith("file://"):
        return None
    local = str(target).removeprefix("file://")
    check_out_dir(local, "--out")
    return Path(local)


def report_to(results_dir, out, figure_format: str | None = "png", **analyse_args) -> tuple[Report, Path | UriPath]:
    """`analyse` then `publish_report` into `out` (None: <sweep>/report), what the command does. For
    a local folder the figures that need no fits (figures.EARLY) are drawn as soon as the finals
    and best LRs are known, and rendered by forked children while the fits run (analysis.figures.
    render): the report's second CPU, idle while the fits run, renders them (a 13,680-trial study's
    first report about 1.8 s sooner, a cached one 2.5 s: docs/performance.md). Nothing is written before the analysis has read the results: a bad folder still ends
    with one message and nothing written."""
    local = check_out(results_dir, out)  # before the analysis: a bad --out fails in milliseconds

    def draw_early(e: Early) -> None:
        figures.draw_early(e, safe_mkdir(local) / "figures", figure_format)  # draw_early makes figures/

    with forked_rendering(len(figures.FIGURES)):
        early = None if local is None or figure_format is None else draw_early
        report = analyse(results_dir, early=early, **analyse_args)
        where = out or report.results.sweep_dir / "report"
        return report, publish_report(report, where, figure_format, early_drawn=early is not None)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    ap.add_argument(
        "results_dir",
        nargs="+",
        help="a sweep folder (holding trials.parquet), or its parent; several folders of one study "
        "(its --chunk I/N chunks) are read as one, and then --out is required",
    )
    ap.add_argument("--out", help="report folder or URI (default: RESULTS_DIR/report, in the bucket for a URI)")
    ap.add_argument(
        "--n-boot",
        type=int,
        default=2000,
        help="bootstrap resamples; kept for older scripts: every interval of the report is a t interval "
        "(docs/analysis.md), so it changes nothing (default 2000)",
    )
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed; as --n-boot, changes nothing (default 0)")
    ap.add_argument("--alpha", type=float, default=ALPHA, help="significance level (default 0.05)")
    ap.add_argument(
        "--no-cache",
        action="store_true",
        help="read every part file, not the per-trial summary cache (RESULTS_DIR/summary_cache), and leave it alone",
    )
    ap.add_argument(
        "--figure-format",
        choices=figures.FORMATS,
        default="png",
        help=f"the figures' file format (default png, at {figures.PNG_DPI} dpi; svg and pdf are vector)",
    )
    ap.add_argument(
        "--no-figures",
        action="store_true",
        help="draw no figures: the tables, verdict.json and summary.md only (at study scale about a quarter "
        "faster); the figures an earlier report left in the report folder are removed",
    )
    said = ap.add_mutually_exclusive_group()
    said.add_argument("--quiet", action="store_true", help="print nothing but errors")
    said.add_argument(
        "--brief",
        action="store_true",
        help="print only the five lines: the question, the answer, the scope, what to do, where the details are",
    )
    said.add_argument("--verbose", action="store_true", help="also print the key tables (they are in summary.md)")
    args = ap.parse_args(argv)
    if args.n_boot < 100:
        print(f"error: --n-boot must be at least 100, got {args.n_boot}", file=sys.stderr)
        return 2
    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    figure_format = None if args.no_figures else args.figure_format
    if len(args.results_dir) == 1:  # one folder: as it always was; several: one study (loading.combine)
        args.results_dir = args.results_dir[0]
    try:
        report, out = report_to(
            args.results_dir,
            args.out,
            figure_format,
            n_boot=args.n_boot,
            seed=args.seed,
            alpha=args.alpha,
            cache=not args.no_cache,
        )
    except (ResultsError, ConfigError) as e:  # bad input, or a symlink planted while the analysis ran
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only the machine's failures become one line
        problem = environment_problem(e)
        if problem is None:
            raise
        print(
            f"error: writing the report: {problem}; free space (or fix the file system) and run it again",
            file=sys.stderr,
        )
        return EXIT_ENVIRONMENT
    if args.brief:
        print("\n".join(terminal_lines(report.verdict, out, figure_format)))
    elif not args.quiet:
        sys.stdout.write(terminal(report, out, figure_format, verbose=args.verbose))
        print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def exit_now(code: int) -> None:
    """Leave the process with `code` once stdout and stderr are flushed, without Python's teardown.
    By then every report file is written whole and closed, every child process reaped and the
    reading thread ended; the teardown would only free the report's objects one by one (0.6 s of a
    30 s report of 13,680 trials, on one CPU). Exit status 120 when stdout cannot be flushed, as
    Python's own exit gives."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or 120
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
