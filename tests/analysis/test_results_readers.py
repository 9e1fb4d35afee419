"""The results folders read with pandas, pyarrow, Polars and DuckDB, each without options.

`trial_id` is both the hive folder key (trial_id=<id>) and a column in every part; the sink stores
the column dictionary-encoded, the type pyarrow infers for the key, so the two merge. Each reader
must see one trial_id column and one row per key, also after a restore replayed steps and after a
finished trial's parts were compacted into one (whose floats are BYTE_STREAM_SPLIT-encoded).
trials.parquet stores trial_id with the same type, so each library joins the folders with it on
trial_id as they are read, without a cast.
"""

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.contract import METRICS_PL, check_parts, scan
from analysis.paths import list_parts
from trainer.schema import METRICS_KEY, SPECTRA_KEY, TRIALS_SCHEMA, empty_trial_row
from trainer.sink import TrialSink
from trainer.storage import ResultsDir
from trainer.trials import write_trials

TRIALS = ("adamw_none_w32_lr0.01_s0_0a1b2c3d", "muon_rms_w32_lr0.01_s1_12345678")
KEYS = {"metrics": list(METRICS_KEY), "spectra": list(SPECTRA_KEY)}
ROWS = {"metrics": 2 * 2 * 20, "spectra": 2 * 2 * 20}  # trials x rows per step x steps


@pytest.fixture(scope="module", params=["streamed", "compacted"])
def sweep(tmp_path_factory, request):
    """The parts as a running trial leaves them, or compacted as a finished one (one part per folder)."""
    root = tmp_path_factory.mktemp(f"readers_{request.param}")
    for tid in TRIALS:
        sink = TrialSink(ResultsDir(root), tid)
        for lo, hi in ((0, 10), (10, 20)):
            for step in range(lo, hi):
                sink.scalar(step, "train_loss", float(step))
                sink.scalar(step, "pr", 2.0, layer=0, head=1, tensor="q")
                sink.spectrum(step, 0, "q", np.array([[3.0, 1.0], [2.0, 2.0]], dtype=np.float32))
            sink.flush()
        sink.truncate_after(14)  # a restore from step 14, then the replay
        for step in range(15, 20):
            sink.scalar(step, "train_loss", float(step))
            sink.scalar(step, "pr", 2.0, layer=0, head=1, tensor="q")
            sink.spectrum(step, 0, "q", np.array([[3.0, 1.0], [2.0, 2.0]], dtype=np.float32))
        sink.flush()
        if request.param == "compacted":
            sink.compact()
            assert len(list((root / "metrics" / f"trial_id={tid}").iterdir())) == 1
    rows = [  # the columns the report refuses null (analysis.contract.ROW_RULES) filled as the trainer fills them
        {
            **empty_trial_row(),
            "trial_id": tid,
            "optimizer": tid[:5].rstrip("_"),
            "qk_norm": tid.split("_")[1],
            "lr": 0.01,
            "width": 32,
            "d_head": 16,
            "seed": int(tid.split("_")[4].removeprefix("s")),
            "status": "completed",
        }
        for tid in TRIALS
    ]
    write_trials(ResultsDir(root), rows)  # as the driver (or a standalone trial) writes it
    return root


def check(df: pd.DataFrame, dataset: str) -> None:
    assert list(df.columns).count("trial_id") == 1
    assert len(df) == ROWS[dataset]
    assert sorted(df["trial_id"].astype(str).unique()) == sorted(TRIALS)
    assert not df[KEYS[dataset]].astype(str).duplicated().any()
    if dataset == "metrics":  # the values decode (floats are BYTE_STREAM_SPLIT-encoded)
        loss = df[df["name"] == "train_loss"]
        assert sorted(loss["value"]) == sorted(float(s) for s in loss["step"])
    else:
        assert {tuple(float(x) for x in sigma) for sigma in df["sigma"]} == {(3.0, 1.0), (2.0, 2.0)}


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_pandas_reads_the_folder(sweep, dataset):
    check(pd.read_parquet(sweep / dataset), dataset)


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_pyarrow_reads_the_folder(sweep, dataset):
    table = pq.read_table(sweep / dataset)
    check(table.to_pandas(), dataset)


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_polars_reads_the_folder(sweep, dataset):
    for df in (pl.read_parquet(sweep / dataset), pl.scan_parquet(sweep / dataset).collect()):
        check(df.with_columns(pl.col("trial_id").cast(pl.String)).to_pandas(), dataset)


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_duckdb_reads_the_folder(sweep, dataset):
    duckdb = pytest.importorskip("duckdb")
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{sweep / dataset}/*/*.parquet')")
    assert dict(zip(rel.columns, map(str, rel.types)))["trial_id"] == "VARCHAR"
    check(rel.df(), dataset)


def test_the_analysis_sees_trial_id_as_a_string(sweep):
    """The report's own reader: footers pass the contract check, the scan yields String ids."""
    parts, skipped = check_parts(list_parts(sweep / "metrics"), METRICS_PL)
    assert not skipped
    df = scan(parts, METRICS_PL).collect()
    assert df.schema["trial_id"] == pl.String and df.height == ROWS["metrics"]


# ---- joining the folders with trials.parquet, as read, without casts (issue 21, item 1) --------
def check_join(df: pd.DataFrame, dataset: str) -> None:
    assert len(df) == ROWS[dataset]
    by_trial = df.astype({"trial_id": str}).groupby("trial_id")["optimizer"].first().to_dict()
    assert by_trial == {tid: tid[:5].rstrip("_") for tid in TRIALS}


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_polars_joins_the_folder_with_trials(sweep, dataset):
    lazy = pl.scan_parquet(sweep / dataset).join(pl.scan_parquet(sweep / "trials.parquet"), on="trial_id")
    eager = pl.read_parquet(sweep / dataset).join(pl.read_parquet(sweep / "trials.parquet"), on="trial_id")
    for df in (lazy.collect(), eager):
        check_join(df.to_pandas(), dataset)


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_pandas_joins_the_folder_with_trials(sweep, dataset):
    df = pd.read_parquet(sweep / dataset).merge(pd.read_parquet(sweep / "trials.parquet"), on="trial_id")
    check_join(df, dataset)


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_duckdb_joins_the_folder_with_trials(sweep, dataset):
    duckdb = pytest.importorskip("duckdb")
    rel = duckdb.sql(
        f"SELECT * FROM '{sweep / dataset}/*/*.parquet' JOIN '{sweep / 'trials.parquet'}' USING (trial_id)"
    )
    check_join(rel.df(), dataset)


def test_the_analysis_reads_trials_with_either_trial_id_type(sweep, tmp_path):
    """trials.parquet written before trial_id was dictionary-encoded (plain strings) still loads."""
    from analysis.contract import read_trials_frame

    new, _ = read_trials_frame(sweep / "trials.parquet")
    assert pq.read_schema(sweep / "trials.parquet").field("trial_id").type == pa.dictionary(pa.int32(), pa.string())
    old = tmp_path / "trials.parquet"
    pq.write_table(pq.read_table(sweep / "trials.parquet").cast(TRIALS_SCHEMA), old)
    assert pq.read_schema(old).field("trial_id").type == pa.string()
    old_df, _ = read_trials_frame(old)
    for df in (new, old_df):
        assert df.schema["trial_id"] == pl.String and sorted(df["trial_id"]) == sorted(TRIALS)
