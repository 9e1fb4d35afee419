"""The trial configuration: one pydantic model, the single source of truth for a trial.

Fields are flat on purpose: the sweep grid axes (optimizer, qk_norm, width, lr, seed), the
`train:` block of a sweep file, `--set key=value` overrides and the columns of trials.parquet all
use these same names. Layers apply in this order: defaults, then YAML, then `--set`.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .architecture import ModelConfig
from .errors import ConfigError, short_repr  # noqa: F401 - re-exported: trainer.config.ConfigError is the name used
from .schema import MAX_LR, OPTIMIZERS, QK_NORM_VARIANTS

# Literals so that pydantic names the choices in its errors; the vocabularies live in trainer.schema.
Optimizer = Literal["adamw", "muon"]
QKNorm = Literal["none", "rms", "rms_frozen", "layer", "qk_clip", "softcap"]
assert get_args(Optimizer) == OPTIMIZERS and get_args(QKNorm) == QK_NORM_VARIANTS, "keep in step with trainer.schema"


# Upper bounds: values past these pass as numbers but crash later (numpy seeds are < 2**32, huge
# step counts overflow, thousands of threads segfault torch, huge widths exhaust memory after minutes).
MAX_SEED = 2**32 - 1
MAX_STEPS = 10**8
MAX_THREADS = 1024
MAX_WIDTH = 65536
MAX_DEPTH = 1024
MAX_VOCAB = 65536  # token ids are stored as uint16


NOT_IDENTITY = ("save_final",)  # TrialConfig fields that change what is saved, not how a trial trains


class TrialConfig(BaseModel):
    """Everything one training trial needs. Unknown keys are rejected; types are strict (a quoted
    '0.01' is not a number, true is not a width) and floats must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # --- sweep axes
    optimizer: Optimizer = Field("adamw", description="adamw, or muon (Muon on hidden 2-D matrices, AdamW elsewhere)")
    qk_norm: QKNorm = Field("none", description="per-head normalisation of q and k before RoPE")
    width: int = Field(64, gt=0, le=MAX_WIDTH, description="d_model")
    lr: float = Field(1e-2, gt=0, le=MAX_LR, description="peak learning rate (AdamW scale; Muon uses match_rms_adamw)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds weights and batch order (numpy seeds are < 2**32)")

    # --- model
    depth: int = Field(2, gt=0, le=MAX_DEPTH, description="number of transformer blocks")
    d_head: int = Field(32, gt=0, le=MAX_WIDTH, description="head dimension; n_heads = width / d_head")
    mlp_ratio: int = Field(4, gt=0, le=64, description="MLP hidden size as a multiple of width")
    vocab_size: int = Field(
        256,
        gt=1,
        le=MAX_VOCAB,
        description="256 for byte tokens; larger for .bin token shards (uint16, so at most 65536)",
    )

    init: Literal["normal", "torch"] = Field(
        "normal",
        description="normal: N(0, init_std) weights, residual projections scaled by 1/sqrt(2 depth) "
        "(GPT-2); torch: PyTorch's own defaults (uniform, std ~ 1/sqrt(3 fan_in)). Changes loss and PR a lot",
    )
    init_std: float = Field(0.02, gt=0, le=1.0, description="std of the normal init (GPT-2's 0.02)")

    # --- data
    corpus: str = Field(
        "stdlib",
        description="stdlib | python (the whole Python installation's text and source files, site-packages "
        "included) | synthetic | path to a text file, a folder of text, or .bin shards",
    )
    seq_len: int = Field(128, gt=1, le=2**20, description="tokens per sequence")
    batch_size: int = Field(16, gt=0, le=2**20, description="sequences per step")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="held-out share of a text corpus")
    max_corpus_bytes: int = Field(16_000_000, gt=0, description="cap on bytes read from a text corpus")

    # --- schedule and optimisation
    steps: int = Field(300, ge=1, le=MAX_STEPS, description="optimizer steps")
    warmup: int = Field(30, ge=0, description="linear warmup steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to this share of the peak")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay on 2-D matrices")
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 turns it off")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    ns_steps: int = Field(5, ge=1, description="Newton-Schulz iterations in Muon")
    muon_per_head: bool = Field(
        False,
        description="Muon only: Newton-Schulz on each head's d_head x width block of W_q, W_k, W_v (and "
        "width x d_head block of W_o) instead of on the whole matrix; the same step RMS either way",
    )
    qk_clip_tau: float = Field(
        100.0, gt=0, le=1e6, description="qk_clip only: the largest attention logit a head keeps (Kimi K2: 100)"
    )
    logit_softcap: float = Field(
        50.0, gt=0, le=1e6, description="softcap only: logits -> cap * tanh(logits / cap) (Gemma 2: 50)"
    )

    # --- metrics and bookkeeping
    eval_every: int = Field(50, ge=1, description="probe and val-loss cadence in steps (also step 0 and the last)")
    eval_schedule: Literal["log", "every"] = Field(
        "log",
        description="log: extra probes log-spaced from step 1 until their gap reaches eval_every, so an "
        "early fall of PR with a time constant of a few steps is resolved; every: only each eval_every steps",
    )
    log_every: int = Field(1, ge=1, description="train_loss/lr/grad_norm cadence in steps")
    eval_batches: int = Field(2, ge=1, description="batches (of batch_size x seq_len) of held-out data for val_loss")
    probe_seqs: int = Field(
        32,
        ge=1,
        description="sequences in the fixed held-out probe batch (spread over every "
        "held-out document; activation PR is biased low with few tokens, see pr_bias)",
    )
    checkpoint_every: int = Field(100, ge=0, description="checkpoint cadence in steps; 0 = never")
    save_final: bool = Field(
        False,
        description="write the final weights of a completed trial to "
        "weights/<trial_id>.pt (load with torch.load(..., weights_only=True)); "
        "not part of the trial's identity",
    )
    max_loss: float = Field(20.0, gt=0, description="a train loss above this (or non-finite) marks the trial diverged")

    # --- hardware
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="autocast dtype; auto = bf16 on cuda, fp32 on cpu"
    )
    compile: bool = Field(False, description="torch.compile the model (CUDA, or CPU after a ~20 s compile)")
    threads: int = Field(
        0, ge=0, le=MAX_THREADS, description="torch CPU threads; 0 = leave as is (Ray sets OMP_NUM_THREADS)"
    )

    @field_validator("corpus")
    @classmethod
    def _corpus_exists(cls, value: str) -> str:
        if value in ("stdlib", "python", "synthetic"):
            return value
        path = Path(value).expanduser()
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ValueError(f"corpus path does not exist: {short_repr(value)}") from None
        except OSError as exc:
            raise ValueError(f"corpus path cannot be read: {short_repr(value)} ({exc.strerror or exc})") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # /dev/zero, a FIFO, a socket: may never end
            raise ValueError(
                f"corpus must be a regular file or a folder, not a device, FIFO or socket: {short_repr(value)}"
            )
        return value

    @model_validator(mode="after")
    def _shapes_fit(self) -> TrialConfig:
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

    def architecture(self) -> ModelConfig:
        """The fields trainer.model.GPT is built from."""
        return ModelConfig(
            vocab_size=self.vocab_size,
            width=self.width,
            depth=self.depth,
            d_head=self.d_head,
            mlp_ratio=self.mlp_ratio,
            qk_norm=self.qk_norm,
            seq_len=self.seq_len,
            init=self.init,
            init_std=self.init_std,
            logit_softcap=self.logit_softcap,
        )

    def canonical_json(self) -> str:
        """Sorted JSON of every field that changes training: the identity of a trial (an output
        switch such as save_final is left out, so turning it on does not rename trials). A setting
        that does not act on this trial is left out too (qk_clip_tau unless qk_norm is qk_clip,
        logit_softcap unless softcap, muon_per_head unless it is on under Muon): trials that train
        the same get one identity, and trials of results written before these settings existed
        keep theirs."""
        fields = self.model_dump(exclude=set(NOT_IDENTITY))
        for name, acts in inert_settings(self).items():
            if not acts:
                del fields[name]
        return json.dumps(fields, sort_keys=True)

    def trial_id(self) -> str:
        """Readable and unique: axes first, then a hash of the whole config."""
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:8]
        return f"{self.optimizer}_{self.qk_norm}_w{self.width}_lr{self.lr:.3g}_s{self.seed}_{digest}"


