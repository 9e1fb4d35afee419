"""`--set key=value`: the last layer over a sweep or LR-study file's YAML, applied before validation.

Separate from the spec models so that the layering (defaults, then YAML, then `--set`) reads in
one place. A dotted key is a path into the file's nested mappings, in every section:
`resources.per_width.256.gpus_per_trial=0.25`, `grid.lr.multipliers=[0.5,1]`, `failure.max_retries=0`,
`checkpoints.keep=last`. Each part of the path is checked against the spec's fields before anything
is set, so a misspelt key is one line naming it, with the closest known key. An LR-study file
(`kind="lr_study"`) has `arms:` and `search:` where a sweep file has `grid:`.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any

from pydantic import BaseModel

from trainer.config import ConfigError, TrialConfig, parse_override, short_repr

from .run_spec import RunSpec
from .validation import AXES, EXTRA_AXES, did_you_mean

SECTIONS = ("train", "grid", "resources", "failure", "checkpoints")  # what --set may override in a sweep file
STUDY_SECTIONS = ("train", "arms", "search", "resources", "failure", "checkpoints")  # ... in an LR-study file
_INT = re.compile(r"^-?[0-9]+$")


def _sections(kind: str = "sweep") -> dict[str, Any]:
    """Each section's model (train: TrialConfig's fields, one level deep), for a sweep file or
    (kind "lr_study") an LR-study file."""
    common = {
        "train": TrialConfig,
        "resources": RunSpec.model_fields["resources"].annotation,
        "failure": RunSpec.model_fields["failure"].annotation,
        "checkpoints": RunSpec.model_fields["checkpoints"].annotation,
    }
    if kind == "lr_study":
        from .study_file import Arms, Search  # the spec models import this module

        return {**common, "arms": Arms, "search": Search}
    from .sweep_file import Grid

    return {**common, "grid": Grid}


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], type | None]:
    """The pydantic models a field's type may hold, and the key type when it is a dict of models
    (resources.per_width: dict[int, WidthResources])."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], None
    if origin is dict:
        key, value = typing.get_args(annotation)
        models, _ = _models_in(value)
        return models, key if models else None
    models = []
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            models.append(arg)
    return models, None


def _key(part: str, existing: Any, key_type: type | None) -> Any:
    """A path part as the mapping's key: an integer-looking part is the int key a YAML file writes
    (`256:`), unless the mapping already has it as text."""
    if isinstance(existing, dict) and part in existing:
        return part
    if _INT.match(part) and (key_type in (None, int)):
        return int(part)
    return part


def check_path(key: str, kind: str = "sweep") -> list[Any]:
    """The parts of a dotted `--set` key as the file's keys (section first), or a one-line ConfigError
    naming the first unknown part with the closest known key (`kind`: "sweep" or "lr_study")."""
    section, *rest = key.split(".")
    sections = STUDY_SECTIONS if kind == "lr_study" else SECTIONS
    if section not in sections:
        raise ConfigError(
            f"--set {short_repr(key, 60)}: expected {', '.join(f'{s}.KEY' for s in sections)} or a train "
            f"setting{did_you_mean(section, sections)}"
        )
    if not rest or not all(rest):
        raise ConfigError(f"--set {short_repr(key, 60)}: a key is missing after {section!r}")
    path: list[Any] = [section]
    model: Any = _sections(kind)[section]
    key_type: type | None = None
    for i, part in enumerate(rest):
        where = ".".join(map(str, path))
        if key_type is not None:  # a dict of models: this part is its key
            if key_type is int and not _INT.match(part):
                raise ConfigError(f"--set {short_repr(key, 60)}: {where} is keyed by integers (a width), got {part!r}")
            path.append(int(part) if key_type is int else part)
            key_type = None
            continue
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            known = ", ".join(fields)
            what = "trial setting" if model is TrialConfig else "key"
            raise ConfigError(
                f"--set {short_repr(key, 60)}: unknown {what} {part!r} in {where}"
                f"{did_you_mean(part, fields)}" + (f"; known: {known}" if model is not TrialConfig else "")
            )
        path.append(part)
        models, key_type = _models_in(fields[part].annotation)
        if i < len(rest) - 1 and not models:
            raise ConfigError(
                f"--set {short_repr(key, 60)}: {'.'.join(map(str, path))} is a value, not a mapping; "
                f"give it whole ({'.'.join(map(str, path))}=...)"
            )
        if models:
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            model = next((m for m in models if nxt is None or nxt in m.model_fields), models[0])
    return path


