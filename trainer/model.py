"""A small pre-norm GPT with RoPE, causal SDPA, and per-head QK-Norm.

QK-Norm variants (applied per head to q and k, before RoPE):
  none        plain dot-product attention
  rms         RMSNorm over d_head with a learned gain
  rms_frozen  RMSNorm with the gain fixed at 1 (q, k live on a sphere of radius sqrt(d_head))
  layer       LayerNorm over d_head (centred, learned gain and bias)

The hot path is `F.scaled_dot_product_attention(is_causal=True)`. A probe pass (`record=[]`)
computes attention explicitly and records per layer the post-norm, pre-RoPE q and k and the
attention logits and probabilities; the metrics module turns those into rank statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrialConfig


def make_qk_norm(kind: str, d_head: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "rms":
        return nn.RMSNorm(d_head, elementwise_affine=True)
    if kind == "rms_frozen":
        return nn.RMSNorm(d_head, elementwise_affine=False)
    if kind == "layer":
        return nn.LayerNorm(d_head, elementwise_affine=True)
    raise ValueError(f"qk_norm: unknown variant {kind!r}")


def rope_tables(seq_len: int, d_head: int, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, d_head/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim; x is (B, H, T, D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        # Separate q/k/v/o so Muon orthogonalises each projection on its own and the
        # probe can slice wq, wk per head: head h owns rows [h*d_head, (h+1)*d_head).
        self.wq = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wk = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wv = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wo = nn.Linear(cfg.width, cfg.width, bias=False)
        self.q_norm = make_qk_norm(cfg.qk_norm, cfg.d_head)
        self.k_norm = make_qk_norm(cfg.qk_norm, cfg.d_head)

    def forward(self, x, cos, sin, record: list | None = None):
        B, T, C = x.shape
        split = lambda t: t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, D)
        q = self.q_norm(split(self.wq(x)))
        k = self.k_norm(split(self.wk(x)))
        v = split(self.wv(x))
        q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if record is None:
            y = F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True)
        else:
            logits = (q_rot @ k_rot.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, H, T, T)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            logits = logits.masked_fill(~mask, float("-inf"))
            probs = logits.float().softmax(dim=-1)
            y = probs.to(v.dtype) @ v
            record.append({"q": q.detach(), "k": k.detach(), "logits": logits.detach(), "probs": probs.detach()})
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.up = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.width)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, record=None):
        x = x + self.attn(self.norm1(x), cos, sin, record)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_f = nn.RMSNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.d_head)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2 style: shrink residual writes by depth
            for proj in (block.attn.wo, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, record: list | None = None):
        """idx (B, T) -> logits (B, T, V), and the mean cross-entropy when targets are given."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin, record)
        logits = self.head(self.norm_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
