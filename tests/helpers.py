"""Helpers shared by test modules in several folders: sweep files, subprocess runs, refusal checks."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.spec.files import SWEEPS_DIR

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SMOKE = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())  # 60 trials: its report decides
# The tests' smoke sweep: the bundled one's arms and trial settings at one LR and two seeds (8 trials).
# Tests build their sweeps from it (write_spec, sweep_with); a test that runs the bundled file by name
# adds SMOKE_SET (the command line) or SMOKE_OVERRIDES (orchestrator.run_sweep) to run these 8 trials.
# Only tests/orchestrator/test_orchestrator_sweep.py runs all of sweeps/smoke.yaml, with its report.
SMOKE_OVERRIDES = ["grid.lr=[0.01]", "grid.seed=[0,1]"]
SMOKE_SET = [arg for item in SMOKE_OVERRIDES for arg in ("--set", item)]
SMOKE = copy.deepcopy(BUNDLED_SMOKE)
SMOKE["grid"].update(lr=[0.01], seed=[0, 1])
SMOKE_SWEEP = SMOKE  # the name tests/reliability uses
SECONDS = 15  # a refusal: validation is milliseconds; the rest is Python importing ray/torch


def cli_args(config, results, *extra) -> list[str]:
    """The arguments of `orchestrator.sweep` (or `orchestrator.lr_study`): --config CONFIG --results
    RESULTS, then `extra`; every item as a string."""
    return ["--config", str(config), "--results", str(results), *map(str, extra)]


def sweep_command(config, results, *extra) -> list[str]:
    """A sweep as a subprocess: `python -m orchestrator.sweep` with `cli_args`."""
    return [sys.executable, "-m", "orchestrator.sweep", *cli_args(config, results, *extra)]


def write_spec(folder: Path, name: str = "t", *, grid=None, train=None, **top) -> Path:
    """A sweep file: the smoke sweep with `grid`/`train` entries and top-level keys replaced."""
    spec = copy.deepcopy(SMOKE)
    spec["name"] = name
    spec["grid"].update(grid or {})
    spec["train"].update(train or {})
    for key, value in top.items():
        if value is None:
            spec.pop(key, None)
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_with(*, top=None, grid=None, train=None, drop=()):
    """The smoke sweep with some entries replaced (a dict is merged one level deep)."""
    spec = copy.deepcopy(SMOKE)
    for key, value in (top or {}).items():
        spec[key] = value
    if grid:
        spec["grid"].update(grid)
    if train:
        spec["train"].update(train)
    for key in drop:
        spec.pop(key)
    return yaml.safe_dump(spec)


def completed_ids(log: Path) -> set[str]:
    """Trial ids the monitor announced as completed (`[0:00:07] completed <id> ...`)."""
    return {line.split()[2] for line in log.read_text().splitlines() if line.split()[1:2] == ["completed"]}


def wait_for(predicate, proc, timeout: float) -> bool:
    """Poll `predicate` until it holds (True), the process ends or time runs out (False): on a loaded
    machine wait for the state itself, never a fixed time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_logged(command, env, log, timeout):
    """Run `command` with its output in the file `log` (never a pipe: Ray daemons may inherit it and
    keep it open); on timeout kill its process group (it and the Ray processes it started)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{command[:3]} timed out after {timeout} s:\n{log.read_text()[-4000:]}")
    return code, log.read_text()


def assert_refused(proc, elapsed, needles, ray_tmp: Path):
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and proc.stdout == "", err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line:\n{err}"
    for needle in needles:
        assert needle in err, (needle, err)
    assert not any(ray_tmp.iterdir()), "Ray was started"
    assert elapsed < SECONDS, f"took {elapsed:.1f} s"


def split_part(trial_folder: Path, pieces: int = 3) -> list[Path]:
    """Undo the compaction of a finished trial's folder (metrics/trial_id=<id>/): its one part is
    split by step into `pieces` parts named as the sink names them, as a trial that stopped midway
    leaves them. Returns the parts, first steps first."""
    (whole,) = trial_folder.glob("*.parquet")
    table = pq.read_table(whole)
    steps = np.unique(table.column("step").to_numpy())
    out = []
    for chunk in np.array_split(steps, pieces):
        first, last = int(chunk[0]), int(chunk[-1])
        mask = pc.and_(pc.greater_equal(table.column("step"), first), pc.less_equal(table.column("step"), last))
        out.append(trial_folder / f"part-{first:09d}-{last:09d}.parquet")
        pq.write_table(table.filter(mask), out[-1])
    whole.unlink()
    return out
