"""The model's shape: the fields trainer.model.GPT is built from, and the parameter count they imply.

Neither torch nor pydantic: orchestrator.costs sizes a GPU grid from these on a laptop.
`TrialConfig.architecture()` gives the ModelConfig of a trial.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import QK_NORM_VARIANTS


@dataclass(frozen=True)
class QKNormKind:
    """A QK-Norm variant: which normalisation over d_head (None: no norm), its learned vectors, and
    what bounds the attention logits instead of a norm (None: nothing):
      "clip"     QK-Clip: after each optimizer step, the W_q and W_k rows of every head whose largest
                 logit S_max exceeded tau are scaled by sqrt(min(1, tau / S_max)) (trainer.qk_clip);
                 the forward pass is plain attention
      "softcap"  logits -> cap * tanh(logits / cap) before the softmax (trainer.model.Attention)"""

    norm: str | None  # "rms" or "layer"
    gain: bool
    bias: bool
    logits: str | None = None  # "clip" or "softcap"


# One entry per variant of trainer.schema.QK_NORM_VARIANTS (checked below): trainer.model builds
# q_norm and k_norm from it, parameter_count counts their gains and biases.
QK_NORM_KINDS = {
    "none": QKNormKind(norm=None, gain=False, bias=False),
    "rms": QKNormKind(norm="rms", gain=True, bias=False),
    "rms_frozen": QKNormKind(norm="rms", gain=False, bias=False),  # q, k on a sphere of radius sqrt(d_head)
    "layer": QKNormKind(norm="layer", gain=True, bias=True),
    "qk_clip": QKNormKind(norm=None, gain=False, bias=False, logits="clip"),  # Kimi K2's MuonClip
    "softcap": QKNormKind(norm=None, gain=False, bias=False, logits="softcap"),  # Gemma 2's logit cap
}
assert tuple(QK_NORM_KINDS) == QK_NORM_VARIANTS, "keep in step with trainer.schema.QK_NORM_VARIANTS"


@dataclass(frozen=True)
class ModelConfig:
    """What GPT needs: vocabulary, shapes, QK-Norm variant, context length (RoPE's tables) and init."""

    vocab_size: int
    width: int  # d_model
    depth: int  # blocks
    d_head: int
    mlp_ratio: int  # MLP hidden size / width
    qk_norm: str  # a key of QK_NORM_KINDS
    seq_len: int
    init: str  # "normal" (GPT-2's) or "torch" (PyTorch's defaults)
    init_std: float
    logit_softcap: float = 50.0  # the cap of the softcap variant (ignored by the others)

    def __post_init__(self):
        if self.qk_norm not in QK_NORM_KINDS:
            raise ValueError(f"qk_norm: unknown variant {self.qk_norm!r}")
        if self.width % self.d_head or self.d_head % 2:
            raise ValueError(f"d_head={self.d_head} must be even and divide width={self.width}")

    @property
    def n_heads(self) -> int:
        return self.width // self.d_head


def qk_norm_params(arch: ModelConfig) -> int:
    """QK-Norm parameters of one block: for q and for k, a gain and/or a bias over d_head."""
    kind = QK_NORM_KINDS[arch.qk_norm]
    return 2 * arch.d_head * (kind.gain + kind.bias)


def hidden_params(arch: ModelConfig) -> int:
    """The 2-D hidden matrices, Muon's parameters: q, k, v, o (4 w^2) and the MLP (2 mlp_ratio w^2) per block."""
    return arch.depth * (4 + 2 * arch.mlp_ratio) * arch.width**2


def parameter_count(arch: ModelConfig) -> int:
    """Every parameter of GPT: embedding and head (vocab x w each), the hidden matrices, per block the
    gains of norm1 and norm2 (2 w) and QK-Norm's, and the final norm's gain (w)."""
    w = arch.width
    return 2 * arch.vocab_size * w + hidden_params(arch) + arch.depth * (2 * w + qk_norm_params(arch)) + w
