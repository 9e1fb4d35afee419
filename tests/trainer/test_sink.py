"""The Parquet sink: whole-file parts, truncation after a restore, compaction at the end of a trial,
results on a pyarrow filesystem."""

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.config import SMOKE, TrialConfig
from trainer.loop import TrialHooks, run_trial
from trainer.schema import METRICS_KEY, SPECTRA_KEY, empty_trial_row
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


# ---- compaction ----------------------------------------------------------------------------
def part_names(root, dataset, trial="t1"):
    return sorted(p.name for p in (root / dataset / f"trial_id={trial}").iterdir())


def rows(root, dataset):
    return scan(root, dataset).with_columns(pl.col("trial_id").cast(pl.String))


def test_compact_leaves_one_part_named_by_its_range_with_every_row_sorted_by_step(tmp_path):
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    for lo, hi in ((0, 3), (3, 4), (4, 9)):
        fill(sink, range(lo, hi))
        sink.flush()
    before = {d: rows(tmp_path, d) for d in ("metrics", "spectra")}
    assert sink.compact() == 2 * 3
    for dataset in ("metrics", "spectra"):
        assert part_names(tmp_path, dataset) == ["part-000000000-000000008.parquet"]
        after = rows(tmp_path, dataset)
        assert after.equals(before[dataset].sort("step", maintain_order=True))
    assert sink.compact() == 0  # one part: nothing to do
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_compacted_parts_use_byte_stream_split_for_floats(tmp_path):
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    for step in range(2):
        fill(sink, [step])
        sink.flush()
    sink.compact()
    for dataset, column in (("metrics", "value"), ("spectra", "sigma.list.element")):
        (part,) = (tmp_path / dataset / "trial_id=t1").iterdir()
        meta = pq.read_metadata(part).row_group(0)
        found = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
        assert "BYTE_STREAM_SPLIT" in found[column], found


def test_a_truncation_after_compaction_and_the_replay_keep_one_row_per_key(tmp_path):
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    for lo, hi in ((0, 10), (10, 20)):
        fill(sink, range(lo, hi))
        sink.flush()
    sink.compact()
    sink.truncate_after(14)  # a restore from a checkpoint at step 15
    fill(sink, range(15, 20))
    sink.flush()
    sink.compact()
    metrics = rows(tmp_path, "metrics")
    assert metrics.select(METRICS_KEY).is_duplicated().sum() == 0
    assert metrics.filter(pl.col("name") == "train_loss")["step"].to_list() == list(range(20))
    assert part_names(tmp_path, "spectra") == ["part-000000000-000000019.parquet"]


def test_an_interrupted_compaction_is_healed_by_the_next_one(tmp_path):
    """Killed after the new part was written and before the old parts were all deleted, then
    restored from a checkpoint: the copies left behind end up as one row per key."""
    results = ResultsDir(tmp_path)
    sink = TrialSink(results, "t1")
    for lo, hi in ((0, 5), (5, 10), (10, 20)):
        fill(sink, range(lo, hi))
        sink.flush()
    folders = {d: tmp_path / d / "trial_id=t1" for d in ("metrics", "spectra")}
    kept = {d: {p.name: p.read_bytes() for p in f.iterdir()} for d, f in folders.items()}
    sink.compact()
    for dataset, folder in folders.items():  # the old parts come back, as if never deleted
        for name, data in sorted(kept[dataset].items())[:2]:
            (folder / name).write_bytes(data)
    sink.truncate_after(14)
    fill(sink, range(15, 20))
    sink.flush()
    sink.compact()
    metrics, spectra = rows(tmp_path, "metrics"), rows(tmp_path, "spectra")
    assert metrics.select(METRICS_KEY).is_duplicated().sum() == 0
    assert spectra.select(SPECTRA_KEY).is_duplicated().sum() == 0
    assert metrics.filter(pl.col("name") == "train_loss")["step"].to_list() == list(range(20))
    assert spectra.height == 20 * 2
    assert part_names(tmp_path, "metrics") == ["part-000000000-000000019.parquet"]


