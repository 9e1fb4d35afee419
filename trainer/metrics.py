"""Rank metrics of singular spectra, and the probe pass that measures them.

From singular values s (any batch shape (..., n), non-negative):
  pr          (sum s)^2 / sum s^2        participation ratio of the spectrum, in [1, n]
  pr_cov      (sum s^2)^2 / sum s^4      participation ratio of covariance eigenvalues s^2
  erank       exp(H(s / sum s))          effective rank (Roy & Vetterli 2007)
  stable_rank sum s^2 / max s^2
From activations x (..., N, d): axis_share = max_i E[x_i^2] / sum_i E[x_i^2], in [1/d, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model import GPT

EPS = 1e-30


def participation_ratio(s: torch.Tensor) -> torch.Tensor:
    return s.sum(-1).square() / s.square().sum(-1).clamp_min(EPS)


def covariance_participation_ratio(s: torch.Tensor) -> torch.Tensor:
    s2 = s.square()
    return s2.sum(-1).square() / s2.square().sum(-1).clamp_min(EPS)


def effective_rank(s: torch.Tensor) -> torch.Tensor:
    p = s / s.sum(-1, keepdim=True).clamp_min(EPS)
    entropy = -(p * p.clamp_min(EPS).log()).sum(-1)
    return entropy.exp()


def stable_rank(s: torch.Tensor) -> torch.Tensor:
    s2 = s.square()
    return s2.sum(-1) / s2.amax(-1).clamp_min(EPS)


SPECTRUM_FUNCTIONS = {
    "pr": participation_ratio,
    "pr_cov": covariance_participation_ratio,
    "erank": effective_rank,
    "stable_rank": stable_rank,
}


def axis_share(x: torch.Tensor) -> torch.Tensor:
    """x (..., N, d) -> (...): the largest share of energy held by one coordinate."""
    energy = x.square().mean(-2)
    return energy.amax(-1) / energy.sum(-1).clamp_min(EPS)


def attention_entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs (B, H, T, T) -> (H,): mean over batch and query positions of the entropy, nats."""
    ent = -(probs * probs.clamp_min(EPS).log()).sum(-1)
    return ent.mean(dim=(0, 2))


@dataclass
class ProbeResult:
    """One probe pass. spectra[(layer, tensor)] is (H, r) descending; scalars are (name, layer, head, tensor, value)."""

    spectra: dict[tuple[int, str], np.ndarray]
    scalars: list[tuple[str, int, int, str | None, float]]


@torch.no_grad()
def probe(model: GPT, inputs: torch.Tensor) -> ProbeResult:
    """Forward the fixed probe batch with recording on; compute every rank statistic per layer and head."""
    was_training = model.training
    model.eval()
    record: list[dict] = []
    model(inputs, record=record)
    model.train(was_training)
    H, D = model.cfg.n_heads, model.cfg.d_head
    spectra, scalars = {}, []
    for layer, (rec, block) in enumerate(zip(record, model.blocks)):
        mats = {
            "wq": block.attn.wq.weight.detach().float().view(H, D, -1),  # (H, D, C): head h's rows
            "wk": block.attn.wk.weight.detach().float().view(H, D, -1),
            "q": rec["q"].float().transpose(0, 1).reshape(H, -1, D),    # (H, B*T, D), uncentred
            "k": rec["k"].float().transpose(0, 1).reshape(H, -1, D),
        }
        for tensor, mat in mats.items():
            s = torch.linalg.svdvals(mat)  # (H, min(D, C or N)) descending
            spectra[(layer, tensor)] = s.cpu().numpy().astype(np.float32)
            for name, fn in SPECTRUM_FUNCTIONS.items():
                for head, value in enumerate(fn(s).tolist()):
                    scalars.append((name, layer, head, tensor, value))
            if tensor in ("q", "k"):
                for head, value in enumerate(axis_share(mat).tolist()):
                    scalars.append(("axis_share", layer, head, tensor, value))
        entropy = attention_entropy(rec["probs"])
        max_logit = rec["logits"].float().amax(dim=(0, 2, 3))  # masked entries are -inf
        for head in range(H):
            scalars.append(("attn_entropy", layer, head, None, float(entropy[head])))
            scalars.append(("max_logit", layer, head, None, float(max_logit[head])))
    return ProbeResult(spectra=spectra, scalars=scalars)
