"""`python -m orchestrator.pack` against bad input and crafted archives: each is one line and exit 2,
never a traceback, and nothing partial is left on disk (an audit's findings, one test each)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.synthetic_results import SyntheticSpec, write_results
from orchestrator import pack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A small synthetic results folder (two trials, metrics and spectra parts), never modified."""
    folder = tmp_path_factory.mktemp("r") / "tiny"
    spec = SyntheticSpec(
        optimizers=("adamw",), qk_norms=("none",), widths=(64,), lrs=(1e-2,), seeds=(0, 1), steps=20, eval_every=10
    )
    write_results(spec, folder)
    return folder


@pytest.fixture
def copy(results, tmp_path):
    """A copy of the results folder that a test may damage."""
    return Path(shutil.copytree(results, tmp_path / "src" / "tiny"))


def one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: pack: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


def on_disk(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def packed(results: Path, out: Path, *args: str) -> Path:
    assert pack.main([str(results), str(out), *args]) == 0
    return out


def entries(out: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The (header, data) of every file in the pack in `out`."""
    manifest = json.loads(next(out.glob("*.pack.json")).read_text())
    raw = b"".join((out / p["name"]).read_bytes() for p in manifest["parts"])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]


def tgz(items) -> bytes:
    """A gzip'd tar of (TarInfo or name, data) items."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            info = tarfile.TarInfo(info) if isinstance(info, str) else info
            if info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def crafted(out: Path, raw: bytes, **manifest) -> Path:
    """A pack of one part holding `raw`, with a manifest whose SHA-256s match it."""
    out.mkdir(parents=True)
    (out / "tiny.tgz.000").write_bytes(raw)
    sha = hashlib.sha256(raw).hexdigest()
    m = {
        "format": pack.FORMAT,
        "folders": ["tiny"],
        "files": 1,
        "file_bytes": 2,
        "archive": {"bytes": len(raw), "sha256": sha},
        "parts": [{"name": "tiny.tgz.000", "bytes": len(raw), "sha256": sha}],
        **manifest,
    }
    (out / "tiny.pack.json").write_text(json.dumps(m))
    return out


# ---- pack -----------------------------------------------------------------------------------------
def test_out_dir_that_is_a_file_is_one_line(results, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    assert pack.main([str(results), str(out)]) == 2
    one_line(capsys, str(out), "not a folder")
    assert out.read_text() == "mine"


def test_a_full_disk_while_writing_leaves_no_parts_and_a_retry_runs(results, tmp_path, capsys, monkeypatch):
    """A write that fails halfway (a full disk, here the third part) is one line, and the parts
    already written are taken back: a retry is not refused for what the failed run left."""
    import errno

    out, write_bytes, written = tmp_path / "out", Path.write_bytes, []

    def fills_up(self, data):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(self.name)
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    assert pack.main([str(results), str(out), "--max-mib", "0.004", "--max-files", "100000"]) == 2
    one_line(capsys, str(out), "No space left on device", "nothing of it is left")
    assert len(written) == 2 and on_disk(out) == []
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    packed(results, out, "--max-mib", "0.004", "--max-files", "100000")  # the retry
    assert any(name.endswith(".pack.json") for name in on_disk(out))


def unreadable(monkeypatch, name: str) -> None:
    """Reading any file called `name` fails as a file without read permission does (root reads them all)."""
    import errno

    read_bytes = Path.read_bytes

    def refuses(self):
        if self.name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuses)


def test_an_unreadable_part_is_skipped_and_named(copy, tmp_path, capsys, monkeypatch):
    victim = sorted((copy / "metrics").rglob("*.parquet"))[0]
    unreadable(monkeypatch, victim.name)
    out = packed(copy, tmp_path / "out")
    err = capsys.readouterr().err
    rel = f"tiny/{victim.relative_to(copy).as_posix()}"
    assert f"warning: pack: skipped {rel}: unreadable (Permission denied)" in err
    manifest = json.loads((out / "tiny.pack.json").read_text())
    assert {"path": rel, "reason": "unreadable (Permission denied)"} in manifest["skipped"]
    assert rel not in [m.name for m, _ in entries(out)]


def test_an_unreadable_trials_file_is_one_line(copy, tmp_path, capsys, monkeypatch):
    unreadable(monkeypatch, "trials.parquet")
    assert pack.main([str(copy), str(tmp_path / "out")]) == 2
    one_line(capsys, str(copy / "trials.parquet"), "cannot read it (Permission denied)")
    assert not (tmp_path / "out").exists()


def test_a_manifest_larger_than_max_mib_is_refused_and_nothing_left(results, tmp_path, capsys):
    # 1 KiB parts: the manifest names 16 of them with their SHA-256s, more than 1 KiB itself
    assert pack.main([str(results), str(tmp_path / "out"), "--max-mib", "0.001", "--max-files", "100000"]) == 2
    one_line(capsys, "the manifest takes", "--max-mib 0.001")
    assert on_disk(tmp_path / "out") == []


def test_an_unwritable_temporary_folder_is_one_line(results, tmp_path, capsys, monkeypatch):
    import tempfile

    not_a_folder = tmp_path / "tmpfile"
    not_a_folder.write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    assert pack.main([str(results), str(tmp_path / "out")]) == 2
    one_line(capsys, str(not_a_folder), "set TMPDIR")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mib", ["inf", "1e-9", "nan", "0", "-1", "0.0005"])
def test_max_mib_not_finite_or_too_small_is_one_line(results, tmp_path, capsys, mib):
    assert pack.main([str(results), str(tmp_path / "out"), "--max-mib", mib, "--max-files", "1000000"]) == 2
    one_line(capsys, "--max-mib", "finite", "1 KiB")
    assert not (tmp_path / "out").exists()


def test_spectra_last_skips_and_names_a_damaged_part(copy, tmp_path, capsys):
    first, second = sorted((copy / "spectra").iterdir())
    cut = next(first.iterdir())
    cut.write_bytes(cut.read_bytes()[:100])  # truncated: not Parquet any more
    nostep = next(second.iterdir())
    pq.write_table(pa.table({"x": [1, 2]}), nostep)  # Parquet, but no step column
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    out, dest = tmp_path / "out", tmp_path / "back"
    assert pack.main([str(copy), str(out), "--spectra", "last"]) == 0
    cap = capsys.readouterr()
    warnings = cap.err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: pack: skipped tiny/spectra/") for w in warnings)
    assert f"{cut.parent.name}/{cut.name}: unreadable" in warnings[0]
    assert f"{nostep.parent.name}/{nostep.name}: no integer step column" in warnings[1]
    assert "2 skipped, named above" in cap.out
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before  # the results folder untouched
    skipped = json.loads((out / "tiny.pack.json").read_text())["skipped"]
    assert [s["path"] for s in skipped] == [f"tiny/spectra/{p.parent.name}/{p.name}" for p in (cut, nostep)]
    assert pack.main(["--unpack", str(out), str(dest)]) == 0
    assert not (dest / "tiny" / "spectra").exists()  # both trials' only parts were damaged
    assert len(list((dest / "tiny" / "metrics").rglob("*.parquet"))) == len(list((copy / "metrics").rglob("*.parquet")))


def test_a_symlinked_part_is_named_not_followed(copy, tmp_path, capsys):
    part = sorted((copy / "metrics").rglob("part-*.parquet"))[0]
    elsewhere = tmp_path / "elsewhere.parquet"
    part.rename(elsewhere)
    part.symlink_to(elsewhere)
    out = tmp_path / "out"
    assert pack.main([str(copy), str(out)]) == 0
    cap = capsys.readouterr()
    rel = part.relative_to(copy.parent).as_posix()
    assert cap.err == f"warning: pack: skipped {rel}: a symlink, not followed\n"
    assert "1 skipped, named above" in cap.out
    assert rel not in {m.name for m, _ in entries(out)}


def test_a_folder_name_no_file_may_carry_asks_for_name(results, tmp_path, capsys):
    folder = Path(shutil.copytree(results, tmp_path / "sp ace ü"))
    out, dest = tmp_path / "out", tmp_path / "back"
    assert pack.main([str(folder), str(out)]) == 2
    err = one_line(capsys, str(folder), "pass --name")
    assert "--name 'sp ace" not in err  # not blamed on a --name the user never gave
    assert not out.exists()
    assert pack.main([str(folder), str(out), "--name", "spaced"]) == 0  # with --name: packs, and comes back
    assert pack.main(["--unpack", str(out), str(dest)]) == 0
    assert (dest / "sp ace ü" / "sweep.json").read_bytes() == (folder / "sweep.json").read_bytes()


# ---- unpack: the archive ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["not gzip", "gzip not tar", "truncated gzip", "empty"])
def test_an_archive_that_is_not_a_tar_gz_is_one_line(results, tmp_path, capsys, kind):
    real = (packed(results, tmp_path / "real") / "tiny.tgz.000").read_bytes()
    raw = {
        "not gzip": b"this is not gzip at all" * 100,
        "gzip not tar": gzip.compress(b"hello world" * 1000),
        "truncated gzip": real[: len(real) // 2],
        "empty": b"",
    }[kind]
    dest = tmp_path / "back"
    dest.mkdir()
    assert pack.main(["--unpack", str(crafted(tmp_path / "out", raw)), str(dest)]) == 2
    one_line(capsys, "tiny.pack.json", "readable tar.gz")
    assert on_disk(dest) == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("parts", "tiny.tgz.000"),
        ("parts", {"name": "tiny.tgz.000"}),
        ("parts", [1, 2]),
        ("parts", [{"name": "../x/tiny.tgz.000", "bytes": 1, "sha256": "0"}]),
        ("archive", "x"),
        ("folders", "tiny"),
        ("folders", [".."]),
        ("file_bytes", "2"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_line_naming_the_key(tmp_path, capsys, key, value):
    out = crafted(tmp_path / "out", tgz([("tiny/sweep.json", b"{}")]), **{key: value})
    assert pack.main(["--unpack", str(out), str(tmp_path / "back")]) == 2
    one_line(capsys, str(out / "tiny.pack.json"), f"'{key}' must be")
    assert not (tmp_path / "back").exists()  # not even DEST made


def test_dest_that_is_a_file_is_one_line(results, tmp_path, capsys):
    dest = tmp_path / "back"
    dest.write_text("mine")
    assert pack.main(["--unpack", str(packed(results, tmp_path / "out")), str(dest)]) == 2
    one_line(capsys, str(dest), "not a folder")
    assert dest.read_text() == "mine"


def test_a_file_where_a_folder_goes_is_one_line(tmp_path, capsys):
    items = [("tiny/sweep.json", b"{}"), ("tiny/metrics", b"x"), ("tiny/metrics/trial_id=a/part-0-0.parquet", b"x")]
    out = crafted(tmp_path / "out", tgz(items), files=3, file_bytes=4)
    assert pack.main(["--unpack", str(out), str(tmp_path / "back")]) == 2
    one_line(capsys, "unexpected archive entry 'tiny/metrics'")
    assert not (tmp_path / "back").exists()


def bad_entry(kind: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo({"traversal": "../escaped", "absolute": str(Path("/tmp", "qkc-escaped"))}.get(kind, "x"))
    if kind == "symlink":
        info.name, info.type, info.linkname = "tiny/metrics/trial_id=z/part-0-0.parquet", tarfile.SYMTYPE, "/etc"
    if kind == "device":
        info.name, info.type, info.devmajor, info.devminor = "tiny/sweep.json.dev", tarfile.CHRTYPE, 1, 3
    return info, b"pwn"


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "device", "truncated"])
def test_unpack_is_all_or_nothing_and_a_retry_succeeds(results, tmp_path, capsys, kind):
    real = packed(results, tmp_path / "real")
    items = entries(real)
    raw = tgz(items if kind == "truncated" else [*items, bad_entry(kind)])
    if kind == "truncated":
        raw = raw[: len(raw) * 3 // 4]
    n = len(items) + 1
    out = crafted(tmp_path / "out", raw, files=n, file_bytes=sum(len(d) for _, d in items) + 3)
    dest = tmp_path / "back"
    dest.mkdir()
    assert pack.main(["--unpack", str(out), str(dest)]) == 2
    one_line(capsys, "tiny.pack.json")
    assert on_disk(dest) == []  # not one of the good entries before the bad one, no temporary folder
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/qkc-escaped").exists()
    assert pack.main(["--unpack", str(real), str(dest)]) == 0  # the retry is not refused as "not empty"
    assert (dest / "tiny" / "sweep.json").read_bytes() == (results / "sweep.json").read_bytes()


def test_an_archive_that_expands_beyond_the_manifest_is_refused(tmp_path, capsys):
    name = "tiny/metrics/trial_id=a/part-0-0.parquet"
    big = tarfile.TarInfo(name)
    out = crafted(tmp_path / "out", tgz([(big, bytes(16 * 2**20))]), files=1, file_bytes=1000)
    assert (out / "tiny.tgz.000").stat().st_size < 2**20  # small on the way, 16 MiB unpacked
    dest = tmp_path / "back"
    dest.mkdir()
    assert pack.main(["--unpack", str(out), str(dest)]) == 2
    one_line(capsys, "expands beyond the manifest's 1 files of 1000 bytes")
    assert on_disk(dest) == []


def test_a_large_file_is_unpacked_in_bounded_memory(tmp_path):
    """The real command in a child process: its peak memory stays far below the file's size."""
    size = 160 * 2**20
    out = crafted(
        tmp_path / "out",
        tgz([(tarfile.TarInfo("tiny/trials.parquet"), bytes(size))]),
        files=1,
        file_bytes=size,
    )
    dest = tmp_path / "back"
    code = (  # VmHWM: this process's peak resident memory (ru_maxrss may carry the parent's across exec)
        "import re, sys; from orchestrator import pack; rc = pack.main(sys.argv[1:]);"
        " print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1]); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--unpack", str(out), str(dest)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (dest / "tiny" / "trials.parquet").stat().st_size == size
    peak_mib = int(proc.stdout.split()[-1]) / 1024
    assert peak_mib < 140, peak_mib  # the file read whole would be 160 MiB on top of the interpreter's


def test_the_real_command_says_one_line_not_a_traceback(tmp_path):
    """`folders` a string used to be read letter by letter, exit 0."""
    out = crafted(tmp_path / "out", tgz([("tiny/sweep.json", b"{}")]), folders="tiny")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.pack", "--unpack", str(out), str(tmp_path / "back")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: pack: ") and proc.stderr.count("\n") == 1 and "'folders'" in proc.stderr
    assert not (tmp_path / "back").exists()
