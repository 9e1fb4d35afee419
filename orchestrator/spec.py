"""Sweep files: the pydantic spec, loading, and expansion into validated trial configs.

A sweep file (YAML) names the grid axes, the shared trial settings (`train:`, TrialConfig field
names), the resources per trial, retries and the results location. Everything is validated here,
before Ray starts and before anything is written: every grid point becomes a `TrialConfig` up
front, so a bad value fails in milliseconds with one message naming the field and the value.
The shared checks are in validation.py, finding the file in bundled.py, `--set` in overrides.py,
and the lr_study file (which extends `RunSpec`) in study_spec.py.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from trainer.config import ConfigError, TrialConfig, build_config, load_yaml, short_repr
from trainer.storage import ResultsDir, check_writable

from .bundled import resolve_config
from .lr_best import arm_name, read_lr_best
from .overrides import apply_overrides
from .validation import (
    AXES,
    EXTRA_AXES,
    NAME_MAX,
    NAME_PATTERN,
    STRICT,
    as_list,
    check_callbacks,
    check_train_keys,
    parse_model,
)


class FromStudy(BaseModel):
    """LRs from an lr_study: each arm's best LR times each multiplier."""

    model_config = STRICT
    from_study: str = Field(description="an lr_study results folder (<results>/<name>) holding lr_best.parquet")
    multipliers: list[float] = Field([0.5, 1.0, 2.0], min_length=1, description="factors applied to each arm's best LR")

    @field_validator("multipliers")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        for m in value:
            if not m > 0 or not math.isfinite(m):
                raise ValueError(f"every multiplier must be > 0, got {m!r}")
        return value


class Grid(BaseModel):
    """The axes. Each is a list or one value; an axis left out takes its value from `train:`."""

    model_config = STRICT
    optimizer: list[str] | None = None
    qk_norm: list[str] | None = None
    width: list[int] | None = None
    lr: list[float] | FromStudy | None = None
    seed: list[int] | None = None
    init: list[str] | None = None
    init_std: list[float] | None = None

    @field_validator(*AXES, *EXTRA_AXES, mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return as_list(value)

    @field_validator(*AXES, *EXTRA_AXES)
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("empty list: the grid would have no trials")
        return value


class WidthResources(BaseModel):
    """One `resources.per_width` entry; a field left out takes the top-level value."""

    model_config = STRICT
    cpus_per_trial: float | None = Field(None, gt=0, le=1024, description="CPU slots per trial of this width")
    gpus_per_trial: float | None = Field(None, ge=0, le=64, description="GPUs per trial of this width")

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError(f"above 1 a trial takes whole GPUs, got {value}")
        return value


class Resources(BaseModel):
    model_config = STRICT
    cpus_per_trial: float = Field(1, gt=0, le=1024, description="CPU slots per trial; also its torch thread count")
    gpus_per_trial: float = Field(
        0, ge=0, le=64, description="fractional (e.g. 0.25) lets several small trials share a GPU"
    )
    max_concurrent: int | None = Field(None, ge=1, description="cap on trials at once; null = as resources allow")
    per_width: dict[int, WidthResources] = Field(
        default_factory=dict,
        description="{width: {gpus_per_trial, cpus_per_trial}}: an entry applies to trials of "
        "that width and wider, up to the next entry (e.g. {256: {gpus_per_trial: 0.25}, 2048: {gpus_per_trial: 1}} "
        "packs four trials of width 256-1024 on a GPU and gives width 2048 a whole one); narrower trials use the "
        "values above",
    )

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"above 1 a trial takes whole GPUs, got {value}")
        return value

    @field_validator("per_width")
    @classmethod
    def _positive_widths(cls, value: dict) -> dict:
        bad = [w for w in value if w <= 0]
        if bad:
            raise ValueError(f"widths must be > 0, got {bad}")
        return value

    def for_width(self, width: int) -> tuple[float, float]:
        """(cpus, gpus) for one trial of this width: the entry with the largest key <= width."""
        keys = [w for w in self.per_width if w <= width]
        entry = self.per_width[max(keys)] if keys else WidthResources()
        cpus = entry.cpus_per_trial if entry.cpus_per_trial is not None else self.cpus_per_trial
        gpus = entry.gpus_per_trial if entry.gpus_per_trial is not None else self.gpus_per_trial
        return float(cpus), float(gpus)

    def largest(self, widths=None) -> tuple[float, float]:
        """The most CPUs and GPUs any trial asks for (over `widths`, or every entry)."""
        asks = (
            [self.for_width(w) for w in widths]
            if widths
            else [(self.cpus_per_trial, self.gpus_per_trial), *(self.for_width(w) for w in self.per_width)]
        )
        return max(c for c, _ in asks), max(g for _, g in asks)


class Checkpoints(BaseModel):
    """What is left of a trial's Tune checkpoints once it has finished (orchestrator.checkpoints)."""

    model_config = STRICT
    keep: Literal["none", "last", "best"] = Field(
        "none",
        description="none: delete them; last: keep the latest; best: keep the one with the lowest "
        "objective (val loss). Final weights are train.save_final's job",
    )


class Failure(BaseModel):
    model_config = STRICT
    max_retries: int = Field(2, ge=-1, description="retries from the last checkpoint; -1 = unlimited")