def inert_settings(cfg: TrialConfig) -> dict[str, bool]:
    """The variant-specific settings, each with whether it acts on `cfg`'s training."""
    return {
        "qk_clip_tau": cfg.qk_norm == "qk_clip",
        "logit_softcap": cfg.qk_norm == "softcap",
        "muon_per_head": cfg.optimizer == "muon" and cfg.muon_per_head,
    }


SMOKE = dict(
    corpus="stdlib",
    width=32,
    depth=2,
    d_head=16,
    seq_len=64,
    batch_size=8,
    steps=40,
    warmup=4,
    eval_every=10,
    checkpoint_every=20,
    lr=1e-2,
    probe_seqs=2,
    eval_batches=2,
    device="cpu",
    max_corpus_bytes=2_000_000,
    threads=1,  # one thread: a tiny model gains nothing from two, and loses a lot on a busy machine
)


def describe_error(err: ValidationError, limit: int = 5) -> str:
    """One line per problem (at most `limit`), each naming the field and the value that was given."""
    lines = []
    errors = _one_union_member(err.errors())
    for e in errors[:limit]:
        field = ".".join(short_repr(p, 40).strip("'") for p in e["loc"]) or "config"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {short_repr(value)})"
        lines.append(f"{field}: {' '.join(str(e['msg']).split())}{shown}")
    if len(errors) > limit:
        lines.append(f"and {len(errors) - limit} more")
    return "; ".join(lines)


