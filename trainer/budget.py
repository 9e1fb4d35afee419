"""Will a trial fit the machine it runs on? Checked before anything is written.

A config can be valid and still fail a minute later: `device: cuda` where torch sees no GPU, or a
width that asks for terabytes. `check_device` refuses both up front with a ConfigError (exit 2).
The sweep CLI calls it when trials run on this machine (a private local Ray) and skips it for a
plan (`--dry-run`) or a cluster, whose devices the driver cannot see.

The memory estimate is deliberately rough (a lower bound, within ~2x): fp32 parameters, gradients
and AdamW's two moments (16 bytes per parameter), plus activations kept for backward and the
logits. It exists to catch impossible configs, not to pack GPUs.
"""

from __future__ import annotations

import os

from .architecture import parameter_count
from .config import ConfigError, TrialConfig


def estimate_bytes(cfg: TrialConfig) -> int:
    """Rough memory of one training step: state (16 B/parameter) + activations + logits."""
    tokens = cfg.batch_size * cfg.seq_len
    state = 16 * parameter_count(cfg.architecture())
    activations = 4 * tokens * cfg.depth * cfg.width * (12 + 2 * cfg.mlp_ratio)
    logits = 4 * 3 * tokens * cfg.vocab_size  # logits, their softmax and gradient
    return state + activations + logits


def host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_device(configs: list[TrialConfig]) -> None:
    """ConfigError when a trial asks for CUDA that torch cannot see, or needs more memory than
    the device it would run on has (GPU memory on CUDA, physical memory on CPU)."""
    ram = host_memory()
    torch = None
    for cfg in configs:
        need = estimate_bytes(cfg)
        if cfg.device == "cpu" or (cfg.device == "auto" and ram is not None and need <= ram):
            if ram is not None and need > ram:
                raise ConfigError(
                    f"width={cfg.width}, depth={cfg.depth}, vocab_size={cfg.vocab_size}, "
                    f"batch_size={cfg.batch_size} x seq_len={cfg.seq_len}: a trial needs about "
                    f"{_gib(need)}, more than this machine's {_gib(ram)} of memory"
                )
            continue
        if torch is None:
            import torch
        has_cuda = torch.cuda.is_available()
        if cfg.device == "cuda" and not has_cuda:
            raise ConfigError(
                "device: 'cuda' but torch sees no CUDA device on this machine (got 'cuda'); "
                "use device: cpu or auto, or run on a GPU machine"
            )
        if has_cuda:
            have = torch.cuda.get_device_properties(0).total_memory
            where = f"the GPU's {_gib(have)}"
        else:
            have, where = ram, f"this machine's {_gib(ram or 0)} of memory"
        if have is not None and need > have:
            raise ConfigError(
                f"width={cfg.width}, depth={cfg.depth}, vocab_size={cfg.vocab_size}, "
                f"batch_size={cfg.batch_size} x seq_len={cfg.seq_len}: a trial needs about "
                f"{_gib(need)}, more than {where}"
            )
