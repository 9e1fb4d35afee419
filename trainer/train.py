"""`python -m trainer.train`: one trial without Ray, writing the same layout as a sweep.

    python -m trainer.train --config trial.yaml --out DIR [--set key=value ...]
    python -m trainer.train --smoke --out DIR          # tiny CPU trial, every metric, < 1 minute

Re-running with the same --out and config resumes from the trial's last checkpoint.
"""

from __future__ import annotations

import sys
import time

from .budget import check_device
from .cli import ArgumentParser
from .config import SMOKE, ConfigError, TrialConfig, build_config, load_yaml, short_repr
from .console import format_duration, report_command
from .data import load_tokens
from .hooks import CheckpointError, TrialHooks
from .provenance import now_iso, sweep_record
from .safeio import EXIT_ENVIRONMENT, RUN_NAME, environment_problem, read_record
from .schema import CHECKPOINTS_DIR, FINISHED_STATUSES, SWEEP_JSON
from .storage import ResultsDir, check_writable
from .trials import read_trials, write_trials


class ConsolePrinter(TrialHooks):
    """Progress lines for a human: step, loss, tokens/s, ETA; plus eval lines. Keeps trials.parquet current."""

    def __init__(self, results: ResultsDir, steps: int, every_s: float = 2.0, stream=sys.stdout):
        self.results, self.steps, self.every_s, self.stream = results, steps, every_s, stream
        self.t0 = self.last = time.perf_counter()
        self.first_step = 0

    def on_start(self, row, resumed_step):
        write_trials(self.results, merged_rows(self.results, row))
        self.first_step = resumed_step or 0
        self.t0 = self.last = time.perf_counter()
        where = f"resuming at step {resumed_step}" if resumed_step else "starting"
        print(f"trial {row['trial_id']}: {where}, {self.steps} steps", file=self.stream, flush=True)

    def on_step(self, step, info):
        now = time.perf_counter()
        if now - self.last < self.every_s and step != self.steps - 1:
            return
        self.last = now
        done = step + 1 - self.first_step
        rate = done / max(now - self.t0, 1e-9)
        tok_s = rate * info["tokens"] / (step + 1)
        eta = (self.steps - step - 1) / max(rate, 1e-9)
        print(
            f"step {step + 1:>6}/{self.steps} | loss {info['train_loss']:.4f} | lr {info['lr']:.2e} | "
            f"{tok_s / 1000:.1f}k tok/s | ETA {format_duration(eta)}",
            file=self.stream,
            flush=True,
        )

    def on_report(self, step, metrics, checkpoint_dir):
        if "val_loss" in metrics:
            print(
                f"  eval @ {step}: val_loss {metrics['val_loss']:.4f} | PR(q)/d_head {metrics['pr_q']:.3f} | "
                f"PR(k)/d_head {metrics['pr_k']:.3f}",
                file=self.stream,
                flush=True,
            )

    def on_end(self, row):
        write_trials(self.results, merged_rows(self.results, row))


def merged_rows(results: ResultsDir, row: dict) -> list[dict]:
    """trials.parquet's rows with this trial's row put in (by trial_id): other trials in --out stay."""
    rows = {r["trial_id"]: r for r in read_trials(results)}
    rows[row["trial_id"]] = row
    return list(rows.values())


def parse_args(argv):
    return build_parser().parse_args(argv)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m trainer.train", description=__doc__)  # suggests mistyped flags
    p.add_argument(
        "--config", metavar="FILE", help="trial YAML (fields of TrialConfig) (default: TrialConfig's defaults)"
    )
    p.add_argument("--out", required=True, help="results folder (local path or pyarrow filesystem URI)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field (repeatable; values are YAML): steps=50, optimizer=muon; applied after the YAML",
    )
    p.add_argument("--smoke", action="store_true", help="built-in tiny CPU trial (under a minute)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore an existing checkpoint and start over (default: resume from the trial's last checkpoint)",
    )
    return p


def resolve_config(args) -> TrialConfig:
    base = dict(SMOKE) if args.smoke else {}
    if args.config:
        base.update(load_yaml(args.config))
    return build_config(base, args.overrides)


