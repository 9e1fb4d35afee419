"""Loading results: finding the sweep, schema errors, bad parts, duplicates, partial sweeps."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.features import build_features
from analysis.finals import final_values
from analysis.loading import ResultsError, load_results
from analysis.report import main
from benchmarks.synthetic_results import SyntheticSpec, trial_finals, write_results

SMALL = dict(
    optimizers=("adamw",),
    qk_norms=("none", "rms"),
    widths=(64,),
    lrs=(1e-2,),
    seeds=(0, 1, 2),
    steps=100,
    eval_every=25,
    spectra="ends",
)


def small(tmp_path, name="sweep", **kw):
    spec = SyntheticSpec(**{**SMALL, **kw})
    manifest = write_results(spec, tmp_path / name)
    return spec, manifest, tmp_path / name


# ---- finding the sweep folder ---------------------------------------------------------------
def test_missing_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err
    assert not (tmp_path / "nope").exists()


def test_folder_without_trials_parquet_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "trials.parquet" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []


def test_parent_folder_with_one_sweep_is_used(tmp_path):
    _, _, sweep = small(tmp_path / "results", name="default")
    assert load_results(tmp_path / "results").sweep_dir == sweep


def test_parent_folder_with_two_sweeps_is_refused(tmp_path, capsys):
    small(tmp_path / "results", name="a")
    small(tmp_path / "results", name="b")
    assert main([str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "a, b" in err and "pass one of them" in err
    assert not (tmp_path / "results" / "report").exists()


# ---- schema ---------------------------------------------------------------------------------
def test_metrics_part_with_wrong_type_names_file_and_column(tmp_path, capsys):
    _, _, sweep = small(tmp_path)
    part = sorted((sweep / "metrics").glob("*/*.parquet"))[0]
    t = pq.read_table(part)
    t = t.set_column(6, "value", pa.array([str(v) for v in t.column("value").to_pylist()]))
    pq.write_table(t, part)
    with pytest.raises(ResultsError) as e:
        load_results(sweep)
    assert str(part) in str(e.value) and "'value'" in str(e.value)
    assert main([str(sweep)]) == 2
    assert "'value'" in capsys.readouterr().err
    assert not (sweep / "report").exists()


def test_trials_missing_column_names_file_and_column(tmp_path):
    _, _, sweep = small(tmp_path)
    t = pq.read_table(sweep / "trials.parquet").drop_columns(["status"])
    pq.write_table(t, sweep / "trials.parquet")
    with pytest.raises(ResultsError, match=r"trials\.parquet: column 'status' is missing"):
        load_results(sweep)


def test_unknown_status_is_refused(tmp_path):
    _, _, sweep = small(tmp_path)
    df = pl.read_parquet(sweep / "trials.parquet")
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("exploded")).otherwise(pl.col("status")).alias("status")
    )
    df.write_parquet(sweep / "trials.parquet")
    with pytest.raises(ResultsError, match="'exploded'"):
        load_results(sweep)


# ---- bad parts, temp files ------------------------------------------------------------------
def test_temp_files_are_ignored(tmp_path):
    _, _, sweep = small(tmp_path, junk_files=True)
    assert list((sweep / "metrics").glob("*/*.tmp"))  # the generator left some
    res = load_results(sweep)
    assert res.skipped == []
    assert all(not p.path.name.endswith(".tmp") for p in res.metric_parts)


def test_truncated_part_is_reported_and_the_rest_analysed(tmp_path):
    _, manifest, sweep = small(tmp_path, n_truncated=1)
    res = load_results(sweep)
    assert [p for p, _ in res.skipped] == manifest["truncated"]
    feats = build_features(res)
    finals = final_values(res.trials, feats)
    # the other trials are whole; the truncated trial's earlier part is still read
    whole = finals.filter(pl.col("data_complete") & (pl.col("status") == "completed"))
    assert whole.height == finals.height - 1 and whole["final_pr_q"].null_count() == 0
    cut = finals.filter(~pl.col("data_complete"))["trial_id"][0]
    assert feats.curves.filter(pl.col("trial_id") == cut)["step"].max() < 100


def test_corrupt_page_behind_a_good_footer_is_skipped(tmp_path):
    _, _, sweep = small(tmp_path)
    part = sorted((sweep / "metrics").glob("*/*.parquet"))[-1]
    data = bytearray(part.read_bytes())
    data[8:400] = b"\xff" * 392  # the first data pages; the footer at the end stays intact
    part.write_bytes(bytes(data))
    res = load_results(sweep)
    assert res.skipped == []  # the footer reads fine ...
    feats = build_features(res)  # ... reading the data does not: skipped, named, the rest kept
    assert [p for p, _ in res.skipped] == [str(part)]
    assert feats.curves["trial_id"].n_unique() >= 5


# ---- duplicates -----------------------------------------------------------------------------
def test_replayed_steps_last_written_wins_and_are_counted(tmp_path):
    spec, manifest, sweep = small(tmp_path, n_duplicated=2)
    res = load_results(sweep)
    feats = build_features(res)
    assert feats.duplicate_rows == manifest["duplicate_rows"] > 0
    finals = final_values(res.trials, feats)
    truth = pl.DataFrame(trial_finals(spec)).select("trial_id", "final_pr_q", "final_val_loss")
    got = finals.join(truth, on="trial_id", suffix="_true")
    # the stale rows carry +1: the replayed (later) values must win
    np.testing.assert_allclose(got["final_pr_q"], got["final_pr_q_true"], atol=1e-9)
    np.testing.assert_allclose(got["final_val_loss"], got["final_val_loss_true"], atol=1e-9)


def test_duplicates_inside_one_file_keep_the_last_row(tmp_path):
    _, _, sweep = small(tmp_path)
    part = sorted((sweep / "metrics").glob("*/*.parquet"))[-1]  # holds the last step
    df = pl.read_parquet(part)
    last = df["step"].max()
    again = df.filter((pl.col("step") == last) & (pl.col("name") == "pr") & (pl.col("tensor") == "q"))
    before = again["value"].mean()
    again = again.with_columns(pl.col("value") + 5.0)
    pq.write_table(pl.concat([df, again]).to_arrow().cast(df.to_arrow().schema), part)
    feats = build_features(load_results(sweep))
    assert feats.duplicate_rows == again.height > 0
    tid = df["trial_id"][0]
    got = feats.curves.filter(
        (pl.col("trial_id") == tid) & (pl.col("step") == last) & (pl.col("name") == "pr") & (pl.col("tensor") == "q")
    )
    assert got["value"][0] == pytest.approx(before + 5.0)  # the rows written last won


# ---- partial --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, partial",
    [
        (dict(), False),
        (dict(n_running=1), True),
        (dict(finished=False), True),
        (dict(n_planned_extra=4), True),
        (dict(sweep_json=False), False),
        (dict(sweep_json=False, n_running=1), True),
    ],
)
def test_partial_label(tmp_path, kw, partial):
    _, _, sweep = small(tmp_path, **kw)
    assert bool(load_results(sweep).partial_reasons()) is partial


def test_sweep_json_must_be_an_object(tmp_path):
    _, _, sweep = small(tmp_path)
    (sweep / "sweep.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ResultsError, match="JSON object"):
        load_results(sweep)


def test_trial_that_lost_its_last_part_is_not_used_as_final(tmp_path):
    _, manifest, sweep = small(tmp_path, n_truncated=1)
    res = load_results(sweep)
    finals = final_values(res.trials, build_features(res))
    lost = finals.filter(~pl.col("data_complete"))
    assert lost.height == 1 and manifest["truncated"][0].count(lost["trial_id"][0]) == 1
    assert lost["final_val_loss"][0] is None and lost["final_pr_q"][0] is None


def test_the_head_mean_is_the_same_to_the_last_bit_whatever_order_the_rows_arrive_in():
    """analysis.features.head_means: a float sum depends on its order; the report's means over layers
    and heads must not depend on the order (or chunking) in which the scan hands over the rows."""
    import numpy as np
    import polars as pl

    from analysis.features import ENGINE, head_means, in_head_order

    def head_mean():
        return lambda lf: head_means(in_head_order(lf.collect()).lazy(), ["g"]).collect(engine=ENGINE)

    rng = np.random.default_rng(0)
    n = 8
    rows = pl.DataFrame(
        {
            "g": [0] * n,
            "layer": [i // 4 for i in range(n)],
            "head": [i % 4 for i in range(n)],
            "value": rng.normal(20, 1, n) * 10.0 ** rng.integers(-8, 8, n),  # magnitudes where order matters
        }
    )
    means = set()
    for seed in range(20):
        shuffled = rows.sample(fraction=1.0, shuffle=True, seed=seed)
        chunked = pl.concat([shuffled[:3], shuffled[3:]], rechunk=False)  # two chunks, as parts are
        means.add(head_mean()(chunked.lazy())["value"][0])
    assert len(means) == 1
    assert means.pop() == pytest.approx(rows["value"].mean(), rel=1e-12)
    with_null = pl.concat([rows, pl.DataFrame({"g": [0], "layer": [2], "head": [0], "value": [None]})])
    assert head_mean()(with_null.lazy())["value"][0] == pytest.approx(
        rows["value"].mean(), rel=1e-12
    )  # nulls are left out, as mean() does
