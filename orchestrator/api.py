"""The Python API of the sweep: `orchestrator.run_sweep(...)`, the command line as a function.

    import orchestrator
    res = orchestrator.run_sweep("smoke", results="/tmp/r", overrides=["steps=20"])
    res.path                      # /tmp/r/smoke: sweep.json, trials.parquet, metrics/, spectra/, tune/
    res.grid.get_dataframe()      # Ray Tune's ResultGrid: one row per trial of the last run

It builds the same `SweepOptions` as `python -m orchestrator.sweep` and makes the same library call
(orchestrator.tune.sweep_run.sweep). Nothing heavy is imported until `run_sweep` is called
(`import orchestrator` does not import Ray or torch).
"""

from __future__ import annotations

import json
import os

from trainer.errors import ConfigError, short_repr

from .options import SweepOptions, SweepResult


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
    chunk: str | None = None,
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
    chunk: "I/N", as --chunk: only the I-th of N parts of the grid, into <results>/<name>-chunkIofN.

    Bad input raises `trainer.config.ConfigError` before Ray starts and before anything is written.
    Finished trials are never run again, so calling it twice is cheap. `SweepResult.grid` is Ray
    Tune's ResultGrid of the last run (Tune's result.json / progress.csv per trial);
    `analysis.load(result.results)` and `analysis.analyse(...)` read the project's own files.
    """
    from .tune.sweep_run import sweep  # Ray, Tune and torch: imported on the first call

    by_path = isinstance(spec_or_path, (str, os.PathLike))
    options = SweepOptions(
        config=str(spec_or_path) if by_path else None,
        spec=None if by_path else spec_or_path,
        overrides=tuple(_override_items(overrides)),
        results=None if results is None else str(results),
        address=address,
        local=local,
        num_cpus=num_cpus,
        quiet=quiet,
        resume=resume,
        chunk=chunk,
        again="orchestrator.run_sweep(..., resume=True) with the same arguments",
    )
    return sweep(options)


def _override_items(overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{key}={_as_yaml(key, value)}" for key, value in overrides.items()]
    return [str(item) for item in overrides]


def _as_yaml(key, value) -> str:
    """An override's value as --set text (JSON is YAML); ConfigError for one JSON cannot write (an
    integer past Python's 4,300-digit limit, an object)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        from trainer.config import MAX_INT_DIGITS  # pydantic: only when a message needs it

        raise ConfigError(
            f"overrides[{key!r}]: {short_repr(value, 60)} is not a value a setting takes (numbers of at most"
            f" {MAX_INT_DIGITS} digits, strings, true/false, null, and lists and mappings of them)"
        ) from None
