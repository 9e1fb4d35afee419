"""Sweep files: the pydantic spec, loading, and expansion into validated trial configs.

A sweep file (YAML) names the grid axes, the shared trial settings (`train:`, TrialConfig field
names), the resources per trial, retries and the results location. Everything is validated here,
before Ray starts and before anything is written: every grid point becomes a `TrialConfig` up
front, so a bad value fails in milliseconds with one message naming the field and the value.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.config import ConfigError, TrialConfig, build_config, describe_error, load_yaml
from trainer.storage import ResultsDir

AXES = ("optimizer", "qk_norm", "width", "lr", "seed")
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
LR_BEST_FILE = "lr_best.parquet"
REPO_ROOT = Path(__file__).resolve().parent.parent
SWEEPS_DIR = REPO_ROOT / "sweeps"


def _as_list(value: Any) -> Any:
    """A single value is a one-point axis; a list stays a list."""
    if value is None or isinstance(value, (list, tuple, dict)):
        return list(value) if isinstance(value, tuple) else value
    return [value]


def check_train_keys(value: dict) -> dict:
    """A `train:` block may only hold TrialConfig fields."""
    unknown = sorted(set(value) - set(TrialConfig.model_fields))
    if unknown:
        raise ValueError(f"unknown trial setting(s) {unknown}; see trainer/config.py for the field names")
    return value


class FromStudy(BaseModel):
    """LRs from an lr_study: each arm's best LR times each multiplier."""

    model_config = ConfigDict(extra="forbid", frozen=True)
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

    model_config = ConfigDict(extra="forbid", frozen=True)
    optimizer: list[str] | None = None
    qk_norm: list[str] | None = None
    width: list[int] | None = None
    lr: list[float] | FromStudy | None = None
    seed: list[int] | None = None

    @field_validator("optimizer", "qk_norm", "width", "lr", "seed", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("optimizer", "qk_norm", "width", "lr", "seed")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("empty list: the grid would have no trials")
        return value


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cpus_per_trial: float = Field(1, gt=0, description="CPU slots per trial; also its torch thread count")
    gpus_per_trial: float = Field(0, ge=0, description="fractional (e.g. 0.25) lets several small trials share a GPU")
    max_concurrent: int | None = Field(None, ge=1, description="cap on trials at once; null = as resources allow")

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"above 1 a trial takes whole GPUs, got {value}")
        return value


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_retries: int = Field(2, ge=-1, description="retries from the last checkpoint; -1 = unlimited")


class RunSpec(BaseModel):
    """What sweep and lr_study files share: a name, the shared trial settings, resources, retries, results."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN, description="becomes <results>/<name>; letters, digits, - and _")
    train: dict[str, Any] = Field(default_factory=dict, description="TrialConfig fields shared by every trial")
    resources: Resources = Field(default_factory=Resources)
    failure: Failure = Field(default_factory=Failure)
    results: str = Field("./results", description="local folder or pyarrow filesystem URI (s3://, gs://)")

    @field_validator("train")
    @classmethod
    def _known_train_keys(cls, value: dict) -> dict:
        return check_train_keys(value)


class SweepSpec(RunSpec):
    """One sweep file."""

    grid: Grid

    @model_validator(mode="after")
    def _axis_once(self) -> "SweepSpec":
        both = [axis for axis in AXES if getattr(self.grid, axis) is not None and axis in self.train]
        if both:
            raise ValueError(f"{both} set both under grid: and train:; keep each axis in one place")
        return self


# ---- loading -------------------------------------------------------------------------------

def parse_model(model: type[BaseModel], data: dict, source: str) -> BaseModel:
    """Validate `data`, or a ConfigError whose message names the file, the field and the value."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_error(err)}") from None


def default_config_path(name: str = "default.yaml") -> Path:
    """The spec shipped in sweeps/ (beside the package in a checkout or an editable install)."""
    for folder in (SWEEPS_DIR, Path.cwd() / "sweeps"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"config: cannot find sweeps/{name}; pass --config FILE")


def load_spec(path: str | Path | None) -> tuple[SweepSpec, str]:
    """The spec from a YAML file (default: sweeps/default.yaml) and the path it came from."""
    if path is None:
        try:
            path = default_config_path()
        except ConfigError:  # an installed wheel without sweeps/: the embedded copy
            import yaml

            from .defaults import DEFAULT_SWEEP_YAML

            return parse_model(SweepSpec, yaml.safe_load(DEFAULT_SWEEP_YAML), "<embedded default>"), "<embedded default>"
    path = Path(path)
    return parse_model(SweepSpec, load_yaml(path), str(path)), str(path)


# ---- results location ------------------------------------------------------------------------

def check_results(location: str, name: str) -> ResultsDir:
    """The sweep's folder <location>/<name>, checked but not created.

    A local `location` may be missing as long as its parent folder exists (it is created on the
    first write); a missing parent is almost always a typo, so that is an error. URIs are opened
    (credentials, bucket) but not probed further.
    """
    if "://" in location and not location.startswith("file://"):
        try:
            root = ResultsDir(location)
        except Exception as exc:  # pyarrow raises several types for bad URIs / credentials
            raise ConfigError(f"results: cannot open {location!r}: {exc}") from None
        return root.child(name)
    path = Path(location.removeprefix("file://")).expanduser().resolve()
    existing = path if path.exists() else path.parent
    if path.exists() and not path.is_dir():
        raise ConfigError(f"results: {location!r} is a file, not a folder")
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"results: {str(existing)!r} is a file, not a folder (got {location!r})")
    if not existing.is_dir():
        raise ConfigError(f"results: folder {location!r} does not exist, nor does its parent {str(existing)!r}")
    target = path / name
    probe = target if target.exists() else existing
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results: folder {str(probe)!r} is not writable")
    return ResultsDir(target)


