"""What a command takes and what a sweep returns: one typed options object per command.

`python -m orchestrator.sweep` parses its argv into `SweepOptions` and makes one library call
(`orchestrator.tune.sweep_run.sweep`); `orchestrator.run_sweep` (the Python API) builds the same
options from its arguments and calls the same function. Likewise `StudyOptions` for
`python -m orchestrator.lr_study` (`orchestrator.tune.study_run.lr_study`). No Ray here, so that
`import orchestrator` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .spec.costs import DEFAULT_GPU


@dataclass(frozen=True)
class RunOptions:
    """What both commands share: where the spec comes from, where results go, where Ray runs."""

    config: str | None = None  # a spec file or a bundled spec's name; None: the bundled default
    results: str | None = None  # results folder or URI; None: the spec's `results:`
    address: str | None = None  # a Ray cluster to join ('auto' on a head node); None: find one or start one
    local: bool = False  # always start a private local Ray
    num_cpus: int | None = None  # CPUs of that private Ray; None: all
    quiet: bool = False  # no per-trial lines
    verbose_ray: bool = False  # Ray's and Tune's own logs too
    gpu: str = DEFAULT_GPU  # the GPU type the plan packs onto and costs on (--dry-run, and a run's first ETA)
    mfu: float | None = None  # --dry-run: also GPU-hours at this assumed MFU (the plan's own are measured)
    device_kind: str | None = (
        None  # --dry-run: cpu, h200, h100, ...: the calibration rows used; None: from the trials and --gpu
    )
    num_gpus: int | None = None  # --dry-run: GPUs the wall time assumes; None: 1
    calibration: str | None = None  # --dry-run: another calibration table (JSON); None: the package's
    json: bool = False  # --dry-run: print the plan as one JSON object


@dataclass(frozen=True)
class SweepOptions(RunOptions):
    """`python -m orchestrator.sweep` / `orchestrator.run_sweep`."""

    overrides: tuple[str, ...] = ()  # --set items, applied in order over the spec file
    spec: Any = None  # a SweepSpec or the mapping of a sweep file, given directly (Python API)
    resume: bool = False  # continue an interrupted sweep from its trials' checkpoints
    chunk: str | None = None  # "I/N": run only the I-th of N parts of the grid, into <results>/<name>-chunkIofN
    chunks_for: float | None = None  # --dry-run: the fewest chunks each predicted to take at most this many minutes
    progress_every: float = 30.0  # seconds between progress lines
    inject_failure_at: int | None = None  # tests: fail each trial once after its checkpoint at this step
    again: str = "python -m orchestrator.sweep --resume"  # what continues this run (the hint after an interrupt)


@dataclass(frozen=True)
class StudyOptions(RunOptions):
    """`python -m orchestrator.lr_study`."""

    trials: int | None = None  # trials to add to each arm's study; None: search.trials_per_arm
    overrides: tuple[str, ...] = ()  # --set items, applied in order over the LR-study file
    resume: bool = False  # run only the trials the interrupted run left of its budget per arm
    progress_every: float = 30.0  # seconds between progress lines
    again: str = "python -m orchestrator.lr_study --resume"  # what continues this run (the hint after an interrupt)


@dataclass(frozen=True)
class SweepResult:
    """What `orchestrator.run_sweep` returns."""

    results: str  # the sweep's folder <results>/<name> (a local path or a URI)
    exit_code: int  # as the command's: 0 done, 1 some trials failed, 130 interrupted (resume=True continues)
    experiment: str | None = None  # the Tune experiment folder of the last run (<results>/<name>/tune/run-...)

    @cached_property
    def grid(self):
        """Ray Tune's ResultGrid of that run, read from its files (None when nothing ran). Each
        result's `config` is the trial's TrialConfig fields (`config["lr"]`); `get_best_result()`
        ranks by the reported "objective" (val_loss; a diverged trial's is its max_loss), lowest first."""
        if self.experiment is None:
            return None
        from ray.tune import ExperimentAnalysis, ResultGrid  # Ray only when asked for

        # "objective" is orchestrator.tune.reports.OBJECTIVE (not imported: this module stays light)
        return ResultGrid(ExperimentAnalysis(self.experiment, default_metric="objective", default_mode="min"))

    @property
    def path(self) -> Path:
        """The sweep folder as a local Path (a ValueError for a URI: use `results`)."""
        if "://" in self.results and not self.results.startswith("file://"):
            raise ValueError(f"{self.results} is not a local folder")
        return Path(self.results.removeprefix("file://"))

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def load(self):
        """The results as `analysis.load` returns them (trials DataFrame, metrics/spectra LazyFrames)."""
        import analysis

        return analysis.load(self.results)
