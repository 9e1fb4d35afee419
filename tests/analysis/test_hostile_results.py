"""Hostile results folders (an audit's findings): each is refused with one line naming the file, the
column or key and the value (exit 2, nothing written), or read with what is wrong named (a skipped
part makes the report partial), never a traceback. Run as a user runs it: analysis.report.main."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import polars as pl
import pytest

from analysis.report import main
from analysis.summary_cache import CACHE_DIR, SummaryCache
from benchmarks.synthetic_results import SyntheticSpec, write_results
from trainer.schema import METRICS_DIR, SWEEP_JSON, TRIALS_FILE

SPEC = dict(widths=(64,), lrs=(3e-3, 1e-2), seeds=(0, 1, 2), steps=100, eval_every=25, spectra="ends")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "pristine"
    write_results(SyntheticSpec(**SPEC), folder)
    return folder


@pytest.fixture
def sweep(pristine, tmp_path):
    """A fresh copy of the pristine folder (symlinks kept as symlinks)."""
    return shutil.copytree(pristine, tmp_path / "sweep", symlinks=True)


def refused(capsys, *argv) -> str:
    """Run the report, which must refuse with exit 2 and one line on stderr; returns that line."""
    rc = main([*map(str, argv), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def report(capsys, folder, out, *flags) -> dict:
    """Run the report, which must succeed; returns verdict.json."""
    rc = main([str(folder), "--out", str(out), "--quiet", *flags])
    assert rc == 0, capsys.readouterr().err
    return json.loads((out / "verdict.json").read_text())


def edit_trials(folder, column: str, value, rows=1) -> str:
    """Set `column` of the first `rows` rows of trials.parquet to `value`; returns the first trial_id."""
    path = folder / TRIALS_FILE
    df = pl.read_parquet(path)
    dtype = df.schema[column]
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) < rows).then(pl.lit(value, dtype)).otherwise(pl.col(column)).alias(column)
    )
    df.write_parquet(path)
    return df.get_column("trial_id").cast(pl.String)[0]


# ---- 1. trials.parquet rows the analysis cannot use ------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("lr", math.nan, "nan"),
        ("lr", math.inf, "inf"),
        ("lr", 0.0, "0.0"),
        ("lr", -0.01, "-0.01"),
        ("lr", 1e300, "1e+300"),
        ("lr", None, "null"),
        ("width", 0, "0"),
        ("width", -64, "-64"),
        ("d_head", 0, "0"),
        ("width", None, "null"),
        ("d_head", None, "null"),
        ("seed", None, "null"),
        ("steps_done", -5, "-5"),
        ("optimizer", None, "null"),
        ("qk_norm", None, "null"),
        ("status", None, "null"),
    ],
)
def test_a_bad_trials_value_is_one_line_naming_column_trial_and_value(sweep, tmp_path, capsys, column, value, shown):
    first = edit_trials(sweep, column, value, rows=2)
    err = refused(capsys, sweep, "--out", tmp_path / "out")
    assert f"{sweep / TRIALS_FILE}: column '{column}' has value {shown} for trial '{first}'" in err
    assert "(and 1 more row(s))" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_null_trial_id_is_named_by_its_row(sweep, tmp_path, capsys):
    edit_trials(sweep, "trial_id", None)
    err = refused(capsys, sweep, "--out", tmp_path / "out")
    assert "trials.parquet: column 'trial_id' has value null for row 0" in err
    assert not (tmp_path / "out").exists()


def test_a_sweep_without_trials_yet_is_reported_as_such(tmp_path, capsys):
    """A sweep that has just started (trials.parquet without rows) is reported, partial, with its
    counts worded for none: "trials 0 of 8 planned", not "trials 0:  of 8 planned"."""
    folder = tmp_path / "s"
    write_results(SyntheticSpec(**SPEC), folder)
    pl.read_parquet(folder / TRIALS_FILE).clear().write_parquet(folder / TRIALS_FILE)
    shutil.rmtree(folder / METRICS_DIR)
    sweep_json = json.loads((folder / SWEEP_JSON).read_text())
    (folder / SWEEP_JSON).write_text(json.dumps({**sweep_json, "n_trials": 8, "finished_at": None}))
    rc = main([str(folder), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "trials 0 of 8 planned;" in out and "PARTIAL" in out
    assert "- Trials: 0 of 8 planned\n" in (tmp_path / "out" / "summary.md").read_text()


# ---- 2. a summary cache whose meta.json is JSON but not an object ----------------------------
def test_a_cache_meta_that_is_not_an_object_is_ignored_and_rewritten(sweep, tmp_path, capsys):
    report(capsys, sweep, tmp_path / "first")
    meta = sweep / CACHE_DIR / "meta.json"
    for text in ("[1]", "null", "5", '"s"'):  # read as no cache at all
        meta.write_text(text)
        assert SummaryCache(sweep).parts.height == 0, text
    report(capsys, sweep, tmp_path / "second")  # the last of them, as the report meets it
    assert isinstance(json.loads(meta.read_text()).get("key"), str)  # rewritten whole
    assert SummaryCache(sweep).parts.height > 0


# ---- 3. sweep.json keys of the wrong type ----------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("n_trials", "abc", "'abc'"),
        ("n_trials", -5, "-5"),
        ("n_trials", None, "null"),
        ("n_trials", 1.5, "1.5"),
        ("n_trials", True, "True"),
        ("finished_at", 5, "5"),
        ("finished_at", "yesterday", "'yesterday'"),
        ("config", [], "[]"),
        ("config", {"train": 5}, "5"),
        ("kind", "bogus", "'bogus'"),
        ("corpus_hash", 5, "5"),
        ("heldout", [], "[]"),
    ],
)
def test_a_wrongly_typed_sweep_key_is_one_line(sweep, tmp_path, capsys, key, value, shown):
    data = json.loads((sweep / SWEEP_JSON).read_text())
    data[key] = value
    (sweep / SWEEP_JSON).write_text(json.dumps(data))
    err = refused(capsys, sweep, "--out", tmp_path / "out")
    named = "config.train" if isinstance(value, dict) else key
    assert f"{sweep / SWEEP_JSON}: key '{named}' is {shown}; expected" in err
    assert not (tmp_path / "out").exists()


def test_a_running_sweeps_null_finished_at_is_read_as_partial(sweep, tmp_path, capsys):
    data = json.loads((sweep / SWEEP_JSON).read_text())
    data.update(finished_at=None, kind="sweep", config={"train": {}}, corpus_hash=None)
    (sweep / SWEEP_JSON).write_text(json.dumps(data))
    verdict = report(capsys, sweep, tmp_path / "out")
    assert verdict["partial"] and any("finished_at" in r for r in verdict["partial_reasons"])


# ---- 4. a symlink named like a part -----------------------------------------------------------
def test_a_symlinked_part_is_skipped_named_and_makes_the_report_partial(sweep, tmp_path, capsys):
    trial = sorted((sweep / METRICS_DIR).iterdir())[0]
    loop = trial / "loopx.parquet"
    loop.symlink_to(loop)  # a symlink loop
    good = next(trial.glob("part-*.parquet"))
    outside = shutil.copy(good, tmp_path / "elsewhere.parquet")
    (sweep / METRICS_DIR / sorted((sweep / METRICS_DIR).iterdir())[1].name / "z.parquet").symlink_to(outside)
    verdict = report(capsys, sweep, tmp_path / "out")
    skipped = dict(verdict["counts"]["skipped_files"])
    assert len(skipped) == 2, skipped
    assert "a symlink" in skipped[str(loop)] and "not followed" in skipped[str(loop)]
    assert any(str(outside) in why for why in skipped.values())  # named by its target, not read
    assert verdict["partial"] and any("2 part file(s) skipped" in r for r in verdict["partial_reasons"])
    # the cached second report says the same
    assert report(capsys, sweep, tmp_path / "again")["counts"]["skipped_files"] == verdict["counts"]["skipped_files"]


# ---- 5. messages that say what the path is ---------------------------------------------------
def test_a_trials_file_that_is_a_directory_is_named_as_one(sweep, tmp_path, capsys):
    (sweep / TRIALS_FILE).unlink()
    (sweep / TRIALS_FILE).mkdir()
    err = refused(capsys, sweep, "--out", tmp_path / "out")
    assert f"{sweep / TRIALS_FILE} is a directory, where the trials file belongs" in err


@pytest.mark.parametrize("name", [TRIALS_FILE, SWEEP_JSON])
def test_a_symlinked_trials_or_sweep_file_is_not_followed(sweep, tmp_path, capsys, name):
    elsewhere = tmp_path / f"elsewhere-{name}"
    (sweep / name).rename(elsewhere)
    (sweep / name).symlink_to(elsewhere)
    err = refused(capsys, sweep, "--out", tmp_path / "out")
    assert f"{sweep / name}: a symlink (to {str(elsewhere)!r}), not followed" in err
    assert not (tmp_path / "out").exists()


def test_a_results_folder_that_is_a_symlink_loop_is_named_as_one(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert "is a symlink loop" in refused(capsys, loop, "--out", tmp_path / "out")
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    assert "is a broken symlink" in refused(capsys, broken, "--out", tmp_path / "out")


@pytest.mark.parametrize("alias", ["symlink", "dotdot"])
def test_the_same_folder_given_twice_is_named_so(sweep, tmp_path, capsys, alias):
    if alias == "symlink":
        other = tmp_path / "link"
        other.symlink_to(sweep)
    else:
        other = sweep / ".." / sweep.name
    err = refused(capsys, sweep, other, "--out", tmp_path / "out")
    assert "the same results folder is given twice" in err and "two results folders" not in err
    assert not (tmp_path / "out").exists()


def test_a_folder_given_twice_is_refused_before_any_is_read(sweep, tmp_path, capsys, monkeypatch):
    import analysis.loading

    def reads(*args, **kwargs):
        raise AssertionError("a folder was read before the folders were checked")

    monkeypatch.setattr(analysis.loading, "_load_one", reads)
    assert "given twice" in refused(capsys, sweep, sweep / ".." / sweep.name, "--out", tmp_path / "out")


# ---- 6 and 7. every trial failed: the advice, and no raw warnings ----------------------------
def test_every_trial_failed_says_so_without_raw_warnings(sweep, tmp_path):
    """In a subprocess, as a user runs it: the figures are drawn in forked children, whose warnings
    would reach the terminal's stderr, not capsys."""
    edit_trials(sweep, "status", "failed", rows=10**6)
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(sweep), "--out", str(tmp_path / "out"), "--brief"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no UserWarning / RuntimeWarning lines
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["What to do"].startswith("Every trial failed") and "add seeds" not in lines["What to do"]
    assert lines["Scope"].startswith("No trial has finished")
    assert (tmp_path / "out" / "summary.md").is_file()
