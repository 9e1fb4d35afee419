"""analysis.summary_cache.merge_trials: the cached features and a report's new trials merged from
slices of the two, the rows and order merge_sorted gives, without copying either."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis.summary_cache import merge_trials


def trial_frame(ids: list[str], rng: np.random.Generator) -> pl.DataFrame:
    rows = [(t, s, float(rng.normal())) for t in ids for s in range(int(rng.integers(1, 4)))]
    return pl.DataFrame(
        rows, schema={"trial_id": pl.String, "step": pl.Int64, "value": pl.Float64}, orient="row"
    ).with_columns(pl.col("trial_id").cast(pl.Categorical))


@pytest.mark.parametrize("seed", range(12))
def test_merged_slices_equal_merge_sorted(seed):
    rng = np.random.default_rng(seed)
    # ids that sort differently as bytes and as lower case, with non-ASCII and punctuation
    pool = sorted({f"{rng.choice(['adamw', 'muon', 'Zeta', 'émile', 'a_b', 'a-b'])}_{i}" for i in range(60)})
    taken = rng.uniform(size=len(pool)) < rng.uniform(0.05, 0.95)
    first = trial_frame([t for t, k in zip(pool, taken) if k], rng)
    second = trial_frame([t for t, k in zip(pool, taken) if not k], rng)
    merged = merge_trials(first, second)
    assert merged.equals(first.merge_sorted(second, key="trial_id"))
    assert merged.get_column("trial_id").cast(pl.String).to_list() == sorted(
        merged.get_column("trial_id").cast(pl.String).to_list()
    )


def test_one_new_trial_among_many_cached_takes_slices_not_copies():
    rng = np.random.default_rng(0)
    cached = trial_frame([f"t{i:05d}" for i in range(0, 2000, 2)], rng).rechunk()
    new = trial_frame(["t00999"], rng)
    merged = merge_trials(new, cached)
    assert merged.equals(new.merge_sorted(cached, key="trial_id"))
    assert merged.n_chunks() == 3  # cached before, the new trial, cached after: slices, not one copy
    assert merge_trials(cached.clear(), cached) is cached and merge_trials(new, cached.clear()) is new
