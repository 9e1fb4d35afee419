"""A small pre-norm GPT with RoPE, causal SDPA, and per-head QK-Norm.

    x = embed(idx)                                           (B, T, C)
    each block:  x = x + attn(norm1(x)),  x = x + mlp(norm2(x))
      attn:      q, k, v = x wq^T, x wk^T, x wv^T            (B, T, H, D), H heads of D = d_head
                 q, k = q_norm(q), k_norm(k)                 QK-Norm, per head over D
                 q, k = rope(q), rope(k)
                 y = softmax(q k^T / sqrt(D) + causal mask) v, then wo
      mlp:       down(gelu(up(x)))
    logits = head(norm_f(x))                                 every norm an RMSNorm with a learned gain

QK-Norm variants (trainer.architecture.QK_NORM_KINDS):
  none        plain dot-product attention
  rms         RMSNorm over d_head with a learned gain
  rms_frozen  RMSNorm with the gain fixed at 1 (q, k live on a sphere of radius sqrt(d_head))
  layer       LayerNorm over d_head (centred, learned gain and bias)
  qk_clip     no norm; after each optimizer step trainer.qk_clip scales W_q, W_k of every head whose
              largest logit exceeded tau (Kimi K2's MuonClip); the forward keeps each head's largest
              logit (`max_logit`, training passes only) for it
  softcap     no norm; logits -> cap * tanh(logits / cap) before the softmax (Gemma 2), explicit attention

RoPE turns each adjacent pair (x_2i, x_2i+1) of a head's dims at position t by the angle
t * 10000^(-2i/D): the RoFormer / Meta LLaMA convention. (GPT-NeoX pairs dim i with i + D/2; the two
differ by a fixed permutation of each head's dims.)

The hot path is causal `F.scaled_dot_product_attention`. A probe pass (`record=[]`) computes attention
explicitly and records per layer q and k before RoPE, both before QK-Norm (x wq^T, x wk^T: `q_pre`,
`k_pre`) and after it (`q`, `k`, as attention uses them), and the attention logits and probabilities;
trainer.metrics turns those into rank statistics (and q_pre, k_pre into the unit-norm stage). Without
targets (`GPT.probe_forward`) it stops once the last layer is recorded: what follows feeds only the
loss. A ProbeRecord(scores=False) keeps q and k only and leaves attention on SDPA; a ProbeRecord with
scores can run the explicit attention a block of sequences at a time and reduce each block's scores
as they are made (the probe does on the CPU, where a block stays in cache).

The norms and RoPE run through trainer.kernels, which picks a fast CPU path or the generic one from
the tensor it is given; this module has no device or dtype branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .architecture import QK_NORM_KINDS, ModelConfig
from .kernels import RopeTables


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameter, same eps default, same math) through kernels.rms_norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return kernels.rms_norm(x, self.weight, eps)


def make_qk_norm(variant: str, d_head: int) -> nn.Module:
    """QK-Norm's module over d_head (see trainer.architecture.QK_NORM_KINDS)."""
    kind = QK_NORM_KINDS[variant]
    if kind.norm is None:
        return nn.Identity()
    if kind.norm == "rms":
        return RMSNorm(d_head, elementwise_affine=kind.gain)
    return nn.LayerNorm(d_head, elementwise_affine=kind.gain, bias=kind.bias)


class ProbeRecord(list):
    """What a probe pass records, one dict per layer. scores=False keeps q and k only, before and after
    QK-Norm (attention then runs through SDPA): the early log-spaced probes measure PR alone. A plain
    list records everything.

    With scores, the explicit attention runs `block` sequences at a time (None: all at once) and hands
    each block's logits and probabilities to `on_scores(entry, logits, probs)`, which keeps what it
    needs in the layer's entry; without one they are kept whole (keep_scores)."""

    def __init__(self, scores: bool = True, block: int | None = None, on_scores=None):
        super().__init__()
        self.scores, self.block, self.on_scores = scores, block, on_scores


def keep_scores(entry: dict, logits: torch.Tensor, probs: torch.Tensor) -> None:
    """The default on_scores: the layer's logits and probabilities (B, H, T, T) kept in its entry."""
    for name, t in (("logits", logits), ("probs", probs)):
        entry[name] = torch.cat((entry[name], t)) if name in entry else t


def wants_scores(record: list) -> bool:
    return getattr(record, "scores", True)


