"""The sweep driver dies hard (SIGKILL, an OOM kill, a lost SSH session without tmux) and
`--resume` finishes the sweep: finished trials are not run again, every step of every trial is in
the dataset exactly once, and trials.parquet ends with one settled row per grid point.

A resume with a different config is refused, and the refusal leaves every file as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from orchestrator import sweep
from orchestrator.spec import expand, load_spec
from tests.helpers import cli_args, completed_ids, run_logged, sweep_command, write_spec
from trainer.schema import ATTEMPTS_FILE, METRICS_KEY, SPECTRA_KEY, SWEEP_JSON, TRIALS_FILE

pytestmark = pytest.mark.slow

STEPS, EVAL, CKPT = 600, 50, 100
TRAIN = {"steps": STEPS, "warmup": 20, "eval_every": EVAL, "checkpoint_every": CKPT, "corpus": "synthetic"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a sweep folder and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def planned_ids(folder: Path) -> list[str]:
    return json.loads((folder / SWEEP_JSON).read_text())["trial_ids"]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions `text` (here: the driver's private Ray temp folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def wait_until_mid_trial(log: Path, folder: Path, proc, timeout: float) -> tuple[set[str], str]:
    """Until one trial has completed and a later one has written its third checkpoint; returns (completed
    ids, the later trial's id). Tune records its experiment state (what --resume restores) at every
    `num_to_keep` = 2nd checkpoint, so by then it has recorded the second one (step 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = completed_ids(log)
        if done:
            for ckpt in folder.glob("tune/run-*/*/checkpoint_*"):
                trial_dir = ckpt.parent.name
                if int(ckpt.name.rsplit("_", 1)[1]) >= 2 and not any(trial_dir.startswith(t) for t in done):
                    return done, next(t for t in planned_ids(folder) if trial_dir.startswith(t))
        time.sleep(0.05)
    raise AssertionError(f"no trial was mid-way after {timeout} s:\n{log.read_text()[-3000:]}")


def test_driver_sigkill_then_resume_finishes_without_rerunning_or_duplicating(
    tmp_path, ray_tmp, subprocess_env, python
):
    config = write_spec(
        tmp_path,
        name="crash",
        grid={"optimizer": "adamw", "qk_norm": "none", "seed": [0, 1, 2]},
        train=TRAIN,
        resources={"max_concurrent": 1},
    )
    # the driver's private Ray lives under here (ray_tmp: short enough for Ray's sockets)
    env = {**subprocess_env, "RAY_TMPDIR": str(ray_tmp)}
    command = sweep_command(config, tmp_path, "--local", "--num-cpus", "1")
    folder = tmp_path / "crash"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        # Its own session: the driver and every Ray process it starts share one process group.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            done_first, midway = wait_until_mid_trial(log, folder, proc, 240)
            time.sleep(0.2)  # some steps past that checkpoint, which the resume replays without repeating rows
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, no chance to clean up
            proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (group_alive(proc.pid) or processes_mentioning(str(ray_tmp))):
        time.sleep(0.2)
    for pid in processes_mentioning(str(ray_tmp)):  # never leave a stray Ray behind, even if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not group_alive(proc.pid), "Ray processes of the killed driver outlived it"
    assert proc.returncode == -signal.SIGKILL

    planned = {c.trial_id() for c in expand(load_spec(config)[0])}
    before = pl.read_parquet(folder / TRIALS_FILE)
    assert done_first <= set(before.filter(pl.col("status") == "completed")["trial_id"])
    assert "running" in set(before["status"])  # the killed driver could not settle its rows
    assert json.loads((folder / SWEEP_JSON).read_text())["finished_at"] is None
    kept = before.filter(pl.col("trial_id").is_in(list(done_first))).sort("trial_id")

    # A resume with an edited config is refused, before Ray starts, and touches nothing.
    files = snapshot(folder)
    (tmp_path / "edited").mkdir()
    edited = write_spec(
        tmp_path / "edited",
        name="crash",
        grid={"optimizer": "adamw", "qk_norm": "none", "seed": [0, 1, 2]},
        train={**TRAIN, "steps": STEPS + 100},
        resources={"max_concurrent": 1},
    )
    argv = [str(edited) if arg == str(config) else arg for arg in command]
    ray_folders = sorted(ray_tmp.glob("*/*"))  # <ray_tmp>/qkc-<uid>/r????????[.lock]: one per Ray started
    refused = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert sorted(ray_tmp.glob("*/*")) == ray_folders  # no Ray was started for it
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: --resume") and refused.stderr.count("\n") == 1, refused.stderr
    assert f"train.steps: {STEPS} -> {STEPS + 100}" in refused.stderr
    assert snapshot(folder) == files

    # The same config with --resume: a fresh driver (and a fresh private Ray) finishes the sweep.
    code, output = run_logged([*command, "--resume"], env, tmp_path / "resume.log", 300)
    assert code == 0, output[-4000:]

    trials = pl.read_parquet(folder / TRIALS_FILE).sort("trial_id")
    assert sorted(trials["trial_id"]) == sorted(planned)  # one row per grid point
    assert set(trials["status"]) == {"completed"} and trials["error"].is_null().all()
    assert (trials["steps_done"] == STEPS).all()
    # Finished before the kill: not run again (their rows are exactly as they were) ...
    assert trials.filter(pl.col("trial_id").is_in(list(done_first))).equals(kept)
    attempts = pl.read_parquet(folder / ATTEMPTS_FILE)
    for trial_id in done_first:
        ran = attempts.filter((pl.col("trial_id") == trial_id) & (pl.col("outcome") != "skipped"))
        assert ran["outcome"].to_list() == ["completed"], attempts
    # ... the one killed mid-way continues from a checkpoint ...
    resumed = attempts.filter((pl.col("trial_id") == midway) & pl.col("resumed_step").is_not_null())
    assert resumed.height == 1 and resumed["resumed_step"][0] >= 2 * CKPT, attempts
    assert resumed["resumed_step"][0] % CKPT == 0, attempts
    # ... and no attempt is left open.
    assert attempts["outcome"].is_not_null().all(), attempts
    meta = json.loads((folder / SWEEP_JSON).read_text())
    assert meta["finished_at"] is not None and len(meta["runs"]) == 2

    metrics = pl.read_parquet(folder / "metrics" / "**" / "*.parquet", hive_partitioning=False)
    spectra = pl.read_parquet(folder / "spectra" / "**" / "*.parquet", hive_partitioning=False)
    assert metrics.height == metrics.unique(list(METRICS_KEY)).height
    assert spectra.height == spectra.unique(list(SPECTRA_KEY)).height
    for trial_id in planned:
        steps = metrics.filter((pl.col("trial_id") == trial_id) & (pl.col("name") == "train_loss"))["step"]
        assert steps.sort().to_list() == list(range(STEPS)), trial_id
        evals = metrics.filter((pl.col("trial_id") == trial_id) & (pl.col("name") == "val_loss"))["step"]
        assert evals.sort().to_list() == list(range(0, STEPS, EVAL)) + [STEPS], trial_id


def test_resume_with_a_changed_train_setting_is_refused_and_changes_nothing(tmp_path, ray_session, capsys):
    grid = {"optimizer": "adamw", "qk_norm": "none", "seed": 0}
    config = write_spec(tmp_path, name="edit", grid=grid, train={"steps": 20, "warmup": 2})
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    folder = tmp_path / "edit"
    files = snapshot(folder)
    capsys.readouterr()

    (tmp_path / "edited").mkdir()
    edited = write_spec(tmp_path / "edited", name="edit", grid=grid, train={"steps": 30, "warmup": 2})
    assert sweep.main(cli_args(edited, tmp_path, "--resume")) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "--resume" in captured.err and str(edited) in captured.err
    assert "train.steps: 20 -> 30" in captured.err  # says what changed
    assert captured.out == ""
    assert snapshot(folder) == files  # sweep.json, trials.parquet, attempts.parquet, every part: byte-identical


def test_a_new_driver_settles_what_a_killed_one_left_open(tmp_path):
    """Whatever a SIGKILLed driver left behind — a trial row still 'running', an attempt without an
    outcome — is settled by the next driver before it runs anything (not left open forever)."""
    import pyarrow as pa

    from orchestrator.tune.monitor import SweepMonitor
    from trainer.config import TrialConfig
    from trainer.schema import ATTEMPTS_SCHEMA
    from trainer.storage import ResultsDir
    from trainer.trials import read_trials, write_trials
    from trainer.trials import trial_row as planned_row

    results = ResultsDir(tmp_path)
    cfg = TrialConfig(corpus="synthetic", width=32, d_head=16)
    tid = cfg.trial_id()
    write_trials(results, [planned_row(cfg, "abc", status="running")])
    open_attempt = {name: None for name in ATTEMPTS_SCHEMA.names}
    open_attempt.update(
        trial_id=tid,
        attempt="a1",
        node_id="n1",
        resumed_step=None,
        last_step=120,
        started_at="2026-01-01T00:00:00+00:00",
    )
    results.write_table(pa.Table.from_pylist([open_attempt], schema=ATTEMPTS_SCHEMA), ATTEMPTS_FILE)

    SweepMonitor(results=results, plan={tid: cfg}, n_planned=1, to_run={tid}, verbose=False)

    (row,) = read_trials(results)
    assert row["status"] == "failed" and "interrupted" in row["error"]
    (attempt,) = results.read_table(ATTEMPTS_FILE).to_pylist()
    assert attempt["outcome"] == "interrupted" and attempt["ended_at"] is not None
    assert attempt["last_step"] == 120  # what it had done is kept
