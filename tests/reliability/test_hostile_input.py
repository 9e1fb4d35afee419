"""Issue 21: hostile or unlucky input.

Each test names its item of the issue and fails on the code before the fix. Every exit for a known
failure is one line on stderr (no traceback) with status 2 (bad input) or 3 (the machine or its
environment failed), and no data already written is lost. Refusals are driven through
`orchestrator.sweep.main` in-process (no Ray is started for them); the two sweeps that must run go
on the session's shared local Ray, and the paused-driver test runs real drivers in subprocesses.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator import sweep
from orchestrator.spec import expand
from orchestrator.spec.sweep_file import SweepSpec
from orchestrator.spec.validation import parse_model
from tests.helpers import ROOT, SMOKE, cli_args, sweep_command, write_spec
from trainer.safeio import EXIT_ENVIRONMENT
from trainer.storage import ResultsDir

ONE = {"optimizer": "adamw", "qk_norm": "none", "seed": 0}  # one trial of the smoke sweep
FAST = {"corpus": "synthetic", "steps": 20, "warmup": 2, "eval_every": 10, "checkpoint_every": 10}


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line:\n{err}"
    return err


def refused(capsys, argv, code: int = 2) -> str:
    got = sweep.main(argv)
    captured = capsys.readouterr()
    assert got == code, (got, captured.out[-2000:], captured.err[-2000:])
    return one_line(captured.err)


# ==== item 9: a results folder holds one configuration =============================================


@pytest.mark.slow
def test_item9_a_rerun_with_other_settings_is_refused_and_the_same_one_runs(tmp_path, ray_session, capsys):
    config = write_spec(tmp_path, name="one", grid=ONE, train=FAST)
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    folder = tmp_path / "one"
    files = snapshot(folder)
    capsys.readouterr()

    # A changed train setting without --resume (with it: test_reliability_driver.py): refused, naming it.
    err = refused(capsys, cli_args(config, tmp_path, "--set", "steps=30"))
    assert "already holds sweep 'one'" in err and "train.steps=20" in err and "train.steps=30" in err
    assert "new name" in err and "--results" in err
    assert snapshot(folder) == files
    # A grid that leaves out the trial already there (another LR): refused, naming the axis.
    err = refused(capsys, cli_args(config, tmp_path, "--set", "grid.lr=[0.02]"))
    assert "grid.lr" in err and "0.02" in err
    assert snapshot(folder) == files

    # The same configuration again (also with --resume, also with an output-only switch): runs, no trial again.
    for extra in ([], ["--resume"], ["--set", "save_final=true"]):
        assert sweep.main(cli_args(config, tmp_path, "--quiet", *extra)) == 0, extra
        assert "already finished" in capsys.readouterr().out
    assert pq.read_table(folder / "trials.parquet").num_rows == 1


# ==== item 10: Ray's temporary folder is private and holds no secret ===============================

SECRET = "fake-secret-7f3a9c2e1b"  # a value, not a name: searched for in every file Ray wrote


@pytest.mark.slow
def test_item10_the_ray_temp_folder_is_private_and_no_secret_reaches_it(tmp_path, ray_session, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-token")
    monkeypatch.setenv("QKC_TEST_PASSWORD", SECRET + "-pw")
    config = write_spec(tmp_path, name="env", grid=ONE, train=FAST)
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0, capsys.readouterr()

    leaf = Path(ray_session.temp_dir)
    logs = [p for p in leaf.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.startswith("runtime_env_agent") for p in logs), "Ray's runtime env agent log not found"
    leaked = [str(p) for p in logs if SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked
    # Ray makes its own folder 0777 (again whenever one of its processes starts): the per-user folder
    # above it is what keeps other users out.
    info = os.lstat(leaf.parent)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == os.getuid() and leaf.parent.name == f"qkc-{os.getuid()}"


def test_item10_tune_forwards_no_secret_looking_variable_to_its_workers(monkeypatch):
    from ray.tune.execution import class_cache

    from orchestrator.tune import tuner  # noqa: F401 - importing it takes the secrets out of Tune's list

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    assert not {n for n in class_cache.ENV_VARS_TO_PROPAGATE if n.startswith("AWS_")}

    class Trainable:
        pass

    remote = class_cache._ActorClassCache().get(Trainable)
    env_vars = remote._default_options["runtime_env"]["env_vars"]
    assert SECRET not in json.dumps(env_vars), env_vars


@pytest.fixture
def short_root():
    """A short folder for Ray's temporary folders (pytest's tmp_path is too long for Ray's sockets)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="q21", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_item10_a_killed_drivers_leftover_folder_is_cleaned_and_a_live_one_kept(short_root):
    from orchestrator.tune.runtime import private_temp_dir, release_temp_dir

    root = short_root
    first = private_temp_dir(str(root))  # a live driver's folder: its lock is held
    private = Path(first.path).parent
    assert private.parent == root
    assert stat.S_IMODE(os.lstat(private).st_mode) == 0o700
    # What a SIGKILLed driver leaves: its folder (Ray's logs in it) and an unlocked lock file, not fresh.
    dead = private / "rdeadbeef"
    (dead / "session_x" / "logs").mkdir(parents=True)
    (dead / "session_x" / "logs" / "runtime_env_agent.log").write_text("leftover")
    (private / "rdeadbeef.lock").write_text("")
    old = time.time() - 3600
    os.utime(private / "rdeadbeef.lock", (old, old))
    # Not ours to judge: a folder with no lock file, and anything not named like our folders.
    (private / "rnolock00").mkdir()
    (private / "other").mkdir()

    second = private_temp_dir(str(root))
    assert not dead.exists() and not (private / "rdeadbeef.lock").exists()
    assert Path(first.path).is_dir() and (private / "rnolock00").is_dir() and (private / "other").is_dir()
    for handle in (first, second):
        release_temp_dir(handle)
        assert not Path(handle.path).exists() and not Path(handle.path + ".lock").exists()


