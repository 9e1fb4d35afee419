"""The Parquet sink: whole-file parts, truncation after a restore, results on a pyarrow filesystem."""

import numpy as np
import polars as pl

from trainer.schema import METRICS_KEY, empty_trial_row
from trainer.sink import TrialSink
from trainer.storage import ResultsDir
from trainer.trials import read_trials, write_trials


def fill(sink, steps):
    for step in steps:
        sink.scalar(step, "train_loss", float(step))
        sink.scalar(step, "pr", 2.0, layer=0, head=1, tensor="q")
        sink.spectrum(step, 0, "q", np.array([[3.0, 1.0], [2.0, 2.0]], dtype=np.float32))


def scan(root, dataset):
    return pl.read_parquet(root / dataset / "**" / "*.parquet", hive_partitioning=False)


def test_parts_are_named_by_step_range_and_hold_every_row(tmp_path):
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    fill(sink, range(0, 5))
    sink.flush()
    fill(sink, range(5, 8))
    sink.flush()
    sink.flush()  # empty: no new part
    names = sorted(p.name for p in (tmp_path / "metrics" / "trial_id=t1").iterdir())
    assert names == ["part-000000000-000000004.parquet", "part-000000005-000000007.parquet"]
    assert scan(tmp_path, "metrics").height == 16
    spectra = scan(tmp_path, "spectra")
    assert spectra.height == 16 and spectra["sigma"].to_list()[0] == [3.0, 1.0]


def test_truncate_after_drops_later_rows_so_a_replay_has_no_duplicates(tmp_path):
    results = ResultsDir(tmp_path)
    sink = TrialSink(results, "t1")
    fill(sink, range(0, 10))
    sink.flush()
    fill(sink, range(10, 20))
    sink.flush()
    dropped = sink.truncate_after(14)
    assert dropped == 5 * 2 + 5 * 2  # metrics rows + spectra rows of steps 15..19
    fill(sink, range(15, 20))  # the replay
    sink.flush()
    metrics = scan(tmp_path, "metrics")
    assert metrics.select(METRICS_KEY).is_duplicated().sum() == 0
    assert sorted(metrics.filter(pl.col("name") == "train_loss")["step"].to_list()) == list(range(20))


def test_truncate_to_minus_one_clears_a_trial(tmp_path):
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    fill(sink, range(3))
    sink.flush()
    sink.truncate_after(-1)
    assert list((tmp_path / "metrics" / "trial_id=t1").iterdir()) == []


def test_no_temporary_file_is_left_after_writes(tmp_path):
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    for i in range(3):
        fill(sink, [i])
        sink.flush()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_trials_table_round_trips_and_is_sorted(tmp_path):
    results = ResultsDir(tmp_path)
    rows = []
    for tid in ("b", "a"):
        row = empty_trial_row()
        row.update(trial_id=tid, status="completed", lr=1e-3)
        rows.append(row)
    write_trials(results, rows)
    assert [r["trial_id"] for r in read_trials(results)] == ["a", "b"]


def test_results_dir_accepts_a_filesystem_uri(tmp_path):
    results = ResultsDir(f"file://{tmp_path}")
    sink = TrialSink(results, "t9")
    fill(sink, [0])
    sink.flush()
    assert scan(tmp_path, "metrics").height == 2