def test_compact_reads_parts_with_a_plain_string_trial_id(tmp_path):
    """Parts written before trial_id was stored dictionary-encoded merge with newer ones."""
    sink = TrialSink(ResultsDir(tmp_path), "t1")
    fill(sink, range(3))
    sink.flush()
    (old,) = (tmp_path / "metrics" / "trial_id=t1").iterdir()
    table = pq.read_table(old)
    plain = table.set_column(0, pa.field("trial_id", pa.string(), nullable=False), table["trial_id"].cast(pa.string()))
    pq.write_table(plain, old)
    fill(sink, range(3, 5))
    sink.flush()
    sink.compact()
    metrics = rows(tmp_path, "metrics")
    assert metrics.height == 10 and set(metrics["trial_id"]) == {"t1"}


# ---- compaction at the end of a real trial ----------------------------------------------------
TRIAL = {**SMOKE, "corpus": "synthetic", "steps": 20, "checkpoint_every": 10}


def all_rows(root):
    as_str = pl.col("trial_id").cast(pl.String)
    return {
        d: pl.read_parquet(root / d / "**" / "*.parquet", hive_partitioning=False).with_columns(as_str)
        for d in ("metrics", "spectra")
    }


@pytest.mark.slow
def test_a_finished_trial_has_one_part_per_folder_holding_the_rows_it_streamed(tmp_path, monkeypatch):
    cfg = TrialConfig(**TRIAL)
    with monkeypatch.context() as patch:  # the same trial without compaction: the parts as streamed
        patch.setattr(TrialSink, "compact", lambda self: 0)
        assert run_trial(cfg, tmp_path)["status"] == "completed"
    streamed = all_rows(tmp_path)
    parts = {d: list((tmp_path / d).glob("*/*.parquet")) for d in ("metrics", "spectra")}
    assert all(len(p) > 2 for p in parts.values())
    TrialSink(ResultsDir(tmp_path), cfg.trial_id()).compact()
    for dataset, frame in all_rows(tmp_path).items():
        assert [p.name for p in (tmp_path / dataset).glob("*/*.parquet")] == ["part-000000000-000000020.parquet"]
        assert frame.equals(streamed[dataset].sort("step", maintain_order=True))

    again = tmp_path / "again"  # and the loop compacts by itself, with the same rows (wall_s aside)
    run_trial(cfg, again)
    for dataset, frame in all_rows(again).items():
        assert len(list((again / dataset).glob("*/*.parquet"))) == 1
        key = list(METRICS_KEY if dataset == "metrics" else SPECTRA_KEY)
        assert frame.select(key).equals(streamed[dataset].sort("step", maintain_order=True).select(key))


class FailAfterCheckpoint(TrialHooks):
    def on_report(self, step, metrics, checkpoint_dir):
        if checkpoint_dir is not None:
            raise RuntimeError("killed after the checkpoint")


@pytest.mark.slow
def test_a_restored_trial_is_compacted_without_duplicate_rows(tmp_path):
    cfg = TrialConfig(**TRIAL)
    checkpoints = tmp_path / "checkpoint"
    with pytest.raises(RuntimeError, match="killed"):
        run_trial(cfg, tmp_path / "out", hooks=FailAfterCheckpoint(), checkpoint_dir=checkpoints)
    assert len(list((tmp_path / "out" / "metrics").glob("*/*.parquet"))) > 1  # stopped midway: not compacted
    row = run_trial(cfg, tmp_path / "out", checkpoint_dir=checkpoints, resume_from=checkpoints)
    assert row["status"] == "completed" and row["steps_done"] == 20
    found = all_rows(tmp_path / "out")
    for dataset, key in (("metrics", METRICS_KEY), ("spectra", SPECTRA_KEY)):
        assert len(list((tmp_path / "out" / dataset).glob("*/*.parquet"))) == 1
        assert found[dataset].select(key).is_duplicated().sum() == 0
    steps = found["metrics"].filter(pl.col("name") == "train_loss")["step"].to_list()
    assert steps == list(range(20))
