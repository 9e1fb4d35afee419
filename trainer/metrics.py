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

The activations are q and k per layer and head before RoPE, at three stages (trainer.schema.STAGES):
q_pre = x Wq before any normalisation, q_sphere = q_pre with every token's vector scaled to unit length
(no gain), and q as attention uses it (after QK-Norm, gain included); k likewise. Every stage gets
every statistic above, and the pre-norm stage also
  norm_cv           coefficient of variation of the per-token norms over the probe's tokens,
                    sd / mean of ||q_pre_t|| (population sd, ddof 0)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .model import GPT, ProbeRecord
from .schema import ACTIVATION_TENSORS, STAGES, WEIGHT_TENSORS

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


def gram_axis_share(gram: torch.Tensor) -> torch.Tensor:
    """axis_share from the uncentred Gram matrix x^T x (..., d, d): its diagonal is N E[x_i^2]."""
    energy = gram.diagonal(dim1=-2, dim2=-1)
    return energy.amax(-1) / energy.sum(-1).clamp_min(EPS)


def norm_cv(norms: torch.Tensor) -> torch.Tensor:
    """Per-token norms (..., N) -> (...): their coefficient of variation sd / mean, the sd with ddof 0
    (the population sd of the probe's N tokens), in float64."""
    n = norms.double()
    return n.std(-1, correction=0) / n.mean(-1).clamp_min(EPS)


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b are views of the same values (same memory, shape, strides and dtype)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


def stages(record: dict) -> tuple[list[torch.Tensor], list[int], torch.Tensor]:
    """A layer's probe record (q, k, q_pre, k_pre, each (B, H, T, D)) -> the activations of every stage:
    the distinct tensors, each (H, B*T, D) float32, with for each of trainer.schema.ACTIVATION_TENSORS
    the index of its tensor (without QK-Norm q is q_pre: one tensor, measured once), and the
    per-token norms of q_pre and k_pre (2, H, B*T). The recorded ones are views of the forward's
    tensors where those are float32 already: no copy (the probe is paid for in training time). The
    sphere stage is q_pre's rows over their norms, computed in float32 whatever the dtype of the pass
    (bf16 under autocast); a row of zeros stays zero."""
    B, H, T, D = record["q"].shape
    acts: dict[str, torch.Tensor] = {}
    for name in STAGES["as_used"] + STAGES["pre"]:
        twin = next((other for other in acts if same_tensor(record[other], record[name])), None)
        # (B*T, H, D): the forward's (B, T, H, D) layout with the tokens flattened, a view
        acts[name] = acts[twin] if twin else record[name].transpose(1, 2).reshape(B * T, H, D).float()
    norms = []
    for pre, sphere in zip(STAGES["pre"], STAGES["sphere"]):
        norms.append(torch.linalg.vector_norm(acts[pre], dim=-1, keepdim=True))
        acts[sphere] = acts[pre] / norms[-1].clamp_min(EPS)
    distinct = list({id(t): t for t in acts.values()}.values())
    index = [next(i for i, t in enumerate(distinct) if t is acts[name]) for name in ACTIVATION_TENSORS]
    norms = torch.stack(norms).squeeze(-1).transpose(1, 2)
    return [t.transpose(0, 1) for t in distinct], index, norms


