"""Token corpora, materialised once and shared by every trial of a sweep.

Corpora (the `corpus` field): `stdlib` (the running Python's standard-library .py files: real text on
every machine, nothing downloaded), `python` (every text and source file of the whole Python
installation, site-packages included: a bigger local corpus, e.g. for GPU studies on machines with no
network), a text file or folder (bytes), uint16 `.bin` token shards (nanoGPT
raw, or modded-nanogpt with its 256-int32 header), and `synthetic` (a seeded Markov chain, for fast
tests). Batches are drawn from an RNG keyed by (seed, step), so the data position of a restored trial
is its step and nothing else.

Held-out data (val loss and the rank probe) is a set of whole documents (files, shards, or blocks of a
single file) sampled across the corpus by a hash keyed on the corpus identity, never its tail: the
tail of a sorted stdlib is a run of near-identical codec tables, and a probe drawn from there measures
those. No held-out document is trained on.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, TrialConfig

SHARD_MAGIC = 20240520  # modded-nanogpt / llm.c header magic
SYNTHETIC_TOKENS = 1_000_000
MIN_DOCUMENTS = 32  # fewer documents than this (one big file, few shards) are cut into blocks
BLOCKS = 64  # blocks per corpus when it is cut
HELDOUT_DOCUMENTS = 16  # held-out documents wanted at least: each contributes at most 1/16 of the budget


@dataclass(frozen=True)
class TokenData:
    """Train and held-out token streams, a hash that identifies them, and what was held out."""

    train: np.ndarray
    val: np.ndarray
    corpus_hash: str
    source: str
    heldout: tuple[str, ...] = ()  # names of the held-out documents, in stream order

    @property
    def max_token(self) -> int:
        return int(max(self.train.max(initial=0), self.val.max(initial=0)))

    def describe(self) -> dict:
        """What sweep.json records about the corpus and its held-out part."""
        return {
            "source": self.source,
            "corpus_hash": self.corpus_hash,
            "train_tokens": int(self.train.size),
            "heldout_tokens": int(self.val.size),
            "heldout_documents": list(self.heldout),
        }


def corpus_key(cfg: TrialConfig) -> tuple:
    """Settings that determine the tokens; trials sharing a key share one TokenData."""
    return (cfg.corpus, cfg.val_fraction, cfg.max_corpus_bytes, cfg.vocab_size)


def load_tokens(cfg: TrialConfig) -> TokenData:
    """Materialise the corpus named by `cfg`, or raise ConfigError naming what is wrong."""
    if cfg.corpus == "synthetic":
        docs, source = _blocks([("synthetic", _synthetic(cfg.vocab_size))], cfg.seq_len), "synthetic"
    elif cfg.corpus == "stdlib":
        docs, source = _read_text_files(_stdlib_files(), cfg.max_corpus_bytes), "stdlib"
    elif cfg.corpus == "python":
        docs, source = _read_text_files(python_files(), cfg.max_corpus_bytes), "python"
    else:
        path = Path(cfg.corpus).expanduser()
        bins = sorted(path.glob("*.bin")) if path.is_dir() else ([path] if path.suffix == ".bin" else [])
        if bins:
            return _from_shards(bins, cfg)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        docs, source = _read_text_files(files, cfg.max_corpus_bytes), str(path)
    total = sum(d.size for _, d in docs)
    if total < 2 * (cfg.seq_len + 1):
        raise ConfigError(f"corpus: {cfg.corpus!r} holds only {total} tokens, too few for seq_len={cfg.seq_len}")
    top = max(int(d.max(initial=0)) for _, d in docs)
    if top >= cfg.vocab_size:
        raise ConfigError(f"vocab_size: {cfg.vocab_size} is too small for token id {top} in {cfg.corpus!r}")
    train, val = split_heldout(_blocks(docs, cfg.seq_len), cfg.val_fraction, cfg.seq_len)
    return _token_data(train, val, source, cfg)


def split_heldout(docs: list[tuple[str, np.ndarray]], fraction: float, seq_len: int) -> tuple[list, list]:
    """Whole documents for held-out data, drawn in an order fixed by a hash of the corpus identity
    (names and sizes), until `fraction` of the tokens is held out; train keeps every other document.

    A held-out document leaves training whole, but adds at most 1/HELDOUT_DOCUMENTS of the held-out
    budget to the held-out stream, so a few long files cannot make up the whole held-out set."""
    identity = hashlib.sha256("\n".join(sorted(f"{n}:{d.size}" for n, d in docs)).encode()).hexdigest()
    rank = sorted(range(len(docs)), key=lambda i: hashlib.sha256(f"{identity}/{docs[i][0]}".encode()).digest())
    budget = fraction * sum(d.size for _, d in docs)
    per_doc = max(int(budget // HELDOUT_DOCUMENTS), 4 * (seq_len + 1))
    val_ids, held = {}, 0
    for i in rank:
        if held >= budget and held > seq_len + 1:
            break
        if len(val_ids) == len(docs) - 1:
            break  # training keeps at least one document
        val_ids[i] = min(docs[i][1].size, per_doc)
        held += val_ids[i]
    train = [docs[i] for i in range(len(docs)) if i not in val_ids]
    val = [(docs[i][0], docs[i][1][: val_ids[i]]) for i in sorted(val_ids)]
    return train, val


def _blocks(docs: list[tuple[str, np.ndarray]], seq_len: int) -> list[tuple[str, np.ndarray]]:
    """Too few documents to sample from (one text file, a few shards): cut them into blocks."""
    if len(docs) >= MIN_DOCUMENTS:
        return docs
    total = sum(d.size for _, d in docs)
    size = max(total // BLOCKS, seq_len + 1)
    out = []
    for name, d in docs:
        for start in range(0, d.size, size):
            out.append((f"{name}[{start}:{min(start + size, d.size)}]", d[start : start + size]))
    return out


def _token_data(train: list, val: list, source: str, cfg: TrialConfig, stream=None) -> TokenData:
    """`stream` joins the documents into one stream: np.concatenate by default, ShardStream for shards."""
    stream = stream or _concat
    train_stream = stream([d for _, d in train])
    val_stream = stream([d for _, d in val])
    if train_stream.size <= cfg.seq_len + 1 or val_stream.size < cfg.seq_len + 1:
        raise ConfigError(
            f"corpus: {cfg.corpus!r} is too small to hold out whole documents for "
            f"seq_len={cfg.seq_len} ({train_stream.size} train, {val_stream.size} held-out tokens)"
        )
    digest = hashlib.sha256()  # chunk by chunk: the same digest as of the whole streams' bytes
    for chunk in _chunks(train_stream):
        digest.update(chunk)
    digest.update(b"|")
    for chunk in _chunks(val_stream):
        digest.update(chunk)
    return TokenData(
        train=train_stream,
        val=val_stream,
        corpus_hash=digest.hexdigest()[:16],
        source=source,
        heldout=tuple(n for n, _ in val),
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, np.uint16)


def _chunks(stream) -> list[np.ndarray]:
    return stream.chunks() if isinstance(stream, ShardStream) else [np.ascontiguousarray(stream)]


class ShardStream:
    """Memory-mapped shard documents read as one token stream, never concatenated in memory.

    A FineWeb-sized corpus (tens of GB of uint16 tokens) does not fit a head node's memory, and
    Ray sends each trial its TokenData: pickled, a ShardStream is file names, byte offsets and
    lengths, so every node maps the shards itself from the same path (shared storage, or its own
    copy at that path) and reads only the pages its batches touch. Indexing with an integer array
    (what `_windows` does) returns an ordinary array.
    """

    dtype = np.dtype(np.uint16)

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if p.size]
        self.starts = np.cumsum([0] + [p.size for p in self.parts])  # stream offset of each part, then the end

    @property
    def size(self) -> int:
        return int(self.starts[-1])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for part in np.unique(which):
            mask = which == part
            out[mask] = self.parts[part][idx[mask] - self.starts[part]]
        return out

    def max(self, initial: int = 0) -> int:
        return max([int(initial)] + [int(p.max()) for p in self.parts])

    def chunks(self, tokens: int = 1 << 24):
        for p in self.parts:
            for start in range(0, p.size, tokens):
                yield np.ascontiguousarray(p[start : start + tokens])

    def __reduce__(self):
        where = [_file_slice(p) for p in self.parts]
        if any(w is None for w in where):  # not all memory-mapped (tests, synthetic shards): send the tokens
            return ShardStream, ([np.asarray(p) for p in self.parts],)
        return _map_slices, (tuple(where),)


def _file_slice(a: np.ndarray) -> tuple[str, int, int] | None:
    """(file, byte offset, tokens) of a contiguous view of a memory-mapped shard, else None."""
    import mmap

    mm = getattr(a, "_mmap", None)
    if not isinstance(a, np.memmap) or mm is None or a.filename is None or not a.flags.c_contiguous:
        return None
    mapped_from = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from an aligned offset
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    return str(a.filename), mapped_from + (a.ctypes.data - base), int(a.size)


def _map_slices(where: tuple) -> ShardStream:
    """Unpickling a ShardStream: map each slice again on this node."""
    return ShardStream([np.memmap(f, dtype=np.uint16, mode="r", offset=off, shape=(n,)) for f, off, n in where])


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


# The `python` corpus: source and text files. Compiled modules, data and pickles are left out.
PYTHON_SUFFIXES = (
    ".py",
    ".pyi",
    ".pyx",
    ".pxd",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cu",
    ".cuh",
    ".txt",
    ".rst",
    ".md",
)


def python_roots() -> list[Path]:
    """The Python installation's library folders: the standard library and the system-wide
    site-packages (never the user's ~/.local one, nor PYTHONPATH folders: what a machine's Python
    ships, not what a session added)."""
    import site

    paths = sysconfig.get_paths()
    roots = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)]
    roots += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    return sorted({Path(r) for r in roots if os.path.isdir(r)})


def python_files() -> list[Path]:
    """Every regular PYTHON_SUFFIXES file under python_roots(), each once (a file in a folder inside
    another root, or reached through a link, is read once), __pycache__ skipped, links to folders not
    followed; sorted by path."""
    seen: set[tuple[int, int]] = set()
    files = []
    for root in python_roots():
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):  # a file met twice keeps the first path in a fixed order
                if name.endswith(PYTHON_SUFFIXES):
                    path = os.path.join(folder, name)
                    try:
                        info = os.stat(path)
                    except OSError:  # a dangling link
                        continue
                    if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        files.append(Path(path))
    return sorted(files, key=lambda p: p.as_posix())


def _sample_order(files: list[Path]) -> list[Path]:
    """Files in a fixed pseudo-random order, so a byte cap takes a sample across the whole corpus
    instead of its alphabetical head."""
    return sorted(files, key=lambda p: hashlib.sha256(p.as_posix().encode()).digest())


def read_regular_file(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; a device, FIFO or socket is refused (it may never end)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"corpus: {path} is not a regular file")
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError as exc:
        raise ConfigError(f"corpus: cannot read {path}: {exc.strerror or exc}") from None


def _read_text_files(files: list[Path], max_bytes: int) -> list[tuple[str, np.ndarray]]:
    """Whole files (the last one cut at the cap) as byte-token documents, named by path."""
    docs, total = [], 0
    common = _common_root(files)
    for path in _sample_order(files):
        data = read_regular_file(path, max_bytes - total)
        if data:
            name = path.relative_to(common).as_posix() if common else path.name
            docs.append((name, np.frombuffer(data, dtype=np.uint8).astype(np.uint16)))
            total += len(data)
        if total >= max_bytes:
            break
    if total == 0:
        raise ConfigError(f"corpus: no readable text in {len(files)} file(s)")
    return docs


def _common_root(files: list[Path]) -> Path | None:
    if len(files) < 2:
        return files[0].parent if files else None
    return Path(os.path.commonpath([str(p) for p in files]))


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
    """One `.bin` shard, memory-mapped: modded-nanogpt header (magic, version, n_tokens) + uint16, or raw uint16.
    Only a regular file is opened (a FIFO named x.bin would block forever)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"corpus: cannot read shard {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"corpus: shard {path} is not a regular file")
    if info.st_size < 2 or info.st_size % 2:
        raise ConfigError(f"corpus: shard {path} holds {info.st_size} bytes, not a whole number of uint16 tokens")
    header = np.fromfile(path, dtype=np.int32, count=256)
    if header.size == 256 and header[0] == SHARD_MAGIC:
        n = int(header[2])
        tokens = np.memmap(path, dtype=np.uint16, mode="r", offset=256 * 4)
        if tokens.size < n:
            raise ConfigError(f"corpus: shard {path} is truncated ({tokens.size} of {n} tokens)")
        return tokens[:n]
    return np.memmap(path, dtype=np.uint16, mode="r")


