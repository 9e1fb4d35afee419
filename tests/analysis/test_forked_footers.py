"""analysis.forked: the footers of a large study are read in two processes (half by a forked
child), with the same parts, skipped files and order as in one, whatever happens to the child."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from analysis import forked
from analysis.contract import METRICS_PL, check_parts
from analysis.paths import list_part_files
from benchmarks.synthetic_results import SyntheticSpec, write_results
from trainer.schema import METRICS_DIR

pytestmark = pytest.mark.skipif(not forked.can_fork(), reason="needs Linux and two CPUs")


@pytest.fixture
def sweep(tmp_path):
    folder = tmp_path / "sweep"
    spec = SyntheticSpec(widths=(64, 128), lrs=(3e-3, 1e-2), seeds=(0, 1, 2), steps=100, eval_every=25)
    spec.n_duplicated, spec.n_truncated, spec.junk_files = 2, 1, True  # a truncated and a junk part: skipped
    write_results(spec, folder)
    parts = sorted((folder / METRICS_DIR).rglob("*.parquet"))
    table = pq.read_table(parts[-1])
    moved = parts[0].parent / "part-from-another-trial.parquet"  # a misplaced part: skipped, named
    pq.write_table(table, moved)
    return [e.path for e in list_part_files(folder / METRICS_DIR)]


def test_footers_read_in_two_processes_are_those_read_in_one(sweep, monkeypatch):
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    alone = check_parts(sweep, METRICS_PL)
    monkeypatch.undo()
    monkeypatch.setattr(forked, "FORK_AT", 2)
    children = []
    fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: children.append(1) or fork())
    shared = check_parts(sweep, METRICS_PL)
    assert children == [1]  # the second half was read by a forked child
    assert shared == alone
    good, skipped = shared
    assert len(good) > 10 and any("another" in why or "trial_id" in why for _, why in skipped)
    assert any("unreadable" in why for _, why in skipped)


def test_what_a_dead_child_did_not_send_is_read_here(sweep, monkeypatch):
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    alone = check_parts(sweep, METRICS_PL)
    monkeypatch.undo()
    parent = os.getpid()

    def dies_in_the_child(path):
        if os.getpid() != parent:
            os._exit(9)  # the child stops without a word
        return read(path)

    from analysis import contract

    read = contract._read_footer
    monkeypatch.setattr(contract, "_read_footer", dies_in_the_child)
    monkeypatch.setattr(forked, "FORK_AT", 2)
    assert check_parts(sweep, METRICS_PL) == alone


def test_halves_come_back_in_order():
    items = list(range(5_001))
    assert forked.map_halves(lambda x: x * x, items, lambda r: r, lambda j: j, fork_at=2) == [x * x for x in items]
