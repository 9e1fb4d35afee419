"""analysis.head_runs: the head means summed run by run in numpy are, to the bit, the means Polars'
group-by gives (the report is the same whichever path a batch takes), nulls, NaN and infinities
included."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis import features
from analysis.contract import METRICS_PL
from analysis.head_runs import run_means


def bits(series: pl.Series) -> list:
    """Each value's bits (None for null): NaN == NaN, 0.0 != -0.0."""
    return [None if v is None else np.float64(v).view(np.int64).item() for v in series.to_list()]


def polars_means(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.group_by("g", maintain_order=True).agg(pl.col("value").mean(), pl.len().alias("n"))


def runs_of(lengths) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths)
    return np.cumsum(lengths) - lengths, lengths


@pytest.mark.parametrize("seed", range(3))
def test_run_means_are_polars_group_means_to_the_bit(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, 3000)
    starts, lengths = runs_of(lengths)
    n = int(lengths.sum())
    values = rng.normal(20, 5, n) * 10.0 ** rng.integers(-8, 9, n)  # magnitudes where the order of a sum shows
    values = pl.Series("value", values).scatter(rng.choice(n, n // 20, replace=False), None)  # 5% null
    values = values.scatter(np.arange(starts[7], starts[7] + lengths[7]), None)  # a run of nulls only
    frame = pl.DataFrame({"g": np.repeat(np.arange(len(lengths)), lengths), "value": values})
    got = run_means(frame, starts, lengths, ["g"], exact=None)
    want = polars_means(frame)
    assert got.get_column("g").to_list() == want.get_column("g").to_list()
    assert got.get_column("n").to_list() == want.get_column("n").to_list() == lengths.tolist()
    assert got.get_column("n").dtype == want.get_column("n").dtype
    assert bits(got.get_column("value")) == bits(want.get_column("value"))
    assert got.get_column("value")[7] is None
    # a plain sum would not do: it differs from Polars' in the last bit on some runs
    plain = [sum(v for v in values[s : s + k].to_list() if v is not None) for s, k in zip(starts, lengths)]
    counts = [values[s : s + k].count() for s, k in zip(starts, lengths)]
    plain_means = pl.Series([p / c if c else None for p, c in zip(plain, counts)], dtype=pl.Float64)
    assert bits(plain_means) != bits(want.get_column("value"))


def test_runs_with_nan_or_an_infinity_are_left_to_polars():
    inf, nan = float("inf"), float("nan")
    groups = [[1.0, nan, 2.0], [inf, 1.0, 2.0], [3.0, -inf], [inf, -inf, 1.0], [1.5, 2.5], [None, inf]]
    starts, lengths = runs_of([len(g) for g in groups])
    frame = pl.DataFrame(
        {"g": np.repeat(np.arange(len(groups)), lengths), "value": [v for g in groups for v in g]},
        schema={"g": pl.Int64, "value": pl.Float64},
    )
    asked = []

    def exact(rows):
        asked.append(rows.height)
        return polars_means(rows)

    got = run_means(frame, starts, lengths, ["g"], exact).sort("g")
    want = polars_means(frame).sort("g")
    assert bits(got.get_column("value")) == bits(want.get_column("value"))
    assert got.get_column("value").to_list()[1:3] == [inf, -inf]
    assert asked == [sum(lengths[:4]) + 2]  # every run with a non-finite value, and only those


def test_a_batch_with_odd_values_gives_the_sorted_paths_frames(monkeypatch):
    """`_reduce` on a batch in the trainer's order (run by run) and on the same rows sorted into head
    order (Polars' group-by): the same seven frames, to the bit, with a NaN, an infinity and a null
    among the heads, and a layer missing a head."""
    rng = np.random.default_rng(5)
    rows = []
    for trial in ("a", "b"):
        for step in (0, 10):
            for name, tensor in (("pr", "q"), ("pr", "k"), ("erank", "q"), ("pr_centred", "q"), ("norm_cv", "k_pre")):
                for layer in range(2):
                    for head in range(3):
                        rows.append((trial, step, name, layer, head, tensor, float(rng.normal(8, 3))))
            rows.append((trial, step, "val_loss", None, None, None, float(rng.normal(3, 0.1))))
    frame = pl.DataFrame(rows, schema=METRICS_PL, orient="row")  # the columns of a metrics part
    frame = frame.with_columns(frame.get_column("value").scatter([1, 8, 20], [float("nan"), float("inf"), None]))
    frame = frame.filter(pl.int_range(pl.len()) != 40)  # one head missing in a layer
    frame = features._categorical(frame)
    sort, sorts = features.in_head_order, []
    monkeypatch.setattr(features, "in_head_order", lambda f: sorts.append(1) or sort(f))
    run_by_run = features._sorted(features._reduce(frame))
    assert sorts == []  # run by run: not sorted
    by_polars = features._sorted(pl.collect_all(features._queries(sort(frame).lazy()), engine=features.ENGINE))
    for name, a, b in zip(features.FRAMES, run_by_run, by_polars, strict=True):
        assert a.schema == b.schema, name
        assert a.equals(b), name
    curves = run_by_run[0]
    assert curves.height == 2 * 2 * 3 and curves.get_column("value").is_nan().sum() == 1
    assert run_by_run[3].height == 2 * 2  # activation: pr_centred of q and norm_cv of k_pre, last step
    assert run_by_run[4].height == 2 * 2 * 2  # layers: pr of q and k per layer, last step
