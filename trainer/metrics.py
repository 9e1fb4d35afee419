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

from .model import GPT, ProbeRecord

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


def activation_grams(x: torch.Tensor, sequences: int) -> torch.Tensor:
    """x (..., N, D) with N = sequences x T tokens -> float64 Gram matrices (M, ..., D, D): the whole
    probe, centred; with two or more sequences also each half (split by whole sequences: tokens
    within a sequence are correlated) and each half centred (M = 6, else 2).

    N >> D, so every spectrum comes from a D x D Gram matrix: the Gram of each half is computed once
    and the others follow from sums (G = G1 + G2; centring subtracts s s^T / n, s the sum of the rows)."""
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
    return torch.stack(mats)


def gram_singular_values(grams: torch.Tensor) -> torch.Tensor:
    """Gram matrices (..., D, D) -> singular values (..., D) descending, float64 on the CPU. LAPACK
    does many small eigenproblems quickly; CUDA's batched eigvalsh runs them one by one (it made the
    probe cost 17-41% of training on an H200), so the small matrices come to the CPU."""
    return torch.linalg.eigvalsh(grams.cpu()).clamp_min(0).sqrt().flip(-1)


def activation_statistics(sigma: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Singular values (M, ..., H, D) of activation_grams' matrices -> (the whole probe's (..., H, D)
    float32, per-head pr_centred, pr_bias and pr_centred_bias (..., H))."""
    prs = participation_ratio(sigma)  # (M, ..., H)
    out = {"pr_centred": prs[1]}
    if sigma.shape[0] == 6:
        out["pr_bias"] = (prs[2] + prs[3]) / 2 - prs[0]
        out["pr_centred_bias"] = (prs[4] + prs[5]) / 2 - prs[1]
    return sigma[0].float(), out


def activation_prs(x: torch.Tensor, sequences: int) -> dict[str, torch.Tensor]:
    """x (..., H, N, D) -> per-head pr, pr_centred and their split-half biases, as the probe computes
    them (activation_grams, gram_singular_values, activation_statistics)."""
    sigma, out = activation_statistics(gram_singular_values(activation_grams(x, sequences)))
    return {"pr": participation_ratio(sigma.double()), **out}


def attention_stats(logits: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits, probs = softmax(logits) (B, H, T, T) -> per head (H,): the entropy in nats, averaged
    over batch and query positions, and the largest logit. -sum p log p = lse - sum p l with
    lse = logsumexp(l) = max l - log max p (the largest p is at least 1/T, so its log is safe), so no
    log or exp is taken per entry; masked entries must hold a finite lowest value (p = 0 there, and
    0 * l = 0)."""
    row_max = logits.amax(-1)
    lse = row_max - probs.amax(-1).log()
    entropy = lse - (probs.unsqueeze(-2) @ logits.unsqueeze(-1)).view(lse.shape)  # sum p l as a batched matmul
    return entropy.mean(dim=(0, 2)), row_max.amax(dim=(0, 2))


@dataclass
class ProbeResult:
    """One probe pass. spectra[(layer, tensor)] is (H, r) descending; scalars are (name, layer, head, tensor, value)."""

    spectra: dict[tuple[int, str], np.ndarray]
    scalars: list[tuple[str, int, int, str | None, float]]
    loss: float | None = None  # mean cross-entropy on the probe batch, when targets were given


@dataclass
class ProbeMeasurement:
    """What a probe pass measured, on the CPU and ready to finish: per layer the Gram matrices of q and
    k (M, 2, H, D, D) and of the rows of wq, wk (2H, D, D), and the per-head axis shares and attention
    statistics. finish() (eigen-decompositions, statistics, rows) needs no model and no GPU, so a
    trainer on a GPU runs it in a thread while training goes on."""

    layers: list[dict[str, torch.Tensor]]
    n_heads: int
    loss: float | None

    def finish(self) -> ProbeResult:
        H = self.n_heads
        spectra, scalars = {}, []
        for layer, m in enumerate(self.layers):
            act_grams = m["act_grams"]
            both = gram_singular_values(torch.cat((act_grams.flatten(0, 2), m["weight_grams"])))
            n_act = act_grams.shape[:-2].numel()
            sigma_qk, extra = activation_statistics(both[:n_act].view(act_grams.shape[:-1]))
            sigma = dict(zip(("wq", "wk", "q", "k"), (*both[n_act:].float().split(H), *sigma_qk)))
            per_head: dict[tuple[str, str | None], torch.Tensor] = {}  # (name, tensor) -> (H,)
            for name, values in {"axis_share": m["axis_share"], **extra}.items():
                per_head[(name, "q")], per_head[(name, "k")] = values
            stacked = torch.stack(list(sigma.values()))  # (4, H, D): one call per statistic for all four tensors
            for name, fn in SPECTRUM_FUNCTIONS.items():
                per_head.update({(name, tensor): values for tensor, values in zip(sigma, fn(stacked))})
            if "attn_entropy" in m:
                per_head[("attn_entropy", None)], per_head[("max_logit", None)] = m["attn_entropy"], m["max_logit"]
            for tensor, s in sigma.items():
                spectra[(layer, tensor)] = s.numpy().astype(np.float32)
            for (name, tensor), values in per_head.items():
                scalars.extend((name, layer, head, tensor, value) for head, value in enumerate(values.tolist()))
        return ProbeResult(spectra=spectra, scalars=scalars, loss=self.loss)


@torch.no_grad()
def measure(
    model: GPT, inputs: torch.Tensor, targets: torch.Tensor | None = None, scores: bool = True
) -> ProbeMeasurement:
    """Forward the fixed probe batch with recording on and reduce what every statistic needs to small
    CPU tensors (the loss on the same batch too when `targets` are given: the val loss comes free;
    without them the pass stops once the last layer is recorded). scores=False skips the attention
    statistics (attn_entropy, max_logit), which need attention computed explicitly."""
    was_training = model.training
    model.eval()
    record = ProbeRecord(scores)
    loss = model.probe_forward(inputs, record, targets)
    model.train(was_training)
    H, D = model.cfg.n_heads, model.cfg.d_head
    layers = []
    for rec, block in zip(record, model.blocks):
        acts = torch.stack((rec["q"], rec["k"])).transpose(1, 2).reshape(2, H, -1, D)  # (2, H, B*T, D), uncentred
        weights = torch.cat((block.attn.wq.weight, block.attn.wk.weight)).detach().double().view(2 * H, D, -1)
        m = {
            "act_grams": activation_grams(acts, inputs.shape[0]),  # (M, 2, H, D, D)
            "weight_grams": weights @ weights.transpose(1, 2),  # head h's rows of wq, then of wk
            "axis_share": axis_share(acts.float()),
        }
        if "logits" in rec:
            m["attn_entropy"], m["max_logit"] = attention_stats(rec["logits"], rec["probs"])
        layers.append({name: t.cpu() for name, t in m.items()})
    return ProbeMeasurement(layers, H, None if loss is None else float(loss))


def probe(model: GPT, inputs: torch.Tensor, targets: torch.Tensor | None = None, scores: bool = True) -> ProbeResult:
    """One probe pass, measured and finished (see measure and ProbeMeasurement)."""
    return measure(model, inputs, targets, scores).finish()
