"""`--set key=value`: the last layer over a sweep file's YAML, applied before validation.

Separate from the spec models so that the layering (defaults, then YAML, then `--set`) reads in
one place; unknown keys are left for the validation that follows to name.
"""

from __future__ import annotations

from trainer.config import ConfigError, parse_override, short_repr

from .validation import AXES, EXTRA_AXES, did_you_mean

SECTIONS = ("train", "grid", "resources", "failure")  # what --set may override


def apply_overrides(data: dict, overrides: list[str] | None, axes: tuple[str, ...] = AXES + EXTRA_AXES) -> dict:
    """A copy of a sweep file's mapping with each `--set key=value` applied, in order.

    `train.steps=50`, `grid.seed=[0,1]`, `resources.cpus_per_trial=2`, `failure.max_retries=0`;
    a plain key means `grid.<key>` when the file's grid has that axis, else `train.<key>`. Values
    are YAML (the trainer's `--set` parser). Unknown keys are caught by the validation that follows.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides or []:
        key, value = parse_override(item)
        section, dot, field = key.partition(".")
        if not dot:
            grid = out.get("grid") if isinstance(out.get("grid"), dict) else {}
            section, field = ("grid" if key in grid and key in axes else "train"), key
        if section not in SECTIONS or not field:
            raise ConfigError(
                f"--set {short_repr(key, 60)}: expected train.KEY, grid.KEY, resources.KEY, "
                f"failure.KEY or a train setting{did_you_mean(section, SECTIONS)}"
            )
        if not isinstance(out.get(section), dict):
            out[section] = {}
        out[section][field] = value
        if section == "grid" and isinstance(out.get("train"), dict):
            out["train"].pop(field, None)  # the axis moves to the grid (a spec keeps each axis in one place)
        elif section == "train" and isinstance(out.get("grid"), dict) and field in out["grid"]:
            out["grid"].pop(field)  # one value for every trial: no longer an axis
    return out
