"""Where the results are: a local folder or a pyarrow filesystem URI, the sweep folder in it, and
its part files in the order they were written.

The folder may be a pyarrow filesystem URI (s3://bucket/prefix/<sweep>, gs://...): files are listed
through pyarrow's filesystem and read by pyarrow and Polars' own cloud readers, configured by the
standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
AWS_ALLOW_HTTP=true for an http endpoint; see docs/analysis.md). Temporary files (leading '.', or
ending in '.tmp') are ignored, as the trainer writes them.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from trainer.errors import short_repr
from trainer.safeio import long_name
from trainer.schema import TRIALS_FILE


class ResultsError(Exception):
    """Input the report cannot use; the CLI prints the message and exits with status 2."""


class UriPath:
    """The few `pathlib.Path` operations this module uses, on a pyarrow filesystem URI.

    `Path("s3://b/k")` would collapse the '//' ("s3:/b/k"); this keeps the URI whole, lists and
    opens through pyarrow (`fs`), and its `str()` is the URI that Polars and pyarrow read directly.
    """

    def __init__(self, uri: str, fs: pafs.FileSystem | None = None, key: str | None = None):
        self.uri = uri.rstrip("/")
        if fs is None:
            try:
                fs, key = pafs.FileSystem.from_uri(self.uri)
            except Exception as e:  # noqa: BLE001 - bad scheme, credentials, bucket
                raise ResultsError(f"cannot open results {uri!r}: {e}") from None
        self.fs, self.key = fs, key.rstrip("/")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"UriPath({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UriPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str) -> UriPath:
        return UriPath(f"{self.uri}/{name}", self.fs, f"{self.key}/{name}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> UriPath:
        return UriPath(self.uri.rsplit("/", 1)[0], self.fs, self.key.rsplit("/", 1)[0])

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.key).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def iterdir(self) -> list[UriPath]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.key, recursive=False, allow_not_found=True))
        return [self / info.base_name for info in infos]

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.key) as f:
            return f.read().decode()

    def files(self) -> list[pafs.FileInfo]:
        """Every file below this folder (recursive; empty when it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.key, recursive=True, allow_not_found=True))
        return [i for i in infos if i.type == pafs.FileType.File]


def as_path(path: str | os.PathLike | UriPath) -> Path | UriPath:
    """A local Path, or a UriPath for a filesystem URI (s3://, gs://, ...; file:// stays local)."""
    if isinstance(path, UriPath):
        return path
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return UriPath(text)
    return Path(text.removeprefix("file://"))


def find_sweep_dir(path: str | os.PathLike) -> Path:
    """The sweep folder itself, or the one sweep folder inside a parent folder (local or a URI)."""
    path = as_path(path)
    why = None if isinstance(path, UriPath) else long_name(path)
    if why is not None:
        raise ResultsError(f"results folder {short_repr(str(path), 80)}: {why}")
    if not path.exists():
        raise ResultsError(f"results folder {str(path)!r} {_missing(path)}")
    if not path.is_dir():
        raise ResultsError(f"results path {str(path)!r} is not a folder")
    if (path / TRIALS_FILE).is_file():
        return path
    if not isinstance(path, UriPath) and os.path.lexists(path / TRIALS_FILE):  # there, but not a file
        raise ResultsError(f"{path / TRIALS_FILE} {_not_a_file(path / TRIALS_FILE)}, where the trials file belongs")
    inner = sorted(p for p in path.iterdir() if p.is_dir() and (p / TRIALS_FILE).is_file())
    if len(inner) == 1:
        return inner[0]
    if not inner:
        raise ResultsError(
            f"no {TRIALS_FILE} in {str(path)!r} or in any folder directly inside it: "
            "pass the sweep folder (the one holding trials.parquet, metrics/ and spectra/)"
        )
    names = ", ".join(p.name for p in inner)
    raise ResultsError(f"{str(path)!r} holds {len(inner)} sweep folders ({names}): pass one of them")


