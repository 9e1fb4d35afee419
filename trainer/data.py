"""Token corpora, materialised once and shared by every trial of a sweep.

Corpora (the `corpus` field): `stdlib` (the running Python's standard-library .py files, read in
sorted order: real text on every machine, nothing downloaded), a text file or folder (bytes),
uint16 `.bin` token shards (nanoGPT raw, or modded-nanogpt with its 256-int32 header), and
`synthetic` (a seeded Markov chain, for fast tests). Batches are drawn from an RNG keyed by
(seed, step), so the data position of a restored trial is its step and nothing else.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, TrialConfig

SHARD_MAGIC = 20240520  # modded-nanogpt / llm.c header magic
SYNTHETIC_TOKENS = 1_000_000


@dataclass(frozen=True)
class TokenData:
    """Train and held-out token streams plus a hash that identifies them."""

    train: np.ndarray
    val: np.ndarray
    corpus_hash: str
    source: str

    @property
    def max_token(self) -> int:
        return int(max(self.train.max(initial=0), self.val.max(initial=0)))


def corpus_key(cfg: TrialConfig) -> tuple:
    """Settings that determine the tokens; trials sharing a key share one TokenData."""
    return (cfg.corpus, cfg.val_fraction, cfg.max_corpus_bytes, cfg.vocab_size)


def load_tokens(cfg: TrialConfig) -> TokenData:
    """Materialise the corpus named by `cfg`, or raise ConfigError naming what is wrong."""
    if cfg.corpus == "synthetic":
        tokens, source = _synthetic(cfg.vocab_size), "synthetic"
    elif cfg.corpus == "stdlib":
        tokens, source = _read_text_files(_stdlib_files(), cfg.max_corpus_bytes), "stdlib"
    else:
        path = Path(cfg.corpus).expanduser()
        bins = sorted(path.glob("*.bin")) if path.is_dir() else ([path] if path.suffix == ".bin" else [])
        if bins:
            return _from_shards(bins, cfg)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        tokens, source = _read_text_files(files, cfg.max_corpus_bytes), str(path)
    if tokens.size < 2 * (cfg.seq_len + 1):
        raise ConfigError(f"corpus: {cfg.corpus!r} holds only {tokens.size} tokens, too few for seq_len={cfg.seq_len}")
    if int(tokens.max()) >= cfg.vocab_size:
        raise ConfigError(f"vocab_size: {cfg.vocab_size} is too small for token id {int(tokens.max())} in {cfg.corpus!r}")
    n_val = max(int(tokens.size * cfg.val_fraction), cfg.seq_len + 1)
    return _token_data(tokens[:-n_val], tokens[-n_val:], source)


def _token_data(train: np.ndarray, val: np.ndarray, source: str) -> TokenData:
    digest = hashlib.sha256()
    digest.update(train.tobytes())
    digest.update(b"|")
    digest.update(val.tobytes())
    return TokenData(train=train, val=val, corpus_hash=digest.hexdigest()[:16], source=source)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_text_files(files: list[Path], max_bytes: int) -> np.ndarray:
    chunks, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"corpus: cannot read {path}: {exc.strerror}") from None
        chunks.append(data[: max_bytes - total])
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    if total == 0:
        raise ConfigError(f"corpus: no readable text in {len(files)} file(s)")
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).astype(np.uint16)


def _synthetic(vocab: int, n: int = SYNTHETIC_TOKENS) -> np.ndarray:
    """A sparse first-order Markov chain: learnable structure, seeded, cheap."""
    rng = np.random.default_rng(1234)
    successors = rng.integers(0, vocab, size=(vocab, 4))
    choice = rng.integers(0, 4, size=n)
    out = np.empty(n, dtype=np.uint16)
    out[0] = 0
    for i in range(1, n):  # 1M steps of scalar work ~0.4 s
        out[i] = successors[out[i - 1], choice[i]]
    return out


def read_shard(path: Path) -> np.ndarray:
    """One `.bin` shard: modded-nanogpt header (magic, version, n_tokens) + uint16, or raw uint16."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    if header.size == 256 and header[0] == SHARD_MAGIC:
        n = int(header[2])
        tokens = np.fromfile(path, dtype=np.uint16, offset=256 * 4)
        if tokens.size < n:
            raise ConfigError(f"corpus: shard {path} is truncated ({tokens.size} of {n} tokens)")
        return tokens[:n]
    return np.fromfile(path, dtype=np.uint16)


def _from_shards(paths: list[Path], cfg: TrialConfig) -> TokenData:
    val_paths = [p for p in paths if "val" in p.name]
    train_paths = [p for p in paths if p not in val_paths]
    train = np.concatenate([read_shard(p) for p in train_paths]) if train_paths else np.empty(0, np.uint16)
    val = np.concatenate([read_shard(p) for p in val_paths]) if val_paths else np.empty(0, np.uint16)
    if val.size == 0:  # no val shard: hold out the tail of train
        n_val = max(int(train.size * cfg.val_fraction), cfg.seq_len + 1)
        train, val = train[:-n_val], train[-n_val:]
    if train.size < cfg.seq_len + 1 or val.size < cfg.seq_len + 1:
        raise ConfigError(f"corpus: shards in {cfg.corpus!r} are too small for seq_len={cfg.seq_len}")
    data = _token_data(train, val, f"shards:{cfg.corpus}")
    if data.max_token >= cfg.vocab_size:
        raise ConfigError(f"vocab_size: {cfg.vocab_size} is too small for token id {data.max_token} in {cfg.corpus!r}")
    return data


def _windows(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = stream[idx].astype(np.int64)  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def train_batch(data: TokenData, cfg: TrialConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch for `step`: a pure function of (seed, step), so restores replay it exactly."""
    rng = np.random.default_rng([cfg.seed, step])
    starts = rng.integers(0, data.train.size - cfg.seq_len - 1, size=cfg.batch_size)
    return _windows(data.train, starts, cfg.seq_len)


def val_batches(data: TokenData, cfg: TrialConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed held-out batches (same for every trial of a sweep) for val_loss."""
    rng = np.random.default_rng(987_654)
    high = data.val.size - cfg.seq_len - 1
    return [_windows(data.val, rng.integers(0, high + 1, size=cfg.batch_size), cfg.seq_len) for _ in range(cfg.eval_batches)]


def probe_batch(data: TokenData, cfg: TrialConfig) -> np.ndarray:
    """Fixed held-out inputs for the rank probe: evenly spaced windows of the val stream."""
    starts = np.linspace(0, data.val.size - cfg.seq_len - 1, cfg.probe_seqs).astype(np.int64)
    return _windows(data.val, starts, cfg.seq_len)[0]
