"""Optimizers against independent references: torch.optim.Muon, torch.optim.AdamW, orthogonality."""

import math

import pytest
import torch

from trainer.config import TrialConfig
from trainer.model import GPT
from trainer.optim import Muon, build_optimizers, lr_factor, match_rms_adamw, newton_schulz, split_parameters


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 384)])
def test_newton_schulz_update_is_near_orthogonal(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape) * 1e-3  # gradient-sized
    s = torch.linalg.svdvals(newton_schulz(G))
    assert s.min() > 0.5 and s.max() < 1.5  # quintic NS lands in a band around 1, not exactly 1
    assert torch.linalg.svdvals(G).max() / torch.linalg.svdvals(G).min() > 2  # the input was not already orthogonal


def test_muon_matches_torch_muon_with_bf16_newton_schulz():
    torch.manual_seed(1)
    w0 = torch.randn(48, 96)
    ours_p = torch.nn.Parameter(w0.clone())
    ref_p = torch.nn.Parameter(w0.clone())
    ours = Muon([ours_p], lr=0.02, weight_decay=0.1, momentum=0.95, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon([ref_p], lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    for _ in range(5):
        g = torch.randn(48, 96)
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(ours_p, ref_p, atol=1e-5)


def test_fp32_newton_schulz_agrees_with_bf16_to_bf16_precision():
    torch.manual_seed(2)
    G = torch.randn(64, 128)
    diff = (newton_schulz(G) - newton_schulz(G, dtype=torch.bfloat16).float()).abs().max()
    assert diff < 0.05


def test_match_rms_adamw_scale():
    assert match_rms_adamw(1e-2, torch.Size([128, 512])) == pytest.approx(1e-2 * 0.2 * math.sqrt(512))


def cfg(**kw):
    return TrialConfig(width=64, d_head=16, depth=2, corpus="synthetic", **kw)


def test_parameter_groups_cover_every_parameter_once():
    model = GPT(cfg(qk_norm="rms").architecture())
    groups = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for p in groups["hidden"]}
    assert all(any(k in n for k in ("wq", "wk", "wv", "wo", "up", "down")) for n in hidden)
    assert {names[id(p)] for p in groups["embed_head"]} == {"embed.weight", "head.weight"}
    assert any("q_norm" in names[id(p)] for p in groups["gains"])
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_muon_arm_puts_hidden_matrices_in_muon_and_the_rest_in_adamw():
    trial = cfg(optimizer="muon")
    model = GPT(trial.architecture())
    muon, adamw = build_optimizers(model, trial, torch.device("cpu"))
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    n_muon = sum(len(g["params"]) for g in muon.param_groups)
    assert n_muon == 2 * 6  # depth 2 x (q, k, v, o, up, down)


def test_adamw_arm_steps_like_torch_adamw():
    trial = cfg()
    model = GPT(trial.architecture())
    ref = GPT(trial.architecture())
    ref.load_state_dict(model.state_dict())
    (opt,) = build_optimizers(model, trial, torch.device("cpu"))
    decay = [p for n, p in ref.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in ref.named_parameters() if p.ndim < 2]
    ref_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=trial.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    x = torch.randint(0, 256, (2, 16))
    for m, o in ((model, opt), (ref, ref_opt)):
        for _ in range(3):
            _, loss = m(x, x)
            loss.backward()
            o.step()
            o.zero_grad()
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_schedule_warms_up_then_decays_to_ten_percent():
    c = cfg(steps=100, warmup=10, lr=1e-2)
    factors = [lr_factor(s, c) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert max(factors) == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
