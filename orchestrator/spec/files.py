"""Finding a spec file: `--config FILE`, a bundled sweep's name (`smoke`, `lr`, ...) or the default;
and telling a sweep file from an LR-study file, so that the wrong command names the right one.

The sweep files in sweeps/ ship inside the wheel as the package data `orchestrator.sweeps` (see
pyproject.toml), so `--config smoke` and the no-flag default work from an installed wheel too.
"""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path

from trainer.config import ConfigError

from .validation import did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEPS_DIR = REPO_ROOT / "sweeps"
MAX_SPEC_BYTES = 1_000_000  # the bundled files are ~2 KB; YAML is parsed whole, so a huge file takes minutes


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
    """--config: a file, or the name of a bundled sweep (`smoke`, `default`, `paradox`, `cpu_study`, ...);
    a file larger than MAX_SPEC_BYTES is refused before it is parsed."""
    return check_size(_resolve(value, default))


def check_size(path: Path) -> Path:
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ConfigError(
            f"config: {str(path)!r} is {size / 1e6:.1f} MB; a sweep file may be at most "
            f"{MAX_SPEC_BYTES / 1e6:g} MB (got {size} bytes)"
        )
    return path


def _resolve(value: str | Path | None, default: str) -> Path:
    if value is None:
        return default_config_path(default)
    path = Path(value)
    if path.is_file():
        return path
    bundled = bundled_sweeps()
    name = path.stem if path.suffix in (".yaml", ".yml") and path.parent == Path(".") else str(value)
    if name in bundled and path.parent == Path("."):
        return bundled[name]
    if path.is_dir():
        raise ConfigError(f"config: {str(value)!r} is a folder, not a spec file")
    if path.is_symlink():  # a link to nothing, or a loop of links: is_file() says only False
        try:
            path.stat()
        except OSError as exc:
            raise ConfigError(f"config: {str(value)!r} cannot be read: {exc.strerror or exc}") from None
    names = ", ".join(bundled) or "none found"
    hint = did_you_mean(name, bundled) if "/" not in str(value) else ""
    raise ConfigError(f"config: no file {str(value)!r} and no bundled sweep of that name{hint} (bundled: {names})")


COMMANDS = {"sweep": "python -m orchestrator.sweep", "lr_study": "python -m orchestrator.lr_study"}
_MARKS = {"sweep": ("grid",), "lr_study": ("arms", "search")}  # the sections only that kind of file has
_KIND_NAMES = {"sweep": "a sweep file", "lr_study": "an LR-study file"}


def check_kind(data, kind: str, shown: str) -> None:
    """A one-line ConfigError naming the command that runs `data` when it is the other kind of spec
    file than `kind` ("sweep" or "lr_study"): an LR-study file has `arms:`/`search:` and no `grid:`, a
    sweep file `grid:` and neither of those. `shown` is the file as the user gave it (--config)."""
    if not isinstance(data, dict):
        return
    other = "lr_study" if kind == "sweep" else "sweep"
    found = [key for key in _MARKS[other] if key in data]
    if not found or any(key in data for key in _MARKS[kind]):
        return
    has = "/".join(f"`{key}:`" for key in found)
    raise ConfigError(
        f"{shown} is {_KIND_NAMES[other]} (it has {has}); run it with {COMMANDS[other]} --config {shlex.quote(shown)}"
    )
