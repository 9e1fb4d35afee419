"""What one trial costs, by arithmetic on its TrialConfig: parameters, tokens, FLOPs, memory, storage.

No Ray, no torch, no CUDA, so a laptop can size a GPU grid; plan.py prints these figures for
`--dry-run` (its seconds come from measured throughput: calibration.py) and benchmarks/gpu.py
compares `flops_per_token` with measured throughput. Per trial it counts

- parameters: trainer.architecture.parameter_count, exact (the device check uses the same count);
- tokens (steps x batch_size x seq_len) and FLOPs: 6 N + 12 L T d per trained token (N the
  parameters that take part in matrix products, L depth, T seq_len, d width: the PaLM convention
  that MFU is quoted in), plus the forward passes of the probe and val batches at every eval;
  qk_clip adds one causal QK^T per layer to the training forward (its max logit, no backward:
  2 L T d per token at full T x T, the convention above), softcap computes the same FLOPs as
  SDPA (explicitly), muon_per_head the Newton-Schulz of smaller blocks (not counted: optimizer
  FLOPs never are);
- memory on the device: fp32 weights and gradients, optimizer state (AdamW 8 B per parameter; Muon
  4 B per hidden-matrix parameter, AdamW on the rest), activations kept for backward at the batch
  size (bf16 under autocast, fp32 otherwise; SDPA keeps no T x T scores, softcap's explicit
  attention keeps three per layer, qk_clip's max-logit pass makes one at a time), the logits and
  their gradient, and the CUDA context;
- results storage: metrics and spectra Parquet (one part per trial and dataset once the trial has
  ended; row and part sizes measured on sweeps/default.yaml),
  Tune checkpoints (weights + optimizer state; the two latest per running trial, and after the
  trial what `checkpoints.keep` leaves), and final weights when `train.save_final` is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.architecture import QK_NORM_KINDS, hidden_params, parameter_count
from trainer.cadence import eval_steps
from trainer.config import ConfigError, TrialConfig
from trainer.schema import (
    ACTIVATION_METRICS,
    ACTIVATION_TENSORS,
    ATTENTION_METRICS,
    AXIS_METRICS,
    EVAL_METRICS,
    SPECTRUM_METRICS,
    STAGE_METRICS,
    STAGES,
    STEP_METRICS,
    TENSORS,
)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # as sold (GB = 1e9 bytes)
    bf16_tflops: float  # dense peak, no sparsity


GPUS = (
    GPU("H100-80GB", 80, 989),
    GPU("H200-141GB", 141, 989),
    GPU("A100-80GB", 80, 312),
    GPU("A100-40GB", 40, 312),
    GPU("A10G-24GB", 24, 125),
    GPU("L4-24GB", 24, 121),
    GPU("L40S-48GB", 48, 362),
)
DEFAULT_GPU = "H100-80GB"
CUDA_CONTEXT_BYTES = 0.6e9  # per trial process: CUDA context, cuBLAS workspaces, allocator slack
USABLE_MEMORY = 0.92  # share of a GPU's memory trials may plan on (fragmentation, other processes)

# Results storage of a finished trial, measured on sweeps/default.yaml's compacted parts (zstd, floats
# BYTE_STREAM_SPLIT; trainer.sink.WRITE_OPTIONS): a part file costs about 3 kB of footer and page
# headers, a metrics row about 4.5 bytes, a spectra row 2 bytes plus 3 per sigma (float32, compressed).
PART_BYTES, METRIC_ROW_BYTES, SPECTRUM_ROW_OVERHEAD, SIGMA_BYTES = 3000, 4.5, 2, 3
ACTIVATIONS = ACTIVATION_TENSORS  # q, k at every stage
# Metric rows per (eval, layer, head): every spectrum statistic of every tensor, the activation
# statistics of every activation tensor, norm_cv of the pre-norm stage, and the attention statistics
# (trainer.schema's lists).
PER_EVAL_HEAD_METRICS = (
    len(SPECTRUM_METRICS) * len(TENSORS)
    + (len(AXIS_METRICS) + len(ACTIVATION_METRICS)) * len(ACTIVATIONS)
    + len(STAGE_METRICS) * len(STAGES["pre"])
    + len(ATTENTION_METRICS)
)
TUNE_BYTES_PER_TRIAL = 72e3  # result.json, progress.csv, params, events, a share of the experiment state (default.yaml)


def find_gpu(name: str) -> GPU:
    """A GPU of the table by name: 'H100', 'h100-80gb', 'A100-40GB', 'l40s' (case and '-'/' ' ignored)."""
    key = name.upper().replace(" ", "").replace("-", "").replace("_", "")
    exact = [g for g in GPUS if g.name.replace("-", "") == key]
    loose = [g for g in GPUS if g.name.replace("-", "").startswith(key)]
    found = exact or loose
    if len(found) != 1:
        names = ", ".join(g.name for g in GPUS)
        why = "is ambiguous" if found else "is not in the table"
        raise ConfigError(f"--gpu: {name!r} {why}; choose one of {names}")
    return found[0]


# ---- one trial -------------------------------------------------------------------------------
def flops_per_token(cfg: TrialConfig, training: bool = True) -> float:
    """6 N + 12 L T d (training) or 2 N + 4 L T d (a forward pass), N = hidden matrices + head;
    qk_clip's training forward computes QK^T once more (its max logit): + 2 L T d."""
    n = hidden_params(cfg.architecture()) + cfg.vocab_size * cfg.width
    attention = 2 * cfg.depth * cfg.seq_len * cfg.width  # QK^T (or AV), per token, forward: 2 T d per layer
    if not training:
        return 2 * n + 2 * attention
    clip = attention if cfg.qk_norm == "qk_clip" else 0  # one more QK^T, forward only
    return 3 * (2 * n + 2 * attention) + clip


