"""The Python API of the sweep: `orchestrator.run_sweep(...)`, the command line as a function.

    import orchestrator
    res = orchestrator.run_sweep("smoke", results="/tmp/r", overrides=["steps=20"])
    res.path                      # /tmp/r/smoke: sweep.json, trials.parquet, metrics/, spectra/, tune/
    res.grid.get_dataframe()      # Ray Tune's ResultGrid: one row per trial of the last run

Nothing heavy is imported until `run_sweep` is called (`import orchestrator` does not start or import Ray).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SweepResult:
    """What `run_sweep` returns."""

    results: str  # the sweep's folder <results>/<name> (a local path or a URI)
    exit_code: int  # as the command's: 0 done, 1 some trials failed, 130 interrupted (resume=True continues)
    experiment: str | None = None  # the Tune experiment folder of the last run (<results>/<name>/tune/run-...)
    grid: Any = field(default=None, repr=False)  # ray.tune.ResultGrid of that run (None when nothing ran)

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


def run_sweep(
    spec_or_path,
    *,
    results: str | os.PathLike | None = None,
    address: str | None = None,
    resume: bool = False,
    overrides: list[str] | dict | None = None,
    local: bool = False,
    num_cpus: int | None = None,
    quiet: bool = True,
) -> SweepResult:
    """Run a sweep as `python -m orchestrator.sweep` would, and return where its results are.

    spec_or_path: a sweep file, a bundled sweep's name ("smoke", "default", "paradox", "cpu_study"),
        a mapping with the sweep file's content, or an `orchestrator.spec.SweepSpec`.
    results: the results folder or URI (default: the spec's `results:`); the sweep goes in <results>/<name>.
    address: a Ray cluster to join ("auto" on a head node); default: a Ray already initialised in this
        process, else the cluster this machine belongs to, else a private local Ray started for the run.
    resume: continue an interrupted sweep from its trials' checkpoints (as --resume).
    overrides: `--set` items (["train.steps=50", "grid.seed=[0,1]"]) or a dict {"train.steps": 50}.
    local, num_cpus: as --local and --num-cpus. quiet: no per-trial lines (progress lines stay).

    Bad input raises `trainer.config.ConfigError` before Ray starts and before anything is written.
    Finished trials are never run again, so calling it twice is cheap. `SweepResult.grid` is Ray
    Tune's ResultGrid of the last run (Tune's result.json / progress.csv per trial);
    `analysis.load(result.results)` and `analysis.analyse(...)` read the project's own files.
    """
    from trainer.config import ConfigError

    from . import sweep as cli
    from .overrides import apply_overrides
    from .spec import SweepSpec, load_spec
    from .validation import parse_model

    items = _override_items(overrides)
    argv = []
    if isinstance(spec_or_path, (str, os.PathLike)):
        argv += ["--config", str(spec_or_path)]
        for item in items:
            argv += ["--set", item]
    for flag, value in (("--results", results), ("--address", address), ("--num-cpus", num_cpus)):
        if value is not None:
            argv += [flag, str(value)]
    argv += [flag for flag, on in (("--resume", resume), ("--local", local), ("--quiet", quiet)) if on]
    args = cli.parse_args(argv)
    if isinstance(spec_or_path, SweepSpec):
        spec_or_path = spec_or_path.model_dump(mode="json")
    if isinstance(spec_or_path, dict):
        args.spec = (parse_model(SweepSpec, apply_overrides(spec_or_path, items), "run_sweep"), "<python>")
    elif not isinstance(spec_or_path, (str, os.PathLike)):
        raise ConfigError(
            f"run_sweep: expected a sweep file, a bundled sweep's name, a mapping or a SweepSpec, "
            f"got {type(spec_or_path).__name__}"
        )
    else:
        load_spec(spec_or_path, items)  # validate here too: a ConfigError, not a printed message
    prep = cli.prepare(args)
    code = cli.run_sweep(prep, args)
    experiment = _last_experiment(prep.results)
    return SweepResult(
        results=prep.results.uri,
        exit_code=code,
        experiment=experiment,
        grid=result_grid(experiment) if experiment else None,
    )


def _override_items(overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        import json

        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    return [str(item) for item in overrides]


def _last_experiment(results) -> str | None:
    from trainer.schema import SWEEP_JSON

    if not results.exists(SWEEP_JSON):
        return None
    runs = results.read_json(SWEEP_JSON).get("runs") or []
    return next((r.get("tune_experiment") for r in reversed(runs) if r.get("tune_experiment")), None)


def result_grid(experiment: str):
    """Ray Tune's ResultGrid of one experiment folder, read from its files (no Ray needed)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(experiment))
