"""trainer.architecture: the parameter count is the model's, and the module stays light (no torch, no pydantic)."""

import subprocess
import sys

import pytest
import torch

from trainer.architecture import QK_NORM_KINDS, ModelConfig, hidden_params, parameter_count
from trainer.config import TrialConfig
from trainer.model import GPT
from trainer.schema import QK_NORM_VARIANTS

SHAPES = [
    dict(width=64, d_head=16, depth=2),
    dict(width=96, d_head=32, depth=3, mlp_ratio=2, vocab_size=300),
    dict(width=32, d_head=8, depth=1, mlp_ratio=1, vocab_size=1000),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"w{s['width']}_d{s['depth']}")
@pytest.mark.parametrize("qk_norm", QK_NORM_VARIANTS)
def test_parameter_count_is_the_models(qk_norm, shape):
    arch = TrialConfig(corpus="synthetic", qk_norm=qk_norm, **shape).architecture()
    model = GPT(arch)
    assert parameter_count(arch) == sum(p.numel() for p in model.parameters())
    hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    assert hidden_params(arch) == sum(p.numel() for p in hidden)


def test_trial_config_gives_the_model_fields():
    cfg = TrialConfig(corpus="synthetic", width=96, d_head=32, qk_norm="layer", seq_len=64, init="torch")
    arch = cfg.architecture()
    assert isinstance(arch, ModelConfig) and arch.n_heads == cfg.n_heads == 3
    assert (arch.width, arch.d_head, arch.qk_norm, arch.seq_len, arch.init) == (96, 32, "layer", 64, "torch")
    assert set(QK_NORM_KINDS) == set(QK_NORM_VARIANTS)


def test_model_config_refuses_shapes_the_model_cannot_build():
    base = dict(vocab_size=256, width=64, depth=1, d_head=16, mlp_ratio=4, qk_norm="rms", seq_len=8)
    with pytest.raises(ValueError, match="qk_norm"):
        ModelConfig(**{**base, "qk_norm": "batch"}, init="normal", init_std=0.02)
    with pytest.raises(ValueError, match="d_head"):
        ModelConfig(**{**base, "d_head": 24}, init="normal", init_std=0.02)
    assert torch.is_tensor(GPT(ModelConfig(**base, init="normal", init_std=0.02)).rope_cos)


def test_architecture_imports_neither_torch_nor_pydantic():
    """orchestrator.costs imports it on a laptop to size a GPU grid."""
    code = "import sys, trainer.architecture; print(sorted({'torch', 'pydantic'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
