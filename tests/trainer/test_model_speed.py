"""The fast paths of trainer.model (one qkv matmul, RoPE as one complex multiply in pair order or over
whole rows, the CPU RMSNorm, norm gains folded into the next Linear) against a plain PyTorch
transcription of the model: same logits, same gradients, same probe measurements."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.config import TrialConfig
from trainer.metrics import probe
from trainer.model import (
    GPT,
    Attention,
    _RMSNormCPU,
    apply_rope,
    pair_order,
    rope_phases,
    rope_rotation,
    rope_tables,
    rotate_pairs,
)


def plain_rope(x, cos, sin):
    """x (B, H, T, D): rotate (x1_i, x2_i) by angle t * theta_i, the textbook way."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[: x.shape[-2]], sin[: x.shape[-2]]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


def plain_forward(model: GPT, idx, targets):
    """The model written out with nn.functional only: separate q/k/v matmuls, explicit norms."""
    cfg = model.cfg
    B, T = idx.shape
    H, D, C = cfg.n_heads, cfg.d_head, cfg.width
    cos, sin = rope_tables(cfg.seq_len, D)
    eps = torch.finfo(torch.float32).eps

    def rms(x, w):
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    x = model.embed(idx)
    for block in model.blocks:
        a = block.attn
        h = rms(x, block.norm1.weight)
        q, k, v = (F.linear(h, w.weight).view(B, T, H, D).transpose(1, 2) for w in (a.wq, a.wk, a.wv))
        if cfg.qk_norm in ("rms", "rms_frozen"):
            q, k = rms(q, a.q_norm.weight), rms(k, a.k_norm.weight)
        elif cfg.qk_norm == "layer":
            q = F.layer_norm(q, (D,), a.q_norm.weight, a.q_norm.bias, a.q_norm.eps)
            k = F.layer_norm(k, (D,), a.k_norm.weight, a.k_norm.bias, a.k_norm.eps)
        y = F.scaled_dot_product_attention(plain_rope(q, cos, sin), plain_rope(k, cos, sin), v, is_causal=True)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, C), a.wo.weight)
        h = rms(x, block.norm2.weight)
        x = x + F.linear(F.gelu(F.linear(h, block.mlp.up.weight)), block.mlp.down.weight)
    logits = F.linear(rms(x, model.norm_f.weight), model.head.weight)
    return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


@pytest.mark.parametrize("pairs", [True, False], ids=["rotate_pairs", "apply_rope"])
@pytest.mark.parametrize("qk_norm", ["none", "rms", "rms_frozen", "layer"])
def test_fast_model_matches_plain_pytorch_in_logits_and_gradients(qk_norm, pairs, monkeypatch):
    """Both RoPE paths: pair order (fp32 CPU) and the half-split rows (GPU, autocast, compile)."""
    if not pairs:
        monkeypatch.setattr(Attention, "pairs", staticmethod(lambda x: False))
    torch.manual_seed(0)
    model = GPT(TrialConfig(width=64, d_head=16, depth=2, seq_len=32, corpus="synthetic", qk_norm=qk_norm))
    with torch.no_grad():  # gains away from 1, so that folding them into the next Linear is really tested
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    x, y = torch.randint(0, 256, (3, 32)), torch.randint(0, 256, (3, 32))
    logits, loss = model(x, y)
    loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_logits, ref_loss = plain_forward(model, x, y)
    ref_loss.backward()
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(fast[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_rope_is_the_pairwise_rotation_and_its_gradient_is_exact():
    torch.manual_seed(1)
    B, T, H, D = 2, 12, 3, 8
    x = torch.randn(B, T, H, D, dtype=torch.float64, requires_grad=True)
    cos, sin = (t.double() for t in rope_rotation(T, D, H))
    c, s = (t.double() for t in rope_tables(T, D))
    ours = apply_rope(x, cos, sin)
    assert torch.allclose(ours.transpose(1, 2), plain_rope(x.transpose(1, 2), c, s))
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))
    assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps each head's norm


@pytest.mark.parametrize("shape,gain", [((4, 6, 32), True), ((4, 6, 3, 16), True), ((5, 16), False)])
def test_cpu_rms_norm_matches_torch_and_has_an_exact_gradient(shape, gain):
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True) if gain else None
    assert torch.allclose(_RMSNormCPU.apply(x, w, 1e-6), F.rms_norm(x, (shape[-1],), w, 1e-6))
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormCPU.apply(a, b, 1e-6), (x, w))


def test_rotate_pairs_is_apply_rope_in_pair_order_with_an_exact_gradient():
    torch.manual_seed(3)
    B, T, H, D = 2, 12, 3, 8
    x = torch.randn(B, T, H, D, dtype=torch.float64, requires_grad=True)
    cos, sin = (t.double() for t in rope_rotation(T, D, H))
    phases = rope_phases(T, D, H).to(torch.complex128)
    order = pair_order(D)
    assert order.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    paired = rotate_pairs(x[..., order], phases)
    assert torch.allclose(paired, apply_rope(x, cos, sin)[..., order])
    assert torch.autograd.gradcheck(lambda t: rotate_pairs(t, phases), (x,))


@pytest.mark.parametrize("qk_norm", ["none", "rms"])
def test_the_probe_measures_the_same_on_both_rope_paths(qk_norm, monkeypatch):
    """Pair order permutes each head's dims of the recorded q and k; every statistic is blind to it."""
    torch.manual_seed(4)
    model = GPT(TrialConfig(width=64, d_head=16, depth=2, seq_len=32, corpus="synthetic", qk_norm=qk_norm))
    x, y = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    results = []
    for pairs in (True, False):
        monkeypatch.setattr(Attention, "pairs", staticmethod(lambda t, pairs=pairs: pairs))
        results.append(probe(model, x, y))
    fast, half_split = results
    assert fast.loss == pytest.approx(half_split.loss, rel=1e-6)
    assert fast.spectra.keys() == half_split.spectra.keys()
    for key, sigma in fast.spectra.items():
        assert np.allclose(sigma, half_split.spectra[key], rtol=1e-4, atol=1e-5), key
    assert [row[:4] for row in fast.scalars] == [row[:4] for row in half_split.scalars]
    values = np.array([row[4] for row in fast.scalars]), np.array([row[4] for row in half_split.scalars])
    assert np.allclose(*values, rtol=1e-4, atol=1e-5)


def test_wq_wk_stay_separate_matrices_for_muon_and_the_probe():
    model = GPT(TrialConfig(width=64, d_head=16, depth=1, corpus="synthetic"))
    attn = model.blocks[0].attn
    assert attn.wq.weight.shape == attn.wk.weight.shape == (64, 64)
    assert not any("qkv" in n for n, _ in model.named_parameters())
    assert math.isclose(sum(p.numel() for p in model.parameters()), 2 * 256 * 64 + 12 * 64 * 64 + 3 * 64)
