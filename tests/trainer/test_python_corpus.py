"""The `python` corpus: every text and source file of the Python installation, site-packages
included; bigger than `stdlib`, the same on every load, whole files held out and never trained on."""

import os

import numpy as np

from trainer.config import TrialConfig
from trainer.data import (
    _blocks,
    _read_text_files,
    _stdlib_files,
    load_tokens,
    python_files,
    split_heldout,
)


def cfg(**kw):
    return TrialConfig(**{**dict(width=32, d_head=16, seq_len=16, batch_size=4, corpus="python"), **kw})


def test_python_corpus_holds_the_stdlib_and_more():
    files = python_files()
    assert files == sorted(files, key=lambda p: p.as_posix())  # a fixed order
    real = {os.path.realpath(f) for f in files}
    assert len(real) == len(files)  # each file once
    assert {os.path.realpath(f) for f in _stdlib_files()} <= real
    assert any(p.suffix in (".txt", ".rst", ".md", ".pyi", ".c", ".h") for p in files)
    assert sum(f.stat().st_size for f in files) > 1.2 * sum(f.stat().st_size for f in _stdlib_files())


def test_python_corpus_loads_bigger_than_stdlib_and_deterministic():
    stdlib = load_tokens(cfg(corpus="stdlib", max_corpus_bytes=10**10))
    cap = stdlib.train.size + stdlib.val.size + 2_000_000  # more than the whole standard library
    a = load_tokens(cfg(max_corpus_bytes=cap))
    assert a.source == "python" and cap >= a.train.size + a.val.size > stdlib.train.size + stdlib.val.size
    assert a.train.size > stdlib.train.size
    b = load_tokens(cfg(max_corpus_bytes=cap))
    assert a.corpus_hash == b.corpus_hash and np.array_equal(a.val, b.val)


def test_python_corpus_holds_out_whole_files_never_trained_on():
    data = load_tokens(cfg(max_corpus_bytes=3_000_000))
    assert len(data.heldout) >= 16 and all("[" not in name for name in data.heldout)  # whole files
    docs = _read_text_files(python_files(), 3_000_000)  # what load_tokens split, document by document
    train, val = split_heldout(_blocks(docs, 16), 0.05, 16)
    assert tuple(n for n, _ in val) == data.heldout
    assert not {n for n, _ in train} & set(data.heldout)
    assert data.train.size == sum(d.size for _, d in train) and data.val.size == sum(d.size for _, d in val)
