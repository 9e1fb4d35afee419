"""`python -m orchestrator.pack`: results folders in a few files of bounded size, and back.

    python -m orchestrator.pack RESULTS_DIR [RESULTS_DIR ...] OUT_DIR [--max-files 8] [--max-mib 16]
                                [--spectra all|last] [--name STEM]
    python -m orchestrator.pack --unpack OUT_DIR DEST

For the trip back from a machine that returns only a few files of limited size (a GPU lease, a
batch job's output): what the report reads of each results folder, and nothing else, goes into one
gzip'd tar, split into parts of at most --max-mib MiB, beside a manifest (STEM.pack.json: the folders,
each part's size and SHA-256, the archive's). --max-files counts the manifest and the parts.

Packed: sweep.json, trials.parquet, attempts.parquet, lr_best.parquet (an LR study's), and the
Parquet parts under metrics/ and spectra/. Never packed: Tune's state and checkpoints (tune/,
checkpoints/), final weights (weights/), a report, anything else. `--spectra last` keeps only each
trial's last probe in spectra/ (its final singular values; the per-probe statistics, PR included,
are metrics and stay whole): spectra are most of a GPU study's bytes.

When the archive does not fit in --max-files files of --max-mib MiB, one line says so (with the
sizes) and the command exits 2, writing nothing. `--unpack` checks every part's and the archive's
SHA-256, then restores each folder under DEST (refusing one that exists and is not empty); the
report reads it as it reads the folder a sweep wrote: `python -m analysis.report DEST/<folder>`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import re
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from trainer.cli import ArgumentParser

FORMAT = "qkc-pack 1"
TOP_FILES = ("sweep.json", "trials.parquet", "attempts.parquet", "lr_best.parquet")
DATASETS = ("metrics", "spectra")
_PART = re.compile(r"^trial_id=[^/]+/part-\d+-\d+\.parquet$")
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names a device's file transfer accepts
MIB = 2**20


def _size(n: float) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB / 10 else f"{n / 1024:.1f} KiB"


class PackError(Exception):
    """Bad input or data that does not fit: one line, exit 2."""


# ---- what is packed ----------------------------------------------------------------------------
def members(folder: Path) -> list[tuple[str, Path]]:
    """(path in the archive relative to the folder, file) for every file packed from a results folder."""
    out = []
    for name in TOP_FILES:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            out.append((name, path))
    for dataset in DATASETS:
        root = folder / dataset
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.parquet")):
            rel = path.relative_to(root).as_posix()
            if _PART.match(rel) and path.is_file() and not path.is_symlink():
                out.append((f"{dataset}/{rel}", path))
    return out


def last_probe(files: list[Path]) -> bytes:
    """One trial's spectra parts as one part holding only its last probe's rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from trainer.sink import COMPACT_LEVEL, WRITE_OPTIONS

    table = pa.concat_tables([pq.read_table(f) for f in files])
    if table.num_rows:
        table = table.filter(pc.equal(table.column("step"), pc.max(table.column("step"))))
    buf = io.BytesIO()
    pq.write_table(table, buf, **{**WRITE_OPTIONS["spectra"], "compression_level": COMPACT_LEVEL})
    return buf.getvalue()


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PackError(f"{folder}: not a folder")
    if not (folder / "sweep.json").is_file() and not (folder / "trials.parquet").is_file():
        raise PackError(f"{folder}: not a results folder (no sweep.json or trials.parquet)")


