"""`python -m orchestrator.pack`: a results folder in at most N files of at most M MiB, and back,
byte for byte, with nothing but what the report reads (never Tune's state, checkpoints or weights)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from orchestrator import pack
from trainer import train

MIB = 2**20


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One tiny trial's results folder (trainer.train writes a sweep's layout), with what must stay
    behind planted beside it."""
    folder = tmp_path_factory.mktemp("r") / "tiny"
    argv = ["--smoke", "--out", str(folder), "--set", "steps=12", "--set", "checkpoint_every=5"]
    assert train.main([*argv, "--set", "eval_every=4", "--set", "max_corpus_bytes=300000"]) == 0
    assert any((folder / "checkpoints").rglob("*"))  # a checkpoint was written: it must not be packed
    for junk in ("tune/run-1/experiment_state.json", "weights/x.pt", "report/summary.md"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("not for the trip back")
    return folder


def packed_files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_round_trip_restores_what_the_report_reads_and_nothing_else(results, tmp_path, capsys):
    out, dest = tmp_path / "out", tmp_path / "back"
    second = tmp_path / "tiny2"
    shutil.copytree(results, second)
    assert pack.main([str(results), str(second), str(out), "--max-files", "8", "--max-mib", "16"]) == 0
    assert "packed tiny, tiny2" in capsys.readouterr().out
    files = sorted(out.iterdir())
    assert 2 <= len(files) <= 8 and all(f.stat().st_size <= 16 * MIB for f in files)
    assert pack.main(["--unpack", str(out), str(dest)]) == 0
    for name in ("tiny", "tiny2"):
        restored = packed_files(dest / name)
        assert restored == {
            p for p in packed_files(results) if p.split("/")[0] not in ("tune", "weights", "report", "checkpoints")
        }
        assert {"sweep.json", "trials.parquet"} <= restored and any(p.startswith("spectra/") for p in restored)
        for rel in restored:
            assert (dest / name / rel).read_bytes() == (results / rel).read_bytes(), rel
    import analysis  # the report's loader reads the restored folder as the original

    again, before = analysis.load(dest / "tiny"), analysis.load(results)
    assert again.trials.equals(before.trials)
    assert again.metrics.collect().height == before.metrics.collect().height > 0
    # unpacking onto a folder that is there is refused
    assert pack.main(["--unpack", str(out), str(dest)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_spectra_last_keeps_only_each_trials_last_probe(results, tmp_path):
    out, dest = tmp_path / "out", tmp_path / "back"
    assert pack.main([str(results), str(out), "--spectra", "last"]) == 0
    assert pack.main(["--unpack", str(out), str(dest)]) == 0
    full = pq.read_table(results / "spectra").to_pandas()
    last = pq.read_table(dest / "tiny" / "spectra").to_pandas()
    assert set(last["step"]) == {full["step"].max()} and len(last) == (full["step"] == full["step"].max()).sum()
    assert (dest / "tiny" / "metrics").is_dir()
    for rel in packed_files(dest / "tiny"):
        if not rel.startswith("spectra/"):
            assert (dest / "tiny" / rel).read_bytes() == (results / rel).read_bytes()
    assert json.loads(next(out.glob("*.pack.json")).read_text())["spectra"] == "last"


def test_data_that_do_not_fit_is_one_line_and_exit_2(results, tmp_path, capsys):
    out = tmp_path / "out"
    assert pack.main([str(results), str(out), "--max-files", "2", "--max-mib", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pack: does not fit") and err.count("\n") == 1 and "--spectra last" in err
    assert not out.exists()  # nothing written
    assert pack.main([str(tmp_path), str(out)]) == 2  # not a results folder
    assert "not a results folder" in capsys.readouterr().err


def test_a_damaged_part_is_refused(results, tmp_path, capsys):
    out = tmp_path / "out"
    assert pack.main([str(results), str(out), "--max-mib", "0.004", "--max-files", "100"]) == 0
    parts = sorted(out.glob("tiny.tgz.*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 0.004 * MIB for p in parts)
    data = bytearray(parts[0].read_bytes())
    data[100] ^= 1
    parts[0].write_bytes(bytes(data))
    assert pack.main(["--unpack", str(out), str(tmp_path / "back")]) == 2
    assert "SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "back" / "tiny").exists()
