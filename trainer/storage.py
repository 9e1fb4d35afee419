"""A results folder on any pyarrow filesystem (local path, s3://, gs://), written atomically.

Every file is written under a hidden temporary name and then renamed, so a reader never sees a
half-written file: on a local disk the rename is atomic; on object stores the temporary name is
hidden (leading '.', suffix '.tmp') and never matches `*.parquet`.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


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

    def child(self, *parts: str) -> "ResultsDir":
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
        self.makedirs(*folder)
        tmp = self.path(*folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open_output_stream(tmp) as out:
            write(out)
        self.fs.move(tmp, self.path(*parts))

    def write_table(self, table: pa.Table, *parts: str) -> None:
        def write(out):
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
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
