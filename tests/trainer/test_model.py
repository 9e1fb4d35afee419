"""The model: probe path equals the SDPA hot path, QK-Norm variants, causality."""

import math

import pytest
import torch

from trainer.config import TrialConfig
from trainer.model import GPT


def make(qk_norm="none", **kw):
    torch.manual_seed(0)
    cfg = TrialConfig(width=64, d_head=16, depth=2, seq_len=32, corpus="synthetic", qk_norm=qk_norm, **kw)
    return GPT(cfg.architecture())


@pytest.mark.parametrize("qk_norm", ["none", "rms", "rms_frozen", "layer"])
def test_probe_pass_gives_the_same_logits_as_the_sdpa_path(qk_norm):
    model = make(qk_norm)
    x = torch.randint(0, 256, (3, 32))
    record = []
    with torch.no_grad():
        fast, _ = model(x)
        slow, _ = model(x, record=record)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert len(record) == 2
    assert record[0]["q"].shape == (3, 4, 32, 16)  # (B, H, T, D)
    assert torch.allclose(record[0]["probs"].sum(-1), torch.ones(3, 4, 32))


def test_rms_frozen_puts_q_and_k_on_a_sphere_of_radius_sqrt_d_head():
    model = make("rms_frozen")
    record = []
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 32)), record=record)
    for key in ("q", "k"):
        norms = record[0][key].norm(dim=-1)
        assert torch.allclose(norms, torch.full_like(norms, math.sqrt(16)), rtol=1e-3)
    assert not any("q_norm" in n for n, _ in model.named_parameters())


def test_rms_and_layer_norm_have_learned_gains():
    names = {n for n, _ in make("rms").named_parameters()}
    assert "blocks.0.attn.q_norm.weight" in names
    names = {n for n, _ in make("layer").named_parameters()}
    assert "blocks.0.attn.k_norm.bias" in names


def test_attention_is_causal():
    model = make("rms")
    x = torch.randint(0, 256, (1, 32))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 1) % 256
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.allclose(a[0, :20], b[0, :20], atol=1e-6)
    assert not torch.allclose(a[0, 20:], b[0, 20:])


def test_initial_loss_is_near_log_vocab():
    model = make()
    x = torch.randint(0, 256, (4, 32))
    _, loss = model(x, x)
    assert loss.item() == pytest.approx(math.log(256), rel=0.05)


@pytest.mark.parametrize("qk_norm", ["none", "rms"])
def test_probe_forward_without_targets_records_what_the_full_pass_records(qk_norm):
    model = make(qk_norm)
    x = torch.randint(0, 256, (3, 32))
    full, short = [], []
    with torch.no_grad():
        loss = model.probe_forward(x, full, targets=torch.randint(0, 256, (3, 32)))
        assert model.probe_forward(x, short) is None
    assert loss is not None and len(full) == len(short) == 2
    for a, b in zip(full, short):
        for key in ("q", "k", "logits", "probs"):
            assert torch.equal(a[key], b[key]), key
