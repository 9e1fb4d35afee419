"""What sweep and LR-study files share: a name, the shared trial settings (`train:`), resources,
retries, checkpoint policy, results location and Tune callbacks (`RunSpec`).

Each section is a strict pydantic model (validation.STRICT): unknown keys are rejected, types are
strict, floats finite, so a bad value fails in milliseconds with one message naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from .validation import NAME_MAX, NAME_PATTERN, STRICT, check_callbacks, check_train_keys


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
        description="becomes <results>/<name>; letters, digits, - and _, starting with a letter or digit (at most 100)",
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

    @field_validator("name", mode="before")
    @classmethod
    def _name_starts_with_letter_or_digit(cls, value: Any) -> Any:
        if isinstance(value, str) and value and not re.match(r"[A-Za-z0-9]", value):
            raise ValueError("must start with a letter or digit (then letters, digits, - and _)")
        return value

    @field_validator("train")
    @classmethod
    def _known_train_keys(cls, value: dict) -> dict:
        return check_train_keys(value)

    @field_validator("callbacks")
    @classmethod
    def _callbacks_installed(cls, value: list[str]) -> list[str]:
        return check_callbacks(value)