# pydantic's errors for a value that is not of the type a union member expects at all (a list given
# to a model, a mapping to a list): noise beside the errors of the member the value was meant for.
_WRONG_KIND = ("list_type", "dict_type", "model_type", "model_attributes_type")


def _union_member(part: Any) -> bool:
    """Whether an error path's part names a union's member (pydantic writes its type: 'list[float]',
    'FromStudy'); field names are lower-case words and mapping keys are the file's."""
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


def _one_union_member(errors: list[dict]) -> list[dict]:
    """The errors of a value that fits no member of a union (grid.lr: a list of LRs or
    {from_study: ...}), reduced to those of the member the value was meant for, with the member's
    name left out of the path: `grid.lr.0: Input should be a valid number`, not that and
    `grid.lr.FromStudy: Input should be a valid dictionary`. Other errors are kept as they are."""

    def member_at(loc: tuple) -> int | None:
        return next((i for i, part in enumerate(loc) if _union_member(part)), None)

    def wrong_kind(e: dict, at: int) -> bool:
        return len(e["loc"]) == at + 1 and e["type"] in _WRONG_KIND

    of_its_kind = set()  # fields whose value is of some member's kind (that member's errors are the point)
    for e in errors:
        at = member_at(e["loc"])
        if at is not None and not wrong_kind(e, at):
            of_its_kind.add(tuple(e["loc"][:at]))
    out, seen = [], set()
    for e in errors:
        loc, at = tuple(e["loc"]), member_at(e["loc"])
        if at is not None:
            if wrong_kind(e, at) and loc[:at] in of_its_kind:
                continue
            loc = loc[:at] + loc[at + 1 :]
            if loc in seen:  # a value of no member's kind: one line, not one per member
                continue
            seen.add(loc)
        out.append({**e, "loc": loc})
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML by the strict loader (so 1e-3, true, [1, 2] work;
    0x1, 010 and 1:30, YAML 1.1's hex, octal and base-60 integers, are refused)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {short_repr(text)}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=StrictSafeLoader) if raw else ""  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"--set {short_repr(key.strip(), 40)}: {err}") from None
    except yaml.YAMLError as exc:
        if raw.lstrip()[:1] in ("[", "{"):  # meant as a list or mapping: taken as text it would mislead
            raise ConfigError(
                f"--set {short_repr(key.strip(), 40)}: {short_repr(raw, 60)} is not a valid YAML list or "
                f"mapping{_yaml_problem(exc)}; write a list as [0, 1]"
            ) from None
        value = raw  # other text YAML cannot read (a leading @ or `, "a: b: c") is the text itself
    return key.strip(), value


# ---- a YAML loader that refuses what safe_load lets through ----------------------------------
MAX_YAML_NODES = 100_000  # nodes after expanding aliases: a real sweep file has a few hundred
MAX_YAML_ALIASES = 100
# No setting takes an integer near this long (the largest bound, MAX_SEED, has 10 digits); Python
# refuses to read one of more than 4300 digits with a traceback, so a longer one is refused by name.
MAX_INT_DIGITS = 100
_NON_DECIMAL_INT = re.compile(r"^[-+]?(0[xob]|0[0-7_]+$|[0-9][0-9_]*(:[0-5]?[0-9])+$)")


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs ("billion laughs"), duplicate keys and YAML 1.1's
    non-decimal integers (0x1, 010, 1:30), and reads 1e-3 as a float (YAML 1.2), not a string.

    Errors are ConfigErrors without the offending value (which may be huge)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"more than {MAX_YAML_ALIASES} YAML aliases (*name) at line {mark.line + 1}; write the values out"
                )
        return super().compose_node(parent, index)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            size = _expanded_size(node, {})
            if size > MAX_YAML_NODES:
                raise ConfigError(
                    f"YAML aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?); write the values out"
                )
            _refuse_long_integers(node, "", set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` may be overridden by the keys beside it
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise ConfigError(
                            f"duplicate key {short_repr(key, 60)} at line {key_node.start_mark.line + 1} "
                            f"(first at line {seen[key] + 1}); each key may appear once"
                        )
                    seen[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: SafeLoader names it below
                    pass
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        if _NON_DECIMAL_INT.match(str(node.value)):
            raise ConfigError(
                f"{short_repr(node.value, 40)} at line {node.start_mark.line + 1} is not a decimal "
                "number (YAML reads 0x, 0o, 0b, a leading 0 and h:m:s as other bases); write it in "
                "decimal, or quote it"
            )
        return super().construct_yaml_int(node)


def _refuse_long_integers(node, path: str, seen: set) -> None:
    """A ConfigError naming the key (`grid.seed.0`) and the line of the first integer longer than
    MAX_INT_DIGITS: the digits are never converted, so Python's own 4300-digit limit is never hit."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        digits = sum(ch.isdigit() for ch in str(node.value))
        if node.tag == "tag:yaml.org,2002:int" and digits > MAX_INT_DIGITS:
            where = f"{path}: " if path else ""
            raise ConfigError(
                f"{where}an integer of {digits} digits ({short_repr(node.value, 20)}) at line "
                f"{node.start_mark.line + 1}; no setting takes more than {MAX_INT_DIGITS} digits"
            )
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _refuse_long_integers(child, f"{path}.{i}" if path else f"item {i}", seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = short_repr(key.value, 40).strip("'") if isinstance(key, yaml.ScalarNode) else "?"
            _refuse_long_integers(key, path, seen)
            _refuse_long_integers(value, f"{path}.{name}" if path else name, seen)


def _expanded_size(node, memo: dict) -> int:
    """Values in the document with every alias expanded, computed on the shared graph (cheap)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once (SafeLoader refuses to construct it anyway)
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        total = 1
    memo[key] = min(total, MAX_YAML_NODES + 1)
    return memo[key]


StrictSafeLoader.add_constructor("tag:yaml.org,2002:int", StrictSafeLoader.construct_yaml_int)
StrictSafeLoader.add_implicit_resolver(  # 1e-3 and 5E+2 (no dot) are floats, as in YAML 1.2
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def safe_yaml(text: str):
    """YAML text through the StrictSafeLoader (ConfigError for aliases, duplicates, non-decimal ints)."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass


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
        bad = exc.object[exc.start : exc.start + 1]
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {bad!r})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = safe_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML{_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
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
