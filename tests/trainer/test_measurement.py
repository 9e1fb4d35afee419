"""Measurement choices that decide the verdict: centred PR, PR's small-sample bias, the probe cadence."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import torch

from trainer.cadence import eval_steps, regular_steps
from trainer.config import SMOKE, TrialConfig
from trainer.data import load_tokens
from trainer.loop import Trial, TrialHooks
from trainer.metrics import activation_prs
from trainer.storage import ResultsDir


def numpy_pr(x: np.ndarray) -> float:
    s = np.linalg.svd(x, compute_uv=False)
    return float(s.sum() ** 2 / (s**2).sum())


def test_centred_pr_matches_numpy_and_removes_the_mean_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 512, 16)) + 20.0  # a large shared mean: uncentred PR near 1
    got = activation_prs(torch.from_numpy(x).float(), sequences=4)
    for h in range(3):
        assert abs(float(got["pr"][h]) - numpy_pr(x[h])) < 1e-3
        assert abs(float(got["pr_centred"][h]) - numpy_pr(x[h] - x[h].mean(0))) < 1e-3
    assert float(got["pr"].max()) < 2.0 < float(got["pr_centred"].min())


def test_split_half_bias_corrects_most_of_the_small_sample_bias():
    """White data in d dims has population PR = d; a finite sample is biased low, the correction
    (pr - pr_bias) recovers most of the gap, averaged over many draws."""
    rng = np.random.default_rng(1)
    d, n_seq, t = 32, 8, 32  # N = 256 tokens: the old 4 x 64 probe scale
    raw, corrected = [], []
    for _ in range(50):
        x = torch.from_numpy(rng.normal(size=(1, n_seq * t, d))).float()
        got = activation_prs(x, sequences=n_seq)
        raw.append(float(got["pr"][0]))
        corrected.append(float(got["pr"][0] - got["pr_bias"][0]))
        assert float(got["pr_bias"][0]) < 0  # biased low, and the estimate says so
    gap_raw, gap_corrected = d - np.mean(raw), d - np.mean(corrected)
    assert gap_raw > 1.0
    assert abs(gap_corrected) < 0.35 * gap_raw


def test_log_schedule_resolves_early_steps_and_keeps_the_regular_grid():
    cfg = TrialConfig(steps=200, eval_every=25, warmup=20)
    steps = eval_steps(cfg)
    assert regular_steps(cfg) <= set(steps) and steps[0] == 0 and steps[-1] == 200
    assert len([s for s in steps if s <= 25]) >= 9  # a fall with a 10-step time constant gets >= 5 points
    assert steps == sorted(set(steps))
    every = eval_steps(TrialConfig(steps=200, eval_every=25, warmup=20, eval_schedule="every"))
    assert every == list(range(0, 201, 25))


def run_rows(tmp_path, name, finisher):
    """A smoke trial's metric and spectra rows; `finisher` replaces the trial's (None = finish inline)."""
    cfg = TrialConfig(**{**SMOKE, "max_corpus_bytes": 400_000})
    results = ResultsDir(tmp_path / name)
    trial = Trial(cfg, results, "t", load_tokens(cfg), TrialHooks(), None, None)
    trial.finisher = finisher
    assert trial.run()["status"] == "completed"
    metrics = pl.read_parquet(tmp_path / name / "metrics", hive_partitioning=False)
    spectra = pl.read_parquet(tmp_path / name / "spectra", hive_partitioning=False)
    keys = ["step", "name", "layer", "head", "tensor"]
    metrics = metrics.filter(pl.col("name") != "wall_s").drop("trial_id").sort(keys)
    return metrics, spectra.drop("trial_id").sort(["step", "layer", "head", "tensor"])


def test_probes_finished_in_a_thread_write_the_same_rows_as_inline(tmp_path):
    """The GPU path (a probe's CPU half in a thread while training goes on) loses, adds or moves no row."""
    inline_metrics, inline_spectra = run_rows(tmp_path, "inline", None)
    threaded_metrics, threaded_spectra = run_rows(tmp_path, "threaded", ThreadPoolExecutor(1))
    assert threaded_metrics.equals(inline_metrics)
    assert threaded_spectra.equals(inline_spectra)
    names = set(inline_metrics["name"])
    assert {"pr", "pr_bias", "attn_entropy", "max_logit", "val_loss"} <= names
    early = set(eval_steps(TrialConfig(**SMOKE))) - regular_steps(TrialConfig(**SMOKE))
    assert early, "the smoke schedule has early probes"
    at_early = inline_metrics.filter(pl.col("step").is_in(sorted(early)))
    # the early probes record the spectra alone: no val loss or attention statistics there
    assert set(at_early["name"]) & {"val_loss", "attn_entropy", "max_logit"} == set()
    assert "pr" in set(at_early["name"])