def check_out(location: str) -> ResultsDir:
    """--out, checked before anything is written: a local folder may be missing (it is created), but the
    nearest folder that exists must be a folder this user may write into; a URI must open."""
    return check_writable(location, "out", create_missing=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        tokens = load_tokens(cfg)  # corpus errors surface before anything is written
        results = check_out(args.out)
        check_device([cfg])  # cuda without a GPU, or a model that cannot fit: before anything is written
        previous = check_previous(results)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return run(args, cfg, tokens, results, previous)
    except ConfigError as err:  # a symlink planted in --out, met while writing
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only the machine's failures become one line
        problem = environment_problem(exc)
        if problem is None:
            raise
        settle_running(results, f"stopped: {problem}")
        print(
            f"error: writing to {results.uri}: {problem}; free space (or fix the file system), then run the same "
            "command again: it resumes from the trial's last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ENVIRONMENT


def check_previous(results: ResultsDir) -> dict | None:
    """--out may hold standalone trials (their rows are kept) but not a sweep or an LR study, whose
    trials.parquet and sweep.json a trial would overwrite; a corrupt sweep.json or trials.parquet is
    one line naming the file."""
    previous = read_record(results)
    read_trials(results)
    kind = (previous or {}).get("kind")
    if kind is not None and kind != "trial":
        raise ConfigError(
            f"out: {results.uri} holds a {short_repr(kind, 30)} (sweep.json kind {short_repr(kind, 30)}); "
            "a standalone trial would overwrite its trials.parquet and sweep.json: choose another --out"
        )
    return previous


def settle_running(results: ResultsDir, error: str) -> None:
    """Rows this run left "running" become "failed" (best effort: the disk may still be full)."""
    try:
        rows = read_trials(results)
        if any(r["status"] == "running" for r in rows):
            for r in rows:
                if r["status"] == "running":
                    r.update(status="failed", error=error)
            write_trials(results, rows)
    except Exception:  # noqa: BLE001
        pass


def run(args, cfg: TrialConfig, tokens, results: ResultsDir, previous: dict | None) -> int:
    trial_id = cfg.trial_id()
    checkpoint_dir = None
    if results.is_local:
        checkpoint_dir = results.local_path(CHECKPOINTS_DIR, trial_id)
    resume_from = None if args.fresh else checkpoint_dir
    finished = [r for r in read_trials(results) if r["trial_id"] == trial_id and r["status"] in FINISHED_STATUSES]
    if finished and not args.fresh:
        print(f"trial {trial_id} already {finished[0]['status']} in {results.uri}; --fresh reruns it")
        return 0
    previous = previous or {}
    started = previous.get("started_at") or now_iso()
    # Several trials may share one --out: keep every trial id (a later sweep or report reads them).
    listed = previous.get("trial_ids")
    known = [t for t in listed if isinstance(t, str)] if isinstance(listed, list) else []
    trial_ids = sorted(set(known) | {r["trial_id"] for r in read_trials(results)} | {trial_id})
    name = (
        previous.get("name") if isinstance(previous.get("name"), str) and RUN_NAME.match(previous["name"]) else trial_id
    )
    meta = sweep_record(
        name=name,
        kind="trial",
        n_trials=len(trial_ids),
        started_at=started,
        config=cfg.model_dump(),
        corpus=tokens,
        trial_ids=trial_ids,
    )
    results.write_json(meta, SWEEP_JSON)
    printer = ConsolePrinter(results, cfg.steps)
    from .loop import run_trial  # torch: loaded once the trial's input has passed every check

    try:
        row = run_trial(
            cfg,
            results,
            trial_id=trial_id,
            tokens=tokens,
            hooks=printer,
            checkpoint_dir=checkpoint_dir,
            resume_from=resume_from,
        )
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results.write_json({**meta, "finished_at": now_iso()}, SWEEP_JSON)

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    losses = f"train {fmt(row['final_train_loss'])}, val {fmt(row['final_val_loss'])}"
    if row["status"] == "diverged":
        print(f"trial {trial_id} diverged at step {row['diverged_step']} ({losses}); rows up to then are kept")
    else:
        print(
            f"trial {trial_id} {row['status']}: {row['steps_done']} steps, {row['tokens']} tokens, "
            f"{row['wall_s']:.1f} s, final loss {losses}"
        )
    print(f"results in {results.uri}; report: {report_command(results.uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