def _from_shards(paths: list[Path], cfg: TrialConfig) -> TokenData:
    """Shards named *val* are the held-out set; without one, whole shards (or blocks of few shards)
    are sampled across the corpus, as for text."""
    val_paths = [p for p in paths if "val" in p.name]
    train_docs = [(p.name, read_shard(p)) for p in paths if p not in val_paths]
    if val_paths:
        val_docs = [(p.name, read_shard(p)) for p in val_paths]
    else:
        train_docs, val_docs = split_heldout(_blocks(train_docs, cfg.seq_len), cfg.val_fraction, cfg.seq_len)
    data = _token_data(train_docs, val_docs, f"shards:{cfg.corpus}", cfg, stream=ShardStream)
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


def heldout_windows(data: TokenData, n: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` fixed windows spread evenly over the whole held-out stream (so over every held-out document)."""
    starts = np.linspace(0, data.val.size - seq_len - 1, n).astype(np.int64)
    return _windows(data.val, starts, seq_len)


def val_batches(data: TokenData, cfg: TrialConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed held-out batches (the same for every trial of a sweep) for val_loss."""
    x, y = heldout_windows(data, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
    return [(x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)]


def probe_batch(data: TokenData, cfg: TrialConfig) -> np.ndarray:
    """Fixed held-out inputs for the rank probe: evenly spaced windows of the held-out stream."""
    return heldout_windows(data, cfg.probe_seqs, cfg.seq_len)[0]
