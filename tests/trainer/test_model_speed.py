"""trainer.kernels' paths (the CPU fp32 fast ones: RMSNorm's fused backward, RoPE as one complex multiply;
the generic ones: F.rms_norm, RoPE as a real rotation) against plain PyTorch: the model against a
transcription written with nn.functional (same logits, same gradients, same probe measurements) and each
kernel against its formula, with gradcheck in float64."""

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer import kernels
from trainer.config import TrialConfig
from trainer.kernels import _RMSNormCPU, _Rope, rope_tables, rotate_complex
from trainer.metrics import probe
from trainer.model import GPT

PATHS = {"fast": nullcontext, "generic": kernels.generic}  # fast: fp32 on the CPU, every FAST switch on


def plain_rope(x, base=10_000.0):
    """x (B, H, T, D): rotate each adjacent pair (x_2i, x_2i+1) at position t by t * base^(-2i/D),
    the textbook way."""
    T, D = x.shape[-2:]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = (torch.arange(T, dtype=torch.float64)[:, None] * theta).to(x.dtype)  # (T, D/2)
    c, s = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)


def plain_forward(model: GPT, idx, targets):
    """The model written out with nn.functional only: explicit norms, textbook RoPE."""
    cfg = model.cfg
    B, T = idx.shape
    H, D, C = cfg.n_heads, cfg.d_head, cfg.width
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
        y = F.scaled_dot_product_attention(plain_rope(q), plain_rope(k), v, is_causal=True)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, C), a.wo.weight)
        h = rms(x, block.norm2.weight)
        x = x + F.linear(F.gelu(F.linear(h, block.mlp.up.weight)), block.mlp.down.weight)
    logits = F.linear(rms(x, model.norm_f.weight), model.head.weight)
    return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def small_model(qk_norm, depth=2):
    return GPT(
        TrialConfig(width=64, d_head=16, depth=depth, seq_len=32, corpus="synthetic", qk_norm=qk_norm).architecture()
    )


@pytest.mark.parametrize("path", ["fast", "generic"])
@pytest.mark.parametrize("qk_norm", ["none", "rms", "rms_frozen", "layer"])
def test_model_matches_plain_pytorch_in_logits_and_gradients(qk_norm, path):
    """Both paths of every kernel: the CPU fp32 ones, and the generic ones (GPU, autocast, compile)."""
    torch.manual_seed(0)
    model = small_model(qk_norm)
    with torch.no_grad():  # gains and biases away from 1 and 0, so that they are really tested
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    x, y = torch.randint(0, 256, (3, 32)), torch.randint(0, 256, (3, 32))
    with PATHS[path]():
        logits, loss = model(x, y)
        loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_logits, ref_loss = plain_forward(model, x, y)
    ref_loss.backward()
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(fast[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_generic_switches_the_fast_paths_off_and_back_on():
    with kernels.generic():
        assert not any(kernels.FAST.values())
        assert not kernels.fast("rope", torch.zeros(2))
    with kernels.generic("rope"):
        assert kernels.FAST == {"rms_norm": True, "rope": False}
    assert all(kernels.FAST.values()) and kernels.fast("rope", torch.zeros(2))
    assert not kernels.fast("rope", torch.zeros(2, dtype=torch.bfloat16))


def rope_input(seed, B=2, T=12, H=3, D=8):
    torch.manual_seed(seed)
    return torch.randn(B, T, H, D, dtype=torch.float64, requires_grad=True)


def test_real_rotation_is_the_pairwise_rotation_and_its_gradient_is_exact():
    x = rope_input(1)
    B, T, H, D = x.shape
    tables = rope_tables(T, D, H)
    cos, sin = tables.cos.double(), tables.sin.double()
    ours = _Rope.apply(x, cos, sin)
    assert torch.allclose(ours.transpose(1, 2), plain_rope(x.transpose(1, 2)), atol=1e-6)  # fp32 tables
    assert torch.autograd.gradcheck(lambda t: _Rope.apply(t, cos, sin), (x,))
    assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps each head's norm


def test_complex_rotation_is_the_pairwise_rotation_and_its_gradient_is_exact():
    x = rope_input(3)
    B, T, H, D = x.shape
    phases = rope_tables(T, D, H).phases.to(torch.complex128)
    assert torch.allclose(rotate_complex(x, phases).transpose(1, 2), plain_rope(x.transpose(1, 2)), atol=1e-6)
    assert torch.autograd.gradcheck(lambda t: rotate_complex(t, phases), (x,))


def test_rope_on_either_path_of_a_strided_view():
    """kernels.rope takes q, k as views of a wider tensor (any strides whose (H, D) block is contiguous)."""
    torch.manual_seed(5)
    wide = torch.randn(2, 12, 2, 3, 8)
    x = wide[:, :, 1]
    tables = rope_tables(16, 8, 4)  # more rows and heads than needed: rope slices them
    expected = plain_rope(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(kernels.rope(x, tables), expected, atol=1e-6)
    with kernels.generic():
        assert torch.allclose(kernels.rope(x, tables), expected, atol=1e-6)


@pytest.mark.parametrize("shape,gain", [((4, 6, 32), True), ((4, 6, 3, 16), True), ((5, 16), False)])
def test_cpu_rms_norm_matches_torch_and_has_an_exact_gradient(shape, gain):
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True) if gain else None
    assert torch.allclose(_RMSNormCPU.apply(x, w, 1e-6), F.rms_norm(x, (shape[-1],), w, 1e-6))
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormCPU.apply(a, b, 1e-6), (x, w))


@pytest.mark.parametrize("qk_norm", ["none", "rms"])
def test_the_probe_measures_the_same_on_both_paths(qk_norm):
    torch.manual_seed(4)
    model = small_model(qk_norm)
    x, y = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    fast = probe(model, x, y)
    with kernels.generic():
        generic = probe(model, x, y)
    assert fast.loss == pytest.approx(generic.loss, rel=1e-6)
    assert fast.spectra.keys() == generic.spectra.keys()
    for key, sigma in fast.spectra.items():
        assert np.allclose(sigma, generic.spectra[key], rtol=1e-4, atol=1e-5), key
    assert [row[:4] for row in fast.scalars] == [row[:4] for row in generic.scalars]
    values = np.array([row[4] for row in fast.scalars]), np.array([row[4] for row in generic.scalars])
    assert np.allclose(*values, rtol=1e-4, atol=1e-5)


def test_wq_wk_stay_separate_matrices_for_muon_and_the_probe():
    model = GPT(TrialConfig(width=64, d_head=16, depth=1, corpus="synthetic").architecture())
    attn = model.blocks[0].attn
    assert attn.wq.weight.shape == attn.wk.weight.shape == (64, 64)
    assert not any("qkv" in n for n, _ in model.named_parameters())
    assert math.isclose(sum(p.numel() for p in model.parameters()), 2 * 256 * 64 + 12 * 64 * 64 + 3 * 64)
