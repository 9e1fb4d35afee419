"""The console view of a running sweep or LR study: one line per trial event, a progress line, an ETA.

    [0:01:12] completed adamw_rms_w64_lr0.01_s0_3f2a9c1d  val 2.412  PR(q)/d_head 0.480  7.1 s
    [0:01:12] progress  12/48 done | 2 running | 34 pending | 0 diverged | 0 failed | ETA 0:05:10

It replaces Ray's tables. The ETA starts from the plan `--dry-run` prints (orchestrator.spec.plan.
expected_trials: each trial's seconds from the calibration table, on the CPUs and GPUs the run has)
and moves to the pace observed as trials run:

    ETA = R * (t + T) / (D + T),   T = K * K / (K + t)

with R and D the plan's wall seconds of the work remaining and of the work done (trials finished
and the finished share of those running), t the wall seconds since the first trial started (Ray's
own start is not trial work) and T the plan counted as that much observed time: K = PLAN_WEIGHT_S
(a minute) at the start, half of it after a minute, a quarter after three. Before anything
finishes it is the plan's R; after a few minutes, R * t / D: the plan's relative costs of the
trials left, at the pace seen. An LR study's trials are priced by their arm's planned seconds (the
searcher picks the LRs, which do not change a trial's cost) at full length, although ASHA stops
some early: its ETA runs high until the pace it sees says otherwise. When the plan cannot cost the
trials (a calibration table with no rows for their device; an unmeasured GPU is costed from
another's rows, as --dry-run does) each trial weighs its FLOPs (orchestrator.spec.costs.
trial_flops), at the pace since the first trial started. The old estimate (FLOPs left at the pace
since Ray started) said 1:11:12 after the first trial of a default sweep that took 9:03: Ray's start
and a worker's first trial, which also imports torch, set the pace of the whole sweep
(docs/performance.md has the figures of both). Reads trial statuses, never writes files.
Not tqdm: its bar redraws one line with carriage returns (in a log file or a pipe, as in CI, that is
one ever-growing line, or nothing with disable=None), while this is whole timestamped lines that
interleave with the trial events and break trials down by status.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from trainer.config import TrialConfig
from trainer.console import format_duration
from trainer.schema import STATUSES

from ..spec.costs import trial_flops
from ..spec.plan import Expected
from .reports import TrialReport


@dataclass
class Counts:
    """Trials by status, plus those waiting to run (pending)."""

    completed: int = 0
    diverged: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0

    def line(self, total: int) -> str:
        extra = f" | {self.pruned} pruned" if self.pruned else ""
        return (
            f"{self.completed}/{total} done | {self.running} running | {self.pending} pending | "
            f"{self.diverged} diverged | {self.failed} failed{extra}"
        )


assert {f.name for f in fields(Counts)} == {*STATUSES, "pending"}, "one counter per trainer.schema status"


PLAN_WEIGHT_S = 60.0  # the ETA counts the plan as this many seconds of observed pace (module docstring)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class Progress:
    """Counts, ETA and console lines of one run; `row_status` reads a trial's status in the ledger."""

    def __init__(
        self,
        plan: dict[str, TrialConfig],
        n_planned: int,
        to_run: set[str],
        row_status: Callable[[str], str | None],
        every_s: float = 30.0,
        stream=None,
        verbose: bool = True,
        expected: Expected | None = None,
    ):
        self.plan, self.n_planned, self.to_run, self.row_status = plan, n_planned, to_run, row_status
        self.every_s, self.stream, self.verbose = every_s, stream, verbose  # stream None = sys.stdout when printing
        self.expected = expected  # the plan's seconds per trial (None: weigh by FLOPs, no prior)
        self.costs: dict[str, float] = {}  # trial_id -> its weight in the ETA (`cost`)
        self.t0 = time.monotonic()
        self.first_start: float | None = None  # when the first trial of this run started (the ETA's clock)
        self.last_line = 0.0
        self.work_done = 0.0  # cost units finished in this run (for the ETA)
        self.partial: dict[str, float] = {}  # trial_id -> cost units of the running attempt so far
        self.ended_here: set[str] = set()
        self.recovering: set[str] = set()  # failed, waiting for a retry

    # ---- counting --------------------------------------------------------------------------
    def status_of(self, tid: str) -> str:
        """What the progress line calls a trial: a row's status, or pending while it waits to run."""
        status = self.row_status(tid)
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

    def cost(self, tid: str, cfg: TrialConfig) -> float:
        """A trial's weight in the ETA: the plan's seconds (`Expected.of`), else its FLOPs; kept per trial."""
        cost = self.costs.get(tid)
        if cost is None:
            cost = self.costs[tid] = trial_flops(cfg) if self.expected is None else self.expected.of(cfg)
        return cost

    def eta(self) -> str:
        """The time left (the module's docstring), h:mm:ss; --:--:-- while nothing says."""
        now = time.monotonic()
        elapsed = 0.0 if self.first_start is None else now - self.first_start
        done = self.work_done + sum(self.partial.values())
        costs = {tid: self.cost(tid, cfg) for tid, cfg in self.plan.items()}
        remaining = sum(
            cost - self.partial.get(tid, 0.0)
            for tid, cost in costs.items()
            if self.status_of(tid) in ("pending", "running")
        )
        unproposed = max(self.n_planned - len(self.plan), 0)  # trials a searcher has yet to propose
        if self.expected is not None:
            remaining += unproposed * self.expected.mean
            rate = self.expected.parallel
            prior = PLAN_WEIGHT_S * PLAN_WEIGHT_S / (PLAN_WEIGHT_S + elapsed)
            return format_duration(remaining / rate * (elapsed + prior) / (done / rate + prior))
        if costs:  # as much as the average one so far
            remaining += unproposed * sum(costs.values()) / len(costs)
        if done <= 0 or elapsed < 1:
            return "--:--:--"
        return format_duration(remaining * elapsed / done)

    # ---- printing --------------------------------------------------------------------------
    def say(self, kind: str, text: str) -> None:
        if self.verbose:
            stamp = format_duration(time.monotonic() - self.t0)
            print(f"[{stamp}] {kind:<9} {text}", file=self.stream or sys.stdout, flush=True)

    def line(self) -> None:
        """The progress line (counts and ETA)."""
        self.last_line = time.monotonic()
        self.say("progress", f"{self.counts().line(self.n_planned)} | ETA {self.eta()}")

    def line_due(self) -> bool:
        return time.monotonic() - self.last_line >= self.every_s

    # ---- trial events ----------------------------------------------------------------------
    def started(self, tid: str) -> None:
        if self.first_start is None:
            self.first_start = time.monotonic()
        self.partial[tid] = 0.0
        self.say("restart" if tid in self.recovering else "start", f"{tid}")
        self.recovering.discard(tid)

    def advanced(self, tid: str, cfg: TrialConfig, step: int) -> None:
        self.partial[tid] = self.cost(tid, cfg) * min((step + 1) / cfg.steps, 1.0)

    def ended(self, tid: str, cfg: TrialConfig, row: dict, last: TrialReport) -> None:
        """The trial ended normally (completed, diverged, pruned, or skipped as already finished)."""
        self.partial.pop(tid, None)
        if not last.get("skipped"):
            self.work_done += self.cost(tid, cfg) * (row.get("steps_done") or 0) / cfg.steps
        self.ended_here.add(tid)
        self.say(row["status"] if not last.get("skipped") else "skipped", self._outcome_text(tid, row, last))
        self.line()

    def retrying(self, tid: str, text: str) -> None:
        self.partial[tid] = 0.0
        self.recovering.add(tid)
        self.say("retry", text)

    def failed(self, tid: str, error: str) -> None:
        self.partial.pop(tid, None)
        self.ended_here.add(tid)
        self.say("failed", f"{tid}: {error.splitlines()[0]}")
        self.line()

    def _outcome_text(self, tid: str, row: dict, last: TrialReport) -> str:
        if last.get("skipped"):
            return f"{tid} (already {row['status']} in trials.parquet)"
        wall = f"{row.get('wall_s') or 0:.1f} s"
        if row["status"] == "diverged":
            return f"{tid}  at step {row.get('diverged_step')}  {wall}"
        if row["status"] == "pruned":
            where = f"{row.get('steps_done')}/{row.get('steps_planned')}"
            return f"{tid}  stopped at step {where}  val {_number(row.get('final_val_loss'))}"
        pr = last.get("pr_q")
        pr = pr if isinstance(pr, (int, float)) and math.isfinite(pr) else None
        return f"{tid}  val {_number(row.get('final_val_loss'))}  PR(q)/d_head {_number(pr)}  {wall}"
