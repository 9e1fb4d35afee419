"""A small pre-norm GPT with RoPE, causal SDPA, and per-head QK-Norm.

QK-Norm variants (applied per head to q and k, before RoPE):
  none        plain dot-product attention
  rms         RMSNorm over d_head with a learned gain
  rms_frozen  RMSNorm with the gain fixed at 1 (q, k live on a sphere of radius sqrt(d_head))
  layer       LayerNorm over d_head (centred, learned gain and bias)

The hot path is `F.scaled_dot_product_attention(is_causal=True)`. A probe pass (`record=[]`)
computes attention explicitly and records per layer the post-norm, pre-RoPE q and k and the
attention logits and probabilities; the metrics module turns those into rank statistics. Without
targets (`GPT.probe_forward`) it stops once the last layer is recorded: what follows feeds only the
loss. A ProbeRecord(scores=False) keeps q and k only and leaves attention on SDPA.

Speed without changing the math (tests/trainer/test_model_speed.py checks logits and every gradient against a
plain transcription): q, k, v run as one matmul against their concatenated weights (they stay three
Parameters, so Muon orthogonalises each and the probe slices wq/wk per head); on the CPU in fp32 RoPE
is one complex multiply per tensor, with q's and k's rows taken in pair order inside the forward (a
permutation: parameters and checkpoints keep one layout), elsewhere one fused rotation over whole rows;
RMSNorm has a CPU backward on LayerNorm's fused kernel, and the gains of the block norms are folded
into the weight of the Linear that reads them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrialConfig
from .schema import QK_NORM_VARIANTS


def eager_cpu_fp32(x: torch.Tensor) -> bool:
    """Whether x takes the hand-written CPU paths (RMSNorm, RoPE in pair order): fp32 on the CPU
    outside torch.compile. Elsewhere fused kernels (CUDA) or inductor do better, and bf16 has no
    complex type."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()


class _RMSNormCPU(torch.autograd.Function):
    """RMSNorm with a hand-written backward: torch has no fused RMSNorm kernel for the CPU, and
    autograd's backward of F.rms_norm's decomposition makes about ten passes over x. y = xhat * w with
    xhat = x * rstd, rstd = (mean(x^2) + eps)^-1/2. The backward borrows LayerNorm's fused CPU kernel
    given a mean of 0 (so its xhat is ours): that kernel returns
        rstd * (g w - mean(g w) - xhat mean(g w xhat)),
    RMSNorm's gradient lacks the mean(g w) term (nothing was centred), so it is added back; dw is
    LayerNorm's, sum over rows of g * xhat. 2-3x faster than the same formula in separate passes."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, rstd, weight)
        y = x * rstd
        return y if weight is None else y.mul_(weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        C = x.shape[-1]
        dx, dw, _ = torch.ops.aten.native_layer_norm_backward(
            grad, x, [C], torch.zeros_like(rstd), rstd, weight, None, [True, weight is not None, False]
        )
        gw_sum = grad.sum(-1, keepdim=True) if weight is None else (grad @ weight).unsqueeze(-1)  # sum of g w per row
        return dx.add_(gw_sum.mul_(rstd).div_(C)), dw, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameter, same eps default, same math) with a faster fp32 CPU path.

    `normalize` is the norm without its gain: a block whose norm feeds a single Linear multiplies
    the gain into that Linear's weight instead, (xhat * g) W^T = xhat (W diag g)^T, a C x C' product
    per step in place of two passes over the B x T x C activations (forward and backward).
    """

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        if not eager_cpu_fp32(x):
            return F.rms_norm(x, self.normalized_shape, None, eps)  # fused kernels on CUDA / by inductor
        return _RMSNormCPU.apply(x, None, eps)

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight of the Linear that reads this norm's output, with the gain multiplied in."""
        return weight if self.weight is None else weight * self.weight

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """With `gain`, that gain in place of the weight (QK-Norm in pair order: the weight permuted)."""
        gain = self.weight if gain is None else gain
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        if not eager_cpu_fp32(x):
            return F.rms_norm(x, self.normalized_shape, gain, eps)
        return _RMSNormCPU.apply(x, gain, eps)


