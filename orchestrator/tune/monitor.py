"""The driver's view of a running sweep: a thin `tune.Callback` joining the ledger and the console.

Tune calls `SweepMonitor` in the driver on every trial event; it files the event with the
`Ledger` (the only writer of trials.parquet and attempts.parquet) and shows it with `Progress`
(event lines, the progress line, the ETA). Error texts of failed attempts are read here.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field

from ray import tune

from trainer.config import TrialConfig
from trainer.sink import TrialSink
from trainer.storage import ResultsDir

from ..spec.plan import Expected
from .ledger import Ledger
from .progress import Counts, Progress
from .reports import as_report
from .trainable import trial_config

ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
    expected: Expected | None = None  # the plan's seconds per trial: the ETA's prior (None: by FLOPs)

    def __post_init__(self):
        self.ledger = Ledger(self.results, self.corpus_hash)  # settles what a dead driver left "running"
        self.progress = Progress(
            self.plan,
            self.n_planned,
            self.to_run,
            self.ledger.status,
            every_s=self.progress_every_s,
            stream=self.stream,
            verbose=self.verbose,
            expected=self.expected,
        )
        self.by_tune_id: dict[str, str] = {}

    def trial_id_of(self, trial) -> str:
        """Our trial_id of a Tune trial; a trial a searcher proposed joins the plan here."""
        tid = self.by_tune_id.get(trial.trial_id)
        if tid is None:
            cfg = trial_config(trial.config)
            tid = cfg.trial_id()
            self.by_tune_id[trial.trial_id] = tid
            self.plan.setdefault(tid, cfg)
            self.to_run.add(tid)
        return tid

    def counts(self) -> Counts:
        return self.progress.counts()

    def say(self, kind: str, text: str) -> None:
        self.progress.say(kind, text)

    # ---- tune.Callback -------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        self.ledger.started(tid, self.plan[tid])
        self.progress.started(tid)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = self.trial_id_of(trial)
        cfg, report = self.plan[tid], as_report(result)
        resumed = self.ledger.reported(tid, cfg, trial.trial_id, report)
        if resumed:
            self.say("resumed", f"{tid} from its checkpoint at step {resumed}")
        self.progress.advanced(tid, cfg, int(report.get("step", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        cfg, last = self.plan[tid], as_report(trial.last_result)
        row = self.ledger.completed(tid, cfg, last)
        if row["status"] == "pruned":
            self.compact(tid)
        self.progress.ended(tid, cfg, row, last)

    def compact(self, tid: str) -> None:
        """One part per folder for a trial a scheduler stopped: it never reached the end of
        Trial.run, where a trial compacts its own parts. A failure here costs only disk and read
        time (the parts stay as written), so it is a note, not an error."""
        try:
            TrialSink(self.results, tid).compact()
        except Exception as exc:  # noqa: BLE001 - a note, the sweep goes on
            self.say("note", f"{tid}: its Parquet parts were not compacted ({type(exc).__name__}: {exc})")

    def on_trial_recover(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        error = error_summary(_safe_error(trial))
        self.ledger.retrying(tid, error)
        tries = f"{trial.num_failures}/{self.max_retries}" if self.max_retries >= 0 else f"{trial.num_failures}"
        self.progress.retrying(
            tid, f"{tid} (failure {tries}; resumes from its last checkpoint): {error.splitlines()[0]}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = self.trial_id_of(trial)
        error = error_summary(_safe_error(trial))
        self.ledger.failed(tid, self.plan[tid], error)
        self.progress.failed(tid, error)

    def on_step_end(self, iteration, trials, **info):
        self.ledger.flush()
        if self.progress.line_due():
            self.progress.line()

    def on_experiment_end(self, trials, **info):
        self.ledger.flush(force=True)

    def finish(self) -> Counts:
        """After fit(): mark what is still running as interrupted (Ctrl-C, driver stop), write everything."""
        self.ledger.finish()
        return self.counts()

    # Tune pickles callbacks into its experiment state and `Tuner.restore` takes no new ones, so the
    # monitor (files, streams) pickles as a placeholder that unpickles to the one registered now.
    def __reduce__(self):
        return (_registered_monitor, ())


_LIVE: list = []


def register(monitor: SweepMonitor | None) -> None:
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