class RunSpec(BaseModel):
    """What sweep and lr_study files share: a name, the shared trial settings, resources, retries, results."""

    model_config = STRICT
    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=NAME_MAX,
        description="becomes <results>/<name>; letters, digits, - and _ (at most 100)",
    )
    train: dict[str, Any] = Field(default_factory=dict, description="TrialConfig fields shared by every trial")
    resources: Resources = Field(default_factory=Resources)
    failure: Failure = Field(default_factory=Failure)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    results: str = Field("./results", description="local folder or pyarrow filesystem URI (s3://, gs://)")
    callbacks: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        ["tensorboard"],
        description="Ray Tune logger integrations beside Tune's result.json and progress.csv "
        "(always written): tensorboard (event files in each trial's Tune folder), wandb, mlflow (optional extras; "
        "configured by their usual environment variables: WANDB_PROJECT, WANDB_MODE, MLFLOW_TRACKING_URI, ...)",
    )

    @field_validator("train")
    @classmethod
    def _known_train_keys(cls, value: dict) -> dict:
        return check_train_keys(value)

    @field_validator("callbacks")
    @classmethod
    def _callbacks_installed(cls, value: list[str]) -> list[str]:
        return check_callbacks(value)


class SweepSpec(RunSpec):
    """One sweep file."""

    grid: Grid

    @model_validator(mode="after")
    def _axis_once(self) -> SweepSpec:
        both = [axis for axis in AXES + EXTRA_AXES if getattr(self.grid, axis) is not None and axis in self.train]
        if both:
            raise ValueError(f"{both} set both under grid: and train:; keep each axis in one place")
        return self


# ---- loading -------------------------------------------------------------------------------


def load_spec(path: str | Path | None, overrides: list[str] | None = None) -> tuple[SweepSpec, str]:
    """The spec from a YAML file or a bundled sweep's name (default: the bundled default.yaml), with
    `--set` overrides applied, and the path it came from."""
    path = resolve_config(path)
    source = f"{path} (with --set)" if overrides else str(path)
    return parse_model(SweepSpec, apply_overrides(load_yaml(path), overrides), source), str(path)


# ---- results location ------------------------------------------------------------------------


def check_results(location: str, name: str) -> ResultsDir:
    """The sweep's folder <location>/<name>, checked but not created.

    A local `location` may be missing as long as its parent folder exists (it is created on the
    first write); a missing parent is almost always a typo, so that is an error. URIs are opened
    (credentials, bucket) but not probed further.
    """
    return check_writable(location, "results", create_missing=False, child=name)


# ---- expansion -------------------------------------------------------------------------------


def _round_lr(value: float) -> float:
    return float(f"{value:.3g}")  # stable across platforms, readable in trial ids


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """Every grid point as a validated TrialConfig, in grid order, without duplicates."""
    grid, train = spec.grid, spec.train
    axis_values: dict[str, list] = {}
    for axis in ("optimizer", "qk_norm", "width", "seed"):
        values = getattr(grid, axis)
        axis_values[axis] = values if values is not None else [train.get(axis, TrialConfig.model_fields[axis].default)]
    lr_best = read_lr_best(grid.lr.from_study) if isinstance(grid.lr, FromStudy) else None
    fixed_lrs = grid.lr if isinstance(grid.lr, list) else [train.get("lr", TrialConfig.model_fields["lr"].default)]

    configs: dict[str, TrialConfig] = {}
    errors: dict[str, dict] = {}
    arms = itertools.product(axis_values["optimizer"], axis_values["qk_norm"], axis_values["width"])
    for optimizer, qk_norm, width in arms:
        if lr_best is not None:
            arm = arm_name(optimizer, qk_norm, width)
            if arm not in lr_best:
                known = ", ".join(sorted(lr_best)) or "none"
                raise ConfigError(
                    f"grid.lr.from_study: no best LR for arm {arm!r} in {grid.lr.from_study!r} (it has: {known})"
                )
            lrs = [_round_lr(lr_best[arm] * m) for m in grid.lr.multipliers]
        else:
            lrs = fixed_lrs
        extra = {axis: getattr(grid, axis) for axis in EXTRA_AXES if getattr(grid, axis) is not None}
        for lr, seed, *values in itertools.product(lrs, axis_values["seed"], *extra.values()):
            point = dict(
                optimizer=optimizer, qk_norm=qk_norm, width=width, lr=lr, seed=seed, **dict(zip(extra, values))
            )
            try:
                cfg = build_config({**train, **point})
            except ConfigError as err:
                errors.setdefault(str(err), point)
                continue
            configs.setdefault(cfg.trial_id(), cfg)
    if errors:
        shown = [f"{msg} (grid point {point_text(point)})" for msg, point in list(errors.items())[:5]]
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ConfigError("; ".join(shown) + more)
    if not configs:
        raise ConfigError("grid: no trials (an axis is empty)")
    return list(configs.values())


def point_text(point: dict) -> str:
    """'optimizer=adamw, width=64': a grid point or arm, for error messages."""
    return ", ".join(f"{k}={short_repr(v, 40)}" for k, v in point.items())


def spec_summary(spec: SweepSpec, configs: list[TrialConfig]) -> str:
    """'48 trials: optimizer 2 x qk_norm 2 x width 2 x lr 3 x seed 2'."""
    swept = AXES + tuple(axis for axis in EXTRA_AXES if getattr(spec.grid, axis) is not None)
    counts = [f"{axis} {len({getattr(c, axis) for c in configs})}" for axis in swept]
    return f"{len(configs)} trials: " + " x ".join(counts)


def __getattr__(name: str):
    """`orchestrator.spec.load_lr_spec`, which moved to study_spec.py (it cannot be imported here at
    the top: study_spec imports this module). The installed-wheel test in test_sweep_cli.py uses it."""
    if name == "load_lr_spec":
        from .study_spec import load_lr_spec

        return load_lr_spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
