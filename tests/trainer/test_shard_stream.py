"""Token shards on a cluster: a shard corpus is a ShardStream of memory maps, never concatenated,
and what Ray ships to each trial is file names and offsets, mapped again on the receiving node."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np

from trainer import data as D
from trainer.config import TrialConfig


def write_shards(folder, sizes, val=False):
    rng = np.random.default_rng(0)
    for i, n in enumerate(sizes):
        tokens = rng.integers(0, 300, size=n).astype(np.uint16)
        header = np.zeros(256, np.int32)
        header[:3] = (D.SHARD_MAGIC, 1, n)
        name = f"fineweb_{'val' if val and i == 0 else 'train'}_{i:06d}.bin"
        (folder / name).write_bytes(header.tobytes() + tokens.tobytes())


def test_shards_stay_mapped_and_pickle_as_file_offsets(tmp_path):
    write_shards(tmp_path, [40_000, 50_001, 60_003])
    cfg = TrialConfig(corpus=str(tmp_path), vocab_size=512, seq_len=64)
    data = D.load_tokens(cfg)
    assert isinstance(data.train, D.ShardStream) and all(isinstance(p, np.memmap) for p in data.train.parts)
    train, val = np.concatenate(data.train.parts), np.concatenate(data.val.parts)
    # the hash is the one of the concatenated streams (as before shards were streamed)
    assert data.corpus_hash == hashlib.sha256(train.tobytes() + b"|" + val.tobytes()).hexdigest()[:16]
    blob = pickle.dumps(data)
    assert len(blob) < 10_000 < train.nbytes  # names and offsets, not tokens
    again = pickle.loads(blob)
    assert np.array_equal(np.concatenate(again.train.parts), train)
    assert np.array_equal(np.concatenate(again.val.parts), val)
    for step in range(3):
        np.testing.assert_array_equal(D.train_batch(again, cfg, step)[0], D.train_batch(data, cfg, step)[0])
    idx = np.arange(data.train.size)
    assert np.array_equal(data.train[idx], train)  # windows across shard boundaries read right


def test_val_shard_is_the_heldout_stream(tmp_path):
    write_shards(tmp_path, [30_000, 40_000, 40_000], val=True)
    data = D.load_tokens(TrialConfig(corpus=str(tmp_path), vocab_size=512, seq_len=64))
    assert data.val.size == 30_000 and data.train.size == 80_000
    assert data.max_token < 300
