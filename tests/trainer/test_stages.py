"""The three stages of q and k the probe measures (pre-norm, sphere, as used) and norm_cv, on a real model:
the identities between the stages, each against a transcription by hand, and the probe's blocked
attention and float32 Gram products against their plain forms."""

import math

import numpy as np
import pytest
import torch

from trainer.config import TrialConfig
from trainer.metrics import activation_grams, attention_stats, probe
from trainer.model import GPT, ProbeRecord
from trainer.schema import (
    ACTIVATION_METRICS,
    ACTIVATION_TENSORS,
    AXIS_METRICS,
    QK_NORM_VARIANTS,
    SPECTRUM_METRICS,
    STAGE_METRICS,
    STAGES,
    TENSORS,
)

SEQS, T, D, H, LAYERS = 8, 32, 16, 4, 2
N = SEQS * T  # probe tokens


def make(qk_norm: str) -> GPT:
    """A model whose per-token norms of x wq vary (rows of wq scaled unevenly) and whose QK-Norm gains
    (where learned) are far from 1, so that no two stages coincide by accident."""
    torch.manual_seed(0)
    cfg = TrialConfig(width=H * D, d_head=D, depth=LAYERS, seq_len=T, corpus="synthetic", qk_norm=qk_norm)
    model = GPT(cfg.architecture())
    with torch.no_grad():
        for block in model.blocks:
            for lin in (block.attn.wq, block.attn.wk):
                lin.weight.mul_(torch.empty(H * D, 1).uniform_(0.2, 3.0))
            for norm in (block.attn.q_norm, block.attn.k_norm):
                if getattr(norm, "weight", None) is not None:
                    norm.weight.uniform_(0.2, 2.0)
    return model


def inputs() -> torch.Tensor:
    return torch.randint(0, 256, (SEQS, T), generator=torch.Generator().manual_seed(1))


def rows(result) -> dict:
    """(name, layer, head, tensor) -> value."""
    return {row[:4]: row[4] for row in result.scalars}


def pr(result, tensor: str) -> np.ndarray:
    """(layers, heads) PR of one tensor."""
    values = rows(result)
    return np.array([[values[("pr", layer, head, tensor)] for head in range(H)] for layer in range(LAYERS)])


@pytest.mark.parametrize("scores", [True, False], ids=["regular", "early"])
@pytest.mark.parametrize("qk_norm", QK_NORM_VARIANTS)
def test_every_stage_has_its_spectrum_and_every_metric_at_every_probe(qk_norm, scores):
    result = probe(make(qk_norm), inputs(), scores=scores)
    assert set(result.spectra) == {(layer, t) for layer in range(LAYERS) for t in TENSORS}
    for sigma in result.spectra.values():
        assert sigma.shape == (H, D) and np.all(np.diff(sigma, axis=-1) <= 0)
    have = {(name, tensor) for name, _, _, tensor in rows(result)}
    activation_names = SPECTRUM_METRICS + AXIS_METRICS + ACTIVATION_METRICS
    assert {(name, t) for name in activation_names for t in ACTIVATION_TENSORS} <= have
    assert {(name, t) for name in SPECTRUM_METRICS for t in TENSORS} <= have
    norm_cv = {tensor for name, tensor in have if name in STAGE_METRICS}
    assert norm_cv == set(STAGES["pre"])
    per_key = {}
    for name, layer, head, tensor in rows(result):
        per_key.setdefault((name, tensor), set()).add((layer, head))
    assert all(len(cells) == LAYERS * H for cells in per_key.values())  # every layer and head, once
    for name, tensor in have:
        assert np.all(np.isfinite([v for k, v in rows(result).items() if k[0] == name and k[3] == tensor]))


def test_without_qk_norm_the_pre_norm_stage_is_the_as_used_one():
    model, x = make("none"), inputs()
    record = []
    with torch.no_grad():
        model(x, record=record)
    for entry in record:
        assert torch.equal(entry["q_pre"], entry["q"]) and torch.equal(entry["k_pre"], entry["k"])
    result = probe(model, x)
    values = rows(result)
    for used, pre in zip(STAGES["as_used"], STAGES["pre"]):
        for layer in range(LAYERS):
            assert np.array_equal(result.spectra[(layer, used)], result.spectra[(layer, pre)])
        for (name, layer, head, tensor), value in values.items():
            if tensor == used:
                assert values[(name, layer, head, pre)] == value, name


def test_with_a_frozen_gain_the_sphere_has_the_pr_of_q_and_k():
    """rms_frozen: q = sqrt(d_head) q_sphere up to RMSNorm's eps, so every scale-free statistic agrees."""
    result = probe(make("rms_frozen"), inputs())
    values = rows(result)
    for used, sphere in zip(STAGES["as_used"], STAGES["sphere"]):
        np.testing.assert_allclose(pr(result, sphere), pr(result, used), rtol=1e-5)
        for (name, layer, head, tensor), value in values.items():
            if tensor == used and name in ("pr_cov", "erank", "stable_rank", "axis_share", "pr_centred"):
                assert values[(name, layer, head, sphere)] == pytest.approx(value, rel=1e-4), name
        for layer in range(LAYERS):
            np.testing.assert_allclose(
                result.spectra[(layer, used)], math.sqrt(D) * result.spectra[(layer, sphere)], rtol=1e-4, atol=1e-5
            )


def test_a_learned_gain_separates_the_as_used_stage_from_the_sphere():
    result = probe(make("rms"), inputs())
    assert np.abs(pr(result, "q") - pr(result, "q_sphere")).max() > 0.05
    assert np.abs(pr(result, "q_pre") - pr(result, "q_sphere")).max() > 0.05  # the norms vary


