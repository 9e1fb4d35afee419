"""benchmarks/device_run.sh, the GPU lease in one call, in its --dry mode on a CPU: the GPU check
(tiny), chunks of the smoke sweep under the time guard, one pack of them, and what goes back
within 8 files of 16 MiB."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator import pack
from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "device_run.sh"


def run(tmp_path: Path, env: dict, *args: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = {**env, "OUT": str(out), "RESULTS": str(tmp_path / "results")}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc, out


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dry_run_benchmarks_runs_a_chunk_and_packs_it(tmp_path, env):
    proc, out = run(tmp_path, env, "--chunks", "1", "--bench-budget", "30")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert {"log", "bench.txt", "bench.json", "calibration.json", "chunks.pack.json"} <= set(files)
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    assert "summary:" in (out / "bench.txt").read_text()
    log = (out / "log").read_text()
    assert "chunk 1/4: exit 0" in log and "OUT: " in log and ": ok" in log
    assert pack.main(["--unpack", str(out), str(tmp_path / "back")]) == 0
    import pyarrow.parquet as pq

    trials = pq.read_table(tmp_path / "back" / "smoke-chunk1of4" / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}


def test_the_time_guard_starts_no_chunk_that_cannot_finish(tmp_path, env):
    proc, out = run(tmp_path, env, "--no-bench", "--chunks", "1 2", "--minutes", "0.2", timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    log = (out / "log").read_text()
    assert "chunk 1/4: predicted" in log and "stopping here" in log and "chunks run here: 0" in log
    assert not list(out.glob("chunks.*")) and not (tmp_path / "results" / "smoke-chunk1of4").exists()
