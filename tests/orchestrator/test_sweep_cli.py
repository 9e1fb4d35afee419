"""The sweep command line: bundled sweep names, --set overrides, "did you mean", and SIGTERM.

Validation cases run in-process (no Ray); one case runs the real command and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from orchestrator import sweep
from orchestrator.spec import expand, load_spec
from orchestrator.spec.files import SWEEPS_DIR, bundled_sweeps
from orchestrator.spec.overrides import apply_overrides
from tests.helpers import SMOKE_SET, sweep_command
from trainer.config import ConfigError
from trainer.schema import TRIALS_FILE

SMOKE = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())


# ---- --config NAME ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "default", "paradox", "cpu_study"])
def test_a_bundled_sweep_is_found_by_name(name):
    spec, path = load_spec(name)
    assert Path(path) == SWEEPS_DIR / f"{name}.yaml" and spec.name
    assert load_spec(f"{name}.yaml")[0] == spec


def test_an_unknown_name_suggests_the_closest_bundled_sweep(capsys):
    with pytest.raises(ConfigError, match=r"did you mean 'smoke'\?.*bundled: .*paradox"):
        load_spec("smok")
    assert sweep.main(["--config", "smok"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config: ") and err.count("\n") == 1 and "smoke" in err


def test_a_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    (tmp_path / "smoke").write_text(yaml.safe_dump({**SMOKE, "name": "mine"}))
    monkeypatch.chdir(tmp_path)
    assert load_spec("smoke")[0].name == "mine"


def test_bundled_sweeps_are_every_yaml_in_sweeps():
    assert set(bundled_sweeps()) == {p.stem for p in SWEEPS_DIR.glob("*.yaml")}


# ---- --set -----------------------------------------------------------------------------------


def test_set_overrides_train_grid_and_resources_keys():
    spec, _ = load_spec(
        "smoke",
        ["train.steps=50", "grid.seed=[0,1,2]", "resources.cpus_per_trial=2", "warmup=5", "failure.max_retries=0"],
    )
    assert spec.train["steps"] == 50 and spec.train["warmup"] == 5
    assert spec.grid.seed == [0, 1, 2] and spec.resources.cpus_per_trial == 2 and spec.failure.max_retries == 0
    configs = expand(spec)
    assert len(configs) == 2 * 2 * len(SMOKE["grid"]["lr"]) * 3 and {c.steps for c in configs} == {50}


def test_a_plain_key_that_is_a_grid_axis_overrides_the_axis():
    spec, _ = load_spec("smoke", ["seed=[5]", "lr=0.003"])
    assert spec.grid.seed == [5] and spec.grid.lr == [0.003]


def test_set_train_of_an_axis_fixes_it_for_every_trial():
    data = apply_overrides(SMOKE, ["train.seed=3"])
    assert "seed" not in data["grid"] and data["train"]["seed"] == 3
    assert "seed" in SMOKE["grid"]  # the file's mapping is not changed


@pytest.mark.parametrize(
    "item, needles",
    [
        ("train.stpes=5", ["stpes", "did you mean 'steps'"]),
        ("stpes=5", ["stpes", "did you mean 'steps'"]),
        ("grid.sed=[0]", ["grid.sed", "did you mean 'seed'"]),
        ("resources.cpus_per_trail=2", ["resources.cpus_per_trail", "did you mean 'cpus_per_trial'"]),
        ("resorces.cpus_per_trial=2", ["resorces", "did you mean 'resources'"]),
        ("steps", ["key=value"]),
    ],
)
def test_a_misspelt_override_names_the_closest_key(item, needles, capsys):
    assert sweep.main(["--config", "smoke", "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    "section, key, suggestion",
    [
        ("grid", "sed", "seed"),
        ("resources", "max_concurent", "max_concurrent"),
        ("train", "warmpu", "warmup"),
        (None, "resorces", "resources"),
    ],
)
def test_a_misspelt_key_in_the_file_names_the_closest_key(tmp_path, section, key, suggestion):
    data = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
    (data[section] if section else data)[key] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"{key}.*did you mean '{suggestion}'"):
        load_spec(path)


# ---- SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_the_sweep_cleanly_with_the_resume_hint(tmp_path, subprocess_env, python):
    fast = ["--set", "steps=3000", "--set", "checkpoint_every=500", "--set", "eval_every=500"]
    command = sweep_command("smoke", tmp_path, "--local", "--num-cpus", "2", *fast, *SMOKE_SET)
    log = tmp_path / "sweep.log"
    trials = tmp_path / "smoke" / TRIALS_FILE
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 180
            while not (trials.exists() and "running" in set(pl.read_parquet(trials)["status"])):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    output = log.read_text()
    assert code == 130, output
    for noise in ("SIGTERM received", "logging.cc", "Traceback"):
        assert noise not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("interrupted; continue with: python -m orchestrator.sweep") and last.endswith("--resume")
    assert "--set steps=3000" in last
    assert "running" not in set(pl.read_parquet(trials)["status"])  # marked interrupted, not left running


# ---- an installed wheel ----------------------------------------------------------------------


@pytest.mark.slow
def test_an_installed_wheel_ships_the_bundled_sweeps(installed_wheel, tmp_path, python):
    """Load `--config smoke`, the default and the LR study from the unpacked wheel, with the
    checkout off the path, and import every module of both commands from it."""
    site, env = installed_wheel
    shipped = {p.name: p.read_text() for p in (site / "orchestrator" / "sweeps").glob("*.yaml")}
    assert shipped == {p.name: p.read_text() for p in SWEEPS_DIR.glob("*.yaml")}
    code = (
        "import orchestrator, orchestrator.spec as s, orchestrator.sweep, orchestrator.lr_study; "
        f"assert orchestrator.__file__.startswith({str(site)!r});"
        "print(s.load_spec('smoke')[0].name, s.load_spec(None)[0].name, s.load_lr_spec(None)[0].name)"
    )
    run = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["smoke", "default", yaml.safe_load((SWEEPS_DIR / "lr.yaml").read_text())["name"]]


# ---- bad input before the Tune layer ----------------------------------------------------------
EARLY = """
import sys
from orchestrator import {module}
code = {module}.main({argv!r})
loaded = sorted(m for m in ("ray", "torch", "optuna") if m in sys.modules)
print("LOADED", ",".join(loaded) or "-", "CODE", code)
"""


@pytest.mark.parametrize(
    "module, argv, says",
    [
        ("sweep", ["--config", "smoke", "--set", "grid.lr=[]"], "grid.lr"),
        ("sweep", ["--config", "smoke", "--results", "/no/such/parent/here"], "results"),
        ("sweep", ["--config", "smoke", "--chunk", "5/4"], "chunk"),
        ("lr_study", ["--config", "lr_smoke", "--set", "arms.width=[]"], "arms.width"),
    ],
)
def test_bad_input_is_answered_before_ray_torch_or_optuna_is_loaded(module, argv, says, tmp_path):
    """A mistyped sweep or study ends with its one line and exit 2 in a fraction of a second: the
    checks that need no Ray run before the Tune layer (Ray, Tune, Optuna and torch) is imported."""
    out = subprocess.run(
        [os.environ.get("PYTHON", __import__("sys").executable), "-c", EARLY.format(module=module, argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert "LOADED - CODE 2" in out.stdout, out.stdout + out.stderr
    assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
