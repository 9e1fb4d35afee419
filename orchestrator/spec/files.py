"""Finding a spec file: `--config FILE`, a bundled sweep's name (`smoke`, `lr`, ...) or the default.

The sweep files in sweeps/ ship inside the wheel as the package data `orchestrator.sweeps` (see
pyproject.toml), so `--config smoke` and the no-flag default work from an installed wheel too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from trainer.config import ConfigError

from .validation import did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEPS_DIR = REPO_ROOT / "sweeps"


def bundled_sweeps() -> dict[str, Path]:
    """{name: path} of the bundled sweep files: sweeps/ in a checkout or an editable install, else
    the copies installed with the package."""
    if SWEEPS_DIR.is_dir():
        return {p.stem: p for p in sorted(SWEEPS_DIR.glob("*.yaml"))}
    try:
        folder = resources.files("orchestrator.sweeps")
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
