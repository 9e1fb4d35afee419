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
    """G = U S V^T (m x n, or a stack (b, m, n) of same-shape matrices, each on its own) -> about
    U S' V^T with S' near 1: Newton-Schulz orthogonalisation.

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

    A stack runs as one chain of batched matmuls (baddbmm), as modded-nanogpt's batched Muon does: one
    launch per iteration for every matrix of a shape instead of one per matrix, what a GPU needs.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    if X.ndim == 2:
        X = X / X.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
        for _ in range(steps):
            A = X @ X.T
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            A = X @ X.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    return X.mT if transposed else X


def head_blocks(U: torch.Tensor, split: str, d_head: int) -> torch.Tensor:
    """A (C_out, C_in) attention projection as a stack of per-head blocks: split "rows" (W_q, W_k, W_v:
    head h owns output rows h*d_head ...) gives (H, d_head, C_in); "cols" (W_o: head h's outputs enter
    through columns h*d_head ...) gives (H, C_out, d_head)."""
    if split == "rows":
        return U.view(-1, d_head, U.shape[1])
    return U.view(U.shape[0], -1, d_head).transpose(0, 1)


def from_head_blocks(blocks: torch.Tensor, split: str) -> torch.Tensor:
    """head_blocks' inverse."""
    if split == "rows":
        return blocks.reshape(-1, blocks.shape[-1])
    return blocks.transpose(0, 1).reshape(blocks.shape[1], -1)


def orthogonalise(
    updates: list[torch.Tensor],
    steps: int,
    dtype: torch.dtype,
    batched: bool = False,
    split: str | None = None,
    d_head: int = 0,
) -> list[torch.Tensor]:
    """newton_schulz of every update: of each whole matrix (split None), or of each head's block of it
    (split "rows" or "cols", see head_blocks). `batched` stacks the matrices (blocks) of one shape
    and runs them as one batched chain (the GPU path); without it each matrix runs on its own through
    the 2-D path (the CPU path, unchanged), a per-head matrix's blocks as one stack."""
    mats = [head_blocks(u, split, d_head) if split else u for u in updates]
    if not batched:
        out = [newton_schulz(m, steps, dtype=dtype) for m in mats]
    else:
        out: list[torch.Tensor | None] = [None] * len(mats)
        by_shape: dict[tuple, list[int]] = {}
        for i, m in enumerate(mats):
            by_shape.setdefault(tuple(m.shape[-2:]), []).append(i)
        for idx in by_shape.values():
            stack = torch.cat([mats[i].reshape(-1, *mats[i].shape[-2:]) for i in idx])
            done = newton_schulz(stack, steps, dtype=dtype)
            start = 0
            for i in idx:
                n = mats[i].numel() // (mats[i].shape[-2] * mats[i].shape[-1])
                out[i] = done[start : start + n].view(mats[i].shape)
                start += n
    return [from_head_blocks(o, split) if split else o for o in out]


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
    (split_parameters). Newton-Schulz runs in `ns_dtype`; `batched` runs the matrices of one shape
    as one batched chain (see orthogonalise).

    A param group with `split` ("rows" or "cols") and `d_head` orthogonalises each head's block of its
    matrices on its own (muon_per_head). The step scale stays match_rms_adamw(lr, W.shape): a
    d_head x C block's orthogonal update has RMS 1/sqrt(C) = 1/sqrt(max(d_head, C)), like the whole
    C x C matrix's, so 0.2 sqrt(C) gives every block, and so the matrix, the same RMS 0.2 as the
    whole-matrix Muon, and one LR axis still serves every arm."""

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.float32,
        batched: bool = False,
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps, split=None, d_head=0)
        super().__init__(params, defaults)
        self.ns_dtype, self.batched = ns_dtype, batched
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                updates.append(p.grad.lerp(buf, momentum))  # Nesterov
            ortho = orthogonalise(
                updates, group["ns_steps"], self.ns_dtype, self.batched, group["split"], group["d_head"]
            )
            for p, update in zip(params, ortho):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-match_rms_adamw(lr, p.shape))


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


def muon_groups(model: nn.Module, hidden: list[nn.Parameter], per_head: bool) -> list[dict]:
    """Muon's param groups: every hidden matrix whole, or (per_head) each block's W_q, W_k, W_v split
    by rows and W_o by columns into heads (see Muon), the MLP whole."""
    if not per_head:
        return [{"params": hidden}]
    rows, cols = [], []
    for block in model.blocks:
        attn = block.attn
        rows += [attn.wq.weight, attn.wk.weight, attn.wv.weight]
        cols.append(attn.wo.weight)
    split = {id(p) for p in rows + cols}
    d_head = model.blocks[0].attn.d_head
    return [
        {"params": rows, "split": "rows", "d_head": d_head},
        {"params": cols, "split": "cols", "d_head": d_head},
        {"params": [p for p in hidden if id(p) not in split]},
    ]


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
            muon_groups(model, groups["hidden"], cfg.muon_per_head),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.muon_momentum,
            ns_steps=cfg.ns_steps,
            ns_dtype=ns_dtype,
            batched=device.type == "cuda",
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
