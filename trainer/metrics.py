"""Rank metrics of singular spectra, and the probe pass that measures them.

From singular values s (any batch shape (..., n), non-negative):
  pr          (sum s)^2 / sum s^2        participation ratio of the spectrum, in [1, n]
  pr_cov      (sum s^2)^2 / sum s^4      participation ratio of covariance eigenvalues s^2
  erank       exp(H(s / sum s))          effective rank (Roy & Vetterli 2007)
  stable_rank sum s^2 / max s^2
From activations x (..., N, d): axis_share = max_i E[x_i^2] / sum_i E[x_i^2], in [1/d, 1].

Activation PR is measured on a finite probe (N tokens), and a finite sample spreads the spectrum, so
PR is biased low by roughly c/N. Beside `pr` (uncentred, the contract) the probe records
  pr_centred        PR of the token-centred activations (the mean direction removed)
  pr_bias           split-half jackknife estimate of PR's small-sample bias: mean PR of the two halves
                    of the probe (split by sequence) minus PR of the whole; PR - pr_bias is the
                    bias-corrected PR (if bias ~ c/N, PR_N/2 - PR_N = PR_N - PR_inf)
  pr_centred_bias   the same for pr_centred
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


def activation_spectra(x: torch.Tensor, sequences: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x (H, N, D) with N = sequences x T tokens -> (singular values (H, D) descending, per-head
    pr_centred, pr_bias and pr_centred_bias).

    Every spectrum comes from a D x D Gram matrix in float64 (N >> D): the Gram of each half of the
    probe (split by whole sequences: tokens within a sequence are correlated) is computed once, and
    the whole, centred and half spectra follow from sums of those (G = G1 + G2; centring subtracts
    s s^T / n with s the sum of the rows), so one batched eigvalsh serves all six."""
    xd = x.double()
    n = x.shape[-2]
    halves = sequences >= 2
    cut = (sequences // 2) * (n // sequences) if halves else n
    parts = [xd[..., :cut, :], xd[..., cut:, :]] if halves else [xd]
    grams = [a.transpose(-1, -2) @ a for a in parts]
    sums = [a.sum(-2) for a in parts]
    counts = [a.shape[-2] for a in parts]

    def centred(gram, total, count):
        return gram - total.unsqueeze(-1) * total.unsqueeze(-2) / count

    whole, whole_sum = sum(grams), sum(sums)
    mats = [whole, centred(whole, whole_sum, n)]
    if halves:
        mats += grams + [centred(g, t, c) for g, t, c in zip(grams, sums, counts)]
    sigma = torch.linalg.eigvalsh(torch.stack(mats)).clamp_min(0).sqrt().flip(-1)  # (M, H, D) descending
    prs = participation_ratio(sigma)  # (M, H)
    out = {"pr_centred": prs[1]}
    if halves:
        out["pr_bias"] = (prs[2] + prs[3]) / 2 - prs[0]
        out["pr_centred_bias"] = (prs[4] + prs[5]) / 2 - prs[1]
    return sigma[0].float(), out


def activation_prs(x: torch.Tensor, sequences: int) -> dict[str, torch.Tensor]:
    """x (H, N, D) -> per-head pr, pr_centred and their split-half biases (see activation_spectra)."""
    sigma, out = activation_spectra(x, sequences)
    return {"pr": participation_ratio(sigma.double()), **out}


def attention_entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs (B, H, T, T) -> (H,): mean over batch and query positions of the entropy, nats."""
    ent = torch.special.entr(probs).sum(-1)  # -p log p, 0 at p = 0: one pass over (B, H, T, T)
    return ent.mean(dim=(0, 2))


@dataclass
class ProbeResult:
    """One probe pass. spectra[(layer, tensor)] is (H, r) descending; scalars are (name, layer, head, tensor, value)."""

    spectra: dict[tuple[int, str], np.ndarray]
    scalars: list[tuple[str, int, int, str | None, float]]
    loss: float | None = None  # mean cross-entropy on the probe batch, when targets were given


@torch.no_grad()
def probe(model: GPT, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> ProbeResult:
    """Forward the fixed probe batch with recording on; compute every rank statistic per layer and head
    (and the loss on the same batch when `targets` are given: the val loss comes free)."""
    was_training = model.training
    model.eval()
    record: list[dict] = []
    _, loss = model(inputs, targets, record=record)
    model.train(was_training)
    H, D = model.cfg.n_heads, model.cfg.d_head
    spectra, scalars = {}, []
    for layer, (rec, block) in enumerate(zip(record, model.blocks)):
        mats = {
            "wq": block.attn.wq.weight.detach().float().view(H, D, -1),  # (H, D, C): head h's rows
            "wk": block.attn.wk.weight.detach().float().view(H, D, -1),
            "q": rec["q"].float().transpose(0, 1).reshape(H, -1, D),  # (H, B*T, D), uncentred
            "k": rec["k"].float().transpose(0, 1).reshape(H, -1, D),
        }
        for tensor, mat in mats.items():
            if tensor in ("q", "k"):  # activations: N >> D, spectra from Gram matrices (see activation_spectra)
                s, extra = activation_spectra(mat, inputs.shape[0])
            else:
                s, extra = torch.linalg.svdvals(mat), {}  # (H, min(D, C)) descending
            spectra[(layer, tensor)] = s.cpu().numpy().astype(np.float32)
            for name, fn in SPECTRUM_FUNCTIONS.items():
                for head, value in enumerate(fn(s).tolist()):
                    scalars.append((name, layer, head, tensor, value))
            if tensor in ("q", "k"):
                for head, value in enumerate(axis_share(mat).tolist()):
                    scalars.append(("axis_share", layer, head, tensor, value))
                for name, values in extra.items():
                    for head, value in enumerate(values.tolist()):
                        scalars.append((name, layer, head, tensor, value))
        entropy = attention_entropy(rec["probs"])
        max_logit = rec["logits"].float().amax(dim=(0, 2, 3))  # masked entries are -inf
        for head in range(H):
            scalars.append(("attn_entropy", layer, head, None, float(entropy[head])))
            scalars.append(("max_logit", layer, head, None, float(max_logit[head])))
    return ProbeResult(spectra=spectra, scalars=scalars, loss=None if loss is None else float(loss))
