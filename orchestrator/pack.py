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
sizes) and the command exits 2, writing nothing. A symlink where a packed file would be is not
followed, and with `--spectra last` a spectra part that cannot be read is left out: each is named
on a line of its own, counted in the summary and listed in the manifest (`skipped`).

`--unpack` checks the manifest's shape, every part's and the archive's SHA-256, and takes from the
archive only what pack writes (regular files of the packed names, no more files and bytes than the
manifest records), then restores each folder under DEST (refusing one that exists and is not
empty), all or nothing: a refusal or a damaged archive leaves nothing behind. The report reads a
restored folder as it reads the folder a sweep wrote: `python -m analysis.report DEST/<folder>`.
Bad input, here and when packing, is one line and exit 2.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from trainer.cli import ArgumentParser

FORMAT = "qkc-pack 1"
TOP_FILES = ("sweep.json", "trials.parquet", "attempts.parquet", "lr_best.parquet")
DATASETS = ("metrics", "spectra")
_TRIAL = re.compile(r"trial_id=[^/]+")
_PART = re.compile(r"trial_id=[^/]+/part-\d+-\d+\.parquet")  # fullmatch'ed, as _TRIAL and _STEM
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names a device's file transfer accepts
MIB = 2**20
MIN_PART = 1024  # bytes: the smallest --max-mib (1 KiB)
CHUNK = MIB  # bytes read at a time: memory stays bounded whatever a file or an archive holds


def _size(n: float) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB / 10 else f"{n / 1024:.1f} KiB"


class PackError(Exception):
    """Bad input or data that does not fit: one line, exit 2."""


# ---- what is packed ----------------------------------------------------------------------------
def members(folder: Path, skipped: list | None = None) -> list[tuple[str, Path]]:
    """(path in the archive relative to the folder, file) for every file packed from a results folder.

    A symlink is never followed (it may point anywhere, and the far side would get a copy of whatever
    it names): one where a packed file or a trial's folder would be is left out and, when `skipped`
    is given, named there as (path, reason), so the pack says so instead of holding a trial fewer
    without a word."""
    out, links = [], []
    for name in TOP_FILES:
        path = folder / name
        if path.is_symlink():
            links.append(path)
        elif path.is_file():
            out.append((name, path))
    for dataset in DATASETS:
        root = folder / dataset
        if root.is_symlink():
            links.append(root)
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(root):  # os.walk descends into no linked folder
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                rel = path.relative_to(root).as_posix()
                if path.is_symlink() and (_PART.fullmatch(rel) or _TRIAL.fullmatch(rel)):
                    links.append(path)
                elif _PART.fullmatch(rel) and path.is_file() and not path.is_symlink():
                    found.append(path)
        out += [(f"{dataset}/{path.relative_to(root).as_posix()}", path) for path in sorted(found)]
    if skipped is not None:
        for path in links:
            skipped.append((f"{folder.name}/{path.relative_to(folder).as_posix()}", "a symlink, not followed"))
    return out


