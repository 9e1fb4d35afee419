"""Paths the file system cannot hold or create, given to each command: one line, exit 2, nothing
written (Path.exists() raises OSError for a name over 255 bytes instead of answering, which was a
traceback in the sweep, the LR study, the trainer and the report)."""

from __future__ import annotations

import os

import pytest

from analysis import report
from orchestrator import lr_study, sweep
from trainer import train

LONG = "a" * 300  # over the 255 bytes a name may have on ext4, xfs, btrfs, tmpfs


def _nothing_written(tmp_path) -> None:
    assert [p.name for p in tmp_path.iterdir()] == []


def refused(capsys, command, argv) -> str:
    """stderr of a command that must refuse its input: exit 2 (returned or raised) and one line."""
    try:
        code = command(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("command", "argv", "field"),
    [
        (sweep.main, ["--config", "smoke", "--results", "{long}"], "results"),
        (sweep.main, ["--config", "smoke", "--results", "{long}/below"], "results"),
        (lr_study.main, ["--results", "{long}"], "results"),
        (train.main, ["--smoke", "--out", "{long}"], "out"),
        (report.main, ["{long}"], "results folder"),
        (report.main, ["{tmp}", "--out", "{long}"], "--out"),
    ],
)
def test_a_name_over_255_bytes_is_one_line(tmp_path, capsys, command, argv, field):
    argv = [a.format(long=tmp_path / LONG, tmp=tmp_path) for a in argv]
    err = refused(capsys, command, argv)
    assert err.startswith(f"error: {field}") and "a name in it is 300 bytes long" in err and "255" in err, err
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written


@pytest.mark.skipif(os.geteuid() != 0, reason="only root passes the writability check on /proc")
def test_a_results_folder_the_system_will_not_create_is_one_line(capsys):
    """/proc passes the checks (it exists, and root may write) but refuses a new folder."""
    err = refused(capsys, sweep.main, ["--config", "smoke", "--set", "grid.lr=[0.01]", "--results", "/proc/qkc"])
    assert err.startswith("error: results: cannot create the folder /proc/qkc/smoke"), err
