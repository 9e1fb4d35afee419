"""Sweep files: the pydantic spec, loading, and expansion into validated trial configs.

A sweep file (YAML) names the grid axes, the shared trial settings (`train:`, TrialConfig field
names), the resources per trial, retries and the results location. Everything is validated here,
before Ray starts and before anything is written: every grid point becomes a `TrialConfig` up
front, so a bad value fails in milliseconds with one message naming the field and the value.
"""

from __future__ import annotations

import difflib
import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.config import ConfigError, TrialConfig, build_config, describe_error, load_yaml, short_repr
from trainer.schema import LR_BEST_FILE
from trainer.storage import ResultsDir, check_writable

AXES = ("optimizer", "qk_norm", "width", "lr", "seed")
# Optional axes: trial settings a grid may also sweep (initialisation changes loss and PR a lot).
EXTRA_AXES = ("init", "init_std")
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
NAME_MAX = 100  # a folder name; file systems refuse 255 bytes and more
# Spec sections: unknown keys rejected, strict types (a quoted '0.01' or true is not a number), finite floats.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
REPO_ROOT = Path(__file__).resolve().parent.parent
SWEEPS_DIR = REPO_ROOT / "sweeps"


def _as_list(value: Any) -> Any:
    """A single value is a one-point axis; a list stays a list."""
    if value is None or isinstance(value, (list, tuple, dict)):
        return list(value) if isinstance(value, tuple) else value
    return [value]


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


def check_callbacks(value: list[str]) -> list[str]:
    """Each callback once, and its package installed (checked without importing it)."""
    import importlib.util

    if len(set(value)) < len(value):
        raise ValueError(f"each callback may appear once, got {short_repr(value)}")
    for name in value:
        module, install = CALLBACK_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"{name!r} needs the {module} package, which is not installed: {install}")
    return value


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
        return _as_list(value)

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


# ---- bundled sweeps and --config NAME ------------------------------------------------------------
# The sweep files in sweeps/ ship inside the wheel as the package data `orchestrator.sweeps` (see
# pyproject.toml), so `--config smoke` and the no-flag default work from an installed wheel too.
SECTIONS = ("train", "grid", "resources", "failure")  # what --set may override


def bundled_sweeps() -> dict[str, Path]:
    """{name: path} of the bundled sweep files: sweeps/ in a checkout or an editable install, else
    the copies installed with the package."""
    if SWEEPS_DIR.is_dir():
        return {p.stem: p for p in sorted(SWEEPS_DIR.glob("*.yaml"))}
    try:
        from importlib.resources import files

        folder = files("orchestrator.sweeps")
    except (ModuleNotFoundError, TypeError):
        return {}
    return {
        Path(f.name).stem: Path(str(f))
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".yaml")
    }


def default_config_path(name: str = "default.yaml") -> Path:
    """A bundled spec by file name (default.yaml, lr.yaml), else sweeps/<name> under the current folder."""
    bundled = bundled_sweeps().get(Path(name).stem)
    if bundled is not None and bundled.is_file():
        return bundled
    if (Path.cwd() / "sweeps" / name).is_file():
        return Path.cwd() / "sweeps" / name
    raise ConfigError(f"config: cannot find sweeps/{name}; pass --config FILE")


def resolve_config(value: str | Path | None, default: str = "default.yaml") -> Path:
    """--config: a file, or the name of a bundled sweep (`smoke`, `default`, `paradox`, `cpu_study`, ...)."""
    if value is None:
        return default_config_path(default)
    path = Path(value)
    if path.is_file():
        return path
    bundled = bundled_sweeps()
    name = path.stem if path.suffix in (".yaml", ".yml") and path.parent == Path(".") else str(value)
    if name in bundled and path.parent == Path("."):
        return bundled[name]
    names = ", ".join(bundled) or "none found"
    hint = did_you_mean(name, bundled) if "/" not in str(value) else ""
    raise ConfigError(f"config: no file {str(value)!r} and no bundled sweep of that name{hint} (bundled: {names})")


def apply_overrides(data: dict, overrides: list[str] | None, axes: tuple[str, ...] = AXES + EXTRA_AXES) -> dict:
    """A copy of a sweep file's mapping with each `--set key=value` applied, in order.

    `train.steps=50`, `grid.seed=[0,1]`, `resources.cpus_per_trial=2`, `failure.max_retries=0`;
    a plain key means `grid.<key>` when the file's grid has that axis, else `train.<key>`. Values
    are YAML (the trainer's `--set` parser). Unknown keys are caught by the validation that follows.
    """
    from trainer.config import parse_override

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


def arm_name(optimizer: str, qk_norm: str, width: int) -> str:
    """An arm of the study: optimizer x qk_norm x width (readable, like the trial_id prefix)."""
    return f"{optimizer}_{qk_norm}_w{width}"


def read_lr_best(folder: str) -> dict[str, float]:
    """{arm: best_lr} from an lr_study folder, or a ConfigError naming what is missing."""
    try:
        study = ResultsDir(folder)
        if not study.exists(LR_BEST_FILE):
            raise ConfigError(
                f"grid.lr.from_study: no {LR_BEST_FILE} in {folder!r}; run python -m orchestrator.lr_study first"
            )
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
        shown = [f"{msg} (grid point {_point_text(point)})" for msg, point in list(errors.items())[:5]]
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ConfigError("; ".join(shown) + more)
    if not configs:
        raise ConfigError("grid: no trials (an axis is empty)")
    return list(configs.values())


def _point_text(point: dict) -> str:
    return ", ".join(f"{k}={short_repr(v, 40)}" for k, v in point.items())


def spec_summary(spec: SweepSpec, configs: list[TrialConfig]) -> str:
    """'48 trials: optimizer 2 x qk_norm 2 x width 2 x lr 3 x seed 2'."""
    swept = AXES + tuple(axis for axis in EXTRA_AXES if getattr(spec.grid, axis) is not None)
    counts = [f"{axis} {len({getattr(c, axis) for c in configs})}" for axis in swept]
    return f"{len(configs)} trials: " + " x ".join(counts)


# ---- LR studies ------------------------------------------------------------------------------


class Arms(BaseModel):
    """optimizer x qk_norm x width: one Optuna study per combination."""

    model_config = STRICT
    optimizer: list[str] = Field(["adamw", "muon"], min_length=1)
    qk_norm: list[str] = Field(["none", "rms"], min_length=1)
    width: list[int] = Field([64], min_length=1)

    @field_validator("optimizer", "qk_norm", "width", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)


class Search(BaseModel):
    model_config = STRICT
    lr_min: float = Field(1e-4, gt=0, description="lower end of the log-uniform LR range")
    lr_max: float = Field(3e-1, gt=0, le=10.0, description="upper end of the log-uniform LR range")
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


def load_lr_spec(path: str | Path | None) -> tuple[LRStudySpec, str]:
    """An lr_study file, or a bundled one's name (`lr`, `lr_smoke`); default: the bundled lr.yaml."""
    path = resolve_config(path, default="lr.yaml")
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