def last_probe(files: list[tuple[str, Path]], skipped: list) -> tuple[bytes, int] | None:
    """One trial's spectra parts ((name in the archive, file) each) as one part holding only its last
    probe's rows, and that step; None when none of its parts can be read.

    A part that cannot be read (truncated, not Parquet) or has no integer `step` column is skipped
    and named in `skipped` rather than failing the pack: the pack is often the last thing a lease
    does, and a refusal would send nothing back at all. The part stays untouched in the results
    folder, the trial keeps the last probe of its readable parts, and the report would skip such a
    part anyway."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from trainer.sink import COMPACT_LEVEL, WRITE_OPTIONS

    tables = []
    for name, path in files:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            skipped.append((name, f"unreadable ({type(exc).__name__}): cut short or not Parquet"))
            continue
        if "step" not in table.column_names or not pa.types.is_integer(table.schema.field("step").type):
            skipped.append((name, "no integer step column, not a spectra part"))
            continue
        tables.append(table)
    if not tables:
        return None
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise PackError(f"{files[0][0].rsplit('/', 1)[0]}: its spectra parts do not fit one table ({exc})") from None
    step = pc.max(table.column("step")).as_py()
    if step is None:  # no rows
        step = 0
    else:
        table = table.filter(pc.equal(table.column("step"), step))
    buf = io.BytesIO()
    pq.write_table(table, buf, **{**WRITE_OPTIONS["spectra"], "compression_level": COMPACT_LEVEL})
    return buf.getvalue(), int(step)


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PackError(f"{folder}: not a folder")
    if not (folder / "sweep.json").is_file() and not (folder / "trials.parquet").is_file():
        raise PackError(f"{folder}: not a results folder (no sweep.json or trials.parquet)")


def write_archive(folders: list[Path], out, spectra: str) -> dict:
    """The gzip'd tar of `folders` into the open binary file `out`; what went in, and what was left
    out (`skipped`: (path, reason) each)."""
    counts = {"files": 0, "bytes": 0, "spectra_bytes": 0, "trials": 0, "skipped": []}
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            items = members(folder, counts["skipped"])
            by_trial: dict[str, list[tuple[str, Path]]] = {}
            for rel, path in items:
                if spectra == "last" and rel.startswith("spectra/"):
                    by_trial.setdefault(rel.split("/")[1], []).append((f"{folder.name}/{rel}", path))
                    continue
                data = read_member(path, f"{folder.name}/{rel}", counts["skipped"])
                if data is not None:
                    add_bytes(tar, f"{folder.name}/{rel}", data, counts, spectrum=rel.startswith("spectra/"))
            for trial, files in sorted(by_trial.items()):
                last = last_probe(files, counts["skipped"])
                if last is not None:
                    data, step = last
                    name = f"{folder.name}/spectra/{trial}/part-{step:09d}-{step:09d}.parquet"
                    add_bytes(tar, name, data, counts, spectrum=True)
            counts["trials"] += len({rel.split("/")[1] for rel, _ in items if rel.startswith("metrics/")})
    return counts


def read_member(path: Path, name: str, skipped: list) -> bytes | None:
    """A file's bytes for the archive. A part file that cannot be read (its permissions, an I/O error)
    is skipped and named in `skipped`, as a damaged spectra part is (`last_probe`): the pack is often
    the last thing a lease does. A top-level file (sweep.json, trials.parquet, ...) is what makes the
    folder a results folder: PackError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if name.count("/") == 1:  # <folder>/<file>: a top-level file
            raise PackError(f"{path}: cannot read it ({why}); fix that, then pack again") from None
        skipped.append((name, f"unreadable ({why})"))
        return None


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
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(
    folders: list[Path], out_dir: Path, *, max_files: int = 8, max_mib: float = 16, spectra: str = "all", stem=None
) -> dict:
    """Pack `folders` into `out_dir` (PackError when the input is bad or the archive does not fit);
    the manifest."""
    if max_files < 2:
        raise PackError(f"--max-files must be at least 2 (the manifest and one part), got {max_files}")
    if not (math.isfinite(max_mib) and max_mib * MIB >= MIN_PART):  # nan and inf too; 0 bytes hold nothing
        raise PackError(f"--max-mib must be a finite size of at least 1 KiB (0.001), got {max_mib:g}")
    if spectra not in ("all", "last"):
        raise PackError(f"--spectra must be all or last, got {spectra!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PackError(f"{out_dir}: exists and is not a folder (OUT_DIR, where the pack goes)")
    folders = [Path(f).resolve() for f in folders]
    for folder in folders:
        check_folder(folder)
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise PackError(f"two results folders share a name ({', '.join(names)}); they would unpack onto each other")
    if stem is not None and not _STEM.fullmatch(stem):
        raise PackError(f"--name {stem!r}: use letters, digits, '.', '_' and '-' only")
    stem = stem or (names[0] if len(names) == 1 else "results")
    if not _STEM.fullmatch(stem):  # the default, the folder's name, is not one a file transfer takes
        raise PackError(
            f"{folders[0]}: the folder's name cannot name the pack's files (letters, digits, '.', '_' and '-' only);"
            " pass --name STEM"
        )
    try:
        scratch = tempfile.TemporaryDirectory(prefix="qkc-pack-")
    except OSError as exc:
        raise PackError(
            f"{tempfile.gettempdir()}: cannot make a temporary folder there ({exc.strerror or exc}); set TMPDIR"
        ) from None
    with scratch as tmp:
        archive = Path(tmp) / "archive.tgz"
        try:
            with open(archive, "wb") as out:
                counts = write_archive(folders, out, spectra)
        except OSError as exc:  # TMPDIR full or not writable (a results file that cannot be read is skipped)
            raise PackError(
                f"{tmp}: cannot write the archive there ({exc.strerror or exc}); free space or set TMPDIR"
            ) from None
        return _write_pack(archive, counts, out_dir, names, stem, max_files, max_mib, spectra)


def _write_pack(
    archive: Path, counts: dict, out_dir: Path, names: list[str], stem: str, max_files: int, max_mib: float, spectra
) -> dict:
    """The archive cut into parts of at most `max_mib` MiB in `out_dir`, and the manifest beside them;
    PackError when they do not fit `max_files` files, or cannot be written (nothing is then left)."""
    part_bytes = int(max_mib * MIB)
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackError(f"{out_dir}: cannot be made ({exc.strerror or exc})") from None
    manifest_path = out_dir / f"{stem}.pack.json"
    targets = [manifest_path] + [out_dir / f"{stem}.tgz.{i:03d}" for i in range(n_parts)]
    clash = [t.name for t in targets if t.exists()] + [p.name for p in out_dir.glob(f"{stem}.tgz.*")]
    if clash:
        raise PackError(f"{out_dir} already holds {sorted(set(clash))[0]}: pack into another folder or --name")
    parts = []
    try:
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
            "skipped": [{"path": path, "reason": reason} for path, reason in counts["skipped"]],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = (json.dumps(manifest, indent=1) + "\n").encode()
        fits = len(text) <= part_bytes  # the manifest is one of the files the trip takes too
        if fits:
            manifest_path.write_bytes(text)
    except OSError as exc:  # a full disk, a quota: take back what was written, so that a retry may run
        _take_back(targets)
        raise PackError(
            f"{out_dir}: cannot write the pack ({exc.strerror or exc}); nothing of it is left there"
        ) from None
    if not fits:
        _take_back(targets)
        raise PackError(
            f"does not fit: the manifest takes {_size(len(text))} ({len(counts['skipped'])} skipped files named"
            f" in it), more than --max-mib {max_mib:g}; raise --max-mib"
        )
    return manifest


def _take_back(targets: list[Path]) -> None:
    """Remove the pack's files written so far (none of them was there before: `_write_pack` checks)."""
    for target in targets:
        target.unlink(missing_ok=True)


# ---- back --------------------------------------------------------------------------------------
TAR_OVERHEAD = 4096  # bytes of tar headers and padding per file at most, as pack writes them (a pax header included)


def unpack(pack_dir: Path, dest: Path) -> list[Path]:
    """Every pack in `pack_dir` restored under `dest`; the folders written.

    All or nothing: everything is checked and extracted into a temporary folder inside `dest` (the
    same filesystem), and each folder renamed into place only when every pack was extracted whole.
    A refused entry, a damaged archive or a full disk leaves nothing partial behind, so a retry is
    not refused with "exists and is not empty"."""
    pack_dir, dest = Path(pack_dir), Path(dest)
    manifests = sorted(pack_dir.glob("*.pack.json"))
    if not manifests:
        raise PackError(f"{pack_dir}: no *.pack.json manifest")
    if dest.exists() and not dest.is_dir():
        raise PackError(f"{dest}: exists and is not a folder (DEST, where the folders go)")
    loaded = [(path, read_manifest(path)) for path in manifests]
    folders = [folder for _, manifest in loaded for folder in manifest["folders"]]
    for folder in folders:
        target = dest / folder
        if folders.count(folder) > 1:
            raise PackError(f"{pack_dir}: two packs hold a folder {folder!r}; they would unpack onto each other")
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise PackError(f"{target} exists and is not a folder: unpack into another folder")
        if target.exists() and any(target.iterdir()):
            raise PackError(f"{target} exists and is not empty: unpack into another folder")
    made = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".qkc-unpack-", dir=dest))
    except OSError as exc:
        raise PackError(f"{dest}: cannot be written ({exc.strerror or exc})") from None
    done = False
    try:
        for path, manifest in loaded:
            extract(path, manifest, tmp)
        for folder in folders:
            try:
                (tmp / "root" / folder).replace(dest / folder)
            except OSError as exc:
                raise PackError(f"{dest / folder}: cannot be put in place ({exc.strerror or exc})") from None
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made and not done:
            with contextlib.suppress(OSError):
                dest.rmdir()  # made here; left if a folder did reach it whole
    return [dest / f for f in folders]


