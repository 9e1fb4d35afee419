"""The report on real trainer output that is still being written, or damaged."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import split_part

ROOT = Path(__file__).resolve().parents[2]


def report(results: Path, out: Path):
    return subprocess.run(
        [sys.executable, "-m", "analysis.report", str(results), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_report_while_a_trial_writes_is_labelled_partial(tmp_path):
    results = tmp_path / "live"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--smoke",
            "--out",
            str(results),
            "--set",
            "steps=3000",
            "--set",
            "corpus=synthetic",
            "--set",
            "eval_every=20",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(results.glob("spectra/*/*.parquet"))) < 3:
            time.sleep(0.05)
        done = report(results, tmp_path / "report")
        assert proc.poll() is None, "the trial finished before the report ran; make it longer"
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 0, done.stderr
    verdict = json.loads((tmp_path / "report" / "verdict.json").read_text())
    assert verdict["partial"] is True
    assert "partial" in (tmp_path / "report" / "summary.md").read_text().lower()


@pytest.mark.slow
def test_a_truncated_part_is_named_skipped_and_the_rest_analysed(tmp_path):
    results = tmp_path / "trial"
    subprocess.run(
        [sys.executable, "-m", "trainer.train", "--smoke", "--out", str(results)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (trial,) = results.glob("metrics/*")
    parts = split_part(trial)  # a finished trial holds one part: split it as a trial still running leaves them
    victim = parts[1]  # a middle part: the trial's first and final evals stay readable
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    done = report(results, tmp_path / "report")
    assert done.returncode == 0, done.stderr
    assert victim.name in done.stdout + done.stderr
    verdict = json.loads((tmp_path / "report" / "verdict.json").read_text())
    skipped = json.dumps(verdict)
    assert victim.name in skipped
    assert (tmp_path / "report" / "collapse.csv").read_text().count("\n") > 1  # the rest was analysed
