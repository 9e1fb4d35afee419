"""The Tune trainable: one thin function around `trainer.loop.run_trial`.

Tune hands it a config dict: the TrialConfig fields of one grid point, flat (so that
`result.config["lr"]` works on Tune's ResultGrid), "lr" set by the searcher in an LR study; the
corpus arrives once per worker through `tune.with_parameters`. It resumes from `tune.get_checkpoint()`, reports after every eval and every checkpoint (with the checkpoint
attached), and ends with a report that carries the trial's trials.parquet row as JSON, which the
driver (the only writer of trials.parquet) files.
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import tune

from trainer.config import TrialConfig
from trainer.data import TokenData, corpus_key
from trainer.loop import TrialHooks, run_trial
from trainer.provenance import torch_cpu_capability
from trainer.schema import FINISHED_STATUSES
from trainer.storage import ResultsDir
from trainer.trials import read_trials

from .reports import OBJECTIVE, RUNG_STEP, TrialReport

TRIAL_KEY = "trial"  # where Tune configs before issue 21 held the fields ({"trial": {...}}); still read


@dataclass(frozen=True)
class TrainableOptions:
    results_uri: str  # the sweep's folder: metrics/ and spectra/ go here (shared storage on a cluster)
    threads: int = 1  # torch CPU threads per trial (= cpus_per_trial) unless train.threads says otherwise
    objective: str = "val_loss"  # what `objective` reports: searchers and schedulers minimise it
    penalty: float | None = None  # objective for a diverged trial; None = the trial's max_loss
    fail_at_step: int | None = None  # testing only: fail once, right after the first checkpoint at/after this step


def trial_fields(tune_config: dict) -> dict:
    """The TrialConfig fields of a Tune trial's config: flat, or nested under TRIAL_KEY as Tune
    experiments written before issue 21 hold them (so `--resume` of such a sweep still works); a
    top-level "lr" (a searcher's) overrides the grid point's."""
    nested = tune_config.get(TRIAL_KEY)
    values = dict(nested) if isinstance(nested, dict) else {k: v for k, v in tune_config.items() if k != TRIAL_KEY}
    if "lr" in tune_config:
        values["lr"] = float(tune_config["lr"])
    return values


def trial_config(tune_config: dict) -> TrialConfig:
    """The TrialConfig of a Tune trial (either form of `trial_fields`)."""
    return TrialConfig(**trial_fields(tune_config))


class InjectedFailure(RuntimeError):
    """Raised by the fault injection the tests use to exercise retries and --resume."""


class TuneHooks(TrialHooks):
    """Forward the loop's reports (and checkpoints) to Tune."""

    def __init__(self, cfg: TrialConfig, trial_id: str, options: TrainableOptions, resumed: bool):
        self.cfg, self.trial_id, self.options, self.resumed = cfg, trial_id, options, resumed
        self.context: TrialReport = {"sweep_trial_id": trial_id, "attempt": uuid.uuid4().hex[:12]}
        self.node_id = ray.get_runtime_context().get_node_id()
        # The latest eval, repeated in every report so that each carries the current val loss and PRs.
        self.last: TrialReport = {"val_loss": math.nan, "pr_q": math.nan, "pr_k": math.nan}
        self.resumed_step: int | None = None
        self.opened = False  # whether this attempt's first report went out

    def on_start(self, row, resumed_step):
        self.resumed_step = resumed_step

    def attempt_facts(self, final: bool = False) -> TrialReport:
        """Where this attempt runs, with how many torch threads at which CPU kernel level, and the
        step it resumed from: the driver reads them when an
        attempt's first report arrives (ledger.py), so they go with that report and the
        last one only, not into every line of Tune's result.json and progress.csv."""
        if self.opened and not final:
            return {}
        self.opened = True
        return {
            "node_id": self.node_id,
            "resumed_step": self.resumed_step,
            # asked now, once the trial has set its threads: what ran it decides its last digits
            "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch_cpu_capability(),
        }

    def on_report(self, step, metrics, checkpoint_dir):
        self.last.update({k: v for k, v in metrics.items() if k in self.last})
        result: TrialReport = {
            **self.context,
            **self.attempt_facts(),
            **self.last,
            **metrics,
            "final": False,
        }
        result[OBJECTIVE] = self._objective(result.get(self.options.objective), diverged=False)
        if step < self.cfg.steps:  # ASHA's clock; absent from the eval after the last update, so a
            result[RUNG_STEP] = step  # scheduler never stops a trial that has finished training
        if checkpoint_dir is not None:
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
            fail_at = self.options.fail_at_step
            if fail_at is not None and step >= fail_at and not self.resumed:
                raise InjectedFailure(f"injected failure after the checkpoint at step {step}")
        else:
            tune.report(result)

    def _objective(self, value, diverged: bool) -> float:
        penalty = self.options.penalty if self.options.penalty is not None else self.cfg.max_loss
        if diverged or value is None or not math.isfinite(value):
            return float(penalty)
        return float(value)

    def final_result(self, row: dict, skipped: bool = False) -> TrialReport:
        last_step = max((row.get("steps_done") or 0) - 1, 0)
        result: TrialReport = {
            **self.context,
            **self.attempt_facts(final=True),
            **self.last,
            "step": last_step,
            "status": row["status"],
            "train_loss": row.get("final_train_loss"),
            "val_loss": row.get("final_val_loss"),
            "tokens": row.get("tokens"),
            "wall_s": row.get("wall_s"),
            "final": True,
            "skipped": skipped,
            "row_json": json.dumps(row),
        }
        result[OBJECTIVE] = self._objective(result["val_loss"], diverged=row["status"] == "diverged")
        return {k: (math.nan if v is None else v) for k, v in result.items()}  # type: ignore[return-value]


def finished_row(results: ResultsDir, trial_id: str) -> dict | None:
    """This trial's row if trials.parquet already has it completed or diverged (never run twice)."""
    try:
        rows = read_trials(results)
    except Exception:  # a half-visible file on an eventually consistent store: just run the trial
        return None
    return next((r for r in rows if r["trial_id"] == trial_id and r["status"] in FINISHED_STATUSES), None)


def train_trial(config: dict, tokens: dict[tuple, TokenData], options: TrainableOptions) -> None:
    """The function Tune runs for every trial."""
    cfg = trial_config(config)
    trial_id = cfg.trial_id()
    if cfg.threads == 0:  # the CPUs Ray gave this trial (resources.per_width may differ by width)
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        torch.set_num_threads(max(1, int(assigned or options.threads)))
    results = ResultsDir(options.results_uri)
    checkpoint = tune.get_checkpoint()
    hooks = TuneHooks(cfg, trial_id, options, resumed=checkpoint is not None)
    done = finished_row(results, trial_id)
    if done is not None:
        tune.report(hooks.final_result(done, skipped=True))
        return
    with tempfile.TemporaryDirectory(prefix="qk-trial-") as scratch:
        resume_from = Path(checkpoint.to_directory(str(Path(scratch, "restore")))) if checkpoint else None
        row = run_trial(
            cfg,
            results,
            trial_id=trial_id,
            tokens=tokens[corpus_key(cfg)],
            hooks=hooks,
            checkpoint_dir=Path(scratch, "checkpoint"),
            resume_from=resume_from,
        )
    tune.report(hooks.final_result(row))
