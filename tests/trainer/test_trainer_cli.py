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

from trainer.schema import (
    ACTIVATION_TENSORS,
    CLIP_METRICS,
    METRIC_NAMES,
    METRICS_KEY,
    METRICS_SCHEMA,
    SPECTRA_KEY,
    SPECTRA_SCHEMA,
    STAGES,
    TENSORS,
    TRIALS_SCHEMA,
)

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
    assert meta["hardware"]["torch_cpu_capability"] and "cpu_simd" in meta["hardware"]  # what decides the last digits


def test_every_metric_is_present_at_first_and_last_eval(smoke):
    metrics, _, _ = read(smoke[0])
    # every metric but the clip's, which only qk_clip trials write (tests/trainer/test_alternatives.py)
    assert set(metrics["name"].unique()) == set(METRIC_NAMES) - set(CLIP_METRICS)
    probe_steps = sorted(metrics.filter(pl.col("name") == "pr")["step"].unique())
    assert probe_steps[0] == 0 and probe_steps[-1] == 40
    per_step = metrics.filter(pl.col("name") == "pr").group_by("step").len()
    assert per_step["len"].unique().to_list() == [2 * 2 * len(TENSORS)]  # layers x heads x every tensor


def test_every_stage_of_q_and_k_and_norm_cv_are_written_at_every_probe(smoke):
    """The stages (pre-norm, sphere, as used) in metrics and spectra at every probe, early ones included,
    read back with Polars; the sphere's sum of sigma^2 is the probe's token count."""
    metrics, spectra, trials = read(smoke[0])
    config = json.loads(trials["config_json"][0])
    layers_heads = config["depth"] * (config["width"] // config["d_head"])
    probe_steps = set(metrics.filter(pl.col("name") == "pr")["step"])
    assert len(probe_steps) > len(range(0, 41, 10))  # the early log-spaced probes too
    per_step = spectra.group_by("step", "tensor").len()
    assert set(per_step["tensor"]) == set(TENSORS) and set(per_step["len"]) == {layers_heads}
    assert per_step.height == len(probe_steps) * len(TENSORS)
    for name in ("pr", "pr_cov", "erank", "stable_rank", "axis_share", "pr_centred", "pr_bias", "pr_centred_bias"):
        rows = metrics.filter(pl.col("name") == name).group_by("step", "tensor").len()
        want = set(TENSORS) if name in ("pr", "pr_cov", "erank", "stable_rank") else set(ACTIVATION_TENSORS)
        assert set(rows["tensor"]) == want and set(rows["step"]) == probe_steps, name
        assert set(rows["len"]) == {layers_heads}, name
    norm_cv = metrics.filter(pl.col("name") == "norm_cv")
    assert set(norm_cv["tensor"]) == set(STAGES["pre"]) and set(norm_cv["step"]) == probe_steps
    assert norm_cv.height == len(probe_steps) * layers_heads * 2
    assert norm_cv["value"].is_finite().all() and norm_cv["value"].min() > 0
    tokens = config["probe_seqs"] * config["seq_len"]
    sphere = spectra.filter(pl.col("tensor").is_in(STAGES["sphere"])).with_columns(
        energy=pl.col("sigma").list.eval(pl.element().cast(pl.Float64) ** 2).list.sum()
    )
    np.testing.assert_allclose(sphere["energy"], tokens, rtol=1e-5)


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


BEFORE_TORCH = """
import sys
from trainer import train
code = train.main({argv!r})
print("TORCH", "torch" in sys.modules, "CODE", code)
"""


@pytest.mark.parametrize(
    "config, says",
    [("width: -1\n", "width"), ("optimizer: sgd\n", "optimizer"), ("corpus: /no/such/corpus\n", "corpus")],
)
def test_a_bad_trial_is_answered_before_torch_is_loaded(tmp_path, config, says):
    """A mistyped trial file ends with its one line and exit 2 before torch is imported (a second
    of imports), and writes nothing."""
    (tmp_path / "t.yaml").write_text(config)
    out_dir = tmp_path / "out"
    argv = ["--config", str(tmp_path / "t.yaml"), "--out", str(out_dir)]
    proc = subprocess.run(
        [sys.executable, "-c", BEFORE_TORCH.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert "TORCH False CODE 2" in proc.stdout, proc.stdout + proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out_dir.exists()