def test_item10_a_per_user_folder_that_is_not_private_is_refused(tmp_path, short_root):
    from orchestrator.tune.runtime import private_temp_dir
    from trainer.config import ConfigError

    root = short_root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / f"qkc-{os.getuid()}").symlink_to(elsewhere)  # planted by someone else
    with pytest.raises(ConfigError, match="symlink"):
        private_temp_dir(str(root))
    assert not any(elsewhere.iterdir())


# ==== item 11: a driver that lost its lock stops ===================================================


def test_item11_a_lost_lock_is_noticed_before_the_next_write_and_by_the_heartbeat(tmp_path):
    from orchestrator.tune.lock import LOCK_FILE, DriverLock, LockLost, check_held

    results, quiet = ResultsDir(tmp_path), open(os.devnull, "w")
    lost = []
    first = DriverLock(results, "first", heartbeat_s=0.2, on_lost=lambda lock, holder: lost.append(holder))
    with first:
        first._stop.set()  # no heartbeat, as in a driver paused with SIGSTOP
        first._thread.join()
        first._stop.clear()
        time.sleep(0.5)  # older than the second driver's stale limit (injected: 0.3 s instead of 60)
        second = DriverLock(results, "second", stale_s=0.3, stream=quiet).acquire()
        try:
            with pytest.raises(LockLost):
                check_held(results)  # the first driver's next ledger write: its lock is not confirmed lately
            assert lost and all(h["token"] == second.token for h in lost)
        finally:
            second.release()
    assert not (tmp_path / LOCK_FILE).exists()

    # A driver whose heartbeat runs finds out at its next beat.
    lost.clear()
    with DriverLock(results, "first", heartbeat_s=0.1, on_lost=lambda lock, holder: lost.append(holder)):
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "other"}))
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost and lost[0]["token"] == "other"
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "other"  # left to its holder


@pytest.mark.slow
def test_item11_a_paused_driver_that_lost_its_lock_stops_with_one_line(tmp_path, env):
    from orchestrator.tune.lock import LOCK_FILE, DriverLock

    spec = copy.deepcopy(SMOKE)
    spec["grid"].update(ONE)
    spec["train"].update(corpus="synthetic", steps=4000, warmup=4, eval_every=100, checkpoint_every=100)
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    folder = results / "smoke"
    argv = sweep_command(config, results, "--local", "--num-cpus", "1", "--quiet")
    log = tmp_path / "first.log"
    with open(log, "w") as out, open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            trials = folder / "trials.parquet"
            if trials.exists() and any(r["status"] == "running" for r in pq.read_table(trials).to_pylist()):
                break
            time.sleep(0.5)
        assert first.poll() is None, log.read_text()[-3000:] + (tmp_path / "first.err").read_text()[-3000:]
        os.kill(first.pid, signal.SIGSTOP)
        time.sleep(1.5)  # the paused driver's heartbeat is now older than the second driver's stale limit
        second = DriverLock(ResultsDir(folder), "second", stale_s=1.0, stream=open(os.devnull, "w")).acquire()
        try:
            files = {p: p.read_bytes() for p in (folder / "trials.parquet", folder / "sweep.json")}
            os.kill(first.pid, signal.SIGCONT)
            code = first.wait(timeout=60)
            err = (tmp_path / "first.err").read_text()
            assert code == EXIT_ENVIRONMENT, (code, log.read_text()[-2000:], err[-3000:])
            assert "lost" in one_line(err) and str(folder) in err
            # It wrote nothing after the second driver took over, and left the lock to it.
            assert {p: p.read_bytes() for p in files} == files
            assert json.loads((folder / LOCK_FILE).read_text())["token"] == second.token
        finally:
            second.release()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGCONT)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


