"""The trial configuration: one pydantic model, the single source of truth for a trial.

Fields are flat on purpose: the sweep grid axes (optimizer, qk_norm, width, lr, seed), the
`train:` block of a sweep file, `--set key=value` overrides and the columns of trials.parquet all
use these same names. Layers apply in this order: defaults, then YAML, then `--set`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Optimizer = Literal["adamw", "muon"]
QKNorm = Literal["none", "rms", "rms_frozen", "layer"]


class ConfigError(ValueError):
    """Bad user input; the CLIs print the message and exit with status 2."""


class TrialConfig(BaseModel):
    """Everything one training trial needs. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- sweep axes
    optimizer: Optimizer = Field("adamw", description="adamw, or muon (Muon on hidden 2-D matrices, AdamW elsewhere)")
    qk_norm: QKNorm = Field("none", description="per-head normalisation of q and k before RoPE")
    width: int = Field(64, gt=0, description="d_model")
    lr: float = Field(1e-2, gt=0, le=10.0, description="peak learning rate (AdamW scale; Muon uses match_rms_adamw)")
    seed: int = Field(0, ge=0, description="seeds weights and batch order")

    # --- model
    depth: int = Field(2, gt=0, description="number of transformer blocks")
    d_head: int = Field(32, gt=0, description="head dimension; n_heads = width / d_head")
    mlp_ratio: int = Field(4, gt=0, description="MLP hidden size as a multiple of width")
    vocab_size: int = Field(256, gt=1, description="256 for byte tokens; larger for .bin token shards")

    # --- data
    corpus: str = Field("stdlib", description="stdlib | synthetic | path to a text file, a folder of text, or .bin shards")
    seq_len: int = Field(128, gt=1, description="tokens per sequence")
    batch_size: int = Field(16, gt=0, description="sequences per step")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="held-out share of a text corpus")
    max_corpus_bytes: int = Field(16_000_000, gt=0, description="cap on bytes read from a text corpus")

    # --- schedule and optimisation
    steps: int = Field(300, ge=1, description="optimizer steps")
    warmup: int = Field(30, ge=0, description="linear warmup steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to this share of the peak")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay on 2-D matrices")
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 turns it off")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    ns_steps: int = Field(5, ge=1, description="Newton-Schulz iterations in Muon")

    # --- metrics and bookkeeping
    eval_every: int = Field(50, ge=1, description="probe and val-loss cadence in steps (also step 0 and the last)")
    log_every: int = Field(1, ge=1, description="train_loss/lr/grad_norm cadence in steps")
    eval_batches: int = Field(2, ge=1, description="batches (of batch_size x seq_len) of held-out data for val_loss")
    probe_seqs: int = Field(4, ge=1, description="sequences in the fixed held-out probe batch")
    checkpoint_every: int = Field(100, ge=0, description="checkpoint cadence in steps; 0 = never")
    max_loss: float = Field(20.0, gt=0, description="a train loss above this (or non-finite) marks the trial diverged")

    # --- hardware
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="autocast dtype; auto = bf16 on cuda, fp32 on cpu")
    compile: bool = Field(False, description="torch.compile the model (CUDA)")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = leave as is (Ray sets OMP_NUM_THREADS)")

    @field_validator("corpus")
    @classmethod
    def _corpus_exists(cls, value: str) -> str:
        if value in ("stdlib", "synthetic"):
            return value
        if not Path(value).expanduser().exists():
            raise ValueError(f"corpus path does not exist: {value!r}")
        return value

    @model_validator(mode="after")
    def _shapes_fit(self) -> "TrialConfig":
        if self.width % self.d_head:
            raise ValueError(f"width={self.width} is not divisible by d_head={self.d_head}")
        if self.d_head % 2:
            raise ValueError(f"d_head={self.d_head} must be even for RoPE")
        if self.warmup >= self.steps and self.steps > 1:
            raise ValueError(f"warmup={self.warmup} must be smaller than steps={self.steps}")
        return self

    @property
    def n_heads(self) -> int:
        return self.width // self.d_head

    def canonical_json(self) -> str:
        """Sorted JSON of every field: the identity of a trial."""
        return json.dumps(self.model_dump(), sort_keys=True)

    def trial_id(self) -> str:
        """Readable and unique: axes first, then a hash of the whole config."""
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:8]
        return f"{self.optimizer}_{self.qk_norm}_w{self.width}_lr{self.lr:.3g}_s{self.seed}_{digest}"


SMOKE = dict(
    corpus="stdlib", width=32, depth=2, d_head=16, seq_len=64, batch_size=8, steps=40, warmup=4,
    eval_every=10, checkpoint_every=20, lr=1e-2, probe_seqs=2, eval_batches=2, device="cpu",
    max_corpus_bytes=2_000_000, threads=1,  # one thread: a tiny model gains nothing from two, and loses a lot on a busy machine
)


def describe_error(err: ValidationError) -> str:
    """One line per problem, each naming the field and the value that was given."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{field}: {e['msg']}{shown}")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so 1e-3, true, [1, 2] work)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """' at line L, column C: what went wrong' on one line (PyYAML's own message spans several)."""
    mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    what = ", ".join(p for p in parts if p) or str(exc)
    return f"{where}: {' '.join(what.split())}"


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, or a ConfigError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {bad!r})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML{_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def build_config(base: dict | None = None, overrides: list[str] | None = None) -> TrialConfig:
    """Defaults, then `base` (from YAML), then `--set` overrides; ConfigError on bad input."""
    values = dict(base or {})
    for item in overrides or []:
        key, value = parse_override(item)
        values[key] = value
    try:
        return TrialConfig(**values)
    except ValidationError as err:
        raise ConfigError(describe_error(err)) from None
