"""Sweep files: the grid, loading with `--set` overrides, and expansion into validated trial configs.

A sweep file (YAML) names the grid axes and, through `RunSpec` (run_spec.py), the shared trial
settings (`train:`, TrialConfig field names), resources, retries and the results location. Every
grid point becomes a `TrialConfig` here, before Ray starts and before anything is written, so a bad
value fails in milliseconds with one message naming the field and the value.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from trainer.config import ConfigError, TrialConfig, build_config, load_yaml, short_repr

from .files import check_kind, resolve_config
from .lr_best import arm_name, read_lr_best
from .overrides import apply_overrides
from .run_spec import RunSpec
from .validation import AXES, EXTRA_AXES, MAX_TRIALS, STRICT, as_list, check_trial_count, parse_model


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
        return no_duplicates(value)


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
    muon_per_head: list[bool] | None = None
    qk_clip_tau: list[float] | None = None
    logit_softcap: list[float] | None = None

    @field_validator(*AXES, *EXTRA_AXES, mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return as_list(value)

    @field_validator(*AXES, *EXTRA_AXES)
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("empty list: the grid would have no trials")
        if isinstance(value, list) and len(value) > MAX_TRIALS:
            raise ValueError(f"{len(value):,} values, more than a sweep may have trials ({MAX_TRIALS:,})")
        return no_duplicates(value) if isinstance(value, list) else value


def no_duplicates(values: list) -> list:
    """Each value of an axis once: `seed: [0, 0]` is a typo, not two trials (they would be merged
    silently). Points that differ only in a setting that does not act on them (muon_per_head under
    AdamW) are still merged by `expand`, on purpose."""
    seen: set = set()  # the values are scalars: a set finds a repeat in one pass over a long axis
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate value {short_repr(value, 40)}: each value of an axis may appear once")
        seen.add(value)
    return values


class SweepSpec(RunSpec):
    """One sweep file."""

    grid: Grid

    @model_validator(mode="after")
    def _axis_once(self) -> SweepSpec:
        both = [axis for axis in AXES + EXTRA_AXES if getattr(self.grid, axis) is not None and axis in self.train]
        if both:
            raise ValueError(f"{both} set both under grid: and train:; keep each axis in one place")
        return self


def load_spec(path: str | Path | None, overrides: list[str] | None = None) -> tuple[SweepSpec, str]:
    """The spec from a YAML file or a bundled sweep's name (default: the bundled default.yaml), with
    `--set` overrides applied, and the path it came from."""
    given, path = path, resolve_config(path)
    data = load_yaml(path)
    check_kind(data, "sweep", str(given if given is not None else path))  # an LR-study file names its command
    source = f"{path} (with --set)" if overrides else str(path)
    return parse_model(SweepSpec, check_null_axes(apply_overrides(data, overrides), source), source), str(path)


def check_null_axes(data: dict, source: str) -> dict:
    """`data` (a sweep file's mapping), or a ConfigError naming its first null grid axis: the model
    reads null as "not swept, the value from train:", which a file says by leaving the axis out, so
    `width: null` (an empty variable, a slip) would silently run the default width."""
    grid = data.get("grid") if isinstance(data, dict) else None
    nulls = [axis for axis in AXES + EXTRA_AXES if isinstance(grid, dict) and axis in grid and grid[axis] is None]
    if nulls:
        raise ConfigError(
            f"{source}: grid.{nulls[0]} is null; give it a value or a list of values, or leave the axis out "
            "to take its value from train:"
        )
    return data


def _round_lr(value: float) -> float:
    return float(f"{value:.3g}")  # stable across platforms, readable in trial ids


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """Every grid point as a validated TrialConfig, in grid order, without duplicates."""
    grid, train = spec.grid, spec.train
    axis_values: dict[str, list] = {}
    for axis in ("optimizer", "qk_norm", "width", "seed"):
        values = getattr(grid, axis)
        axis_values[axis] = values if values is not None else [train.get(axis, TrialConfig.model_fields[axis].default)]
    fixed_lrs = grid.lr if isinstance(grid.lr, list) else [train.get("lr", TrialConfig.model_fields["lr"].default)]
    n_lrs = len(grid.lr.multipliers) if isinstance(grid.lr, FromStudy) else len(fixed_lrs)
    sizes = {axis: n_lrs if axis == "lr" else len(axis_values[axis]) for axis in AXES}
    sizes.update((axis, len(getattr(grid, axis))) for axis in EXTRA_AXES if getattr(grid, axis) is not None)
    check_trial_count(math.prod(sizes.values()), "grid: " + " x ".join(f"{a} {n}" for a, n in sizes.items()))
    lr_best = read_lr_best(grid.lr.from_study) if isinstance(grid.lr, FromStudy) else None

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
