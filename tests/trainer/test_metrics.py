"""Rank metrics against numpy on spectra with known answers."""

import numpy as np
import pytest
import torch

from trainer.config import TrialConfig
from trainer.metrics import (
    attention_stats,
    axis_share,
    covariance_participation_ratio,
    effective_rank,
    participation_ratio,
    probe,
    stable_rank,
)
from trainer.model import GPT


def np_metrics(s):
    s = np.asarray(s, dtype=np.float64)
    p = s / s.sum()
    nz = p[p > 0]
    return {
        "pr": s.sum() ** 2 / (s**2).sum(),
        "pr_cov": (s**2).sum() ** 2 / (s**4).sum(),
        "erank": np.exp(-(nz * np.log(nz)).sum()),
        "stable_rank": (s**2).sum() / (s**2).max(),
    }


def torch_metrics(s):
    t = torch.tensor(np.array(s), dtype=torch.float64)
    return {
        "pr": participation_ratio(t).item(),
        "pr_cov": covariance_participation_ratio(t).item(),
        "erank": effective_rank(t).item(),
        "stable_rank": stable_rank(t).item(),
    }


@pytest.mark.parametrize("d", [1, 7, 32])
def test_identity_spectrum_has_every_metric_equal_to_d(d):
    s = torch.linalg.svdvals(torch.eye(d, dtype=torch.float64))
    for name, value in torch_metrics(s.numpy()).items():
        assert value == pytest.approx(d, rel=1e-9), name


def test_rank_one_matrix_has_every_metric_equal_to_one():
    u, v = np.random.default_rng(0).normal(size=(2, 16))
    s = np.linalg.svd(np.outer(u, v), compute_uv=False)
    for name, value in torch_metrics(s).items():
        assert value == pytest.approx(1.0, abs=1e-6), name


@pytest.mark.parametrize("r", [2, 5, 12])
def test_r_equal_singular_values_give_r(r):
    s = np.array([3.0] * r + [0.0] * (16 - r))
    for name, value in torch_metrics(s).items():
        assert value == pytest.approx(r, rel=1e-9), name


def test_general_spectra_match_numpy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = np.sort(rng.exponential(size=rng.integers(2, 64)))[::-1]
        ours, ref = torch_metrics(s), np_metrics(s)
        for name in ref:
            assert ours[name] == pytest.approx(ref[name], rel=1e-10), name


def test_pr_orders_between_its_bounds_and_metrics_disagree_where_they_should():
    s = np.array([10.0, 1.0, 1.0, 1.0])
    m = np_metrics(s)
    assert 1 <= m["pr_cov"] < m["pr"] <= 4  # squaring concentrates the spectrum
    assert m["stable_rank"] < m["pr"]


def test_batched_metrics_work_per_row():
    s = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert participation_ratio(s).tolist() == pytest.approx([2.0, 1.0])


def test_axis_share_spread_and_single_axis():
    rng = np.random.default_rng(2)
    d = 8
    one_axis = np.zeros((1000, d))
    one_axis[:, 3] = rng.normal(size=1000)
    spread = rng.normal(size=(200_000, d))
    assert axis_share(torch.tensor(one_axis)).item() == pytest.approx(1.0)
    assert axis_share(torch.tensor(spread)).item() == pytest.approx(1 / d, rel=0.02)
    x = rng.normal(size=(50, d)) * np.arange(1, d + 1)
    energy = (x**2).mean(0)
    assert axis_share(torch.tensor(x)).item() == pytest.approx(energy.max() / energy.sum())


def test_attention_entropy_uniform_and_one_hot():
    T = 6
    uniform = torch.zeros(1, 1, T, T)
    assert attention_stats(uniform, uniform.softmax(-1))[0].item() == pytest.approx(np.log(T))
    one_hot = torch.full((1, 1, T, T), torch.finfo(torch.float32).min)  # masked entries, as the model writes them
    one_hot[..., 0] = 3.0
    assert attention_stats(one_hot, one_hot.softmax(-1))[0].item() == pytest.approx(0.0, abs=1e-6)


def test_attention_entropy_equals_minus_sum_p_log_p_under_a_causal_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8) * 4
    logits.masked_fill_(torch.ones(8, 8, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    probs = logits.softmax(-1)
    direct = torch.special.entr(probs.double()).sum(-1).mean(dim=(0, 2))
    assert torch.allclose(attention_stats(logits, probs)[0].double(), direct, atol=1e-5)


def test_a_probe_without_scores_measures_the_same_spectra_and_skips_the_attention_statistics():
    torch.manual_seed(0)
    model = GPT(TrialConfig(width=64, d_head=16, depth=2, seq_len=32, corpus="synthetic", qk_norm="rms").architecture())
    x = torch.randint(0, 256, (8, 32))
    full, light = probe(model, x), probe(model, x, scores=False)
    attention = {"attn_entropy", "max_logit"}
    full_rows = {row[:4]: row[4] for row in full.scalars if row[0] not in attention}
    light_rows = {row[:4]: row[4] for row in light.scalars}
    assert light_rows.keys() == full_rows.keys()
    assert all(light_rows[key] == pytest.approx(full_rows[key], rel=1e-5, abs=1e-6) for key in full_rows)
    assert {row[0] for row in full.scalars} >= attention
    for key, sigma in full.spectra.items():
        assert np.allclose(light.spectra[key], sigma, rtol=1e-5, atol=1e-6)
