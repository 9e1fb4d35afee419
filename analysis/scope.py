"""What a report's answers cover: the scope of the sweep that was actually run.

Every answer of the verdict holds for this scope only (widths, depths, steps, tokens per trial,
data, seeds, optimizers and QK-Norm variants of the trials that finished); verdict.json carries it
as `scope` and summary.md opens with it.
"""

from __future__ import annotations

import polars as pl

from trainer.schema import FINISHED_STATUSES


def _values(df: pl.DataFrame, column: str) -> list:
    return sorted(df.get_column(column).drop_nulls().unique().to_list()) if column in df.columns else []


def _config(df: pl.DataFrame, path: str) -> list:
    if "config_json" not in df.columns:
        return []
    return sorted(df.get_column("config_json").str.json_path_match(path).drop_nulls().unique().to_list())


def sweep_scope(trials: pl.DataFrame, sweep: dict | None) -> dict:
    """widths, depths, d_heads, steps, tokens_per_trial, data, seeds, optimizers, variants of the
    finished trials, and one sentence that says the answers hold for that scope only."""
    done = trials.filter(pl.col("status").is_in(FINISHED_STATUSES))
    sweep = sweep or {}
    heldout = sweep.get("heldout") if isinstance(sweep.get("heldout"), dict) else {}
    data = {
        "corpus": sweep.get("corpus_source") or (_config(done, "$.corpus") or [None])[0],
        "corpus_hash": sweep.get("corpus_hash"),
        "train_tokens": heldout.get("train_tokens"),
        "vocab_size": [int(v) for v in _config(done, "$.vocab_size")],
        "seq_len": [int(v) for v in _config(done, "$.seq_len")],
    }
    completed = done.filter(pl.col("status") == "completed")
    scope = {
        "widths": _values(done, "width"),
        "depths": _values(done, "depth"),
        "d_heads": _values(done, "d_head"),
        "steps": _values(done, "steps_planned"),
        "tokens_per_trial": _values(completed, "tokens"),
        "data": data,
        "seeds": _values(done, "seed"),
        "optimizers": _values(done, "optimizer"),
        "variants": _values(done, "qk_norm"),
    }
    scope["sentence"] = scope_sentence(scope)
    return scope


def _list(values) -> str:
    return ", ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values) or "none"


def scope_sentence(scope: dict) -> str:
    if not scope["optimizers"]:  # every finished trial has one (analysis.contract): none finished
        return "No trial has finished: these answers cover nothing yet."
    data = scope["data"]
    corpus = data.get("corpus") or "unknown data"
    tokens = f", {data['train_tokens']:,} training tokens" if data.get("train_tokens") else ""
    vocab = f", vocabulary {_list(data['vocab_size'])}" if data.get("vocab_size") else ""
    return (
        f"These answers hold for this scope only: widths {_list(scope['widths'])}, depth "
        f"{_list(scope['depths'])}, d_head {_list(scope['d_heads'])}, {_list(scope['steps'])} steps "
        f"({_list(scope['tokens_per_trial'])} tokens per trial), {corpus}{tokens}{vocab}, "
        f"{len(scope['seeds'])} seed(s) per cell, optimizers {_list(scope['optimizers'])}, "
        f"qk_norm {_list(scope['variants'])}. Larger models, longer training or other data may differ."
    )
