"""analysis.features: a batch whose rows are in the order the trainer writes them (each group's
heads one run, in (layer, head) order) is reduced without sorting, and gives the same features to
the last bit as the same rows in any other order (which are sorted into head order first)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from analysis import features as features_module
from analysis.features import build_features
from analysis.loading import load_results
from benchmarks.synthetic_results import SyntheticSpec, write_results
from trainer.schema import METRICS_DIR

FRAMES = ("curves", "activation", "layers", "val_loss", "ends", "logits", "clip")


def features_and_sorts(folder: Path, monkeypatch) -> tuple[dict[str, pl.DataFrame], int]:
    sorts = []
    sort = features_module.in_head_order
    monkeypatch.setattr(features_module, "in_head_order", lambda frame: sorts.append(frame.height) or sort(frame))
    f = build_features(load_results(folder, cache=False))
    monkeypatch.setattr(features_module, "in_head_order", sort)
    return {name: getattr(f, name) for name in FRAMES}, len(sorts)


def test_rows_in_written_order_skip_the_sort_and_any_order_gives_the_same_bits(tmp_path, monkeypatch):
    folder = tmp_path / "sweep"
    spec = SyntheticSpec(widths=(64,), lrs=(3e-3, 1e-2), seeds=(0, 1), steps=100, eval_every=25, point_noise=0.01)
    write_results(spec, folder)
    written, sorted_written = features_and_sorts(folder, monkeypatch)
    assert sorted_written == 0  # the trainer's order needs no sort
    assert written["curves"].height > 0 and written["curves"].get_column("n").min() == spec.depth * 2
    for i, part in enumerate(sorted((folder / METRICS_DIR).rglob("*.parquet"))):
        table = pq.read_table(part)
        shuffled = pl.from_arrow(table).sample(fraction=1.0, shuffle=True, seed=i)
        pq.write_table(shuffled.to_arrow().cast(table.schema), part)
    again, sorted_shuffled = features_and_sorts(folder, monkeypatch)
    assert sorted_shuffled > 0  # shuffled rows went through the sort
    for name in FRAMES:
        assert again[name].equals(written[name]), name  # the same rows, the same order, the same bits


@pytest.mark.parametrize("split", ["heads", "group"])
def test_a_batch_not_in_head_order_is_sorted_first(split, monkeypatch):
    """A group's heads out of order within one run, or one group in two runs with another between:
    either is sorted, and the mean is the one summed in head order."""
    values = [1e16, 1.0, -1e16, 3.0]  # a sum that depends on its order
    heads = [0, 1, 2, 3]
    rows = pl.DataFrame(
        {
            "trial_id": ["t"] * 4,
            "step": [0] * 4,
            "name": ["pr"] * 4,
            "layer": pl.Series([0] * 4, dtype=pl.Int16),
            "head": pl.Series(heads, dtype=pl.Int16),
            "tensor": ["q"] * 4,
            "value": values,
        }
    )
    if split == "heads":
        frame, order = rows[[0, 2, 1, 3]], [0, 2, 1, 3]  # one run, heads out of order
    else:  # two runs of q (each rising) with a k row between: the q group is not one run
        other = rows[:1].with_columns(pl.lit("k").alias("tensor"))
        frame, order = pl.concat([rows[2:], other, rows[:2]]), [2, 3, 0, 1]
    in_order = sum(values) / 4  # ((1e16 + 1) - 1e16) + 3 = 3.0 in floats
    assert sum(values[i] for i in order) / 4 != in_order  # summed as they come, the mean would differ
    sorts = []
    sort = features_module.in_head_order
    monkeypatch.setattr(features_module, "in_head_order", lambda f: sorts.append(1) or sort(f))
    curves = features_module._reduce(features_module._categorical(frame))[0].filter(pl.col("tensor") == "q")
    assert sorts == [1]
    assert curves.get_column("value").item() == in_order == 0.75


def test_sort_rows_orders_as_polars_sorts():
    """features.sort_rows (a numpy lexsort of each key's rank) gives the rows Polars' sort gives:
    Categorical keys by their strings (not their codes), numbers by value; keys with nulls are
    left to Polars."""
    import numpy as np

    rng = np.random.default_rng(3)
    words = ["pr", "erank", "k_sphere", "q", "Q", "zeta", "ä", "a b", "10", "9", "trial_ü"]
    n = 5000
    frame = pl.DataFrame(
        {
            "trial_id": rng.choice(words, n),
            "name": rng.choice(words[:4], n),
            "step": rng.integers(-5, 1000, n),
            "value": rng.normal(size=n),
        }
    )
    # Categorical codes in an order other than the strings': cast in reverse order of appearance
    frame = frame.reverse().with_columns(pl.col("trial_id", "name").cast(pl.Categorical)).reverse()
    frame = frame.unique(["trial_id", "name", "step"], keep="first", maintain_order=True)
    keys = ("trial_id", "name", "step")
    assert features_module.sort_rows(frame, keys).equals(frame.sort(*keys))
    assert not frame.sort(*keys).equals(frame.sort(pl.col("trial_id").to_physical(), "name", "step"))
    with_null = frame.with_columns(frame.get_column("step").scatter([3, 7], None))
    assert features_module.sort_rows(with_null, keys).equals(with_null.sort(*keys))
