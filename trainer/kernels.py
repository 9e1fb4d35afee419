"""The model's elementwise kernels behind one call each: `rms_norm(x, weight, eps)` and `rope(x, tables)`.

Each picks its path from the tensor it is given, so trainer.model has no device or dtype branch:
a fast path for fp32 on the CPU outside torch.compile, and the generic one everywhere else (CUDA,
autocast's bf16, inductor, which fuse better than anything hand-written here; complex tensors have
no bf16). Both compute the same function; tests/trainer/test_model_speed.py checks each against its
plain formula. `FAST` turns a fast path off: `python -m benchmarks.trainer --only kernels` measures
each one on vs off (the figures below: CPU time of a train step at batch 16 x 128, depth 2,
d_head 32; 2026-12-06, 2-core CPU, 1 thread, torch 2.13), and `generic()` turns them all off to test
the generic paths on the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F

FAST = {"rms_norm": True, "rope": True}


def fast(name: str, x: torch.Tensor) -> bool:
    """Whether x takes kernel `name`'s fast path: fp32 on the CPU, eager, and the path switched on."""
    return FAST[name] and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()


@contextmanager
def generic(*names: str):
    """Within the block, the named kernels (all when none is named) take their generic paths."""
    saved = dict(FAST)
    FAST.update(dict.fromkeys(names or FAST, False))
    try:
        yield
    finally:
        FAST.update(saved)


# ---- RMSNorm ---------------------------------------------------------------------------------
class _RMSNormCPU(torch.autograd.Function):
    """y = xhat * w with xhat = x * rstd, rstd = (mean(x^2) + eps)^-1/2, and a backward on LayerNorm's
    fused CPU kernel: torch has no fused RMSNorm backward on the CPU, and autograd's backward of
    F.rms_norm's decomposition makes about ten passes over x. Given a mean of 0 (so its xhat is
    ours), native_layer_norm_backward returns rstd * (g w - mean(g w) - xhat mean(g w xhat));
    RMSNorm's gradient lacks the mean(g w) term (nothing was centred), so it is added back. dw is
    LayerNorm's: the sum over rows of g * xhat.
    Saves 7-15% of a CPU train step at width 128 and 8-11% at 256 (qk_norm none: the block norms);
    21-23% and 14-16% with qk_norm rms (QK-Norm too)."""

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


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.rms_norm over the last dim of x, with the gain `weight` (None: no gain)."""
    if fast("rms_norm", x):
        return _RMSNormCPU.apply(x, weight, eps)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


# ---- RoPE ------------------------------------------------------------------------------------
class RopeTables(NamedTuple):
    """RoPE's tables over whole rows of n_heads * d_head values, so that every pass runs over a token's
    C contiguous values (not d_head/2): per head, `cos` holds (c_0, c_0, c_1, c_1, ...) and `sin`
    (-s_0, s_0, -s_1, s_1, ...), each (T, n_heads * d_head); `phases` holds c_i + i s_i,
    (T, n_heads * d_head / 2) complex64."""

    cos: torch.Tensor
    sin: torch.Tensor
    phases: torch.Tensor


def rope_tables(seq_len: int, d_head: int, n_heads: int, base: float = 10_000.0) -> RopeTables:
    """Pair i of each head, at position t, turns by t * base^(-2i/d_head)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    return RopeTables(
        cos=cos.repeat_interleave(2, -1).repeat(1, n_heads),
        sin=torch.stack((-sin, sin), -1).flatten(1).repeat(1, n_heads),
        phases=torch.complex(cos, sin).repeat(1, n_heads),
    )


def _swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x_0, x_1, x_2, x_3, ...) -> (x_1, x_0, x_3, x_2, ...) along the last dim of (B, T, H, D), into
    a new contiguous (B, T, H*D) tensor."""
    return torch.stack((x[..., 1::2], x[..., 0::2]), -1).flatten(2)


class _Rope(torch.autograd.Function):
    """y = x * cos + swap(x) * sin = (x_2i c_i - x_2i+1 s_i, x_2i+1 c_i + x_2i s_i): each adjacent pair
    turned by its angle, in three passes (swap, multiply, multiply-add). The gradient of a rotation is
    the rotation by minus the angle: dx = g * cos + swap(g * sin)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        B, T, H, D = x.shape
        return _swap_pairs(x).mul_(sin).addcmul_(x.flatten(2), cos).view(B, T, H, D)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        B, T, H, D = grad.shape
        g = grad.reshape(B, T, H * D)
        return _swap_pairs((g * sin).view(B, T, H, D)).addcmul_(g, cos).view(B, T, H, D), None, None


def rotate_complex(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """RoPE as one complex multiply: each adjacent pair read as x_2i + i x_2i+1, times c_i + i s_i.
    One pass each way (autograd's backward multiplies by the conjugate), where `_Rope` takes three.
    x (B, T, H, D) with its (H, D) block contiguous; phases (T, H*D/2).
    Saves 2-3% of a CPU train step at width 128 with qk_norm rms (0-3% with none), 1-4% at 256."""
    B, T, H, D = x.shape
    z = torch.view_as_complex(x.flatten(2).unflatten(-1, (H * D // 2, 2)))
    return torch.view_as_real(z * phases).view(B, T, H, D)


def rope(x: torch.Tensor, tables: RopeTables) -> torch.Tensor:
    """x (B, T, H, D), any strides whose (H, D) block is contiguous, rotated pairwise (see RopeTables);
    the tables need at least T rows and H*D (phases H*D/2) columns."""
    B, T, H, D = x.shape
    if fast("rope", x):
        return rotate_complex(x, tables.phases[:T, : H * D // 2])
    cos, sin = (t[:T, : H * D].to(x.dtype) for t in (tables.cos, tables.sin))  # bf16 under autocast
    return _Rope.apply(x, cos, sin)
