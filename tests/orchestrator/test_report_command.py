"""The report command a run prints at its end pastes into a shell as it is (issue 21): the results
path is quoted, so one with spaces, `$`, quotes or backticks reaches the report unchanged."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator import pack, sweep
from tests.helpers import cli_args, write_spec
from trainer import train

WEIRD = "my results $HOME 'single' \"double\" `echo hi` a&b"


def pasted(out: str, marker: str = "report:") -> list[str]:
    """The words a POSIX shell makes of the command printed after `marker` (the last such line)."""
    line = [ln for ln in out.splitlines() if marker in ln][-1]
    command = line.split(marker, 1)[1].strip()
    assert command.startswith("python -m analysis.report "), line
    words = subprocess.run(["sh", "-c", f"printf '%s\\0' {command}"], capture_output=True, text=True, check=True)
    return words.stdout.split("\0")[:-1]


def test_a_trial_and_an_unpacked_folder_print_a_report_command_that_pastes(tmp_path, capsys):
    folder = tmp_path / WEIRD / "tiny"
    argv = ["--smoke", "--out", str(folder), "--set", "steps=6", "--set", "eval_every=3"]
    assert train.main([*argv, "--set", "max_corpus_bytes=300000"]) == 0
    assert pasted(capsys.readouterr().out) == ["python", "-m", "analysis.report", str(folder)]

    out, dest = tmp_path / "out", tmp_path / f"back {WEIRD}"
    assert pack.main([str(folder), str(out)]) == 0
    assert pack.main(["--unpack", str(out), str(dest)]) == 0
    assert pasted(capsys.readouterr().out) == ["python", "-m", "analysis.report", str(dest / "tiny")]


@pytest.mark.slow
def test_a_sweep_prints_a_report_command_that_pastes(tmp_path, ray_session, capsys):
    results = tmp_path / WEIRD
    config = write_spec(
        tmp_path, name="quoted", grid={"optimizer": "adamw", "qk_norm": "none", "seed": 0}, train={"steps": 10}
    )
    assert sweep.main(cli_args(config, results, "--quiet")) == 0
    assert pasted(capsys.readouterr().out) == ["python", "-m", "analysis.report", str(results / "quoted")]
    assert sweep.main(cli_args(config, results, "--quiet")) == 0  # again: everything already finished
    out = capsys.readouterr().out
    assert "already finished" in out
    assert pasted(out) == ["python", "-m", "analysis.report", str(results / "quoted")]
