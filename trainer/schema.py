"""The results contract between the trainer, the orchestrator and the analysis.

Layout of one sweep (or one standalone trial) under a results folder::

    sweep.json                                  resolved config, versions, git commit, start time
    trials.parquet                              one row per trial, rewritten atomically
    metrics/trial_id=<id>/part-*.parquet        long-format scalar series, appended while training
    spectra/trial_id=<id>/part-*.parquet        singular values of wq, wk, q, k per layer and head

This module imports nothing heavy (no torch) so that `analysis` can depend on it alone.
"""

from __future__ import annotations

import pyarrow as pa

# ---- names -----------------------------------------------------------------------------------
SWEEP_JSON = "sweep.json"
TRIALS_FILE = "trials.parquet"
METRICS_DIR = "metrics"
SPECTRA_DIR = "spectra"
CHECKPOINTS_DIR = "checkpoints"

STATUSES = ("running", "completed", "diverged", "pruned", "failed")
# A finished trial is never run again (a sweep skips it; the report treats it as final).
FINISHED_STATUSES = ("completed", "diverged")
OPTIMIZERS = ("adamw", "muon")
# QK-Norm variants, in report order: "none" is the baseline every variant is compared with.
QK_NORM_VARIANTS = ("none", "rms", "rms_frozen", "layer")
# One arm of the grid: trials that differ only in lr and seed.
ARM = ("optimizer", "qk_norm", "width")
TENSORS = ("wq", "wk", "q", "k")

# Scalar series, one value per step (layer, head and tensor are null).
STEP_METRICS = ("train_loss", "lr", "grad_norm", "tokens", "wall_s")
# Evaluated on held-out data (model-level).
EVAL_METRICS = ("val_loss",)
# From each singular spectrum, per layer, head and tensor.
SPECTRUM_METRICS = ("pr", "pr_cov", "erank", "stable_rank")
# Per layer, head and activation tensor (q or k).
AXIS_METRICS = ("axis_share",)
# Per layer and head (tensor null).
ATTENTION_METRICS = ("attn_entropy", "max_logit")
METRIC_NAMES = STEP_METRICS + EVAL_METRICS + SPECTRUM_METRICS + AXIS_METRICS + ATTENTION_METRICS

# Rows are unique on this key; readers and the sink both rely on it.
METRICS_KEY = ("trial_id", "step", "name", "layer", "head", "tensor")
SPECTRA_KEY = ("trial_id", "step", "layer", "head", "tensor")

# ---- schemas ---------------------------------------------------------------------------------
METRICS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("layer", pa.int16()),
        pa.field("head", pa.int16()),
        pa.field("tensor", pa.string()),
        pa.field("value", pa.float64()),
    ]
)

SPECTRA_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("head", pa.int16(), nullable=False),
        pa.field("tensor", pa.string(), nullable=False),
        pa.field("sigma", pa.list_(pa.float32()), nullable=False),  # descending
    ]
)

TRIALS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("optimizer", pa.string()),
        pa.field("qk_norm", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("depth", pa.int64()),
        pa.field("n_heads", pa.int64()),
        pa.field("d_head", pa.int64()),
        pa.field("lr", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("steps_planned", pa.int64()),
        pa.field("steps_done", pa.int64()),
        pa.field("tokens", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("final_train_loss", pa.float64()),
        pa.field("final_val_loss", pa.float64()),
        pa.field("wall_s", pa.float64()),
        pa.field("corpus_hash", pa.string()),
        pa.field("config_json", pa.string()),
        # Added beyond DESIGN.md (allowed: add freely, rename nothing).
        pa.field("diverged_step", pa.int64()),
        pa.field("error", pa.string()),
    ]
)


def empty_trial_row() -> dict:
    """A trials row with every column present and null, to be filled in."""
    return {name: None for name in TRIALS_SCHEMA.names}
