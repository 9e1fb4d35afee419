"""A results folder on any pyarrow filesystem (local path, s3://, gs://), written atomically.

A reader never sees a half-written file. On a local (or mounted) disk every file is written under
a hidden temporary name (leading '.', suffix '.tmp', never matching `*.parquet`) and then renamed,
which is atomic. On an object store (s3://, gs://, ...) a file is written directly: one PUT is
already atomic there (the object appears whole or not at all), and a rename would be a CopyObject
plus a delete, which costs twice and which some S3-compatible stores refuse.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import ConfigError
from .safeio import check_name_lengths, refuse_symlink


class ResultsDir:
    """Paths are '/'-joined strings relative to the root."""

    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        self.uri = uri
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def local_path(self, *parts: str) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on a local filesystem")
        return Path(self.path(*parts))

    def child(self, *parts: str) -> ResultsDir:
        return ResultsDir(self.uri.rstrip("/") + "/" + "/".join(parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under a folder (empty if it does not exist)."""
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts), recursive=False))
        return sorted(info.base_name for info in infos)

    def delete(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_file(self.path(*parts))

    def _write_atomic(self, parts: tuple[str, ...], write) -> None:
        *folder, name = parts
        if self.is_local:  # never write through a symlink planted in the results folder
            for i in range(len(parts)):
                refuse_symlink(Path(self.path(*parts[: i + 1])), "results path")
        self.makedirs(*folder)
        if not self.is_local:  # object store: one PUT of the whole file is atomic (see the module docstring)
            with self.fs.open_output_stream(self.path(*parts)) as out:
                write(out)
            return
        tmp = self.path(*folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as out:
                write(out)
            self.fs.move(tmp, self.path(*parts))
        except BaseException:  # a full disk: leave no empty temporary file behind
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """A whole file (e.g. a torch.save'd state dict), written like every other file here."""
        self._write_atomic(parts, lambda out: out.write(data))

    def delete_dir(self, *parts: str) -> None:
        """A folder and everything under it (nothing if it does not exist)."""
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def write_table(self, table: pa.Table, *parts: str, **options) -> None:
        """A whole Parquet file (zstd); `options` are further `pyarrow.parquet.write_table` arguments
        (the sink's encodings, see trainer.sink.WRITE_OPTIONS)."""
        options = {"compression": "zstd", **options}

        def write(out):
            buf = io.BytesIO()
            pq.write_table(table, buf, **options)
            out.write(buf.getvalue())

        self._write_atomic(parts, write)

    def read_table(self, *parts: str, schema: pa.Schema | None = None) -> pa.Table:
        with self.fs.open_input_file(self.path(*parts)) as f:
            return pq.read_table(f, schema=schema)

    def write_json(self, obj, *parts: str) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        self._write_atomic(parts, lambda out: out.write(data))

    def read_json(self, *parts: str):
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return json.loads(f.read().decode())


def check_writable(location: str, field: str, *, create_missing: bool, child: str | None = None) -> ResultsDir:
    """A results folder (`location`, or `location`/`child`), checked before anything is written; creates nothing.

    The two commands differ on purpose, hence `create_missing`:
    - True (a trial's --out): missing folders are created on the first write, so the nearest folder
      that exists must be a folder this user may write into.
    - False (a sweep's `results:`): the folder may be missing but its parent must exist, since a
      missing parent is almost always a typo.
    Errors are ConfigErrors that start with `field`. URIs (s3://, gs://) are opened (credentials,
    bucket) but not probed further.
    """
    check_location(location, field)
    remote = "://" in location and not location.startswith("file://")
    if not remote:
        check_name_lengths(location.removeprefix("file://") + (f"/{child}" if child else ""), field)
    opened = _open(location, field) if remote or create_missing else None  # --out keeps a file:// URI as given
    if opened is not None and not opened.is_local:
        return opened.child(child) if child else opened
    if opened is not None:
        path = existing = Path(opened.root)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    else:
        path = Path(location.removeprefix("file://")).expanduser().resolve()
        existing = path if path.exists() else path.parent
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{field}: {location!r} is a file, not a folder")
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"{field}: {str(existing)!r} is a file, not a folder (got {location!r})")
    if not existing.is_dir():
        raise ConfigError(f"{field}: folder {location!r} does not exist, nor does its parent {str(existing)!r}")
    target = path / child if child else path
    probe = target if target.exists() else existing
    if not os.access(probe, os.W_OK | os.X_OK):
        got = f" (got {location!r})" if create_missing else ""  # the trial's message has always named its --out
        raise ConfigError(f"{field}: folder {str(probe)!r} is not writable{got}")
    if opened is not None:
        return opened.child(child) if child else opened
    return ResultsDir(target)


# s3:/bucket: a URI with a slash missing (a typo), not a folder named 's3:'
_URI_ONE_SLASH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def check_location(location: str, field: str) -> None:
    """ConfigError (starting with `field`) for an empty location and a URI with no bucket or host
    (`s3://`, `s3:///x`) or a slash missing (`s3:/bucket`): what an unset shell variable or a slip
    leaves (`--results "$OUT"`, `s3://$BUCKET`), and none may turn into the default folder or a
    local folder named `s3:`."""
    if not location.strip():
        raise ConfigError(
            f"{field}: the folder is empty (got {location!r}; an unset shell variable?); give a folder or "
            "a URI such as s3://bucket/prefix"
        )
    scheme, sep, rest = location.partition("://")
    if sep and scheme != "file" and not rest.split("/", 1)[0]:
        raise ConfigError(
            f"{field}: {location!r} names no bucket or host (an unset shell variable?); give {scheme}://bucket/prefix"
        )
    if not sep and _URI_ONE_SLASH.match(location):
        raise ConfigError(f"{field}: {location!r} looks like a URI with a slash missing; give s3://bucket/prefix")


def _open(location: str, field: str) -> ResultsDir:
    try:
        return ResultsDir(location)
    except Exception as exc:  # pyarrow raises several types for bad URIs / credentials
        raise ConfigError(f"{field}: cannot open {location!r}: {exc}") from None
