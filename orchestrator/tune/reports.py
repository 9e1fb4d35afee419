"""What a trial reports to Tune, typed once: the trainable writes these dicts, the driver reads them.

Tune sees plain dicts (and adds keys of its own: training_iteration, node_ip, hostname, pid, ...).
Our keys are declared here so that the trainable, the monitor, the ledger and the study searcher
agree on them, and a type checker catches a misspelt one. No Ray import: the driver's bookkeeping
and the tests can read reports without it.
"""

from __future__ import annotations

import json
from typing import TypedDict, cast

OBJECTIVE = "objective"  # the metric searchers (OptunaSearch) and schedulers (ASHA) minimise
RUNG_STEP = "rung_step"  # the time attribute of schedulers (ASHA)


class TrialReport(TypedDict, total=False):
    """One `tune.report` of a trial: after each eval and checkpoint, and once at the end.

    In the last report every None is sent as NaN (Tune stores results as numbers).
    """

    # Who and where; the same in every report of one attempt.
    sweep_trial_id: str  # our trial_id (Tune's own "trial_id" key names its Trial object)
    attempt: str  # random per start of the trainable, so a restart opens a new attempts row
    # Where the attempt runs: in its first report and its last only (the ledger reads them when
    # the first report opens the attempt).
    node_id: str
    resumed_step: int | None  # the checkpoint step this attempt resumed from, else None
    torch_threads: int  # torch's CPU threads in the trial's process (what Ray's CPUs gave it)
    torch_cpu_capability: str  # the level torch's CPU kernels run at there (AVX512, AVX2, ...)
    # Progress.
    step: int
    status: str  # "running" until the last report, then the trial's final status
    train_loss: float
    val_loss: float
    pr_q: float  # layer- and head-averaged PR of q, divided by d_head (a live signal)
    pr_k: float
    tokens: int
    wall_s: float
    objective: float
    rung_step: int  # absent from the eval after the last update, so ASHA never stops a finished trial
    # The last report only.
    final: bool  # absent or False when a scheduler stopped the trial early (pruned)
    skipped: bool  # the trial was already finished in trials.parquet; nothing ran
    row_json: str  # the trial's trials.parquet row (trainer.trials.trial_row), which the driver files
    # Added by Tune itself.
    node_ip: str
    hostname: str
    pid: int


assert {OBJECTIVE, RUNG_STEP} <= set(TrialReport.__annotations__), "the constants name TrialReport keys"


def as_report(result: dict | None) -> TrialReport:
    """A result Tune hands the driver (a callback's `result`, `trial.last_result`), typed."""
    return cast(TrialReport, result or {})


def is_final(report: TrialReport) -> bool:
    """The trial's last report: it ran to its end (completed or diverged), or was skipped."""
    return bool(report.get("final"))


def final_row(report: TrialReport) -> dict:
    """The trials.parquet row a last report carries, as the trial built it."""
    return json.loads(report["row_json"])