def qk_entry(q: torch.Tensor, k: torch.Tensor, q_pre: torch.Tensor, k_pre: torch.Tensor) -> dict:
    """A layer's pre-RoPE q and k (B, T, H, D) as recorded, (B, H, T, D) views: after QK-Norm (`q`, `k`,
    as attention uses them) and before it (`q_pre`, `k_pre`: x wq^T, x wk^T; the same tensors as q, k
    when there is no QK-Norm)."""
    views = {"q": q, "k": k, "q_pre": q_pre, "k_pre": k_pre}
    return {name: t.detach().transpose(1, 2) for name, t in views.items()}


class Attention(nn.Module):
    def __init__(self, arch: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = arch.n_heads, arch.d_head
        # Separate q/k/v/o matrices: Muon orthogonalises each projection on its own, and the probe
        # slices wq, wk per head (head h owns rows [h*d_head, (h+1)*d_head)).
        self.wq = nn.Linear(arch.width, arch.width, bias=False)
        self.wk = nn.Linear(arch.width, arch.width, bias=False)
        self.wv = nn.Linear(arch.width, arch.width, bias=False)
        self.wo = nn.Linear(arch.width, arch.width, bias=False)
        self.q_norm = make_qk_norm(arch.qk_norm, arch.d_head)
        self.k_norm = make_qk_norm(arch.qk_norm, arch.d_head)
        self.bound = QK_NORM_KINDS[arch.qk_norm].logits  # None, "clip" or "softcap"
        self.cap = arch.logit_softcap if self.bound == "softcap" else None
        if self.bound == "clip":  # S_max per head of the last training forward, for trainer.qk_clip
            self.register_buffer("max_logit", torch.zeros(arch.n_heads), persistent=False)

    def forward(self, x, rope: RopeTables, record: list | None = None, record_only: bool = False):
        """x (B, T, C) -> (B, T, C). With `record`, q and k are recorded before and after QK-Norm (see
        qk_entry), and unless it is a ProbeRecord with scores=False attention runs explicitly and its
        scores are recorded too (see record_scores). `record_only` returns None once the layer is
        recorded (the probe's last layer), and skips what only the layer's output needs (v)."""
        B, T, C = x.shape
        H, D = self.n_heads, self.d_head
        q, k = (lin(x).view(B, T, H, D) for lin in (self.wq, self.wk))
        q_pre, k_pre = q, k  # what the probe records as x wq^T, x wk^T
        q, k = self.q_norm(q), self.k_norm(k)  # QK-Norm
        explicit = record is not None and wants_scores(record)
        if record is not None:
            record.append(qk_entry(q, k, q_pre, k_pre))
            if record_only and not explicit:
                return None  # q and k are all the probe wants of this layer
        q_rot, k_rot = (kernels.rope(t, rope).transpose(1, 2) for t in (q, k))  # (B, H, T, D)
        v = None if record_only else self.wv(x).view(B, T, H, D).transpose(1, 2)
        if self.bound == "clip" and self.training:
            self.max_logit.copy_(causal_max_logit(q_rot, k_rot))
        if explicit:
            y = self.record_scores(q_rot, k_rot, v, record, self.cap)
        elif self.cap is not None:
            y = softcapped_attention(q_rot, k_rot, v, self.cap)
        else:
            y = F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True)
        if record_only:
            return None
        return self.wo(y.transpose(1, 2).reshape(B, T, C))

    @staticmethod
    def record_scores(
        q_rot: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor | None, record: list, cap: float | None = None
    ):
        """The probe's explicit attention over rotated q, k (B, H, T, D), record.block sequences at a
        time (see ProbeRecord): each block's masked logits and probabilities (float32) go to the
        record's on_scores with the layer's entry. Returns probs @ v (B, H, T, D), None without v.
        Masked entries hold the dtype's lowest finite value, not -inf, so that p * logit is 0 there
        (see metrics.attention_stats). With a `cap` (softcap) the logits are capped first, so what is
        recorded (max_logit included) is what enters the softmax."""
        B, H, T, D = q_rot.shape
        block = getattr(record, "block", None) or B
        on_scores = getattr(record, "on_scores", None) or keep_scores
        mask = torch.full((T, T), torch.finfo(q_rot.dtype).min, dtype=q_rot.dtype, device=q_rot.device).triu_(1)
        y = None if v is None else v.new_empty((B, H, T, D))
        for start in range(0, B, block):
            q_b, k_b = q_rot[start : start + block], k_rot[start : start + block]
            n = q_b.shape[0]
            if cap is None:
                scores = torch.baddbmm(  # mask + scale * q k^T in one pass
                    mask.expand(n * H, T, T),
                    q_b.reshape(n * H, T, D),
                    k_b.reshape(n * H, T, D).transpose(1, 2),
                    alpha=D**-0.5,
                )
            else:
                raw = torch.bmm(q_b.reshape(n * H, T, D), k_b.reshape(n * H, T, D).transpose(1, 2)) * D**-0.5
                scores = soft_cap(raw, cap) + mask
            logits = scores.view(n, H, T, T).float()
            probs = logits.softmax(dim=-1)
            on_scores(record[-1], logits, probs)
            if y is not None:
                torch.matmul(probs.to(v.dtype), v[start : start + block], out=y[start : start + block])
        return y


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's attention-logit soft-cap: cap * tanh(logits / cap), in (-cap, cap), about the identity
    for |logits| << cap; its gradient is 1 - tanh^2(logits / cap)."""
    return cap * torch.tanh(logits / cap)


def causal_mask(T: int, device: torch.device) -> torch.Tensor:
    """(T, T) True above the diagonal: the future a query may not see."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu_(1)


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float) -> torch.Tensor:
    """softmax(soft_cap(q k^T / sqrt(D)) + causal mask) v for (B, H, T, D) q, k, v, explicitly: SDPA
    takes no function of the logits. The softmax runs in float32, as SDPA's does."""
    logits = soft_cap((q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5, cap)
    logits = logits.masked_fill(causal_mask(q.shape[-2], q.device), float("-inf"))
    return logits.softmax(dim=-1).to(v.dtype) @ v


@torch.no_grad()
def causal_max_logit(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """S_max per head: the largest causal logit q_i . k_j / sqrt(D), j <= i, over the batch and every
    position, of (B, H, T, D) q, k; float32 (H,). QK-Clip's trigger (trainer.qk_clip)."""
    logits = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    logits = logits.masked_fill(causal_mask(q.shape[-2], q.device), float("-inf"))
    return logits.amax(dim=(0, 2, 3))


class MLP(nn.Module):
    def __init__(self, arch: ModelConfig):
        super().__init__()
        self.up = nn.Linear(arch.width, arch.mlp_ratio * arch.width, bias=False)
        self.down = nn.Linear(arch.mlp_ratio * arch.width, arch.width, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, arch: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(arch.width)
        self.attn = Attention(arch)
        self.norm2 = RMSNorm(arch.width)
        self.mlp = MLP(arch)

    def forward(self, x, rope: RopeTables, record: list | None = None):
        x = x + self.attn(self.norm1(x), rope, record)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, arch: ModelConfig):
        super().__init__()
        self.cfg = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.width)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm_f = RMSNorm(arch.width)
        self.head = nn.Linear(arch.width, arch.vocab_size, bias=False)
        tables = kernels.rope_tables(arch.seq_len, arch.d_head, arch.n_heads)
        self.register_buffer("rope_cos", tables.cos, persistent=False)  # (T, C)
        self.register_buffer("rope_sin", tables.sin, persistent=False)  # (T, C)
        self.register_buffer("rope_phases", tables.phases, persistent=False)  # (T, C/2) complex
        if arch.init == "normal":
            self._init_normal(arch.init_std)

    def _init_normal(self, std: float) -> None:
        """GPT-2's scheme: every matrix N(0, std), residual writes shrunk by 1/sqrt(2 depth)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
        for block in self.blocks:
            for proj in (block.attn.wo, block.mlp.down):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.cfg.depth))

    def rope(self) -> RopeTables:
        return RopeTables(self.rope_cos, self.rope_sin, self.rope_phases)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, record: list | None = None):
        """idx (B, T) -> logits (B, T, V), and the mean cross-entropy when targets are given."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.rope(), record)
        logits = self.head(self.norm_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def probe_forward(self, idx: torch.Tensor, record: list, targets: torch.Tensor | None = None):
        """The probe's pass: every layer's q, k (and attention scores, see ProbeRecord) go to `record`.
        With targets it is the full forward and returns the mean cross-entropy; without, it stops once
        the last layer is recorded (what follows feeds only the loss) and returns None."""
        if targets is not None:
            return self(idx, targets, record=record)[1]
        x = self.embed(idx)
        *body, last = self.blocks
        for block in body:
            x = block(x, self.rope(), record)
        last.attn(last.norm1(x), self.rope(), record, record_only=True)
        return None
