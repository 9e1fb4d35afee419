"""Writing files without following symlinks, and telling a full disk from bad input.

Every local writer (the report, the results folder of a trial, a sweep or an LR study) writes a
file under a temporary name in the same folder and renames it over the target, and refuses a
target or a folder on the way that is a symlink: a crafted results folder (`report/summary.md ->
~/.bashrc`, `report -> /etc`) cannot redirect a write outside it. A write that fails leaves no
temporary file behind.

Exit statuses shared by every command: 2 for bad input (ConfigError), `EXIT_ENVIRONMENT` (3) for
a machine that cannot do what valid input asks (a full disk, a read-only file system, quota).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError, short_repr

EXIT_ENVIRONMENT = 3
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE}
_ENV_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|Read-only file system|\[errno (28|122|30)\]", re.IGNORECASE
)
# Sweep and study names (orchestrator.validation.NAME_PATTERN, at most 100 characters) and the trial ids
# a standalone trial uses as its name.
RUN_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,100}$")


class UnsafePath(ConfigError):
    """A write target (or a folder on its way) is a symlink, or a folder is a file: exit 2."""


def environment_problem(exc: BaseException) -> str | None:
    """'No space left on device' (and the like) when `exc` is the machine's fault, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # pyarrow and Ray wrap the OSError
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            return os.strerror(exc.errno)
        match = _ENV_TEXT.search(str(exc))
        if match:
            code = {"28": errno.ENOSPC, "122": errno.EDQUOT, "30": errno.EROFS}.get(match.group(1) or "")
            return os.strerror(code) if code else match.group(0)
        exc = exc.__cause__ or exc.__context__
    return None


def refuse_symlink(path: Path, what: str) -> None:
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(
            f"{what} {str(path)!r} is a symlink; refusing to write through it "
            "(remove the link or choose another folder)"
        )


NAME_MAX = 255  # bytes in one file or folder name: Linux's file systems (ext4, xfs, btrfs, tmpfs), and macOS's
PATH_MAX = 4096  # bytes in a whole path (Linux)


def long_name(path: str | os.PathLike) -> str | None:
    """Why the file system cannot hold `path` (a name over NAME_MAX bytes, or the whole over
    PATH_MAX), else None. Checked before any stat: Path.exists() raises OSError (ENAMETOOLONG)
    for such a path instead of answering False."""
    text = os.fspath(path)
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            return f"a name in it is {size} bytes long ({short_repr(part, 40)}); file systems allow {NAME_MAX}"
    size = len(os.fsencode(text))
    return f"it is {size} bytes long; paths are limited to {PATH_MAX - 1}" if size >= PATH_MAX else None


def check_name_lengths(path: str | os.PathLike, field: str) -> None:
    """A ConfigError (`field`: the path, why) when the file system cannot hold `path` (`long_name`)."""
    why = long_name(path)
    if why is not None:
        raise ConfigError(f"{field}: {short_repr(os.fspath(path), 80)}: {why}")


def check_out_dir(path: str | os.PathLike, field: str = "out") -> Path:
    """An output folder, checked before any work: a path the file system can hold, not a symlink,
    not a file, not under a file, and (for what exists of it) writable. Creates nothing."""
    check_name_lengths(path, field)
    path = Path(path).expanduser()
    absolute = Path(os.path.abspath(path))
    refuse_symlink(absolute, f"{field}: folder")
    existing = absolute
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == absolute else f"is under the file {str(existing)!r}"
        raise ConfigError(f"{field}: {str(path)!r} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: folder {str(existing)!r} is not writable (got {str(path)!r})")
    return absolute


def safe_mkdir(path: str | os.PathLike) -> Path:
    """Create a folder (and its parents); refuse it when it is a symlink or a file."""
    path = Path(os.path.abspath(path))
    refuse_symlink(path, "folder")
    path.mkdir(parents=True, exist_ok=True)
    refuse_symlink(path, "folder")  # created by someone else in between
    return path


def safe_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file whole by `write(f)` (f a binary file): a temporary file in the same folder
    (never following a symlink), then os.replace. Refuses a symlinked target or folder; cleans up
    when it fails. For a large file (a table of a study: collapse.csv is 170 MB at 13,680
    trials) written as it is produced, never held whole in memory."""
    path = Path(os.path.abspath(path))
    refuse_symlink(path.parent, "folder")
    refuse_symlink(path, "file")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def safe_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`safe_write` of `data`."""
    safe_write(path, lambda f: f.write(data))


def safe_write_text(path: str | os.PathLike, text: str) -> None:
    safe_write_bytes(path, text.encode("utf-8"))


def check_run_name(name, source: str) -> str:
    """A name read back from a sweep.json: letters, digits and - _ . + only (no path, no newline)."""
    if not isinstance(name, str) or not RUN_NAME.match(name) or not name.strip("."):
        raise ConfigError(
            f"{source}: name {short_repr(name, 60)} is not a valid sweep name "
            "(letters, digits, - and _ only, at most 100 characters)"
        )
    return name


def read_record(results, name: str = "sweep.json") -> dict | None:
    """A results folder's sweep.json as a dict (None when absent), or a ConfigError naming the
    file and the problem (not JSON, not an object, unreadable)."""
    if not results.exists(name):
        return None
    where = f"{results.uri}/{name}"
    try:
        data = results.read_json(name)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid JSON ({short_repr(str(exc), 80)}); fix it or move it away") from None
    except (OSError, RecursionError) as exc:
        raise ConfigError(f"{where}: cannot read it ({short_repr(str(exc), 80)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, found {type(data).__name__}; fix it or move it away")
    return data


def inside(path: str, folder: str) -> bool:
    """Whether `path` lies strictly inside `folder` (after resolving symlinks for local paths)."""
    import posixpath

    if "://" in folder or "://" in str(path):
        p, f = posixpath.normpath(str(path)), posixpath.normpath(folder)
        return p.startswith(f.rstrip("/") + "/") and "/../" not in f"{p}/"
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p != f and p.is_relative_to(f)
