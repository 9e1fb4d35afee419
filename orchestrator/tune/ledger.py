"""The driver's ledger: the only writer of trials.parquet and attempts.parquet in a sweep or LR study.

trials.parquet has one row per trial, rewritten atomically as trials change state (progress in
between is throttled to one write every WRITE_EVERY_S). attempts.parquet has one row per attempt
of a trial: which node ran it, where it resumed, how it ended. Trials report through Tune (see
reports.py) and never write these files themselves, so there is one writer and no race.

When the disk fills up, the driver's last write (the trials it leaves unfinished marked `failed`)
would fail too and leave them `running`. So on a local disk the ledger keeps a hidden reserve file
(`.ledger-reserve`, RESERVE_BYTES or twice the size of its files) that `finish` deletes to make room
for that write when the disk is full; it is deleted at every finish.
"""

from __future__ import annotations

import math
import os
import time

import pyarrow as pa

from trainer.config import TrialConfig
from trainer.provenance import now_iso
from trainer.safeio import environment_problem
from trainer.schema import ATTEMPTS_FILE, ATTEMPTS_FILE_SCHEMA, ATTEMPTS_SCHEMA, TRIALS_FILE, empty_trial_row
from trainer.storage import ResultsDir
from trainer.trials import read_trials, trial_row, write_trials

from .lock import check_held
from .reports import TrialReport, final_row, is_final

WRITE_EVERY_S = 5.0
RESERVE_FILE = ".ledger-reserve"  # hidden: no *.parquet glob or report lists it
RESERVE_BYTES = 256 * 1024  # trials.parquet of 480 trials is ~24 KB


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _whole(value) -> int | None:
    """A count a report carries (Tune may hand it back as a float), or None."""
    value = _finite(value)
    return None if value is None else int(value)