def write_archive(folders: list[Path], out, spectra: str) -> dict:
    """The gzip'd tar of `folders` into the open binary file `out`; what went in."""
    counts = {"files": 0, "bytes": 0, "spectra_bytes": 0, "trials": 0}
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            items = members(folder)
            by_trial: dict[str, list[Path]] = {}
            for rel, path in items:
                if spectra == "last" and rel.startswith("spectra/"):
                    by_trial.setdefault(rel.split("/")[1], []).append(path)
                    continue
                add_bytes(tar, f"{folder.name}/{rel}", path.read_bytes(), counts, spectrum=rel.startswith("spectra/"))
            for trial, files in sorted(by_trial.items()):
                data = last_probe(files)
                step = _last_step(data)
                name = f"{folder.name}/spectra/{trial}/part-{step:09d}-{step:09d}.parquet"
                add_bytes(tar, name, data, counts, spectrum=True)
            counts["trials"] += len({rel.split("/")[1] for rel, _ in items if rel.startswith("metrics/")})
    return counts


def _last_step(data: bytes) -> int:
    import pyarrow.parquet as pq

    steps = pq.read_table(io.BytesIO(data), columns=["step"]).column("step")
    return int(steps[0].as_py()) if len(steps) else 0


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, counts: dict, *, spectrum: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))
    counts["files"] += 1
    counts["bytes"] += len(data)
    if spectrum:
        counts["spectra_bytes"] += len(data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(
    folders: list[Path], out_dir: Path, *, max_files: int = 8, max_mib: float = 16, spectra: str = "all", stem=None
) -> dict:
    """Pack `folders` into `out_dir` (PackError when the input is bad or the archive does not fit);
    the manifest."""
    if max_files < 2:
        raise PackError(f"--max-files must be at least 2 (the manifest and one part), got {max_files}")
    if not max_mib > 0:
        raise PackError(f"--max-mib must be > 0, got {max_mib}")
    if spectra not in ("all", "last"):
        raise PackError(f"--spectra must be all or last, got {spectra!r}")
    folders = [Path(f).resolve() for f in folders]
    for folder in folders:
        check_folder(folder)
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise PackError(f"two results folders share a name ({', '.join(names)}); they would unpack onto each other")
    stem = stem or (names[0] if len(names) == 1 else "results")
    if not _STEM.match(stem):
        raise PackError(f"--name {stem!r}: use letters, digits, '.', '_' and '-' only")
    part_bytes = int(max_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="qkc-pack-") as tmp:
        archive = Path(tmp) / "archive.tgz"
        with open(archive, "wb") as out:
            counts = write_archive(folders, out, spectra)
        size = archive.stat().st_size
        n_parts = max(1, math.ceil(size / part_bytes))
        if n_parts + 1 > max_files:
            hint = "; try --spectra last (spectra: only each trial's last probe)" if spectra == "all" else ""
            raise PackError(
                f"does not fit: {', '.join(names)} pack to {_size(size)} ({counts['files']} files, spectra "
                f"{_size(counts['spectra_bytes'])} of {_size(counts['bytes'])} before compression), "
                f"{n_parts + 1} files of at most {max_mib:g} MiB with the manifest, more than --max-files {max_files}"
                + hint
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = out_dir / f"{stem}.pack.json"
        targets = [manifest_path] + [out_dir / f"{stem}.tgz.{i:03d}" for i in range(n_parts)]
        clash = [t.name for t in targets if t.exists()] + [p.name for p in out_dir.glob(f"{stem}.tgz.*")]
        if clash:
            raise PackError(f"{out_dir} already holds {sorted(set(clash))[0]}: pack into another folder or --name")
        parts = []
        with open(archive, "rb") as f:
            for target in targets[1:]:
                data = f.read(part_bytes)
                target.write_bytes(data)
                parts.append({"name": target.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {
            "format": FORMAT,
            "folders": names,
            "spectra": spectra,
            "trials": counts["trials"],
            "files": counts["files"],
            "file_bytes": counts["bytes"],
            "archive": {"bytes": size, "sha256": sha256_file(archive)},
            "parts": parts,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---- back --------------------------------------------------------------------------------------
def unpack(pack_dir: Path, dest: Path) -> list[Path]:
    """Every pack in `pack_dir` restored under `dest`; the folders written."""
    manifests = sorted(Path(pack_dir).glob("*.pack.json"))
    if not manifests:
        raise PackError(f"{pack_dir}: no *.pack.json manifest")
    written = []
    for path in manifests:
        written += unpack_one(path, Path(dest))
    return written


def unpack_one(manifest_path: Path, dest: Path) -> list[Path]:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise PackError(f"{manifest_path}: not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackError(f"{manifest_path}: not a {FORMAT} manifest")
    folders = manifest.get("folders") or []
    if not all(isinstance(f, str) and _STEM.match(f) for f in folders):
        raise PackError(f"{manifest_path}: bad folder names {folders!r}")
    for folder in folders:
        target = dest / folder
        if target.exists() and any(target.iterdir()):
            raise PackError(f"{target} exists and is not empty: unpack into another folder")
    with tempfile.TemporaryDirectory(prefix="qkc-unpack-") as tmp:
        archive = Path(tmp) / "archive.tgz"
        with open(archive, "wb") as out:
            for part in manifest.get("parts") or []:
                name = str(part.get("name", ""))
                if not _STEM.match(name):
                    raise PackError(f"{manifest_path}: bad part name {name!r}")
                path = manifest_path.parent / name
                if not path.is_file():
                    raise PackError(f"{path}: missing (a part of {manifest_path.name})")
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != part.get("sha256"):
                    raise PackError(f"{path}: its SHA-256 is not the manifest's (damaged on the way?)")
                out.write(data)
        if sha256_file(archive) != (manifest.get("archive") or {}).get("sha256"):
            raise PackError(f"{manifest_path.name}: the joined parts' SHA-256 is not the manifest's")
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                top = name.split("/")[0]
                if not member.isfile() or name.startswith(("/", "..")) or top not in folders or "/../" in name:
                    raise PackError(f"{manifest_path.name}: unexpected archive entry {member.name!r}")
                target = dest.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    dst.write(src.read())
    return [dest / f for f in folders]


# ---- the command -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.pack", description=__doc__)
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="RESULTS_DIR [RESULTS_DIR ...] OUT_DIR, or with --unpack: OUT_DIR DEST"
    )
    p.add_argument("--unpack", action="store_true", help="restore the packs in OUT_DIR under DEST")
    p.add_argument("--max-files", type=int, default=8, help="files at most, the manifest included (default 8)")
    p.add_argument("--max-mib", type=float, default=16, help="MiB per file at most (default 16)")
    p.add_argument(
        "--spectra",
        choices=("all", "last"),
        default="all",
        help="all: every probe's spectra; last: each trial's last probe only (the statistics stay whole)",
    )
    p.add_argument(
        "--name", metavar="STEM", help="file names STEM.pack.json, STEM.tgz.NNN (default: the folder's name)"
    )
    args = p.parse_args(argv)
    try:
        if args.unpack:
            if len(args.paths) != 2:
                p.error("--unpack takes OUT_DIR DEST")
            for folder in unpack(Path(args.paths[0]), Path(args.paths[1])):
                print(f"unpacked {folder}; report: python -m analysis.report {shlex.quote(str(folder))}")
            return 0
        if len(args.paths) < 2:
            p.error("give RESULTS_DIR [RESULTS_DIR ...] OUT_DIR")
        *folders, out_dir = (Path(x) for x in args.paths)
        manifest = pack(
            folders, out_dir, max_files=args.max_files, max_mib=args.max_mib, spectra=args.spectra, stem=args.name
        )
    except PackError as err:
        print(f"error: pack: {err}", file=sys.stderr)
        return 2
    parts = manifest["parts"]
    print(
        f"packed {', '.join(manifest['folders'])} ({manifest['trials']} trials, {manifest['files']} files, "
        f"{_size(manifest['file_bytes'])}; spectra: {manifest['spectra']}) into {len(parts) + 1} files in "
        f"{os.fspath(out_dir)}: {parts[0]['name'].rsplit('.', 2)[0]}.pack.json and {len(parts)} part(s), "
        f"{_size(manifest['archive']['bytes'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
