"""The features' read-ahead (analysis.features.ReadAhead): the next batch of part files is read in a
second thread while the report reduces the one before it. What a user checks: the same features
as a plain read, also when a part of a batch read ahead fails (it is skipped and named, as in a
plain read)."""

from __future__ import annotations

import threading

import pytest

from analysis import features
from analysis.features import build_features
from analysis.loading import load_results
from tests.analysis.test_analysis_reading import small, vanish_after_listing


@pytest.fixture
def sweep(tmp_path):
    return small(tmp_path / "sweep")


def _features(sweep, monkeypatch, *, ahead: bool):
    """The features of `sweep`, one trial per batch, read ahead or not; and the threads that read."""
    monkeypatch.setattr(features, "BATCH_ROWS", 1)  # every trial its own batch: five reads ahead
    monkeypatch.setattr(features, "cpus", lambda: 2 if ahead else 1)
    threads = []
    read = features._read_batch

    def recorded(parts):
        threads.append(threading.current_thread() is threading.main_thread())
        return read(parts)

    monkeypatch.setattr(features, "_read_batch", recorded)
    res = load_results(sweep)
    return res, build_features(res), threads


def _frames(f):
    return [f.curves, f.activation, f.layers, f.val_loss, f.ends, f.logits, f.clip]


def test_read_ahead_gives_the_features_of_a_plain_read(sweep, monkeypatch):
    _, plain, threads = _features(sweep, monkeypatch, ahead=False)
    assert len(threads) == 6 and all(threads)  # six batches, each read where it is reduced
    _, ahead, threads = _features(sweep, monkeypatch, ahead=True)
    assert threads.count(False) == 5  # every batch but the first read in the second thread
    for a, b in zip(_frames(plain), _frames(ahead), strict=True):
        assert a.equals(b) and a.height > 0 or a.height == b.height == 0


def test_a_part_that_fails_in_a_batch_read_ahead_is_skipped_and_named(sweep, monkeypatch):
    """A part removed after the listing, in the fourth batch: its read ahead fails in the second
    thread, the failure is met where that batch is read, and the batch is read again without it."""
    folders = sorted((sweep / "metrics").iterdir())
    victim = sorted(folders[3].glob("*.parquet"))[-1]
    saved = victim.read_bytes()
    vanish_after_listing(monkeypatch, [victim])
    res_ahead, ahead, threads = _features(sweep, monkeypatch, ahead=True)
    assert threads.count(False) == 5
    assert [p for p, _ in res_ahead.skipped] == [str(victim)]
    victim.write_bytes(saved)
    res_plain, plain, _ = _features(sweep, monkeypatch, ahead=False)
    assert [p for p, _ in res_plain.skipped] == [str(victim)]
    for a, b in zip(_frames(plain), _frames(ahead), strict=True):
        assert a.equals(b)
    assert ahead.curves.height > 0
