"""What sweep and lr_study files share in validation: strict sections and one-line messages.

Kept apart from the spec models so that `--set` (overrides.py) and finding a spec file (files.py)
can name axes and suggest keys without importing the models that use them.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from trainer.config import ConfigError, TrialConfig, describe_error, short_repr

AXES = ("optimizer", "qk_norm", "width", "lr", "seed")
# Optional axes: trial settings a grid may also sweep (initialisation changes loss and PR a lot).
EXTRA_AXES = ("init", "init_std", "muon_per_head", "qk_clip_tau", "logit_softcap")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # starts with a letter or digit: never an option (-rf)
NAME_MAX = 100  # a folder name; file systems refuse 255 bytes and more
# The most trials one sweep or LR-study run may plan: 130 times the largest bundled study (paradox,
# 768). Each trial costs the driver memory and Tune state before it runs (a 45 KB file of 3,000 seeds
# x 3,000 LRs made a dry run grow past 3 GB), so a grid past this is a mistake, refused before it is built.
MAX_TRIALS = 100_000
# Spec sections: unknown keys rejected, strict types (a quoted '0.01' or true is not a number), finite floats.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def as_list(value: Any) -> Any:
    """A single value is a one-point axis; a list stays a list."""
    if value is None or isinstance(value, (list, tuple, dict)):
        return list(value) if isinstance(value, tuple) else value
    return [value]


def check_trial_count(count: int, what: str) -> None:
    """A one-line ConfigError when a run would plan more than MAX_TRIALS trials (`what` says how they
    were counted: 'grid: optimizer 2 x ... x seed 3000'), before any of them is built."""
    if count > MAX_TRIALS:
        raise ConfigError(
            f"{what} = {count:,} trials, more than the limit of {MAX_TRIALS:,} (orchestrator.spec.validation."
            "MAX_TRIALS: far above the largest bundled study); split the study or shrink it"
        )


def did_you_mean(key: Any, known) -> str:
    """ " (did you mean 'seed'?)" for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_train_keys(value: dict) -> dict:
    """A `train:` block may only hold TrialConfig fields."""
    unknown = sorted(set(value) - set(TrialConfig.model_fields), key=str)
    if unknown:
        hints = "".join(did_you_mean(k, TrialConfig.model_fields) for k in unknown[:3])
        raise ValueError(
            f"unknown trial setting(s) {short_repr(unknown)}{hints}; see trainer/config.py for the field names"
        )
    return value


# callbacks: name -> (module that must be importable, how to install it)
CALLBACK_PACKAGES = {
    "tensorboard": ("tensorboardX", "pip install tensorboardX"),
    "wandb": ("wandb", "pip install 'qk-collapse-sweep[wandb]'"),
    "mlflow": ("mlflow", "pip install 'qk-collapse-sweep[mlflow]'"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported (checked without importing it)."""
    return importlib.util.find_spec(module) is not None


def check_callbacks(value: list[str]) -> list[str]:
    """Each callback once, and its package installed."""
    if len(set(value)) < len(value):
        raise ValueError(f"each callback may appear once, got {short_repr(value)}")
    for name in value:
        module, install = CALLBACK_PACKAGES[name]
        if not installed(module):
            raise ValueError(f"{name!r} needs the {module} package, which is not installed: {install}")
    return value


def parse_model(model: type[BaseModel], data: dict, source: str) -> BaseModel:
    """Validate `data`, or a ConfigError whose message names the file, the field and the value.
    An unknown key is named first, with the closest known key ("did you mean")."""
    problem = unknown_key(model, data) if isinstance(data, dict) else None
    if problem:
        raise ConfigError(f"{source}: {problem}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_error(err)}") from None


def unknown_key(model: type[BaseModel], data: dict, prefix: str = "") -> str | None:
    """ "grid.sed: unknown key (got [0, 1]) (did you mean 'seed'?)" for the first key that no field of
    `model` (or of a nested section: grid, resources, failure, arms, search) has; None when all are known.
    `train:` keys are checked by `check_train_keys` (TrialConfig's fields)."""
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            shown = "" if isinstance(value, dict) else f" (got {short_repr(value)})"
            known = ", ".join(model.model_fields)
            return f"{prefix}{key}: unknown key{shown}{did_you_mean(key, model.model_fields)}; known: {known}"
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(value, dict):
            problem = unknown_key(sub, value, f"{prefix}{key}.")
            if problem:
                return problem
    return None