def eval_tokens(cfg: TrialConfig) -> int:
    """Tokens of the forward passes at every eval: the probe batch, plus the val batches when they differ."""
    per_eval = cfg.probe_seqs * cfg.seq_len
    if cfg.probe_seqs != cfg.eval_batches * cfg.batch_size:
        per_eval += cfg.eval_batches * cfg.batch_size * cfg.seq_len
    return len(eval_steps(cfg)) * per_eval


def trial_tokens(cfg: TrialConfig) -> int:
    return cfg.steps * cfg.batch_size * cfg.seq_len


def trial_flops(cfg: TrialConfig) -> float:
    return trial_tokens(cfg) * flops_per_token(cfg) + eval_tokens(cfg) * flops_per_token(cfg, training=False)


def uses_cuda(cfg: TrialConfig) -> bool:
    return cfg.device in ("cuda", "auto")


def activation_dtype_bytes(cfg: TrialConfig) -> int:
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and uses_cuda(cfg))
    return 2 if bf16 else 4


@dataclass(frozen=True)
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def checkpoint(self) -> float:
        """A Tune checkpoint: weights and optimizer state (fp32)."""
        return self.weights + self.optimizer


def memory(cfg: TrialConfig) -> Memory:
    n, hidden = parameter_count(cfg.architecture()), hidden_params(cfg.architecture())
    if cfg.optimizer == "muon":
        optimizer = 4 * hidden + 8 * (n - hidden)
    else:
        optimizer = 8 * n
    a = activation_dtype_bytes(cfg)
    tokens = cfg.batch_size * cfg.seq_len
    w, m = cfg.width, cfg.mlp_ratio
    # Per token and block: two fp32 residual-stream inputs (8w bytes) and, at dtype size, the norm
    # outputs, q, k, v, roped q and k, the attention output and the wo input (9w), up and GELU
    # outputs (2 m w), and the QK-Norm inputs when there is a norm (2w).
    per_block = 8 * w + a * (9 * w + 2 * m * w + (2 * w if QK_NORM_KINDS[cfg.qk_norm].norm else 0))
    logits = tokens * cfg.vocab_size * (a + 4 + 4)  # logits, fp32 softmax for the loss, their gradient
    scores = cfg.batch_size * cfg.n_heads * cfg.seq_len**2  # one layer's T x T attention scores
    if (
        cfg.qk_norm == "softcap"
    ):  # explicit attention keeps, per layer, tanh's and softmax's fp32 outputs and the probabilities
        logits += cfg.depth * scores * (4 + 4 + a)
    elif cfg.qk_norm == "qk_clip":  # the max-logit pass: one layer's fp32 scores at a time, not kept
        logits += scores * 4
    return Memory(
        weights=4 * n, gradients=4 * n, optimizer=optimizer, activations=tokens * cfg.depth * per_block + logits
    )


def storage_bytes(cfg: TrialConfig) -> tuple[float, float]:
    """(metrics, spectra) bytes of one finished trial's Parquet: one part each (trainer.sink.compact)."""
    evals = len(eval_steps(cfg))
    heads = cfg.depth * cfg.n_heads
    per_eval = len(EVAL_METRICS) + heads * PER_EVAL_HEAD_METRICS
    metric_rows = math.ceil(cfg.steps / cfg.log_every) * len(STEP_METRICS) + evals * per_eval
    spectra_rows = evals * heads * len(TENSORS)
    return (
        PART_BYTES + metric_rows * METRIC_ROW_BYTES,
        PART_BYTES + spectra_rows * (SPECTRUM_ROW_OVERHEAD + SIGMA_BYTES * cfg.d_head),
    )


def fit_per_gpu(need: float, gpu: GPU) -> int:
    """Trials of this size that fit in one GPU's memory at once."""
    return int(gpu.memory_gb * 1e9 * USABLE_MEMORY // (need + CUDA_CONTEXT_BYTES))


# ---- by width ------------------------------------------------------------------------------
@dataclass
class WidthRow:
    width: int
    trials: int
    params: int
    tokens: int
    flops: float  # per trial
    memory: Memory  # per trial (the largest of the width: AdamW, a QK-Norm variant)
    gpus_per_trial: float
    cpus_per_trial: float


def width_rows(configs: list[TrialConfig], resources) -> list[WidthRow]:
    rows: dict[int, WidthRow] = {}
    for cfg in configs:
        mem = memory(cfg)
        row = rows.get(cfg.width)
        if row is None:
            cpus, gpus = (
                resources.for_width(cfg.width)
                if hasattr(resources, "for_width")
                else (resources.cpus_per_trial, resources.gpus_per_trial)
            )
            rows[cfg.width] = WidthRow(
                cfg.width, 1, parameter_count(cfg.architecture()), trial_tokens(cfg), trial_flops(cfg), mem, gpus, cpus
            )
            continue
        row.trials += 1
        row.params = max(row.params, parameter_count(cfg.architecture()))
        row.flops = max(row.flops, trial_flops(cfg))
        row.tokens = max(row.tokens, trial_tokens(cfg))
        if mem.total > row.memory.total:
            row.memory = mem
    return [rows[w] for w in sorted(rows)]