# ==== item 15: smaller holes =======================================================================


def test_item15a_a_duplicate_value_in_a_grid_axis_is_refused(tmp_path, capsys):
    for axis, values, shown in [
        ("seed", [0, 0], "0"),
        ("lr", [0.01, 1e-2], "0.01"),
        ("qk_norm", ["rms", "rms"], "rms"),
    ]:
        config = write_spec(tmp_path, name="dup", grid={axis: values})
        err = refused(capsys, cli_args(config, tmp_path / "r", "--local"))
        assert f"grid.{axis}" in err and "duplicate" in err and shown in err, err
        err = refused(capsys, cli_args(SMOKE_FILE, tmp_path / "r", "--local", "--set", f"grid.{axis}={values}"))
        assert f"grid.{axis}" in err and "duplicate" in err
    assert not (tmp_path / "r").exists()
    # Points that train the same are merged on purpose: muon_per_head does not act on AdamW.
    grid = {"optimizer": ["adamw", "muon"], "qk_norm": "none", "seed": 0, "muon_per_head": [False, True]}
    spec = parse_model(SweepSpec, {**copy.deepcopy(SMOKE), "grid": {**SMOKE["grid"], **grid}}, "x")
    assert len(expand(spec)) == 3


SMOKE_FILE = ROOT / "sweeps" / "smoke.yaml"


@pytest.mark.parametrize("name", ["-rf", "_x", "--help"])
def test_item15b_a_name_must_start_with_a_letter_or_digit(tmp_path, capsys, name):
    config = write_spec(tmp_path, name="x")
    config.write_text(config.read_text().replace("name: x", f"name: '{name}'"))
    err = refused(capsys, cli_args(config, tmp_path / "r", "--local"))
    assert "name" in err and f"'{name}'" in err
    assert not (tmp_path / "r").exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_item15c_an_unreachable_object_store_is_one_line_exit_3(tmp_path, capsys, monkeypatch):
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    t0 = time.monotonic()
    err = refused(capsys, cli_args(SMOKE_FILE, "s3://bucket/runs", "--local"), code=EXIT_ENVIRONMENT)
    assert "s3://bucket/runs/smoke" in err and "connect" in err.lower()
    assert time.monotonic() - t0 < 60


def test_item15d_a_huge_sweep_file_is_refused_before_it_is_parsed(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write("name: big\ngrid:\n  seed:\n")
        f.write("  - 0\n" * 600_000)  # 3.6 MB
    t0 = time.monotonic()
    err = refused(capsys, cli_args(big, tmp_path, "--local"))
    assert time.monotonic() - t0 < 5
    assert str(big) in err and "MB" in err


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


def test_item15e_a_full_disk_does_not_leave_trials_running(tmp_path):
    from orchestrator.tune.ledger import Ledger
    from trainer.config import TrialConfig

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("needs root and tmpfs to simulate a full disk")
    try:
        results = ResultsDir(disk / "sweep")
        ledger = Ledger(results)
        configs = [TrialConfig(seed=s) for s in range(3)]
        for cfg in configs:
            ledger.started(cfg.trial_id(), cfg)
        assert {r["status"] for r in pq.read_table(disk / "sweep" / "trials.parquet").to_pylist()} == {"running"}
        try:  # the disk fills up while the trials run
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        with pytest.raises(OSError):
            ledger.failed(configs[0].trial_id(), configs[0], "No space left on device")
        ledger.finish()  # what the driver does on its way out (then it exits 3)
        rows = pq.read_table(disk / "sweep" / "trials.parquet").to_pylist()
        assert len(rows) == 3 and {r["status"] for r in rows} == {"failed"}
        assert not [p for p in (disk / "sweep").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ==== item 5: console commands ====================================================================


@pytest.mark.slow
def test_item5_each_console_command_answers_help():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.MULTILINE))
    assert set(scripts) == {"qkc-sweep", "qkc-lr-study", "qkc-report", "qkc-train"}
    bindir = Path(sys.executable).parent
    for name, target in scripts.items():
        assert target.endswith(":main"), target
        exe = shutil.which(name) or (str(bindir / name) if (bindir / name).exists() else None)
        if exe is None:
            pytest.skip(f"{name} is not installed: pip install -e . --no-deps")
        done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert "usage:" in done.stdout, name
