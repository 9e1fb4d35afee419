"""The results contract between the trainer, the orchestrator and the analysis.

Layout of one sweep (or one standalone trial) under a results folder::

    sweep.json                                  resolved config, versions, git commit, start time
    trials.parquet                              one row per trial, rewritten atomically
    metrics/trial_id=<id>/part-*.parquet        long-format scalar series, appended while training
                                                (one part per folder once the trial has ended)
    spectra/trial_id=<id>/part-*.parquet        singular values of every tensor of TENSORS per layer and head

This module imports nothing heavy (no torch) so that `analysis` can depend on it alone.
"""

from __future__ import annotations

import pyarrow as pa

# ---- names -----------------------------------------------------------------------------------
SWEEP_JSON = "sweep.json"
TRIALS_FILE = "trials.parquet"
ATTEMPTS_FILE = "attempts.parquet"  # one row per attempt of a trial (sweeps and LR studies)
LR_BEST_FILE = "lr_best.parquet"  # an LR study's best LR per arm
METRICS_DIR = "metrics"
SPECTRA_DIR = "spectra"
CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_DIR = "weights"  # weights/<trial_id>.pt: final weights of a completed trial (train.save_final)

STATUSES = ("running", "completed", "diverged", "pruned", "failed")
# the largest peak learning rate a trial takes (trainer.config.TrialConfig.lr); the report refuses a
# trials.parquet row above it (analysis.contract.ROW_RULES)
MAX_LR = 10.0
# A finished trial is never run again (a sweep skips it; the report treats it as final).
FINISHED_STATUSES = ("completed", "diverged")
OPTIMIZERS = ("adamw", "muon")
# QK-Norm variants, in report order: "none" is the baseline every variant is compared with. The last
# two are what practitioners use instead of a norm (trainer.architecture.QK_NORM_KINDS): qk_clip
# rescales W_q, W_k after each optimizer step (Kimi K2's MuonClip), softcap bounds the logits (Gemma 2).
QK_NORM_VARIANTS = ("none", "rms", "rms_frozen", "layer", "qk_clip", "softcap")
# One arm of the grid: trials that differ only in lr and seed.
ARM = ("optimizer", "qk_norm", "width")
# What a probe measures, per layer and head (the `tensor` column of metrics and spectra). The rows of
# wq, wk, and three stages of the activations q, k (every one per head, before RoPE):
#   q_pre, k_pre        x Wq (x Wk) before any normalisation (for qk_norm none the same as q, k)
#   q_sphere, k_sphere  q_pre (k_pre) with every token's vector scaled to unit length, no gain: the
#                       theory's object, the same in every arm (for rms_frozen, q = sqrt(d_head) q_sphere)
#   q, k                as attention uses them before RoPE: after QK-Norm, its gain (and bias) included
TENSORS = ("wq", "wk", "q", "k", "q_pre", "k_pre", "q_sphere", "k_sphere")
WEIGHT_TENSORS = ("wq", "wk")
ACTIVATION_TENSORS = ("q", "k", "q_pre", "k_pre", "q_sphere", "k_sphere")
# The stages of q and k, from x Wq to what attention uses: stage -> (its q tensor, its k tensor).
STAGES = {"pre": ("q_pre", "k_pre"), "sphere": ("q_sphere", "k_sphere"), "as_used": ("q", "k")}
assert WEIGHT_TENSORS + ACTIVATION_TENSORS == TENSORS, "keep TENSORS and its groups in step"
assert sorted(ACTIVATION_TENSORS) == sorted(t for pair in STAGES.values() for t in pair), "keep STAGES in step"

# Scalar series, one value per step (layer, head and tensor are null).
STEP_METRICS = ("train_loss", "lr", "grad_norm", "tokens", "wall_s")
# Evaluated on held-out data (model-level).
EVAL_METRICS = ("val_loss",)
# From each singular spectrum, per layer, head and tensor.
SPECTRUM_METRICS = ("pr", "pr_cov", "erank", "stable_rank")
# Per layer, head and activation tensor (ACTIVATION_TENSORS): axis alignment, centred PR and PR's
# small-sample bias.
AXIS_METRICS = ("axis_share",)
ACTIVATION_METRICS = ("pr_centred", "pr_bias", "pr_centred_bias")
# Per layer and head (tensor null).
ATTENTION_METRICS = ("attn_entropy", "max_logit")
# Per layer, head and pre-norm tensor (STAGES["pre"]): the coefficient of variation (population sd /
# mean) of the per-token norms ||x Wq|| over the probe's tokens.
STAGE_METRICS = ("norm_cv",)
# Per layer and head (tensor null), qk_clip trials only, at each probe after step 0, over the optimizer
# steps since the previous probe: clip_fraction, the share of steps on which the head was clipped;
# clip_gamma_min, the smallest factor gamma = min(1, tau / S_max) applied (1: never clipped).
CLIP_METRICS = ("clip_fraction", "clip_gamma_min")
METRIC_NAMES = (
    STEP_METRICS
    + EVAL_METRICS
    + SPECTRUM_METRICS
    + AXIS_METRICS
    + ACTIVATION_METRICS
    + ATTENTION_METRICS
    + STAGE_METRICS
    + CLIP_METRICS
)

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