def check_top_level(key: str, kind: str = "sweep") -> None:
    """A one-line ConfigError for a plain key that is a top-level key of the file rather than a trial
    setting or an axis: a whole section (`grid=null`) would replace every key in it, and name,
    results and callbacks are not reached by --set (`--results` sets the results folder); without
    this the key would be taken for a trial setting and called unknown in train."""
    if "." in key or key in TrialConfig.model_fields:
        return
    sections = STUDY_SECTIONS if kind == "lr_study" else SECTIONS
    reach = f"--set reaches {', '.join(f'{s}.KEY' for s in sections)} and plain train settings"
    if key in sections:
        raise ConfigError(f"--set {short_repr(key, 60)}: {key} is a section; set one key in it ({key}.KEY=VALUE)")
    if key in RunSpec.model_fields or key in ("grid", "arms", "search"):
        hint = "; give the folder with --results" if key == "results" else ""
        raise ConfigError(f"--set {short_repr(key, 60)}: {key} is not a key --set can change ({reach}){hint}")


def apply_overrides(
    data: dict, overrides: list[str] | None, axes: tuple[str, ...] = AXES + EXTRA_AXES, kind: str = "sweep"
) -> dict:
    """A copy of a sweep file's mapping (or, with kind "lr_study", an LR-study file's) with each
    `--set key=value` applied, in order.

    `train.steps=50`, `grid.seed=[0,1]`, `resources.cpus_per_trial=2`, `failure.max_retries=0`,
    `resources.per_width.256.gpus_per_trial=0.25`, `search.trials_per_arm=4`, `arms.width=[64]`; a
    plain key means `grid.<key>` when the file's grid has that axis (in an LR-study file, `arms.<key>`
    for optimizer, qk_norm and width), else `train.<key>`. Values are YAML (the trainer's `--set`
    parser). The mappings on the path are created when the file has none.
    """
    out = copy.deepcopy(data)
    for item in overrides or []:
        key, value = parse_override(item)
        check_top_level(key, kind)
        if "." not in key and kind == "lr_study":
            key = f"{'arms' if key in _sections(kind)['arms'].model_fields else 'train'}.{key}"
        elif "." not in key:
            grid = out.get("grid") if isinstance(out.get("grid"), dict) else {}
            key = f"{'grid' if key in grid and key in axes else 'train'}.{key}"
        if kind == "lr_study" and key == "train.lr":
            raise ConfigError(
                f"--set {short_repr(item, 60)}: an LR study searches the LR; set its range with search.lr_min "
                "and search.lr_max"
            )
        path = check_path(key, kind)
        node = out
        for depth, part in enumerate(path[:-1]):
            part = _key(str(part), node, int if isinstance(part, int) else str) if depth else part
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        last = _key(str(path[-1]), node, int if isinstance(path[-1], int) else str)
        node[last] = value
        section, field = path[0], path[1]
        if kind == "lr_study":
            continue
        if len(path) == 2 and section == "grid" and isinstance(out.get("train"), dict):
            out["train"].pop(field, None)  # the axis moves to the grid (a spec keeps each axis in one place)
        elif len(path) == 2 and section == "train" and isinstance(out.get("grid"), dict) and field in out["grid"]:
            out["grid"].pop(field)  # one value for every trial: no longer an axis
    return out