def read_manifest(path: Path) -> dict:
    """The manifest at `path`, its shape and types checked before anything is read by it: a wrong
    type is one line naming the key, never a traceback or a folder name iterated letter by letter."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PackError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackError(f"{path}: not a {FORMAT} manifest")

    def bad(key: str, want: str):
        value = repr(manifest.get(key))
        raise PackError(f"{path}: {key!r} must be {want}, got {value[:80]}{'...' if len(value) > 80 else ''}")

    folders, parts, archive = manifest.get("folders"), manifest.get("parts"), manifest.get("archive")
    if not (isinstance(folders, list) and folders and all(_folder_name(f) for f in folders)):
        bad("folders", "a list of folder names")
    if not (isinstance(parts, list) and parts and all(isinstance(p, dict) for p in parts)):
        bad("parts", "a list of parts, each {name, bytes, sha256}")
    for part in parts:
        if not (isinstance(part.get("name"), str) and _STEM.fullmatch(part["name"])):
            bad("parts", "a list of parts whose names are file names")
        if not (_count(part.get("bytes")) and isinstance(part.get("sha256"), str)):
            bad("parts", "a list of parts, each {name, bytes, sha256}")
    if not (isinstance(archive, dict) and _count(archive.get("bytes")) and isinstance(archive.get("sha256"), str)):
        bad("archive", "{bytes, sha256}")
    for key in ("files", "file_bytes"):
        if not _count(manifest.get(key)):
            bad(key, "a count (an integer >= 0)")
    return manifest


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _folder_name(name) -> bool:
    """One path component that stays under DEST (any name pack took from a folder, spaces included)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def extract(manifest_path: Path, manifest: dict, tmp: Path) -> None:
    """The parts of one pack checked and joined in `tmp`, its folders extracted under `tmp`/root.

    Only what pack writes is taken: regular files named as `members` names them, under the
    manifest's folders, each once, and no more files and bytes than the manifest records
    (`files`, `file_bytes`); the gzip stream is measured first, in chunks, so a small part that
    expands without bound (or a tar header that claims gigabytes) is refused before tarfile reads
    it, and every file is copied in chunks: memory stays bounded."""
    archive = tmp / f"{manifest_path.name}.tgz"
    with open(archive, "wb") as out:
        for part in manifest["parts"]:
            path = manifest_path.parent / part["name"]
            if not path.is_file():
                raise PackError(f"{path}: missing (a part of {manifest_path.name})")
            if path.stat().st_size != part["bytes"]:
                raise PackError(f"{path}: {path.stat().st_size} bytes, the manifest says {part['bytes']} (cut short?)")
            with open(path, "rb") as src:
                digest = _copy(src, out)
            if digest != part["sha256"]:
                raise PackError(f"{path}: its SHA-256 is not the manifest's (damaged on the way?)")
    if sha256_file(archive) != manifest["archive"]["sha256"]:
        raise PackError(f"{manifest_path.name}: the joined parts' SHA-256 is not the manifest's")
    n_files, n_bytes, folders = manifest["files"], manifest["file_bytes"], manifest["folders"]
    beyond = f"the archive expands beyond the manifest's {n_files} files of {n_bytes} bytes"
    try:
        with gzip.open(archive) as stream:
            tar_bytes, limit = 0, n_bytes + n_files * TAR_OVERHEAD + 20 * 1024
            for block in iter(lambda: stream.read(CHUNK), b""):
                tar_bytes += len(block)
                if tar_bytes > limit:
                    raise PackError(f"{manifest_path.name}: {beyond}")
        seen: set[str] = set()
        total = 0
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                top, _, rel = name.partition("/")
                packed = rel in TOP_FILES or any(
                    rel.startswith(f"{d}/") and _PART.fullmatch(rel[len(d) + 1 :]) for d in DATASETS
                )
                if (
                    member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE)
                    or member.sparse
                    or top not in folders
                    or not packed
                ):
                    raise PackError(f"{manifest_path.name}: unexpected archive entry {name!r}")
                if name in seen:
                    raise PackError(f"{manifest_path.name}: the archive holds {name!r} twice")
                seen.add(name)
                total += member.size
                if len(seen) > n_files or total > n_bytes:
                    raise PackError(f"{manifest_path.name}: {beyond} (at {name!r})")
                target = tmp.joinpath("root", *name.split("/"))
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    dst = open(target, "xb")
                except OSError as exc:
                    raise PackError(f"{target}: cannot be written ({exc.strerror or exc})") from None
                with tar.extractfile(member) as src, dst:
                    _copy(src, dst)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise PackError(f"{manifest_path.name}: its parts do not join into a readable tar.gz ({exc})") from None
    if (len(seen), total) != (n_files, n_bytes):
        raise PackError(
            f"{manifest_path.name}: the archive holds {len(seen)} files of {total} bytes, the manifest says"
            f" {n_files} of {n_bytes}"
        )


def _copy(src, dst) -> str:
    """Copy the open binary file `src` to `dst` in chunks (memory stays bounded); the SHA-256 of what
    was copied. A write that fails (a full disk) is one line naming `dst`."""
    digest = hashlib.sha256()
    for block in iter(lambda: src.read(CHUNK), b""):
        digest.update(block)
        try:
            dst.write(block)
        except OSError as exc:
            raise PackError(f"{dst.name}: cannot be written ({exc.strerror or exc})") from None
    return digest.hexdigest()


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
    parts, skipped = manifest["parts"], manifest["skipped"]
    for item in skipped:
        print(f"warning: pack: skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(
        f"packed {', '.join(manifest['folders'])} ({manifest['trials']} trials, {manifest['files']} files, "
        f"{_size(manifest['file_bytes'])}; spectra: {manifest['spectra']}"
        + (f"; {len(skipped)} skipped, named above" if skipped else "")
        + f") into {len(parts) + 1} files in "
        f"{os.fspath(out_dir)}: {parts[0]['name'].rsplit('.', 2)[0]}.pack.json and {len(parts)} part(s), "
        f"{_size(manifest['archive']['bytes'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
