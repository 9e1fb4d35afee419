"""analysis.features reads each row's trial from its part's footer (`Part.trial_id`), not from the
trial_id column: the features must be the same, to the last bit, as when the column is read."""

from __future__ import annotations

import dataclasses

import polars as pl
import pyarrow.parquet as pq

from analysis.features import build_features
from analysis.loading import load_results
from benchmarks.synthetic_results import SyntheticSpec, write_results
from trainer.schema import METRICS_DIR

FRAMES = ("curves", "activation", "layers", "val_loss", "ends", "logits", "clip")


def test_trials_from_the_footers_give_the_features_of_the_trial_id_column(tmp_path):
    folder = tmp_path / "sweep"
    # several parts per trial (a duplicated replay and a truncated trial among them), rows of
    # different counts per part: a row's part is found from its position in the batch
    spec = SyntheticSpec(widths=(64, 128), lrs=(3e-3, 1e-2), seeds=(0, 1, 2), steps=100, eval_every=25)
    spec.n_duplicated, spec.n_truncated = 2, 1
    write_results(spec, folder)
    # one part written without statistics: its trial comes from its trial_id column, read once
    first = sorted((folder / METRICS_DIR).rglob("*.parquet"))[0]
    pq.write_table(pq.read_table(first), first, write_statistics=False)

    res = load_results(folder, cache=False)
    assert all(p.trial_id is not None for p in res.metric_parts)
    assert {p.trial_id for p in res.metric_parts} == set(res.trials.get_column("trial_id"))
    from_footers = build_features(res)

    res = load_results(folder, cache=False)
    res.metric_parts = [dataclasses.replace(p, trial_id=None) for p in res.metric_parts]
    from_column = build_features(res)

    assert from_footers.curves.height > 0 and from_footers.deduplicated_trials
    for name in FRAMES:
        a, b = getattr(from_footers, name), getattr(from_column, name)
        assert a.schema == b.schema and a.equals(b), name
    # each trial's rows are its own: the final PR step of every trial is its own schedule's
    ends = from_footers.ends.filter(pl.col("name") == "train_loss").select(
        pl.col("trial_id").cast(pl.String), "step_last"
    )
    planned = res.trials.select("trial_id", "status")
    joined = ends.join(planned, on="trial_id", how="full", coalesce=True)
    assert joined.height == res.trials.height and joined.get_column("step_last").null_count() == 0


def test_a_footer_that_miscounts_its_rows_gives_the_same_features(tmp_path):
    """A part whose recorded row count is not what the file holds (replaced after its footer was
    read): every row's trial is then read from the trial_id column, never shifted to a neighbour."""
    folder = tmp_path / "sweep"
    write_results(SyntheticSpec(widths=(64,), lrs=(1e-2,), seeds=(0, 1), steps=100), folder)
    res = load_results(folder, cache=False)
    truth = build_features(res)
    res = load_results(folder, cache=False)
    res.metric_parts = [
        dataclasses.replace(p, rows=p.rows + 7) if i == 0 else p for i, p in enumerate(res.metric_parts)
    ]
    miscounted = build_features(res)
    for name in FRAMES:
        a, b = getattr(truth, name), getattr(miscounted, name)
        assert a.schema == b.schema and a.equals(b), name