def _missing(path: Path | UriPath) -> str:
    """Why a path that does not exist is missing: a symlink loop or a broken symlink says so
    (`exists()` is False for both, and "does not exist" sends the reader to the wrong place)."""
    if isinstance(path, UriPath) or not os.path.islink(path):
        return "does not exist"
    return _not_a_file(path)


def _not_a_file(path: Path) -> str:
    """What a local path that is not a regular file is: a directory, a symlink loop, a broken symlink."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        return f"is a broken symlink (to {os.readlink(path)!r})" if os.path.islink(path) else f"cannot be read ({e})"
    return "is a directory" if stat.S_ISDIR(mode) else "is not a regular file"


@dataclass(frozen=True)
class Listed:
    """A part file as listed: its path and what says whether it changed (the summary cache)."""

    path: Path | UriPath
    size: int
    mtime_ns: int
    ctime_ns: int = 0  # 0 on an object store
    inode: int = 0


def list_parts(folder: Path) -> list[Path]:
    """Part files under <folder>/trial_id=*/, oldest first (mtime, then name); a symlink where a part or
    a trial folder would be is listed as itself (never followed: contract.check_parts skips and names it)."""
    return [e.path for e in list_part_files(folder)]


def list_part_files(folder: Path | UriPath) -> list[Listed]:
    """`list_parts` with each file's size, mtime, ctime and inode (one stat per file, which the
    listing needs for the order anyway)."""
    if isinstance(folder, UriPath):
        return _list_remote_parts(folder)
    try:
        return _list_local_parts(folder)
    except OSError as e:  # a symlink loop, a folder that cannot be listed: one line, exit 2
        where = e.filename or folder
        raise ResultsError(f"{where}: cannot read it ({e.strerror or e}); remove it or fix its permissions") from None


def _list_local_parts(folder: Path) -> list[Listed]:
    if os.path.islink(folder) and not folder.exists():
        raise OSError(40, "a broken symlink or a symlink loop", str(folder))
    if not folder.is_dir():
        return []
    found = []
    with os.scandir(folder) as trials:
        for t in trials:
            if t.name.startswith("."):
                continue
            if t.is_symlink():  # a linked trial folder is never followed either (it may loop, or lead out of
                found.append(_as_listed(t))  # the results folder): listed as itself, skipped and named
                continue
            if not t.is_dir():
                continue
            with os.scandir(t.path) as parts:
                for p in parts:
                    if p.name.startswith(".") or p.name.endswith(".tmp"):
                        continue
                    # a symlink is listed (as itself: lstat) and never followed: contract.check_parts
                    # skips and names it, so the report says it is partial
                    if p.name.endswith(".parquet") and (p.is_symlink() or p.is_file()):
                        found.append(_as_listed(p))
    return [Listed(Path(path), size, mtime, ctime, ino) for mtime, path, size, ctime, ino in sorted(found)]


def _as_listed(entry: os.DirEntry) -> tuple:
    """(mtime, path, size, ctime, inode) of a part file, or of a symlink as itself (lstat: never
    followed); an entry removed since the listing (a compaction) gets size -1, and the footer check
    then skips and names it."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return (0, entry.path, -1, 0, 0)
    return (st.st_mtime_ns, entry.path, st.st_size, st.st_ctime_ns, st.st_ino)


def _list_remote_parts(folder: UriPath) -> list[Listed]:
    """list_parts on an object store: one recursive listing (object stores have no folders)."""
    found = []
    for info in folder.files():
        rel = info.path[len(folder.key) + 1 :].split("/")
        if len(rel) != 2 or rel[0].startswith(".") or rel[1].startswith(".") or rel[1].endswith(".tmp"):
            continue
        if rel[1].endswith(".parquet"):
            found.append((info.mtime_ns or 0, info.path, folder / rel[0] / rel[1], info.size or 0))
    return [Listed(p, size, mtime) for mtime, _, p, size in sorted(found, key=lambda t: t[:2])]
