"""lr_study files: the arms, the Optuna search settings, and each arm's checked TrialConfig.

An lr_study file shares name, `train:`, resources, retries and results with a sweep file (`RunSpec`,
run_spec.py) and adds the arms (optimizer x qk_norm x width, one Optuna study each) and the search.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from trainer.config import ConfigError, TrialConfig, build_config, load_yaml
from trainer.schema import MAX_LR

from .files import check_kind, resolve_config
from .lr_best import arm_name
from .overrides import apply_overrides
from .run_spec import RunSpec
from .sweep_file import point_text
from .validation import STRICT, as_list, check_train_keys, parse_model


class Arms(BaseModel):
    """optimizer x qk_norm x width: one Optuna study per combination."""

    model_config = STRICT
    optimizer: list[str] = Field(["adamw", "muon"], min_length=1)
    qk_norm: list[str] = Field(["none", "rms"], min_length=1)
    width: list[int] = Field([64], min_length=1)

    @field_validator("optimizer", "qk_norm", "width", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return as_list(value)


class Search(BaseModel):
    model_config = STRICT
    lr_min: float = Field(1e-4, gt=0, description="lower end of the log-uniform LR range")
    lr_max: float = Field(3e-1, gt=0, le=MAX_LR, description="upper end of the log-uniform LR range")
    trials_per_arm: int = Field(8, ge=1, description="trials each run adds to each arm's study")
    startup_trials: int = Field(4, ge=1, description="TPE's random trials before it models the objective")
    seed: int = Field(0, ge=0, description="seeds TPE (offset by the study's size, so a rerun explores anew)")
    metric: Literal["val_loss", "train_loss"] = Field("val_loss", description="minimised; diverged = train.max_loss")
    grace_steps: int = Field(50, ge=1, description="ASHA never stops a trial before this step")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA keeps 1/reduction_factor of trials at each rung")
    min_completed: int = Field(
        4,
        ge=0,
        description="ASHA stops no trial of an arm until this many of the arm's "
        "trials ran to their end (earlier runs of the study count); 0 = prune from the start",
    )
    storage: str | None = Field(None, description="Optuna storage URL; default <results>/<name>/studies/optuna.db")

    @model_validator(mode="after")
    def _range(self) -> Search:
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


def load_lr_spec(path: str | Path | None, overrides: list[str] | None = None) -> tuple[LRStudySpec, str]:
    """An lr_study file, or a bundled one's name (`lr`, `lr_smoke`); default: the bundled lr.yaml;
    with `--set` overrides applied (search.trials_per_arm=4, arms.width=[64], train.steps=100)."""
    given, path = path, resolve_config(path, default="lr.yaml")
    data = load_yaml(path)
    check_kind(data, "lr_study", str(given if given is not None else path))  # a sweep file names its command
    source = f"{path} (with --set)" if overrides else str(path)
    data = apply_overrides(data, list(overrides or []), kind="lr_study")
    return parse_model(LRStudySpec, data, source), str(path)


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
                errors.append(f"{err} (arm {point_text(point)})")
            continue
        arms.setdefault(arm_name(optimizer, qk_norm, width), cfg)
    if errors:
        raise ConfigError("; ".join(errors[:5]))
    return arms