# One constructor per variant of trainer.schema.QK_NORM_VARIANTS (checked below, so a new variant
# cannot be added to the vocabulary without a module here).
QK_NORMS = {
    "none": lambda d_head: nn.Identity(),
    "rms": lambda d_head: RMSNorm(d_head, elementwise_affine=True),
    "rms_frozen": lambda d_head: RMSNorm(d_head, elementwise_affine=False),
    "layer": lambda d_head: nn.LayerNorm(d_head, elementwise_affine=True),
}
assert tuple(QK_NORMS) == QK_NORM_VARIANTS, "keep in step with trainer.schema.QK_NORM_VARIANTS"


def make_qk_norm(kind: str, d_head: int) -> nn.Module:
    if kind not in QK_NORMS:
        raise ValueError(f"qk_norm: unknown variant {kind!r}")
    return QK_NORMS[kind](d_head)


def rope_tables(seq_len: int, d_head: int, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, d_head/2): pair i of position t turns by t * base^(-2i/d_head)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def rope_rotation(seq_len: int, d_head: int, n_heads: int, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables in the form `apply_rope` uses, (T, n_heads * d_head) each: per head, cos twice and
    (-sin, sin). Laid out over whole rows so that the elementwise passes run over C contiguous values
    per token rather than d_head/2."""
    cos, sin = rope_tables(seq_len, d_head, base)
    return torch.cat((cos, cos), -1).repeat(1, n_heads), torch.cat((-sin, sin), -1).repeat(1, n_heads)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (x2, x1) along the last dim (B, T, H, D), into a new contiguous (B, T, H*D) tensor."""
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), -1).flatten(2)


class _Rope(torch.autograd.Function):
    """y = x * cos + swap(x) * sin_signed = (x1 cos - x2 sin, x2 cos + x1 sin) per head: each pair
    (x1_i, x2_i) turned by its angle. The gradient of a rotation is the rotation by minus the angle:
    dx = g * cos + swap(g * sin_signed). Three passes each way; the sliced form took seven forward."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        B, T, H, D = x.shape
        return _swap_halves(x).mul_(sin).addcmul_(x.flatten(2), cos).view(B, T, H, D)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        B, T, H, D = grad.shape
        g = grad.reshape(B, T, H * D)
        return _swap_halves((g * sin).view(B, T, H, D)).addcmul_(g, cos).view(B, T, H, D), None, None


def pair_order(d_head: int) -> torch.Tensor:
    """The interleaved order of a head's dims, (0, D/2, 1, D/2 + 1, ...): each rotated pair
    (i, i + D/2) side by side, so that a pair is one complex number (see `rotate_pairs`)."""
    return torch.arange(d_head).view(2, d_head // 2).t().reshape(-1)


def rope_phases(seq_len: int, d_head: int, n_heads: int, base: float = 10_000.0) -> torch.Tensor:
    """cos + i sin of every pair's angle, (T, n_heads * d_head / 2) complex64: `rotate_pairs`' table."""
    cos, sin = rope_tables(seq_len, d_head, base)
    return torch.complex(cos, sin).repeat(1, n_heads)


def rotate_pairs(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """RoPE for x (B, T, G, D) whose heads are in `pair_order`: each adjacent pair (x_2j, x_2j+1),
    read as the complex number x_2j + i x_2j+1, times e^(i angle). The same rotation as apply_rope
    (x1 cos - x2 sin, x2 cos + x1 sin) in one pass each way, where the half-split layout takes three
    plus a copy. x's (G, D) block must be contiguous; phases from `rope_phases` with at least T rows
    and G*D/2 columns. Complex tensors have no bf16, so this is the fp32 path (see Attention.pairs)."""
    B, T, G, D = x.shape
    z = torch.view_as_complex(x.flatten(2).unflatten(-1, (G * D // 2, 2)))
    return torch.view_as_real(z * phases[:T, : G * D // 2]).view(B, T, G, D)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's last dim. x is (B, T, H, D), any strides
    whose (H, D) block is contiguous; cos, sin from `rope_rotation` with at least T rows and H*D columns.
    The tables follow x's dtype (bf16 under autocast; a no-op in fp32)."""
    B, T, H, D = x.shape
    cos, sin = (t[:T, : H * D].to(x.dtype) for t in (cos, sin))
    return _Rope.apply(x, cos, sin)