# ---- expansion -------------------------------------------------------------------------------

def arm_name(optimizer: str, qk_norm: str, width: int) -> str:
    """An arm of the study: optimizer x qk_norm x width (readable, like the trial_id prefix)."""
    return f"{optimizer}_{qk_norm}_w{width}"


def read_lr_best(folder: str) -> dict[str, float]:
    """{arm: best_lr} from an lr_study folder, or a ConfigError naming what is missing."""
    try:
        study = ResultsDir(folder)
        if not study.exists(LR_BEST_FILE):
            raise ConfigError(f"grid.lr.from_study: no {LR_BEST_FILE} in {folder!r}; "
                              "run python -m orchestrator.lr_study first")
        rows = study.read_table(LR_BEST_FILE).to_pylist()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"grid.lr.from_study: cannot read {folder!r}: {exc}") from None
    return {row["arm"]: row["best_lr"] for row in rows if row.get("best_lr") is not None}


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
                raise ConfigError(f"grid.lr.from_study: no best LR for arm {arm!r} in {grid.lr.from_study!r} "
                                  f"(it has: {known})")
            lrs = [_round_lr(lr_best[arm] * m) for m in grid.lr.multipliers]
        else:
            lrs = fixed_lrs
        for lr, seed in itertools.product(lrs, axis_values["seed"]):
            point = dict(optimizer=optimizer, qk_norm=qk_norm, width=width, lr=lr, seed=seed)
            try:
                cfg = build_config({**train, **point})
            except ConfigError as err:
                errors.setdefault(str(err), point)
                continue
            configs.setdefault(cfg.trial_id(), cfg)
    if errors:
        shown = [f"{msg} (grid point {_point_text(point)})" for msg, point in list(errors.items())[:5]]
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ConfigError("; ".join(shown) + more)
    if not configs:
        raise ConfigError("grid: no trials (an axis is empty)")
    return list(configs.values())


def _point_text(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def spec_summary(spec: SweepSpec, configs: list[TrialConfig]) -> str:
    """'48 trials: optimizer 2 x qk_norm 2 x width 2 x lr 3 x seed 2'."""
    counts = [f"{axis} {len({getattr(c, axis) for c in configs})}" for axis in AXES]
    return f"{len(configs)} trials: " + " x ".join(counts)


# ---- LR studies ------------------------------------------------------------------------------

class Arms(BaseModel):
    """optimizer x qk_norm x width: one Optuna study per combination."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    optimizer: list[str] = Field(["adamw", "muon"], min_length=1)
    qk_norm: list[str] = Field(["none", "rms"], min_length=1)
    width: list[int] = Field([64], min_length=1)

    @field_validator("optimizer", "qk_norm", "width", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lr_min: float = Field(1e-4, gt=0, description="lower end of the log-uniform LR range")
    lr_max: float = Field(3e-1, gt=0, le=10.0, description="upper end of the log-uniform LR range")
    trials_per_arm: int = Field(8, ge=1, description="trials each run adds to each arm's study")
    startup_trials: int = Field(4, ge=1, description="TPE's random trials before it models the objective")
    seed: int = Field(0, ge=0, description="seeds TPE (offset by the study's size, so a rerun explores anew)")
    metric: Literal["val_loss", "train_loss"] = Field("val_loss", description="minimised; diverged = train.max_loss")
    grace_steps: int = Field(50, ge=1, description="ASHA never stops a trial before this step")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA keeps 1/reduction_factor of trials at each rung")
    storage: str | None = Field(None, description="Optuna storage URL; default <results>/<name>/studies/optuna.db")

    @model_validator(mode="after")
    def _range(self) -> "Search":
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min={self.lr_min} must be below lr_max={self.lr_max}")
        return self


class LRStudySpec(RunSpec):
    """One lr_study file."""

    arms: Arms = Field(default_factory=Arms)
    search: Search = Field(default_factory=Search)

    @field_validator("train")
    @classmethod
    def _known_train_keys(cls, value: dict) -> dict:
        check_train_keys(value)
        taken = sorted(set(value) & {"optimizer", "qk_norm", "width", "lr"})
        if taken:
            raise ValueError(f"{taken} are set by the arms and the search; remove them from train:")
        return value


def load_lr_spec(path: str | Path | None) -> tuple[LRStudySpec, str]:
    path = Path(path) if path else default_config_path("lr.yaml")
    return parse_model(LRStudySpec, load_yaml(path), str(path)), str(path)


def expand_arms(spec: LRStudySpec) -> dict[str, TrialConfig]:
    """{arm: TrialConfig at lr_min} for every arm, each checked at both ends of the LR range."""
    arms: dict[str, TrialConfig] = {}
    errors: list[str] = []
    for optimizer, qk_norm, width in itertools.product(spec.arms.optimizer, spec.arms.qk_norm, spec.arms.width):
        point = dict(optimizer=optimizer, qk_norm=qk_norm, width=width)
        try:
            cfg = build_config({**spec.train, **point, "lr": spec.search.lr_min})
            build_config({**spec.train, **point, "lr": spec.search.lr_max})
        except ConfigError as err:
            if str(err) not in errors:
                errors.append(f"{err} (arm {_point_text(point)})")
            continue
        arms.setdefault(arm_name(optimizer, qk_norm, width), cfg)
    if errors:
        raise ConfigError("; ".join(errors[:5]))
    return arms
