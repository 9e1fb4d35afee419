"""Corpora: the stdlib default, text folders, token shards, synthetic; batches keyed by step."""

import numpy as np
import pytest

from trainer.config import ConfigError, TrialConfig
from trainer.data import SHARD_MAGIC, load_tokens, probe_batch, split_heldout, train_batch, val_batches


def cfg(**kw):
    base = dict(width=32, d_head=16, seq_len=16, batch_size=4)
    base.update(kw)
    return TrialConfig(**base)


def test_stdlib_corpus_is_real_python_and_deterministic():
    a = load_tokens(cfg(max_corpus_bytes=200_000))
    b = load_tokens(cfg(max_corpus_bytes=200_000))
    assert a.corpus_hash == b.corpus_hash
    text = bytes(a.train[:5000].astype(np.uint8)).decode("utf-8", errors="replace")
    assert "def " in text or "import " in text
    assert 200_000 * 0.05 <= a.val.size <= 200_000 * 0.05 * 1.5


def test_stdlib_heldout_is_whole_files_sampled_across_the_corpus():
    data = load_tokens(cfg(max_corpus_bytes=4_000_000))
    assert len(data.heldout) >= 16
    folders = {name.split("/")[0] for name in data.heldout}
    assert len(folders) >= 4  # not one corner of the library (the sorted tail is encodings/cp*.py)
    assert sum(name.startswith("encodings/") for name in data.heldout) <= 2
    assert all("[" not in name for name in data.heldout)  # whole files, not blocks
    described = data.describe()
    assert described["heldout_documents"] == list(data.heldout) and described["heldout_tokens"] == data.val.size


def test_heldout_documents_are_never_trained_on():
    rng = np.random.default_rng(0)
    docs = [
        (f"doc{i}.py", rng.integers(0, 256, size=int(rng.integers(200, 5000))).astype(np.uint16)) for i in range(100)
    ]
    train, val = split_heldout(docs, 0.1, 16)
    train_names, val_names = {n for n, _ in train}, {n for n, _ in val}
    assert not train_names & val_names and len(train_names | val_names) == 100
    assert len(val) >= 10
    held = sum(d.size for _, d in val)
    assert held >= 0.1 * sum(d.size for _, d in docs)
    assert split_heldout(docs, 0.1, 16)[1][0][0] == val[0][0]  # deterministic
    shuffled = docs[::-1]
    assert {n for n, _ in split_heldout(shuffled, 0.1, 16)[1]} == val_names  # by identity, not by position


def test_text_folder_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 200)
    (tmp_path / "b.txt").write_text("goodbye moon " * 200)
    data = load_tokens(cfg(corpus=str(tmp_path)))
    assert data.train.max() < 256 and data.train.size + data.val.size <= 12 * 200 + 13 * 200
    assert data.val.size >= 0.05 * (12 * 200 + 13 * 200)
    assert all("[" in name for name in data.heldout)  # two files are too few: held out as blocks


def test_modded_nanogpt_shards_with_header_and_raw_nanogpt_bins(tmp_path):
    tokens = np.arange(5000, dtype=np.uint16) % 1000
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [SHARD_MAGIC, 1, tokens.size]
    with open(tmp_path / "fineweb_train_000001.bin", "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    tokens[:800].tofile(tmp_path / "fineweb_val_000000.bin")  # raw nanoGPT layout
    data = load_tokens(cfg(corpus=str(tmp_path), vocab_size=1024))
    assert np.array_equal(data.train, tokens) and data.val.size == 800
    with pytest.raises(ConfigError, match="vocab_size"):
        load_tokens(cfg(corpus=str(tmp_path), vocab_size=256))


def test_synthetic_is_seeded_and_learnable_structure():
    data = load_tokens(cfg(corpus="synthetic"))
    assert data.corpus_hash == load_tokens(cfg(corpus="synthetic")).corpus_hash
    pairs = set(zip(data.train[:-1][:10000].tolist(), data.train[1:][:10000].tolist()))
    assert len(pairs) <= 256 * 4  # each token has at most 4 successors


def test_batches_are_a_pure_function_of_seed_and_step():
    data = load_tokens(cfg(corpus="synthetic"))
    c = cfg(corpus="synthetic")
    x1, y1 = train_batch(data, c, 7)
    x2, y2 = train_batch(data, c, 7)
    assert np.array_equal(x1, x2) and np.array_equal(x1[:, 1:], y1[:, :-1])
    assert not np.array_equal(train_batch(data, c, 8)[0], x1)
    assert not np.array_equal(train_batch(data, cfg(corpus="synthetic", seed=1), 7)[0], x1)
    assert len(val_batches(data, c)) == c.eval_batches
    assert probe_batch(data, c).shape == (c.probe_seqs, c.seq_len)


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="corpus"):
        load_tokens(cfg(corpus=str(tmp_path / "empty.txt")))