class RopeTables(NamedTuple):
    """RoPE's tables in both forms: cos, sin for `apply_rope`, phases for `rotate_pairs`."""

    cos: torch.Tensor
    sin: torch.Tensor
    phases: torch.Tensor


class Attention(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        # Separate q/k/v/o parameters so Muon orthogonalises each projection on its own and the
        # probe can slice wq, wk per head (head h owns rows [h*d_head, (h+1)*d_head)); the forward
        # still runs q, k, v as ONE matmul against their concatenation (a 3C x C copy per step, far
        # cheaper than three passes over the activations).
        self.wq = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wk = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wv = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wo = nn.Linear(cfg.width, cfg.width, bias=False)
        self.q_norm = make_qk_norm(cfg.qk_norm, cfg.d_head)
        self.k_norm = make_qk_norm(cfg.qk_norm, cfg.d_head)
        self.plain_qk = cfg.qk_norm == "none"
        # For `rotate_pairs`: the rows of the concatenated (wq, wk, wv) with each q and k head's rows
        # in pair order (v's as they are).
        order = pair_order(cfg.d_head)
        heads = torch.arange(2 * cfg.n_heads)[:, None] * cfg.d_head
        rows = torch.cat(((heads + order).flatten(), torch.arange(2 * cfg.width, 3 * cfg.width)))
        self.register_buffer("pair_order", order, persistent=False)
        self.register_buffer("pair_rows", rows, persistent=False)

    @staticmethod
    def pairs(x: torch.Tensor) -> bool:
        """Whether RoPE runs as `rotate_pairs` (fp32 on the CPU, eager) or as `apply_rope` (under
        autocast, on a GPU, inside torch.compile). The two compute the same function: pair order is
        a fixed permutation of wq's and wk's rows (and of the QK-Norm gains), applied inside the
        forward, so the parameters, their gradients and checkpoints keep one layout."""
        return eager_cpu_fp32(x) and not torch.is_autocast_enabled("cpu")  # x is fp32, q and k would not be

    def qk_norms(self, q, k, order: torch.Tensor | None):
        """QK-Norm of q and k (B, T, H, D); with `order`, their dims are in that order and so are the
        norms' gain and bias."""
        if order is None or self.plain_qk or self.q_norm.weight is None:
            return self.q_norm(q), self.k_norm(k)
        if isinstance(self.q_norm, nn.LayerNorm):
            return tuple(
                F.layer_norm(t, norm.normalized_shape, norm.weight[order], norm.bias[order], norm.eps)
                for t, norm in ((q, self.q_norm), (k, self.k_norm))
            )
        return tuple(norm.forward(t, gain=norm.weight[order]) for t, norm in ((q, self.q_norm), (k, self.k_norm)))

    def project(self, x, rope: RopeTables, norm: RMSNorm | None = None):
        """x (B, T, C) -> pre-RoPE q, k (B, T, H, D) for the probe, and rotated q, k and v (B, H, T, D);
        with `norm`, x is its normalised input without the gain, which is folded into wq/wk/wv.
        On the pair-order path each head's dims of q and k are in `pair_order`: a fixed permutation
        that every probe statistic ignores (spectra, Gram eigenvalues, axis share), so it is left."""
        B, T, C = x.shape
        H = self.n_heads
        pairs = self.pairs(x)
        w_qkv = torch.cat((self.wq.weight, self.wk.weight, self.wv.weight))  # (3C, C)
        if pairs:
            w_qkv = w_qkv.index_select(0, self.pair_rows)
        if norm is not None:
            w_qkv = norm.fold(w_qkv)
        qkv = F.linear(x, w_qkv).view(B, T, 3, H, self.d_head)

        def rotate(t):
            return rotate_pairs(t, rope.phases) if pairs else apply_rope(t, rope.cos, rope.sin)

        if self.plain_qk and not pairs:  # no QK-Norm: rotate q and k in one go, (B, T, 2H, D)
            qk, v = qkv.split((2, 1), dim=2)
            q, k = qk.unbind(2)  # pre-RoPE, for the probe
            q_rot, k_rot = rotate(qk.flatten(2, 3)).split(H, dim=2)
            v = v.squeeze(2)
        else:  # rotate_pairs runs one pass per tensor: q and k apart spare the backward a copy of both
            q, k, v = qkv.unbind(2)  # (B, T, H, D) views
            q, k = self.qk_norms(q, k, self.pair_order if pairs else None)
            q_rot, k_rot = rotate(q), rotate(k)
        q_rot, k_rot, v = (t.transpose(1, 2) for t in (q_rot, k_rot, v))  # (B, H, T, D)
        return q, k, q_rot, k_rot, v

    def record_scores(self, q, k, q_rot, k_rot, record: list) -> torch.Tensor:
        """The probe's explicit attention: appends q, k (B, H, T, D), the masked logits and the
        probabilities (B, H, T, T, float32) to `record`; returns the probabilities. Masked entries hold
        the dtype's lowest finite value, not -inf, so that p * logit is 0 there (see metrics.attention_entropy)."""
        B, H, T, D = q_rot.shape
        mask = torch.full((T, T), torch.finfo(q_rot.dtype).min, dtype=q_rot.dtype, device=q_rot.device).triu_(1)
        scores = torch.baddbmm(  # mask + scale * q k^T in one pass
            mask.expand(B * H, T, T),
            q_rot.reshape(B * H, T, D),
            k_rot.reshape(B * H, T, D).transpose(1, 2),
            alpha=D**-0.5,
        )
        logits = scores.view(B, H, T, T).float()
        probs = logits.softmax(dim=-1)
        record.append({**qk_entry(q, k), "logits": logits, "probs": probs})
        return probs

    def forward(self, x, rope: RopeTables, record: list | None = None, norm: RMSNorm | None = None):
        """x (B, T, C); with `record`, q and k are recorded, and unless it is a ProbeRecord with
        scores=False attention runs explicitly and its scores are recorded too (see record_scores)."""
        B, T, C = x.shape
        q, k, q_rot, k_rot, v = self.project(x, rope, norm)
        if record is not None and wants_scores(record):
            y = self.record_scores(q, k, q_rot, k_rot, record).to(v.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True)
            if record is not None:
                record.append(qk_entry(q, k))
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class ProbeRecord(list):
    """What a probe pass records, one dict per layer. scores=False keeps q and k only (attention then
    runs through SDPA): the early log-spaced probes measure PR alone. A plain list records everything."""

    def __init__(self, scores: bool = True):
        super().__init__()
        self.scores = scores


def wants_scores(record: list) -> bool:
    return getattr(record, "scores", True)


def qk_entry(q: torch.Tensor, k: torch.Tensor) -> dict:
    """A layer's pre-RoPE q and k (B, T, H, D) as recorded: (B, H, T, D) views, each head's dims in
    the order the forward computed them (pair order on the CPU fp32 path, see Attention.project)."""
    return {"q": q.detach().transpose(1, 2), "k": k.detach().transpose(1, 2)}


class MLP(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.up = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width, bias=False)

    def forward(self, x, norm: RMSNorm | None = None):
        """With `norm`, x is its normalised input without the gain, which is folded into `up`."""
        w_up = self.up.weight if norm is None else norm.fold(self.up.weight)
        return self.down(F.gelu(F.linear(x, w_up)))


class Block(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.width)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x, rope: RopeTables, record=None):
        # norm1's and norm2's gains are folded into the next Linear (see RMSNorm.normalize)
        x = x + self.attn(self.norm1.normalize(x), rope, record, norm=self.norm1)
        return x + self.mlp(self.norm2.normalize(x), norm=self.norm2)


class GPT(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_f = RMSNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        # RoPE's tables, wide enough for q and k at once: (T, 2C) for apply_rope, (T, C) for rotate_pairs
        cos, sin = rope_rotation(cfg.seq_len, cfg.d_head, 2 * cfg.n_heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_phases", rope_phases(cfg.seq_len, cfg.d_head, 2 * cfg.n_heads), persistent=False)
        if cfg.init == "normal":
            self._init_normal(cfg.init_std)

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
        logits = F.linear(self.norm_f.normalize(x), self.norm_f.fold(self.head.weight))  # = head(norm_f(x))
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
        q, k, q_rot, k_rot, _ = last.attn.project(last.norm1.normalize(x), self.rope(), last.norm1)
        if wants_scores(record):
            last.attn.record_scores(q, k, q_rot, k_rot, record)
        else:
            record.append(qk_entry(q, k))
        return None
