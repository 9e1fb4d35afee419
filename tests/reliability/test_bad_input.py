"""Bad input, through the real command lines: every malformed sweep or trial config ends with exit
status 2 and ONE line on stderr naming the field and the value, no traceback, before Ray starts and
before anything is written.

Each case runs `python -m orchestrator.sweep --config F --results R` (or `python -m trainer.train
--config F --out R`) in a subprocess with RAY_TMPDIR pointing at an empty folder: a private Ray
would create its session folder there, so "still empty" means Ray never started. (The cases in
tests/orchestrator/test_orchestrator_spec.py, which call `sweep.main` in-process, are not repeated here.)
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_refused, sweep_command, sweep_with

TRIAL = {
    "corpus": "synthetic",
    "width": 32,
    "d_head": 16,
    "depth": 1,
    "seq_len": 32,
    "batch_size": 4,
    "steps": 5,
    "warmup": 1,
    "device": "cpu",
}


def trial_with(**changes):
    return yaml.safe_dump({**TRIAL, **changes})


# id: (command, config text or bytes, [what stderr must name: the field, the value])
CASES = {
    # unknown keys
    "sweep: unknown grid axis": ("sweep", sweep_with(grid={"depth": [2, 4]}), ["grid.depth", "[2, 4]"]),
    "sweep: unknown resources key": ("sweep", sweep_with(top={"resources": {"gpus": 1}}), ["resources.gpus", "1"]),
    "trial: unknown key": ("trial", trial_with(learning_rate=0.01), ["learning_rate", "0.01"]),
    # wrong types
    "sweep: width 'wide'": ("sweep", sweep_with(grid={"width": ["wide"]}), ["width", "'wide'"]),
    "sweep: seed 1.5": ("sweep", sweep_with(grid={"seed": [0, 1.5]}), ["seed", "1.5"]),
    "sweep: steps 'ten'": ("sweep", sweep_with(train={"steps": "ten"}), ["steps", "'ten'"]),
    "sweep: train is not a mapping": ("sweep", sweep_with(top={"train": "fast"}), ["train", "'fast'"]),
    "trial: width 'wide'": ("trial", trial_with(width="wide"), ["width", "'wide'"]),
    "trial: compile 'maybe'": ("trial", trial_with(compile="maybe"), ["compile", "'maybe'"]),
    # zero or negative sizes
    "sweep: width 0": ("sweep", sweep_with(grid={"width": [0]}), ["width", "0"]),
    "sweep: depth -1": ("sweep", sweep_with(train={"depth": -1}), ["depth", "-1"]),
    "sweep: batch_size 0": ("sweep", sweep_with(train={"batch_size": 0}), ["batch_size", "0"]),
    "sweep: seq_len 0": ("sweep", sweep_with(train={"seq_len": 0}), ["seq_len", "0"]),
    "sweep: max_concurrent 0": ("sweep", sweep_with(top={"resources": {"max_concurrent": 0}}), ["max_concurrent", "0"]),
    "sweep: max_retries -2": ("sweep", sweep_with(top={"failure": {"max_retries": -2}}), ["max_retries", "-2"]),
    "trial: seq_len 0": ("trial", trial_with(seq_len=0), ["seq_len", "0"]),
    # shapes that do not fit
    "sweep: width 48 vs d_head 32": (
        "sweep",
        sweep_with(grid={"width": [64, 48]}, train={"d_head": 32}),
        ["width=48", "d_head=32"],
    ),
    "sweep: odd d_head": ("sweep", sweep_with(grid={"width": [30]}, train={"d_head": 15}), ["d_head=15"]),
    "sweep: warmup >= steps": ("sweep", sweep_with(train={"warmup": 50, "steps": 40}), ["warmup=50", "steps=40"]),
    # empty grid
    "sweep: empty lr axis": ("sweep", sweep_with(grid={"lr": []}), ["lr", "empty"]),
    "sweep: no grid at all": ("sweep", sweep_with(drop=["grid"]), ["grid", "required"]),
    # learning rates out of range
    "sweep: lr 1e3": ("sweep", sweep_with(grid={"lr": [1e-2, 1e3]}), ["lr", "1000"]),
    "sweep: lr nan": ("sweep", sweep_with(grid={"lr": [float("nan")]}), ["lr", "nan"]),
    "sweep: lr multiplier 0": (
        "sweep",
        sweep_with(grid={"lr": {"from_study": ".", "multipliers": [1, 0]}}),
        ["multipliers", "0"],
    ),
    "trial: lr -0.1": ("trial", trial_with(lr=-0.1), ["lr", "-0.1"]),
    # unknown choices
    "sweep: qk_norm 'l2'": ("sweep", sweep_with(grid={"qk_norm": ["rms", "l2"]}), ["qk_norm", "'l2'"]),
    "trial: optimizer 'sgd'": ("trial", trial_with(optimizer="sgd"), ["optimizer", "'sgd'"]),
    "trial: qk_norm 'cosine'": ("trial", trial_with(qk_norm="cosine"), ["qk_norm", "'cosine'"]),
    # missing corpus
    "trial: corpus missing": ("trial", trial_with(corpus="/no/such/corpus"), ["corpus", "/no/such/corpus"]),
    "sweep: corpus folder missing": (
        "sweep",
        sweep_with(train={"corpus": "/no/such/texts/"}),
        ["corpus", "/no/such/texts/"],
    ),
    # sweep names that would become paths outside <results>
    "sweep: name '../../etc'": ("sweep", sweep_with(top={"name": "../../etc"}), ["name", "'../../etc'"]),
    "sweep: name 'a/b'": ("sweep", sweep_with(top={"name": "a/b"}), ["name", "'a/b'"]),
    "sweep: name ''": ("sweep", sweep_with(top={"name": ""}), ["name", "''"]),
    "sweep: name '..'": ("sweep", sweep_with(top={"name": ".."}), ["name", "'..'"]),
    # not YAML, or not a mapping
    "sweep: malformed YAML": ("sweep", "name: t\ngrid: {width: [32\n", ["malformed YAML", "line 2"]),
    "sweep: YAML list": ("sweep", "- name: t\n- grid: {}\n", ["mapping", "list"]),
    "sweep: not text": ("sweep", b"\xff\xfe\x00name: t\x00\x81", ["not UTF-8 text"]),
    "trial: malformed YAML": ("trial", "width: 32\nlr: [0.1\n", ["malformed YAML", "line 2"]),
    "trial: YAML list": ("trial", "- 1\n- 2\n", ["mapping", "list"]),
    "trial: YAML scalar": ("trial", "just some words\n", ["mapping", "str"]),
}

# Results locations that cannot be written (built in the test itself)
UNWRITABLE = ["sweep: results under a file", "trial: out under a file", "sweep: read-only results folder"]


def run_cli(
    command: str, config: Path, target: Path, env: dict, python: str
) -> tuple[subprocess.CompletedProcess, float]:
    if command == "sweep":
        argv = sweep_command(config, target)
    else:
        argv = [python, "-m", "trainer.train", "--config", str(config), "--out", str(target)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return proc, time.monotonic() - t0


@pytest.mark.slow  # ~1.5 s each (a Python start); the in-process cases in test_orchestrator_spec.py are quick
@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_exits_2_with_one_line_before_ray_and_writes_nothing(case, tmp_path, env, ray_tmp, python):
    command, text, needles = CASES[case]
    config = tmp_path / "config.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    results = tmp_path / "results"
    before = sorted(tmp_path.rglob("*"))
    proc, elapsed = run_cli(command, config, results, env, python)
    assert_refused(proc, elapsed, needles, ray_tmp)
    assert not results.exists()  # nothing written
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", UNWRITABLE)
def test_unwritable_results_exit_2_before_ray(case, tmp_path, env, ray_tmp, python):
    command = case.split(":")[0]
    config = tmp_path / "config.yaml"
    config.write_text(sweep_with() if command == "sweep" else trial_with())
    if "read-only" in case:
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only folder; the results-under-a-file cases cover root")
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        target = folder / "results"
        needles = ["results", str(folder), "not writable"]
    else:
        blocker = tmp_path / "file.txt"
        blocker.write_text("a file, not a folder\n")
        target = blocker / "sub"
        needles = ["results" if command == "sweep" else "out", str(blocker), "not a folder"]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    proc, elapsed = run_cli(command, config, target, env, python)
    assert_refused(proc, elapsed, needles, ray_tmp)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written


def test_the_table_is_big_enough():
    assert len(CASES) + len(UNWRITABLE) >= 20
    assert {c for c, _, _ in CASES.values()} == {"sweep", "trial"}
