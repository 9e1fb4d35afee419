"""What practitioners use instead of QK-Norm, against plain transcriptions of their formulas: the
attention-logit soft-cap (Gemma 2), QK-Clip (Kimi K2's MuonClip) and Muon orthogonalised per head."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.config import TrialConfig
from trainer.loop import run_trial
from trainer.model import GPT, causal_max_logit, softcapped_attention
from trainer.optim import Muon, build_optimizers, newton_schulz, orthogonalise
from trainer.qk_clip import QKClip
from trainer.schema import CLIP_METRICS, METRIC_NAMES, QK_NORM_VARIANTS


def cfg(**kw):
    base = dict(width=64, d_head=16, depth=2, corpus="synthetic", seq_len=32, batch_size=4)
    return TrialConfig(**{**base, **kw})


def plain_logits(q, k):
    """q k^T / sqrt(D) with the future masked to -inf, written out."""
    T, D = q.shape[-2], q.shape[-1]
    s = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(D)
    return s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))


def test_the_new_variants_and_metrics_are_in_the_vocabulary():
    assert {"qk_clip", "softcap"} <= set(QK_NORM_VARIANTS)
    assert set(CLIP_METRICS) <= set(METRIC_NAMES)


def test_softcap_attention_is_the_plain_formula_with_its_gradient():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 8, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    cap = 1.5  # small, so that the cap bends the logits (q k^T / 4 reaches about 3 here)
    ours = softcapped_attention(q, k, v, cap)
    T = 8
    raw = torch.einsum("bhtd,bhsd->bhts", q, k) / 4.0
    capped = cap * torch.tanh(raw / cap)
    assert capped.abs().max() < cap and raw.abs().max() > cap  # the cap is active and bounds the logits
    plain = torch.softmax(capped.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), -1) @ v
    assert torch.allclose(ours, plain.to(ours.dtype), atol=1e-6)
    w = torch.randn_like(plain)
    g_ours = torch.autograd.grad((ours * w).sum(), (q, k, v))
    g_plain = torch.autograd.grad((plain * w).sum(), (q, k, v))
    for a, b in zip(g_ours, g_plain):
        assert torch.allclose(a, b.to(a.dtype), atol=1e-6)


def test_a_large_cap_is_plain_attention():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(softcapped_attention(q, k, v, 1e6), plain, atol=1e-5)


def test_softcap_model_records_max_logit_below_the_cap():
    torch.manual_seed(2)
    c = cfg(qk_norm="softcap", logit_softcap=0.5, init_std=0.5)  # big weights: raw logits far above 0.5
    model = GPT(c.architecture())
    record = []
    with torch.no_grad():
        model.probe_forward(torch.randint(0, 256, (2, 32)), record, targets=torch.randint(0, 256, (2, 32)))
    for entry in record:
        finite = entry["logits"][entry["logits"] > torch.finfo(entry["logits"].dtype).min / 2]
        assert finite.abs().max() <= 0.5 + 1e-6 and finite.abs().max() > 0.4


def test_causal_max_logit_is_the_plain_maximum():
    torch.manual_seed(3)
    q, k = torch.randn(3, 4, 10, 8), torch.randn(3, 4, 10, 8)
    expected = plain_logits(q, k).amax(dim=(0, 2, 3))
    assert torch.allclose(causal_max_logit(q, k), expected, atol=1e-5)


def logits_of(model, idx):
    record = []
    with torch.no_grad():
        model.probe_forward(idx, record, targets=torch.zeros_like(idx))
    mask = torch.ones(idx.shape[1], idx.shape[1], dtype=torch.bool).triu(1)
    return [e["logits"].masked_fill(mask, float("-inf")).amax(dim=(0, 2, 3)) for e in record]


def test_qk_clip_brings_every_head_above_tau_back_to_tau_and_leaves_the_rest():
    torch.manual_seed(4)
    c = cfg(qk_norm="qk_clip", init_std=0.3, depth=1)  # one layer: a clip changes what later layers see
    model = GPT(c.architecture())
    idx = torch.randint(0, 256, (4, 32))
    model.train()
    model(idx, idx)  # the training forward keeps S_max per head
    before = logits_of(model, idx)
    tau = float(torch.cat(before).median())  # some heads above, some below
    clip = QKClip(model, tau)
    gamma = clip.apply()
    after = logits_of(model, idx)
    for layer, (b, a) in enumerate(zip(before, after)):
        above = b > tau
        assert above.any() and not above.all()
        assert torch.allclose(a[above], torch.full_like(a[above], tau), rtol=1e-4)  # exactly tau again
        assert torch.allclose(a[~above], b[~above], rtol=1e-5)  # untouched
        assert torch.allclose(gamma[layer][above], tau / b[above], rtol=1e-4)
    rows = clip.take()
    fractions = {(la, h): v for n, la, h, v in rows if n == "clip_fraction"}
    gammas = {(la, h): v for n, la, h, v in rows if n == "clip_gamma_min"}
    assert fractions == {(la, h): float(before[la][h] > tau) for la in range(1) for h in range(4)}
    assert gammas[(0, int(before[0].argmax()))] == pytest.approx(tau / float(before[0].max()), rel=1e-4)
    assert clip.take() == []  # a fresh span: nothing since the last take


def test_qk_clip_trial_records_clip_activity(tmp_path):
    import polars as pl

    c = cfg(qk_norm="qk_clip", qk_clip_tau=0.05, steps=12, warmup=2, eval_every=6, device="cpu", threads=1)
    row = run_trial(c, tmp_path)
    assert row["status"] == "completed"
    m = pl.read_parquet(tmp_path / "metrics").filter(pl.col("name").is_in(list(CLIP_METRICS)))
    from trainer.cadence import eval_steps

    # at every probe but step 0 (no span before the first step), each layer and head once
    assert sorted(m["step"].unique().to_list()) == sorted(set(eval_steps(c)) - {0})
    assert m.group_by("step", "name").len()["len"].unique().to_list() == [c.depth * c.n_heads]
    assert TrialConfig(lr=5e-324).lr > 0  # the trial's flush-to-zero of subnormal floats ended with it
    fired = m.filter(pl.col("name") == "clip_fraction")["value"]
    assert fired.max() > 0  # a tau of 0.05 is far below this model's logits: the clip fires
    assert m.filter(pl.col("name") == "clip_gamma_min")["value"].min() < 1


def test_the_new_settings_keep_existing_trial_ids():
    assert cfg().trial_id() == cfg(qk_clip_tau=30.0, logit_softcap=10.0, muon_per_head=True).trial_id()
    assert cfg(qk_norm="qk_clip").trial_id() != cfg(qk_norm="qk_clip", qk_clip_tau=30.0).trial_id()
    assert cfg(optimizer="muon").trial_id() != cfg(optimizer="muon", muon_per_head=True).trial_id()
    # the trial id of a default trial before these settings existed
    assert TrialConfig().trial_id() == "adamw_none_w64_lr0.01_s0_3c91ddb0"


@pytest.mark.parametrize("bad", ["qk_clip_tau=0", "logit_softcap=-1"])
def test_bounds_must_be_positive(bad):
    from trainer.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        build_config({}, [bad])


def test_batched_newton_schulz_is_each_matrix_on_its_own():
    torch.manual_seed(5)
    stack = torch.randn(6, 48, 96)
    batched = newton_schulz(stack)
    for i in range(6):
        assert torch.allclose(batched[i], newton_schulz(stack[i]), atol=1e-5)
    mats = [torch.randn(32, 64), torch.randn(64, 32), torch.randn(32, 64)]
    for a, b in zip(orthogonalise(mats, 5, torch.float32, batched=True), orthogonalise(mats, 5, torch.float32)):
        assert torch.allclose(a, b, atol=1e-5)


def test_muon_per_head_orthogonalises_each_head_block():
    torch.manual_seed(6)
    c = cfg(optimizer="muon", muon_per_head=True, lr=0.01, weight_decay=0.0)
    model = GPT(c.architecture())
    muon = build_optimizers(model, c, torch.device("cpu"))[0]
    assert isinstance(muon, Muon)
    attn = model.blocks[0].attn
    w0 = {n: p.detach().clone() for n, p in (("wq", attn.wq.weight), ("wo", attn.wo.weight))}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    gq, go = attn.wq.weight.grad.clone(), attn.wo.weight.grad.clone()
    muon.step()
    D, C, scale = 16, 64, 0.01 * 0.2 * math.sqrt(64)
    # Nesterov at step one: update = (1 - m) g (1 + m)... plain transcription: lerp of g and (1-m) g
    m = 0.95
    u_q, u_o = (g.lerp(g * (1 - m), m) for g in (gq, go))
    for h in range(C // D):
        step_q = (w0["wq"] - attn.wq.weight.detach())[h * D : (h + 1) * D] / scale
        assert torch.allclose(step_q, newton_schulz(u_q[h * D : (h + 1) * D]), atol=1e-5)
        step_o = (w0["wo"] - attn.wo.weight.detach())[:, h * D : (h + 1) * D] / scale
        assert torch.allclose(step_o, newton_schulz(u_o[:, h * D : (h + 1) * D]), atol=1e-5)
    # the same step RMS as the whole-matrix Muon: about 0.2 lr per element
    rms = ((w0["wq"] - attn.wq.weight.detach()).pow(2).mean().sqrt() / 0.01).item()
    assert 0.1 < rms < 0.3