@pytest.mark.parametrize("qk_norm", QK_NORM_VARIANTS)
def test_the_sphere_stage_has_unit_rows(qk_norm):
    """Every token's q_sphere has norm 1, so the Gram's trace, sum of sigma^2, is the token count."""
    result = probe(make(qk_norm), inputs(), scores=False)
    for layer in range(LAYERS):
        for tensor in STAGES["sphere"]:
            sigma = result.spectra[(layer, tensor)].astype(np.float64)
            np.testing.assert_allclose((sigma**2).sum(-1), N, rtol=1e-5)
        pre = result.spectra[(layer, "q_pre")].astype(np.float64)
        assert not np.allclose((pre**2).sum(-1), N, rtol=1e-2)


def attention_input(model: GPT, x: torch.Tensor) -> np.ndarray:
    """Layer 0's attention input norm1(embed(x)) (SEQS, T, C), float64."""
    with torch.no_grad():
        return model.blocks[0].norm1(model.embed(x)).double().numpy()


@pytest.mark.parametrize("qk_norm", ["rms", "layer"])
def test_the_pre_norm_stage_is_x_wq_by_hand(qk_norm):
    model, x = make(qk_norm), inputs()
    block = model.blocks[0]
    xin = attention_input(model, x)
    record = []
    with torch.no_grad():
        model(x, record=record)
    result = probe(model, x)
    for name, lin in (("q_pre", block.attn.wq), ("k_pre", block.attn.wk)):
        by_hand = xin @ lin.weight.detach().double().numpy().T  # (SEQS, T, H*D)
        heads = by_hand.reshape(SEQS, T, H, D).transpose(0, 2, 1, 3)  # (SEQS, H, T, D), as recorded
        np.testing.assert_allclose(record[0][name].double().numpy(), heads, rtol=1e-5, atol=1e-6)
        for head in range(H):
            sigma = np.linalg.svd(heads[:, head].reshape(N, D), compute_uv=False)
            np.testing.assert_allclose(result.spectra[(0, name)][head], sigma, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(record[0]["q"], record[0]["q_pre"])


@pytest.mark.parametrize("qk_norm", QK_NORM_VARIANTS)
def test_norm_cv_is_the_sd_over_the_mean_of_the_per_token_norms_of_x_wq(qk_norm):
    model, x = make(qk_norm), inputs()
    block = model.blocks[0]
    xin = attention_input(model, x)
    values = rows(probe(model, x, scores=False))
    head = 1
    for tensor, lin in (("q_pre", block.attn.wq), ("k_pre", block.attn.wk)):
        w = lin.weight.detach().double().numpy()[head * D : (head + 1) * D]  # head h's rows
        norms = np.linalg.norm(xin @ w.T, axis=-1).ravel()  # one per probe token
        assert norms.size == N
        assert values[("norm_cv", 0, head, tensor)] == pytest.approx(norms.std(ddof=0) / norms.mean(), rel=1e-5)


def test_the_blocked_attention_gives_the_statistics_and_output_of_the_whole_batch():
    """On the CPU the probe runs explicit attention a few sequences at a time; that changes nothing."""
    model, x = make("rms"), inputs()
    whole = []
    with torch.no_grad():
        sdpa, _ = model(x)
        reference, _ = model(x, record=whole)
        blocks = ProbeRecord(block=3)  # 8 sequences: blocks of 3, 3, 2
        blocked, _ = model(x, record=blocks)
    torch.testing.assert_close(blocked, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked, sdpa, rtol=1e-5, atol=1e-5)
    for a, b in zip(blocks, whole):
        for key in ("logits", "probs"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    values = rows(probe(model, x))
    for layer, entry in enumerate(whole):
        entropy, max_logit = attention_stats(entry["logits"], entry["probs"])
        for head in range(H):
            assert values[("attn_entropy", layer, head, None)] == pytest.approx(float(entropy[head]), rel=1e-5)
            assert values[("max_logit", layer, head, None)] == pytest.approx(float(max_logit[head]), rel=1e-6)


def test_gram_matrices_from_float32_products_are_within_float32_resolution():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 512, 16)) * rng.uniform(0.1, 5, size=16) + rng.normal(size=16)  # a mean direction
    x32 = torch.from_numpy(x).float()
    got = activation_grams(x32, sequences=4).numpy()
    ref = activation_grams(x32.double(), sequences=4).numpy()  # float64 products
    whole = np.einsum("...nd,...ne->...de", x32.double().numpy(), x32.double().numpy())
    np.testing.assert_allclose(ref[0], whole, rtol=1e-12)
    scale = np.abs(ref).max(axis=(-1, -2), keepdims=True)  # each matrix's largest entry
    assert (np.abs(got - ref) / scale).max() < 2e-6
    # a sequence of tensors is measured as their stack
    assert np.array_equal(activation_grams(list(x32), sequences=4).numpy(), got)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_under_bf16_autocast_the_sphere_is_made_in_float32():
    """As on a GPU: the forward's q and k are bf16; the sphere stage still has unit rows to float32
    precision (not bf16's 3 digits), and the Gram products are not autocast."""
    model, x = make("rms"), inputs()
    record = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, record=record)
        result = probe(model, x, x)
    assert record[0]["q_pre"].dtype == torch.bfloat16
    for layer in range(LAYERS):
        for tensor in STAGES["sphere"]:
            sigma = result.spectra[(layer, tensor)].astype(np.float64)
            np.testing.assert_allclose((sigma**2).sum(-1), N, rtol=1e-5)
    assert np.isfinite(result.loss)
