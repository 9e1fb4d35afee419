"""The driver's view of a running sweep: trials.parquet, attempts.parquet and the console.

`SweepMonitor` is a `tune.Callback` living in the driver. It is the single writer of
trials.parquet (rewritten atomically as trials change state; progress in between is throttled)
and of attempts.parquet (one row per attempt of a trial: which node ran it, where it resumed,
how it ended). Instead of Ray's tables it prints one line per trial event and a progress line:

    [0:01:12] completed adamw_rms_w64_lr0.01_s0_3f2a9c1d  val 2.412  PR(q)/d_head 0.480  7.1 s
    [0:01:12] progress  12/48 done | 2 running | 34 pending | 0 diverged | 0 failed | ETA 0:05:10
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field

import pyarrow as pa
from ray import tune

from trainer.config import TrialConfig
from trainer.provenance import now_iso
from trainer.schema import empty_trial_row
from trainer.storage import ResultsDir
from trainer.train import format_duration
from trainer.trials import read_trials, write_trials

from .trainable import trial_config

ATTEMPTS_FILE = "attempts.parquet"
ATTEMPTS_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("attempt", pa.string()), ("tune_trial_id", pa.string()),
    ("node_id", pa.string()), ("node_ip", pa.string()), ("hostname", pa.string()), ("pid", pa.int64()),
    ("resumed_step", pa.int64()), ("last_step", pa.int64()), ("started_at", pa.string()),
    ("ended_at", pa.string()), ("outcome", pa.string()), ("error", pa.string()),
])
WRITE_EVERY_S = 5.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def trial_cost(cfg: TrialConfig) -> float:
    """Relative compute of a trial (~6 N tokens with N the non-embedding + head parameters)."""
    params = 12 * cfg.depth * cfg.width**2 + 2 * cfg.vocab_size * cfg.width
    return float(cfg.steps * cfg.batch_size * cfg.seq_len * params)


def planned_row(cfg: TrialConfig, corpus_hash: str | None, status: str = "running") -> dict:
    """A trials row for a trial that has started but reported nothing yet."""
    row = empty_trial_row()
    row.update(trial_id=cfg.trial_id(), optimizer=cfg.optimizer, qk_norm=cfg.qk_norm, width=cfg.width,
               depth=cfg.depth, n_heads=cfg.n_heads, d_head=cfg.d_head, lr=cfg.lr, seed=cfg.seed,
               steps_planned=cfg.steps, steps_done=0, tokens=0, status=status, wall_s=0.0,
               corpus_hash=corpus_hash, config_json=cfg.canonical_json())
    return row


def error_summary(text: str | None, limit: int = 2000) -> str:
    """The exception line first (what a table shows), then the end of the trace."""
    if not text:
        return "unknown error (no error file)"
    text = ANSI.sub("", text)
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("Failure #")]
    lines = lines or ["unknown error"]
    last = next((ln.strip() for ln in reversed(lines) if not ln.startswith(" ")), lines[-1].strip())
    tail = "\n".join(lines[-25:])
    return (last + "\n\n" + tail)[:limit]


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class Counts:
    completed: int = 0
    diverged: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0

    def line(self, total: int) -> str:
        extra = f" | {self.pruned} pruned" if self.pruned else ""
        return (f"{self.completed}/{total} done | {self.running} running | {self.pending} pending | "
                f"{self.diverged} diverged | {self.failed} failed{extra}")


@dataclass
class SweepMonitor(tune.Callback):
    """Keeps trials.parquet and attempts.parquet current and prints trial events."""

    results: ResultsDir
    plan: dict[str, TrialConfig]  # trial_id -> config of every planned trial (may grow: searchers)
    n_planned: int
    to_run: set[str] = field(default_factory=set)  # trial_ids this run schedules (grows with a searcher)
    corpus_hash: str | None = None
    max_retries: int = 0
    progress_every_s: float = 30.0
    stream: object = None  # None = sys.stdout at the time of printing
    verbose: bool = True

    def __post_init__(self):
        self.rows: dict[str, dict] = {r["trial_id"]: r for r in read_trials(self.results)}
        self.attempts: list[dict] = self._read_attempts()
        self.by_tune_id: dict[str, str] = {}
        self.current_attempt: dict[str, dict] = {}  # trial_id -> its open attempt record
        self.t0 = time.monotonic()
        self.last_progress = self.last_write = 0.0
        self.dirty = False
        self.work_done = 0.0  # cost units finished in this run (for the ETA)
        self.partial: dict[str, float] = {}  # trial_id -> cost units of the running attempt so far
        self.ended_here: set[str] = set()
        self.recovering: set[str] = set()  # failed, waiting for a retry
        # Rows left "running" by a driver that died cannot be running now.
        for row in self.rows.values():
            if row["status"] == "running":
                row.update(status="failed", error="interrupted before it finished (the sweep stopped); it runs again")
                self.dirty = True
        for attempt in self.attempts:  # nor can attempts it left open (SIGKILL, a lost head node)
            if attempt.get("outcome") is None:
                attempt.update(outcome="interrupted", ended_at=attempt.get("ended_at") or now_iso())
                self.dirty = True
        self.flush(force=True)

    # ---- bookkeeping ---------------------------------------------------------------------
    def _read_attempts(self) -> list[dict]:
        if not self.results.exists(ATTEMPTS_FILE):
            return []
        try:
            return self.results.read_table(ATTEMPTS_FILE).to_pylist()
        except Exception:
            return []

    def flush(self, force: bool = False) -> None:
        """Write trials.parquet (and attempts.parquet) if anything changed."""
        now = time.monotonic()
        if not self.dirty or (not force and now - self.last_write < WRITE_EVERY_S):
            return
        write_trials(self.results, list(self.rows.values()))
        columns = {name: [a.get(name) for a in self.attempts] for name in ATTEMPTS_SCHEMA.names}
        self.results.write_table(pa.table(columns, schema=ATTEMPTS_SCHEMA), ATTEMPTS_FILE)
        self.last_write, self.dirty = now, False

    def trial_id_of(self, trial) -> str:
        tid = self.by_tune_id.get(trial.trial_id)
        if tid is None:
            cfg = trial_config(trial.config)
            tid = cfg.trial_id()
            self.by_tune_id[trial.trial_id] = tid
            self.plan.setdefault(tid, cfg)
            self.to_run.add(tid)
        return tid

    def status_of(self, tid: str) -> str:
        """What the progress line calls a trial: a row's status, or pending while it waits to run."""
        status = self.rows.get(tid, {}).get("status")
        if tid in self.recovering or (status != "running" and tid in self.to_run and tid not in self.ended_here):
            return "pending"
        return status or "pending"

    def counts(self) -> Counts:
        c = Counts()
        for tid in self.plan:
            status = self.status_of(tid)
            setattr(c, status, getattr(c, status) + 1)
        c.pending += max(self.n_planned - len(self.plan), 0)
        return c

    def eta(self) -> str:
        elapsed = time.monotonic() - self.t0
        done = self.work_done + sum(self.partial.values())
        costs = {tid: trial_cost(cfg) for tid, cfg in self.plan.items()}
        remaining = sum(cost - self.partial.get(tid, 0.0) for tid, cost in costs.items()
                        if self.status_of(tid) in ("pending", "running"))
        if costs:
            remaining += max(self.n_planned - len(self.plan), 0) * sum(costs.values()) / len(costs)
        if done <= 0 or elapsed < 1:
            return "--:--:--"
        return format_duration(remaining * elapsed / done)

    # ---- printing ------------------------------------------------------------------------
    def say(self, kind: str, text: str) -> None:
        if self.verbose:
            stamp = format_duration(time.monotonic() - self.t0)
            print(f"[{stamp}] {kind:<9} {text}", file=self.stream or sys.stdout, flush=True)

    def progress(self) -> None:
        self.last_progress = time.monotonic()
        self.say("progress", f"{self.counts().line(self.n_planned)} | ETA {self.eta()}")

    # ---- tune.Callback -------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        cfg = self.plan[tid]
        previous = self.rows.get(tid)
        row = planned_row(cfg, self.corpus_hash)
        if previous is not None and previous["status"] != "running":
            row.update(steps_done=previous.get("steps_done") or 0, tokens=previous.get("tokens") or 0)
        self.rows[tid] = row
        self.current_attempt.pop(tid, None)
        self.partial[tid] = 0.0
        self.dirty = True
        self.flush(force=True)
        self.say("restart" if tid in self.recovering else "start", f"{tid}")
        self.recovering.discard(tid)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = self.trial_id_of(trial)
        cfg = self.plan[tid]
        attempt = self._attempt(tid, trial, result)
        step = int(result.get("step", 0))
        attempt["last_step"] = step
        if result.get("final"):
            row = json.loads(result["row_json"])
            self.rows[tid] = {k: row.get(k) for k in empty_trial_row()}
            if result.get("skipped"):
                attempt["outcome"] = "skipped"
        else:
            row = self.rows.setdefault(tid, planned_row(cfg, self.corpus_hash))
            row.update(status="running", steps_done=min(step + 1, cfg.steps), tokens=int(result.get("tokens") or 0),
                       final_train_loss=_finite(result.get("train_loss")),
                       final_val_loss=_finite(result.get("val_loss")), wall_s=_finite(result.get("wall_s")))
        self.partial[tid] = trial_cost(cfg) * min((step + 1) / cfg.steps, 1.0)
        self.dirty = True
        self.flush()

    def _attempt(self, tid: str, trial, result: dict) -> dict:
        """The attempt record this result belongs to (a new one when the trainable restarted)."""
        key = result.get("attempt")
        current = self.current_attempt.get(tid)
        if current is not None and current["attempt"] == key:
            return current
        if current is not None and current["outcome"] is None:
            current.update(outcome="restarted", ended_at=now_iso())
        resumed = result.get("resumed_step")
        resumed = int(resumed) if _finite(resumed) is not None else None
        current = {"trial_id": tid, "attempt": key, "tune_trial_id": trial.trial_id, "node_id": result.get("node_id"),
                   "node_ip": result.get("node_ip"), "hostname": result.get("hostname"), "pid": result.get("pid"),
                   "resumed_step": resumed, "last_step": None, "started_at": now_iso(), "ended_at": None,
                   "outcome": None, "error": None}
        self.attempts.append(current)
        self.current_attempt[tid] = current
        if resumed:
            self.say("resumed", f"{tid} from its checkpoint at step {resumed}")
        return current

    def _close_attempt(self, tid: str, outcome: str, error: str | None = None) -> None:
        current = self.current_attempt.pop(tid, None)
        if current is not None:
            current.update(outcome=current["outcome"] or outcome, ended_at=now_iso(), error=error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        cfg = self.plan[tid]
        last = trial.last_result or {}
        row = self.rows.get(tid) or planned_row(cfg, self.corpus_hash)
        if not last.get("final"):  # stopped early by a scheduler (ASHA): pruned, rows kept
            row.update(status="pruned")
            self.rows[tid] = row
        row = self.rows[tid]
        self._close_attempt(tid, row["status"])
        self.partial.pop(tid, None)
        if not last.get("skipped"):
            self.work_done += trial_cost(cfg) * (row.get("steps_done") or 0) / cfg.steps
        self.ended_here.add(tid)
        self.dirty = True
        self.flush(force=True)
        self.say(row["status"] if not last.get("skipped") else "skipped", self._outcome_text(tid, row, last))
        self.progress()

    def _outcome_text(self, tid: str, row: dict, last: dict) -> str:
        if last.get("skipped"):
            return f"{tid} (already {row['status']} in trials.parquet)"
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        wall = f"{row.get('wall_s') or 0:.1f} s"
        if row["status"] == "diverged":
            return f"{tid}  at step {row.get('diverged_step')}  {wall}"
        if row["status"] == "pruned":
            where = f"{row.get('steps_done')}/{row.get('steps_planned')}"
            return f"{tid}  stopped at step {where}  val {fmt(row.get('final_val_loss'))}"
        pr = _finite(last.get("pr_q"))
        return f"{tid}  val {fmt(row.get('final_val_loss'))}  PR(q)/d_head {fmt(pr)}  {wall}"

    def on_trial_recover(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        error = error_summary(_safe_error(trial))
        self._close_attempt(tid, "error", error)
        self.partial[tid] = 0.0
        self.recovering.add(tid)
        self.dirty = True
        self.flush(force=True)
        tries = f"{trial.num_failures}/{self.max_retries}" if self.max_retries >= 0 else f"{trial.num_failures}"
        self.say("retry", f"{tid} (failure {tries}; resumes from its last checkpoint): {error.splitlines()[0]}")

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        error = error_summary(_safe_error(trial))
        row = self.rows.get(tid) or planned_row(self.plan[tid], self.corpus_hash)
        row.update(status="failed", error=error)
        self.rows[tid] = row
        self._close_attempt(tid, "failed", error)
        self.partial.pop(tid, None)
        self.ended_here.add(tid)
        self.dirty = True
        self.flush(force=True)
        self.say("failed", f"{tid}: {error.splitlines()[0]}")
        self.progress()

    def on_step_end(self, iteration, trials, **info):
        self.flush()
        if time.monotonic() - self.last_progress >= self.progress_every_s:
            self.progress()

    def on_experiment_end(self, trials, **info):
        self.flush(force=True)

    # ---- after fit() -----------------------------------------------------------------------
    def finish(self) -> Counts:
        """Mark what is still running as interrupted (Ctrl-C, driver stop) and write everything."""
        for tid, row in self.rows.items():
            if row["status"] == "running":
                row.update(status="failed", error="interrupted before it finished; run again with --resume")
                self._close_attempt(tid, "interrupted")
                self.dirty = True
        self.flush(force=True)
        return self.counts()

    # Tune pickles the run config (callbacks included) into its experiment state; the monitor
    # holds files and streams, so it pickles as a placeholder that `Tuner.restore` turns back
    # into the monitor registered for the resumed run.
    def __reduce__(self):
        return (_registered_monitor, ())


_LIVE: list = []


def register(monitor: "SweepMonitor | None") -> None:
    _LIVE[:] = [monitor] if monitor is not None else []


def _registered_monitor():
    return _LIVE[0] if _LIVE else tune.Callback()


def _safe_error(trial) -> str | None:
    """The trial's error text: the driver-side error file (written before the callbacks run)."""
    try:
        if trial.error_file and os.path.isfile(trial.error_file):
            with open(trial.error_file) as f:
                return f.read()
        return trial.get_error()
    except Exception:
        return traceback.format_exc()
