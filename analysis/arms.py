"""What an arm is called in the analysis: the optimizer label and the variants' names in words.

Muon with per-head orthogonalisation (`muon_per_head: true` in a trial's config_json, under
`optimizer: muon`) is its own optimizer arm, labelled "muon_per_head". The label is set once, when
the trials are read (`analysis.loading.load_results` calls `label_optimizers`), so every table,
figure, pairing, interaction and claim sees it: a per-head trial is never paired or pooled with
plain Muon, and the difference in differences compares it with AdamW as it does plain Muon.
trials.parquet itself keeps `optimizer` = "muon" for both.

Imports nothing from the analysis (analysis.loading imports it).
"""

from __future__ import annotations

import polars as pl

MUON_PER_HEAD = "muon_per_head"  # the optimizer label of Muon with per-head Newton-Schulz
# The variants practitioners use instead of a norm (trainer.schema.QK_NORM_VARIANTS): QK-Clip rescales
# W_q, W_k after each step (Kimi K2), the soft-cap bounds the logits (Gemma 2).
ALTERNATIVES = ("qk_clip", "softcap")
# Each variant in words, for the answers ("QK-Clip (qk_clip) lowers the loss under adamw").
VARIANT_NAMES = {
    "rms": "QK-Norm",
    "rms_frozen": "QK-Norm",
    "layer": "QK-Norm",
    "qk_clip": "QK-Clip",
    "softcap": "the logit soft-cap",
}


def variant_name(variant: str | None) -> str:
    """'QK-Norm', 'QK-Clip', 'the logit soft-cap' (a variant not listed: 'QK-Norm')."""
    return VARIANT_NAMES.get(variant or "", "QK-Norm")


def per_head_expr() -> pl.Expr:
    """True for a Muon trial whose config_json has `muon_per_head` true (null config: false)."""
    flag = pl.col("config_json").str.json_path_match("$.muon_per_head").str.to_lowercase() == "true"
    return ((pl.col("optimizer") == "muon") & flag).fill_null(False)


def label_optimizers(trials: pl.DataFrame) -> pl.DataFrame:
    """`trials` with `optimizer` = "muon_per_head" for per-head Muon trials and a boolean column
    `muon_per_head` (false for every other trial, and for all of them without config_json)."""
    if "config_json" not in trials.columns:
        return trials.with_columns(pl.lit(False).alias(MUON_PER_HEAD))
    per_head = per_head_expr()
    return trials.with_columns(
        pl.when(per_head).then(pl.lit(MUON_PER_HEAD)).otherwise(pl.col("optimizer")).alias("optimizer"),
        per_head.alias(MUON_PER_HEAD),
    )