# On disk the trial_id column of metrics and spectra parts, and of trials.parquet, is
# dictionary-encoded. In the Parquet file it is the same UTF8 column either way (only the embedded
# Arrow schema differs), but pyarrow, and so pandas, infer the hive folder key `trial_id=<id>` as
# dictionary<int32, string> and refuse to merge it with a plain string column. With both the same
# type, `pd.read_parquet(".../metrics")` and `pyarrow.parquet.read_table(...)` need no options.
# trials.parquet stores it the same way, so that the folders join with it on trial_id as each
# library reads them, without a cast: Polars would refuse to join its Categorical with a String
# (pandas: category with category, Polars: Categorical with Categorical, DuckDB: VARCHAR with
# VARCHAR). METRICS_SCHEMA, SPECTRA_SCHEMA and TRIALS_SCHEMA stay the logical schemas (a string);
# the analysis reads either type (results written before trials.parquet's change hold plain strings).
TRIAL_ID_FILE_TYPE = pa.dictionary(pa.int32(), pa.string())


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a part file is written with: `schema` with trial_id dictionary-encoded."""
    i = schema.get_field_index("trial_id")
    return schema.set(i, schema.field(i).with_type(TRIAL_ID_FILE_TYPE))


METRICS_FILE_SCHEMA = file_schema(METRICS_SCHEMA)
SPECTRA_FILE_SCHEMA = file_schema(SPECTRA_SCHEMA)

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
# trials.parquet as written: trial_id dictionary-encoded like the parts' (TRIAL_ID_FILE_TYPE above).
TRIALS_FILE_SCHEMA = file_schema(TRIALS_SCHEMA)


# One row per attempt of a trial: which node ran it, where it resumed, how it ended.
ATTEMPTS_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("attempt", pa.string()),
        ("tune_trial_id", pa.string()),
        ("node_id", pa.string()),
        ("node_ip", pa.string()),
        ("hostname", pa.string()),
        ("pid", pa.int64()),
        ("resumed_step", pa.int64()),
        ("last_step", pa.int64()),
        ("started_at", pa.string()),
        ("ended_at", pa.string()),
        ("outcome", pa.string()),
        ("error", pa.string()),
        # what decides the attempt's last digits on a CPU (docs/results.md, "Bit for bit"): torch's
        # thread count and CPU kernel level in the process that ran it; null in older files
        ("torch_threads", pa.int64()),
        ("torch_cpu_capability", pa.string()),
    ]
)
# attempts.parquet as written: trial_id dictionary-encoded like trials.parquet's and the parts'
# (TRIAL_ID_FILE_TYPE above), so that it joins with them on trial_id in Polars, pandas and DuckDB
# without a cast. An attempts.parquet written before holds plain strings (the ledger reads either).
ATTEMPTS_FILE_SCHEMA = file_schema(ATTEMPTS_SCHEMA)

# An LR study's result: one row per arm, read back by a sweep's `lr: {from_study: ...}`.
LR_BEST_SCHEMA = pa.schema(
    [
        ("arm", pa.string()),
        ("optimizer", pa.string()),
        ("qk_norm", pa.string()),
        ("width", pa.int64()),
        ("best_lr", pa.float64()),
        ("best_loss", pa.float64()),
        ("n_trials", pa.int64()),
        ("n_complete", pa.int64()),
        ("n_pruned", pa.int64()),
        ("n_diverged", pa.int64()),
        ("n_failed", pa.int64()),
        ("best_trial_id", pa.string()),
        ("study_name", pa.string()),
        ("storage", pa.string()),
    ]
)


def empty_trial_row() -> dict:
    """A trials row with every column present and null, to be filled in."""
    return {name: None for name in TRIALS_SCHEMA.names}
