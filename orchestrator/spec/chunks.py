"""`--chunk I/N`: the I-th of N deterministic, balanced parts of a sweep's grid.

A GPU study that takes hours is run in chunks that each fit a short lease of one GPU (a device
session, a spot instance). Chunk I of N is a sweep of its own: its trials, its own results folder
`<results>/<name>-chunkIofN` (so chunks run on different machines are copied back side by side),
its own `--resume`. sweep.json records which part of which study it holds (`chunk`: study, index,
count, trials in the study, the rule below).

The partition depends on the grid and N alone (never on the calibration table, which a
recalibration changes, nor on the machine): the trials are sorted by cost, most expensive first
(cost classes by FLOPs per trial, then Muon before AdamW; within a class by lr, seed and qk_norm),
and dealt like a snake draft: the first N to chunks 1..N, the next N to chunks N..1, and so on.
Each chunk therefore gets about the same share of every cost class (width x optimizer), its
predicted times differ by about one trial at most, and every chunk mixes widths, optimizers and
qk_norm variants (the variants' order rotates from class to class, so a chunk does not get the
same variant in each). The same grid and N always give the same chunks, and the chunks of one N
partition the grid exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer.config import ConfigError, TrialConfig, short_repr
from trainer.schema import OPTIMIZERS, QK_NORM_VARIANTS

from .costs import trial_flops
from .validation import NAME_MAX

_CHUNK = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_CHUNK_DIGITS = 9  # a grid has at most validation.MAX_TRIALS trials, so at most that many chunks


@dataclass(frozen=True)
class Chunk:
    index: int  # 1-based
    count: int

    @property
    def suffix(self) -> str:
        return f"chunk{self.index}of{self.count}"

    def name(self, study: str) -> str:
        """The chunk's sweep name, and so its results folder: 'gpu_study-chunk3of20'."""
        return f"{study}-{self.suffix}"

    def record(self, study: str, n_study: int) -> dict:
        """What sweep.json keeps about the chunk."""
        return {"study": study, "index": self.index, "count": self.count, "trials_in_study": n_study, "rule": RULE}


RULE = (
    "snake draft over the trials sorted by cost class (FLOPs per trial desc, Muon first), then lr, seed "
    "and qk_norm rotated by the class"
)


def parse_chunk(text: str) -> Chunk:
    """'3/20' -> Chunk(3, 20); a ConfigError naming the value otherwise."""
    m = _CHUNK.match(str(text))
    if not m:
        raise ConfigError(f"--chunk: expected I/N, the I-th of N chunks, e.g. 3/20 (got {short_repr(text, 40)})")
    if max(len(m.group(1)), len(m.group(2))) > MAX_CHUNK_DIGITS:  # read as ints, Python refuses 4300 digits
        raise ConfigError(
            f"--chunk: I and N may have at most {MAX_CHUNK_DIGITS} digits, more chunks than any grid has "
            f"trials (got {short_repr(text, 40)})"
        )
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--chunk: I/N needs 1 <= I <= N (got {index}/{count})")
    return Chunk(index, count)


def cost_order(configs: list[TrialConfig]) -> list[TrialConfig]:
    """The trials, most expensive first, in an order fixed by the grid alone: by cost class (FLOPs per
    trial, then Muon before AdamW), and within a class by lr, seed and qk_norm, the qk_norm variants
    rotated by one place from class to class so that the chunks that take the same places in
    successive classes get different variants."""
    ids = {id(c): c.trial_id() for c in configs}
    flops = {id(c): trial_flops(c) for c in configs}

    def cost_class(c: TrialConfig) -> tuple:
        return (-flops[id(c)], -OPTIMIZERS.index(c.optimizer))  # muon (the slower step) before adamw

    classes = {k: i for i, k in enumerate(sorted({cost_class(c) for c in configs}))}
    variants = sorted({c.qk_norm for c in configs}, key=QK_NORM_VARIANTS.index)

    def key(c: TrialConfig) -> tuple:
        cls = classes[cost_class(c)]
        qk = variants.index(c.qk_norm)
        return (cls, c.lr, c.seed, (qk - cls) % len(variants), ids[id(c)])

    return sorted(configs, key=key)


def partition(configs: list[TrialConfig], count: int) -> list[list[TrialConfig]]:
    """The grid in `count` chunks (each in the grid's own order); every trial in exactly one."""
    if count > len(configs):
        raise ConfigError(f"--chunk: {count} chunks, but the grid has only {len(configs)} trials")
    chunk_of: dict[int, int] = {}
    for k, cfg in enumerate(cost_order(configs)):
        lap, pos = divmod(k, count)
        chunk_of[id(cfg)] = pos if lap % 2 == 0 else count - 1 - pos
    chunks: list[list[TrialConfig]] = [[] for _ in range(count)]
    for cfg in configs:
        chunks[chunk_of[id(cfg)]].append(cfg)
    return chunks


def select(configs: list[TrialConfig], chunk: Chunk, study: str) -> list[TrialConfig]:
    """The trials of one chunk (ConfigError when the chunk's name would be too long for a folder)."""
    name = chunk.name(study)
    if len(name) > NAME_MAX:
        raise ConfigError(f"--chunk: the chunk's folder name {name!r} is longer than {NAME_MAX} characters")
    return partition(configs, chunk.count)[chunk.index - 1]


def apply_chunk(spec, configs: list[TrialConfig], text: str | None):
    """(spec, configs, record) of the chunk `text` ('I/N') of a sweep: the spec renamed to the chunk's
    name, its trials, and sweep.json's `chunk` entry; unchanged with None for no chunk."""
    if not text:
        return spec, configs, None
    chunk = parse_chunk(text)
    chosen = select(configs, chunk, spec.name)
    record = chunk.record(spec.name, len(configs))
    return spec.model_copy(update={"name": chunk.name(spec.name)}), chosen, record
