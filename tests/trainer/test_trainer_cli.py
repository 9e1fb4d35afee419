"""`python -m trainer.train` end to end: the smoke trial, the contract, divergence, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from trainer.schema import METRIC_NAMES, METRICS_KEY, METRICS_SCHEMA, SPECTRA_KEY, SPECTRA_SCHEMA, TRIALS_SCHEMA

ROOT = Path(__file__).resolve().parents[2]


def train(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "trainer.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def read(out: Path):
    # trial_id is stored dictionary-encoded (see trainer.schema.TRIAL_ID_FILE_TYPE): a string to readers
    as_str = pl.col("trial_id").cast(pl.String)
    metrics = pl.read_parquet(out / "metrics" / "**" / "*.parquet", hive_partitioning=False).with_columns(as_str)
    spectra = pl.read_parquet(out / "spectra" / "**" / "*.parquet", hive_partitioning=False).with_columns(as_str)
    trials = pl.read_parquet(out / "trials.parquet")
    return metrics, spectra, trials


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    t0 = time.perf_counter()
    proc = train("--smoke", "--out", str(out))
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    return out, proc, elapsed


def test_smoke_finishes_within_a_minute_and_prints_progress(smoke):
    out, proc, elapsed = smoke
    assert elapsed < 60
    assert "tok/s" in proc.stdout and "ETA" in proc.stdout
    assert "completed" in proc.stdout and "python -m analysis.report" in proc.stdout


def test_smoke_writes_the_contract_schema(smoke):
    metrics, spectra, trials = read(smoke[0])
    assert metrics.schema == pl.Schema(pl.from_arrow(METRICS_SCHEMA.empty_table()).schema)
    assert spectra.schema == pl.Schema(pl.from_arrow(SPECTRA_SCHEMA.empty_table()).schema)
    assert trials.columns == TRIALS_SCHEMA.names
    row = trials.row(0, named=True)
    assert row["status"] == "completed" and row["steps_done"] == row["steps_planned"] == 40
    assert row["tokens"] == 40 * 8 * 64 and row["final_val_loss"] < 5.0
    assert len(row["corpus_hash"]) == 16 and json.loads(row["config_json"])["width"] == 32
    meta = json.loads((smoke[0] / "sweep.json").read_text())
    assert meta["finished_at"] and meta["versions"]["torch"] and meta["n_trials"] == 1


def test_every_metric_is_present_at_first_and_last_eval(smoke):
    metrics, _, _ = read(smoke[0])
    assert set(metrics["name"].unique()) == set(METRIC_NAMES)
    probe_steps = sorted(metrics.filter(pl.col("name") == "pr")["step"].unique())
    assert probe_steps[0] == 0 and probe_steps[-1] == 40
    per_step = metrics.filter(pl.col("name") == "pr").group_by("step").len()
    assert per_step["len"].unique().to_list() == [2 * 2 * 4]  # layers x heads x {wq, wk, q, k}


def test_keys_are_unique(smoke):
    metrics, spectra, _ = read(smoke[0])
    assert metrics.select(METRICS_KEY).is_duplicated().sum() == 0
    assert spectra.select(SPECTRA_KEY).is_duplicated().sum() == 0


def test_pr_lies_in_its_range_and_matches_the_stored_spectrum(smoke):
    metrics, spectra, trials = read(smoke[0])
    d_head = trials["d_head"][0]
    pr = metrics.filter(pl.col("name") == "pr")
    assert pr["value"].min() >= 1.0 - 1e-6 and pr["value"].max() <= d_head + 1e-6
    recomputed = spectra.with_columns(
        pr_sigma=pl.col("sigma").list.sum().cast(pl.Float64) ** 2
        / (pl.col("sigma").list.eval(pl.element().cast(pl.Float64) ** 2).list.sum())
    )
    joined = pr.join(recomputed, on=["trial_id", "step", "layer", "head", "tensor"], how="inner")
    assert joined.height == pr.height
    np.testing.assert_allclose(joined["value"], joined["pr_sigma"], rtol=1e-5)
    sigma = spectra["sigma"].to_list()
    assert all(list(s) == sorted(s, reverse=True) for s in sigma)


def test_a_completed_trial_is_not_rerun(smoke):
    proc = train("--smoke", "--out", str(smoke[0]))
    assert proc.returncode == 0 and "already completed" in proc.stdout


def test_absurd_lr_ends_diverged_without_a_traceback(tmp_path):
    proc = train("--smoke", "--out", str(tmp_path), "--set", "lr=10")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    metrics, _, trials = read(tmp_path)
    row = trials.row(0, named=True)
    assert row["status"] == "diverged" and row["diverged_step"] is not None
    assert row["steps_done"] < row["steps_planned"]
    assert metrics.filter(pl.col("name") == "train_loss")["step"].max() == row["diverged_step"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["--set", "optimizer=sgd"], "optimizer"),
        (["--set", "qk_norm=l2"], "qk_norm"),
        (["--set", "width=100"], "width"),
        (["--set", "lr=0"], "lr"),
        (["--set", "lr=-1e-3"], "lr"),
        (["--set", "steps=0"], "steps"),
        (["--set", "corpus=/no/such/file.txt"], "corpus"),
        (["--set", "colour=red"], "colour"),
        (["--set", "width=abc"], "width"),
    ],
)
def test_bad_config_exits_2_naming_the_field_and_writes_nothing(tmp_path, args, field):
    out = tmp_path / "out"
    proc = train("--smoke", "--out", str(out), *args)
    assert proc.returncode == 2
    assert field in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_config_file_exits_2(tmp_path):
    proc = train("--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_gives_exactly_one_row_per_key(tmp_path):
    args = [
        "--smoke",
        "--out",
        str(tmp_path),
        "--set",
        "steps=400",
        "--set",
        "checkpoint_every=25",
        "--set",
        "eval_every=20",
        "--set",
        "corpus=synthetic",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = list((tmp_path / "checkpoints").glob("*/checkpoint.pt"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((tmp_path / "checkpoints").glob("*/checkpoint.pt"))
        parts = list((tmp_path / "metrics").glob("*/*.parquet"))
        if ckpts and len(parts) >= 6:
            break
        time.sleep(0.01)
    # Rows are readable while the trial runs.
    live = pl.read_parquet(tmp_path / "metrics" / "**" / "*.parquet", hive_partitioning=False)
    assert live.height > 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpts, "no checkpoint was written before the kill"
    for part in tmp_path.rglob("*.parquet"):  # no half-written file under a reader's glob
        pq.read_table(part)
    rows_before = pl.read_parquet(tmp_path / "metrics" / "**" / "*.parquet", hive_partitioning=False)
    assert rows_before["step"].max() < 399, "the run finished before it was killed; make it longer"

    done = train(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout
    metrics, spectra, trials = read(tmp_path)
    assert trials["status"].to_list() == ["completed"] and trials["steps_done"][0] == 400
    assert metrics.select(METRICS_KEY).is_duplicated().sum() == 0
    assert spectra.select(SPECTRA_KEY).is_duplicated().sum() == 0
    steps = metrics.filter(pl.col("name") == "train_loss")["step"].sort().to_list()
    assert steps == list(range(400))
    evals = metrics.filter(pl.col("name") == "val_loss")["step"].sort().to_list()
    assert evals == list(range(0, 400, 20)) + [400]