def gram(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors (..., n, D) of one shape, any strides -> their float64 Gram matrices x^T x
    (len(xs), ..., D, D). On the CPU the products run in x's precision (at least float32), one matrix
    at a time on x as it lies (no copy to a batched layout), and come out within about 1e-7 of the
    largest entry (float32's own resolution) at a fraction of the cost of float64 products (the probe
    is paid for in training time). So eigenvalues below about 1e-7 of the largest, singular values
    below about 3e-4 of the largest, are at the noise floor: only an exactly null direction shows it
    (qk_norm layer's q and k, which LayerNorm centres over d_head), and it moves PR and its relatives
    by about 1e-5 of their value. Elsewhere (CUDA, where float32 products may be TF32) in float64.
    Autocast is off."""
    *lead, _, d = xs[0].shape
    with torch.autocast(xs[0].device.type, enabled=False):
        if xs[0].device.type != "cpu":
            xd = torch.stack(list(xs)).double()
            return xd.transpose(-1, -2) @ xd
        xs = [x if x.dtype in (torch.float32, torch.float64) else x.float() for x in xs]
        out = torch.empty((len(xs), *lead, d, d), dtype=xs[0].dtype)
        for i, x in enumerate(xs):
            for index in itertools.product(*map(range, lead)):
                torch.mm(x[index].T, x[index], out=out[(i, *index)])
        return out.double()


def activation_grams(x: torch.Tensor | Sequence[torch.Tensor], sequences: int) -> torch.Tensor:
    """x (..., N, D) with N = sequences x T tokens, any strides -> float64 Gram matrices (M, ..., D, D):
    the whole probe, centred; with two or more sequences also each half (split by whole sequences:
    tokens within a sequence are correlated) and each half centred (M = 6, else 2). A sequence of
    tensors of one shape gives (M, len(x), ..., D, D).

    N >> D, so every spectrum comes from a D x D Gram matrix (see gram): the Gram of each half is
    computed once and the others follow from sums (G = G1 + G2; centring subtracts s s^T / n, s the
    sum of the rows)."""
    xs = [x] if isinstance(x, torch.Tensor) else list(x)
    n = xs[0].shape[-2]
    halves = sequences >= 2
    cut = (sequences // 2) * (n // sequences) if halves else n
    parts = [[a[..., :cut, :] for a in xs], [a[..., cut:, :] for a in xs]] if halves else [xs]
    grams = [gram(p) for p in parts]
    sums = [torch.stack([a.sum(-2) for a in p]).double() for p in parts]
    counts = [p[0].shape[-2] for p in parts]

    def centred(gram, total, count):
        return gram - total.unsqueeze(-1) * total.unsqueeze(-2) / count

    whole, whole_sum = sum(grams), sum(sums)
    mats = [whole, centred(whole, whole_sum, n)]
    if halves:
        mats += grams + [centred(g, t, c) for g, t, c in zip(grams, sums, counts)]
    out = torch.stack(mats)
    return out.squeeze(1) if isinstance(x, torch.Tensor) else out


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


# On the CPU the probe's explicit attention runs in blocks of sequences whose logits take at most this
# many bytes: with their probabilities they stay in a 2 MiB L2 cache while softmax, the statistics and
# probs @ v read them. A probe with attention took 25-30% less time at widths 128 and 256 (d_head 32,
# 128 tokens: blocks of 2 and 1 sequences) than all at once. Elsewhere (CUDA) it runs all at once.
SCORE_BLOCK_BYTES = 2**19


def score_block(inputs: torch.Tensor, n_heads: int) -> int | None:
    """Sequences per block of the probe's explicit attention over `inputs` (B, T) (see SCORE_BLOCK_BYTES)."""
    if inputs.device.type != "cpu":
        return None
    T = inputs.shape[-1]
    return max(1, SCORE_BLOCK_BYTES // (n_heads * T * T * 4))


def add_attention_stats(entry: dict, logits: torch.Tensor, probs: torch.Tensor) -> None:
    """The probe's on_scores (trainer.model.ProbeRecord): a block's attention_stats into the layer's
    entry, the entropy weighted by the block's sequences; finish_attention_stats combines them."""
    entropy, max_logit = attention_stats(logits, probs)
    entry.setdefault("attention_blocks", []).append((logits.shape[0], entropy, max_logit))


def finish_attention_stats(entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's attention blocks (add_attention_stats) -> per head the entropy averaged over every
    sequence and query position, and the largest logit: attention_stats of the whole batch."""
    blocks = entry["attention_blocks"]
    sequences = sum(n for n, _, _ in blocks)
    entropy = sum(n * e for n, e, _ in blocks) / sequences
    return entropy, torch.stack([m for _, _, m in blocks]).amax(0)


@dataclass
class ProbeResult:
    """One probe pass. spectra[(layer, tensor)] is (H, r) descending; scalars are (name, layer, head, tensor, value)."""

    spectra: dict[tuple[int, str], np.ndarray]
    scalars: list[tuple[str, int, int, str | None, float]]
    loss: float | None = None  # mean cross-entropy on the probe batch, when targets were given


@dataclass
class ProbeMeasurement:
    """What a probe pass measured, on the CPU and ready to finish: per layer the Gram matrices of the
    distinct activations of every stage (M, distinct, H, D, D) with the index of each of
    ACTIVATION_TENSORS among them (axis_share comes from their diagonals), the Gram matrices of the
    rows of wq, wk (2H, D, D), and per head norm_cv of the pre-norm stage and the attention statistics.
    finish() (eigen-decompositions, statistics, rows) needs no model and no GPU, so a trainer on a GPU
    runs it in a thread while training goes on."""

    layers: list[dict[str, torch.Tensor]]
    n_heads: int
    loss: float | None

    def finish(self) -> ProbeResult:
        H = self.n_heads
        spectra, scalars = {}, []
        for layer, m in enumerate(self.layers):
            act_grams, index = m["act_grams"], m["act_index"]
            both = gram_singular_values(torch.cat((act_grams.flatten(0, 2), m["weight_grams"])))
            n_act = act_grams.shape[:-2].numel()
            sigma_act, extra = activation_statistics(both[:n_act].view(act_grams.shape[:-1])[:, index])
            sigma = dict(zip(WEIGHT_TENSORS + ACTIVATION_TENSORS, (*both[n_act:].float().split(H), *sigma_act)))
            per_head: dict[tuple[str, str | None], torch.Tensor] = {}  # (name, tensor) -> (H,)
            for name, values in {"axis_share": gram_axis_share(act_grams[0])[index], **extra}.items():
                per_head.update(zip(((name, t) for t in ACTIVATION_TENSORS), values))
            per_head.update(zip((("norm_cv", t) for t in STAGES["pre"]), m["norm_cv"]))
            stacked = torch.stack(list(sigma.values()))  # (8, H, D): one call per statistic for every tensor
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
    without them the pass stops once the last layer is recorded). q and k are measured at every stage
    (see stages). scores=False skips the attention statistics (attn_entropy, max_logit), which need
    attention computed explicitly (on the CPU in blocks of sequences, see SCORE_BLOCK_BYTES)."""
    was_training = model.training
    model.eval()
    H, D = model.cfg.n_heads, model.cfg.d_head
    record = ProbeRecord(scores, block=score_block(inputs, H), on_scores=add_attention_stats)
    loss = model.probe_forward(inputs, record, targets)
    model.train(was_training)
    layers = []
    for rec, block in zip(record, model.blocks):
        acts, index, norms = stages(rec)  # the distinct activations (H, B*T, D), uncentred
        weights = torch.cat((block.attn.wq.weight, block.attn.wk.weight)).detach().double().view(2 * H, D, -1)
        m = {
            "act_grams": activation_grams(acts, inputs.shape[0]),  # (M, distinct, H, D, D)
            "act_index": torch.tensor(index),  # ACTIVATION_TENSORS -> its Gram matrices
            "weight_grams": weights @ weights.transpose(1, 2),  # head h's rows of wq, then of wk
            "norm_cv": norm_cv(norms),  # (2, H): q_pre, k_pre
        }
        if "attention_blocks" in rec:
            m["attn_entropy"], m["max_logit"] = finish_attention_stats(rec)
        layers.append({name: t.cpu() for name, t in m.items()})
    return ProbeMeasurement(layers, H, None if loss is None else float(loss))


def probe(model: GPT, inputs: torch.Tensor, targets: torch.Tensor | None = None, scores: bool = True) -> ProbeResult:
    """One probe pass, measured and finished (see measure and ProbeMeasurement)."""
    return measure(model, inputs, targets, scores).finish()
