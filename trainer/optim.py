"""Optimizers and the learning-rate schedule.

`adamw`: AdamW on every parameter (decay on 2-D matrices only).
`muon`:  Muon on the hidden 2-D matrices (attention q/k/v/o, MLP up/down); AdamW on the
         embedding, the output head and every norm gain. One peak LR serves both arms: Muon's
         step is rescaled by match_rms_adamw, as in torch.optim.Muon.

torch.optim.Muon always runs Newton-Schulz in bfloat16, which is ~60x slower than fp32 on CPUs
without bf16 units; this Muon takes the dtype as an argument (fp32 on CPU, bf16 on CUDA) and is
otherwise the same algorithm (tests compare it against torch.optim.Muon).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TrialConfig

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """G = U S V^T (m x n) -> approximately U S' V^T with S' near 1: Newton-Schulz orthogonalisation.

    X starts as G / ||G||_F, which puts every singular value in [0, 1] (the spectral norm is at most
    the Frobenius norm), transposed so that m <= n and A is the smaller Gram matrix. Each of `steps`
    iterations is the quintic
        X <- a X + (b A + c A^2) X,   A = X X^T,
    which keeps U and V and maps every singular value s to a s + b s^3 + c s^5. The coefficients
    (a, b, c) = (3.4445, -4.7750, 2.0315) are Keller Jordan's (KellerJordan/Muon, muon.py), chosen to
    maximise the slope at zero, a, so that small singular values grow fast, at the price of not
    converging to 1: after 5 steps (in fp32) every singular value of G / ||G||_F above 3e-3 lands
    in [0.68, 1.20] (muon.py: "S'_ii ~ Uniform(0.5, 1.5), which turns out not to hurt model performance
    at all relative to UV^T"). The result is U S' V^T, not U V^T.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    X = X / X.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if transposed else X


def match_rms_adamw(lr: float, shape: torch.Size) -> float:
    """Muon's step size for an A x B matrix at the AdamW-scale LR `lr`: lr * 0.2 * sqrt(max(A, B)).

    An orthogonal A x B update (min(A, B) singular values of 1) has RMS 1/sqrt(max(A, B)); the factor
    gives Muon's update the RMS 0.2 that AdamW's updates typically have, so one LR axis serves both
    optimizers. From Moonshot AI's "Muon is Scalable for LLM Training" (2025), as torch.optim.Muon's
    adjust_lr_fn="match_rms_adamw".
    """
    return lr * 0.2 * math.sqrt(max(shape[0], shape[1]))


class Muon(torch.optim.Optimizer):
    """Muon: momentum, orthogonalised. Per matrix W with gradient G and momentum buffer M:
        M <- momentum M + (1 - momentum) G
        U  = momentum M + (1 - momentum) G                       (Nesterov)
        W <- (1 - lr weight_decay) W - match_rms_adamw(lr, W.shape) newton_schulz(U)
    Only for hidden 2-D weights: the embedding, the output head and the gains go to AdamW
    (split_parameters). Newton-Schulz runs in `ns_dtype`."""

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum)  # Nesterov
                update = newton_schulz(update, group["ns_steps"], dtype=self.ns_dtype).to(p.dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-match_rms_adamw(lr, p.shape))


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Named groups: hidden matrices, other matrices (embedding, head), gains. Each param once."""
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "embed_head": [], "gains": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("blocks.") and p.ndim == 2:
            groups["hidden"].append(p)
        elif p.ndim == 2:
            groups["embed_head"].append(p)
        else:
            groups["gains"].append(p)
    seen = [id(p) for ps in groups.values() for p in ps]
    expected = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(expected) and len(set(seen)) == len(seen), "every parameter in exactly one group"
    return groups


def build_optimizers(model: nn.Module, cfg: TrialConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """The optimizers for one trial; every group carries `peak_lr` for the schedule."""
    groups = split_parameters(model)
    # fused: one kernel per parameter instead of ~10 elementwise ops (CUDA, and the CPU since torch 2.4)
    adam_kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=device.type in ("cuda", "cpu"))
    decay = {"params": groups["embed_head"], "weight_decay": cfg.weight_decay}
    no_decay = {"params": groups["gains"], "weight_decay": 0.0}
    if cfg.optimizer == "adamw":
        decay["params"] = decay["params"] + groups["hidden"]
        optimizers = [torch.optim.AdamW([decay, no_decay], **adam_kw)]
    else:
        ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        muon = Muon(
            groups["hidden"],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.muon_momentum,
            ns_steps=cfg.ns_steps,
            ns_dtype=ns_dtype,
        )
        optimizers = [muon, torch.optim.AdamW([decay, no_decay], **adam_kw)]
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = cfg.lr
    return optimizers


def lr_factor(step: int, cfg: TrialConfig) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 down to `min_lr_ratio` at the last step."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    span = max(cfg.steps - 1 - cfg.warmup, 1)
    progress = min((step - cfg.warmup) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * factor