class Ledger:
    """trials.parquet and attempts.parquet in memory, written whole when they change."""

    def __init__(self, results: ResultsDir, corpus_hash: str | None = None):
        self.results, self.corpus_hash = results, corpus_hash
        self.rows: dict[str, dict] = {r["trial_id"]: r for r in read_trials(results)}
        self.attempts: list[dict] = self._read_attempts()
        self.current_attempt: dict[str, dict] = {}  # trial_id -> its open attempt record
        self.last_write = 0.0
        self.dirty = False
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
        self.reserve = self._reserve()

    def _reserve(self) -> str | None:
        """Set aside room on a local disk for the last write (see the module's docstring); None when
        there is no room even for that, or the results are not on a local disk."""
        if not self.results.is_local:
            return None
        path = self.results.local_path(RESERVE_FILE)
        size = RESERVE_BYTES
        for name in (TRIALS_FILE, ATTEMPTS_FILE):
            try:
                size = max(size, 2 * os.stat(self.results.local_path(name)).st_size)
            except OSError:
                pass
        try:
            self.results.makedirs()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:  # no room even for that: no reserve
            os.close(fd)
            path.unlink(missing_ok=True)
            return None
        os.close(fd)
        return str(path)

    def _free_reserve(self) -> bool:
        """Delete the reserve; whether there was one."""
        path, self.reserve = self.reserve, None
        if path is None:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

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
        check_held(self.results)  # a driver whose lock was taken over (it was paused) writes nothing more
        write_trials(self.results, list(self.rows.values()))
        columns = {name: [a.get(name) for a in self.attempts] for name in ATTEMPTS_SCHEMA.names}
        self.results.write_table(pa.table(columns, schema=ATTEMPTS_FILE_SCHEMA), ATTEMPTS_FILE)
        self.last_write, self.dirty = now, False

    def _changed(self, force: bool) -> None:
        self.dirty = True
        self.flush(force=force)

    def status(self, tid: str) -> str | None:
        return self.rows.get(tid, {}).get("status")

    def _row_or_planned(self, tid: str, cfg: TrialConfig) -> dict:
        return self.rows.get(tid) or trial_row(cfg, self.corpus_hash)

    # ---- trial events --------------------------------------------------------------------
    def started(self, tid: str, cfg: TrialConfig) -> None:
        """A fresh "running" row; steps and tokens of an earlier attempt stay until it reports."""
        previous = self.rows.get(tid)
        row = trial_row(cfg, self.corpus_hash)
        if previous is not None and previous["status"] != "running":
            row.update(steps_done=previous.get("steps_done") or 0, tokens=previous.get("tokens") or 0)
        self.rows[tid] = row
        self.current_attempt.pop(tid, None)
        self._changed(force=True)

    def reported(self, tid: str, cfg: TrialConfig, tune_trial_id: str, report: TrialReport) -> int | None:
        """File one report; returns the resumed step when it opened a new attempt that resumed."""
        attempt, resumed = self._attempt(tid, tune_trial_id, report)
        step = int(report.get("step", 0))
        attempt["last_step"] = step
        if is_final(report):
            row = final_row(report)  # the row the trial built (trainer.trials.trial_row)
            self.rows[tid] = {k: row.get(k) for k in empty_trial_row()}
            if report.get("skipped"):
                attempt["outcome"] = "skipped"
        else:
            row = self.rows.setdefault(tid, trial_row(cfg, self.corpus_hash))
            row.update(
                status="running",
                steps_done=min(step + 1, cfg.steps),
                tokens=int(report.get("tokens") or 0),
                final_train_loss=_finite(report.get("train_loss")),
                final_val_loss=_finite(report.get("val_loss")),
                wall_s=_finite(report.get("wall_s")),
            )
        self._changed(force=False)
        return resumed

    def completed(self, tid: str, cfg: TrialConfig, last: TrialReport) -> dict:
        """The trial ended normally; without a last report a scheduler (ASHA) stopped it: pruned."""
        if not is_final(last):
            row = self._row_or_planned(tid, cfg)
            row.update(status="pruned")
            self.rows[tid] = row
        row = self.rows[tid]
        self._close_attempt(tid, row["status"])
        self._changed(force=True)
        return row

    def retrying(self, tid: str, error: str) -> None:
        """The attempt failed and Tune retries the trial from its last checkpoint."""
        self._close_attempt(tid, "error", error)
        self._changed(force=True)

    def failed(self, tid: str, cfg: TrialConfig, error: str) -> None:
        """Out of retries: the row is failed with the error text."""
        row = self._row_or_planned(tid, cfg)
        row.update(status="failed", error=error)
        self.rows[tid] = row
        self._close_attempt(tid, "failed", error)
        self._changed(force=True)

    def finish(self) -> None:
        """Mark what is still running as interrupted (Ctrl-C, driver stop) and write everything."""
        for tid, row in self.rows.items():
            if row["status"] == "running":
                row.update(status="failed", error="interrupted before it finished; run again with --resume")
                self._close_attempt(tid, "interrupted")
                self.dirty = True
        try:
            self.flush(force=True)
        except Exception as exc:
            if environment_problem(exc) is None or not self._free_reserve():
                raise
            self.flush(force=True)  # the disk is full: the reserve makes room for how the trials ended
        self._free_reserve()

    # ---- attempts --------------------------------------------------------------------------
    def _attempt(self, tid: str, tune_trial_id: str, report: TrialReport) -> tuple[dict, int | None]:
        """The attempt record this report belongs to (a new one when the trainable restarted)."""
        key = report.get("attempt")
        current = self.current_attempt.get(tid)
        if current is not None and current["attempt"] == key:
            return current, None
        if current is not None and current["outcome"] is None:
            current.update(outcome="restarted", ended_at=now_iso())
        resumed = report.get("resumed_step")
        resumed = int(resumed) if _finite(resumed) is not None else None
        current = {
            "trial_id": tid,
            "attempt": key,
            "tune_trial_id": tune_trial_id,
            "node_id": report.get("node_id"),
            "node_ip": report.get("node_ip"),
            "hostname": report.get("hostname"),
            "pid": report.get("pid"),
            "resumed_step": resumed,
            "last_step": None,
            "started_at": now_iso(),
            "ended_at": None,
            "outcome": None,
            "error": None,
            "torch_threads": _whole(report.get("torch_threads")),
            "torch_cpu_capability": report.get("torch_cpu_capability"),
        }
        self.attempts.append(current)
        self.current_attempt[tid] = current
        return current, resumed

    def _close_attempt(self, tid: str, outcome: str, error: str | None = None) -> None:
        current = self.current_attempt.pop(tid, None)
        if current is not None:
            current.update(outcome=current["outcome"] or outcome, ended_at=now_iso(), error=error)
