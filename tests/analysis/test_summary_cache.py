"""The per-trial summary cache (analysis.summary_cache): a second report reads only the trials whose
files changed, and says exactly what a report without the cache says."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from analysis import features as features_module
from analysis import loading
from analysis.loading import load_results
from analysis.report import main
from analysis.summary_cache import CACHE_DIR
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results
from tests.analysis.test_report_folders import split
from trainer.schema import METRICS_DIR

# small, with the damaged files the report must keep handling: replayed (duplicate) rows, a
# truncated part and junk files
SPEC = dict(
    widths=(64,),
    lrs=(3e-3, 1e-2),
    seeds=(0, 1, 2, 3),
    steps=100,
    eval_every=25,
    spectra="ends",
    n_duplicated=2,
    n_truncated=1,
    junk_files=True,
    effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.1)},
)


def report_files(out: Path) -> dict[str, bytes]:
    """Every table, the verdict and summary.md of a report folder (the figures are drawn from them)."""
    names = ["verdict.json", "paradox.csv", "collapse.csv", "summary.md"]
    names += [f"tables/{p.name}" for p in sorted((out / "tables").iterdir())]
    return {n: (out / n).read_bytes() for n in names}


def run_report(folder, out, *flags) -> None:
    assert (
        main([*map(str, folder if isinstance(folder, list) else [folder]), "--out", str(out), "--quiet", *flags]) == 0
    )


@pytest.fixture
def sweep(tmp_path) -> Path:
    folder = tmp_path / "sweep"
    write_results(SyntheticSpec(**SPEC), folder)
    return folder


def record_reads(monkeypatch) -> tuple[list, list]:
    """The part files whose footers are checked and whose data is read, as the report goes."""
    footers, data = [], []
    check = loading.check_parts
    read = features_module._read_batch

    def check_parts(files, expected):
        footers.extend(str(f) for f in files)
        return check(files, expected)

    def read_batch(parts):
        data.extend(str(p.path) for p in parts)
        return read(parts)

    monkeypatch.setattr(loading, "check_parts", check_parts)
    monkeypatch.setattr(features_module, "_read_batch", read_batch)
    return footers, data


def test_cached_and_uncached_reports_are_byte_identical(sweep, tmp_path, monkeypatch):
    run_report(sweep, tmp_path / "plain", "--no-cache")
    assert not (sweep / CACHE_DIR).exists()  # --no-cache leaves the folder alone
    run_report(sweep, tmp_path / "first")  # reads everything, writes the cache
    assert (sweep / CACHE_DIR / "parts.parquet").is_file()
    footers, data = record_reads(monkeypatch)
    run_report(sweep, tmp_path / "cached")
    assert footers == [] and data == []  # nothing changed: no part file opened
    plain = report_files(tmp_path / "plain")
    assert report_files(tmp_path / "first") == plain
    assert report_files(tmp_path / "cached") == plain
    verdict = (tmp_path / "cached" / "verdict.json").read_text()
    assert '"skipped_files": [\n      [' in verdict  # the truncated part is still named, from the cache


def test_a_changed_or_removed_file_invalidates_exactly_its_trial(sweep, tmp_path, monkeypatch):
    run_report(sweep, tmp_path / "first")
    folders = sorted(p.name for p in (sweep / METRICS_DIR).iterdir() if p.is_dir())
    changed, removed = folders[3], folders[7]
    # one trial's part rewritten with another final val loss; another trial loses a part
    part = sorted((sweep / METRICS_DIR / changed).glob("*.parquet"))[-1]
    table = pq.read_table(part)
    frame = pl.from_arrow(table).with_columns(
        pl.when(pl.col("name") == "val_loss").then(pl.col("value") + 1.0).otherwise(pl.col("value")).alias("value")
    )
    pq.write_table(frame.to_arrow().cast(table.schema), part)
    gone = sorted((sweep / METRICS_DIR / removed).glob("*.parquet"))[0]
    gone.unlink()

    res = load_results(sweep, cache=True)
    assert res.cached_folders() == set(folders) - {changed, removed}

    footers, data = record_reads(monkeypatch)
    run_report(sweep, tmp_path / "cached")
    assert {Path(f).parent.name for f in footers} <= {changed, removed}
    assert {Path(f).parent.name for f in data} == {changed, removed}
    monkeypatch.undo()
    run_report(sweep, tmp_path / "plain", "--no-cache")
    assert report_files(tmp_path / "cached") == report_files(tmp_path / "plain")
    finals = pl.read_csv(tmp_path / "cached" / "tables" / "finals.csv")
    before = pl.read_csv(tmp_path / "first" / "tables" / "finals.csv")
    trial = changed.removeprefix("trial_id=")
    got = finals.filter(pl.col("trial_id") == trial)["final_val_loss"][0]
    was = before.filter(pl.col("trial_id") == trial)["final_val_loss"][0]
    assert got == pytest.approx(was + 1.0)  # the new value, not the cached one


def test_a_report_after_one_more_chunk_reads_only_the_new_chunk(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    write_results(SyntheticSpec(**{**SPEC, "n_duplicated": 0, "n_truncated": 0, "junk_files": False}), whole)
    first, second = split(whole, tmp_path / "chunks", count=2)
    run_report([first], tmp_path / "one")  # chunk 1 alone: its cache written
    footers, data = record_reads(monkeypatch)
    run_report([first, second], tmp_path / "both")
    read = {Path(f).parent.parent.parent for f in footers + data}
    assert read == {second}  # chunk 1 came from its cache
    monkeypatch.undo()
    run_report([first, second], tmp_path / "plain", "--no-cache")
    assert report_files(tmp_path / "both") == report_files(tmp_path / "plain")
    assert (second / CACHE_DIR).is_dir()  # now both chunks have one


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_report(sweep, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, sweep / CACHE_DIR)  # a planted symlink is neither read nor written through
    run_report(sweep, tmp_path / "out")
    err = capsys.readouterr().err
    assert "warning:" in err and "summary cache was not written" in err
    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "out" / "verdict.json").is_file()


def test_a_damaged_cache_is_ignored(sweep, tmp_path):
    run_report(sweep, tmp_path / "first")
    for f in (sweep / CACHE_DIR).glob("curves.parquet"):
        f.write_bytes(b"not parquet")
    run_report(sweep, tmp_path / "again")
    assert report_files(tmp_path / "again") == report_files(tmp_path / "first")
    shutil.rmtree(sweep / CACHE_DIR)


def test_the_features_from_the_cache_equal_those_read_from_the_files(tmp_path):
    """analysis.features.build_features: the frames taken from several folders' caches, merged with
    those read afresh, are the frames of a read without the cache, row for row."""
    from analysis.features import build_features

    whole = tmp_path / "whole"
    write_results(SyntheticSpec(**{**SPEC, "n_truncated": 0, "junk_files": False}), whole)
    folders = split(whole, tmp_path / "chunks", count=3)
    for f in folders[:2]:
        run_report([f], tmp_path / f"r-{f.name}")  # two of three chunks cached
    cached = load_results(folders, cache=True)
    assert cached.cached_folders() and len(cached.cached_folders()) < len({p.folder for p in cached.metric_parts})
    plain = load_results(folders)
    a, b = build_features(cached), build_features(plain)
    for name in ("curves", "val_loss", "ends", "activation", "layers", "logits", "clip"):
        assert getattr(a, name).equals(getattr(b, name)), name
    assert a.duplicate_rows == b.duplicate_rows > 0 and a.deduplicated_trials == b.deduplicated_trials
