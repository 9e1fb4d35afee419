"""Sweep files: the shipped specs, grid expansion, and bad input (exit 2, nothing written, no Ray)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator import lr_study, sweep
from orchestrator.spec import SweepSpec, expand, expand_arms, load_lr_spec, load_spec
from orchestrator.spec.files import SWEEPS_DIR
from orchestrator.spec.prepare import check_results
from orchestrator.spec.validation import AXES
from tests.helpers import cli_args, sweep_command, write_spec
from trainer.config import ConfigError
from trainer.schema import LR_BEST_FILE


def axes(configs):
    return {axis: sorted({getattr(c, axis) for c in configs}) for axis in AXES}


# ---- the shipped specs -------------------------------------------------------------------------


def test_default_spec_gives_the_report_real_pairs():
    spec, path = load_spec(None)  # no --config: the embedded default
    assert Path(path).name == "default.yaml" and spec.name == "default"
    configs = expand(spec)
    found = axes(configs)
    assert found["optimizer"] == ["adamw", "muon"]
    assert found["qk_norm"] == ["none", "rms", "rms_frozen"]  # rms_frozen: the theory's pure sphere
    assert len(found["width"]) >= 2 and len(found["lr"]) >= 3 and len(found["seed"]) >= 3  # held-out selection
    assert len(configs) == 2 * 3 * len(found["width"]) * len(found["lr"]) * len(found["seed"])
    assert all(c.device == "cpu" for c in configs)


def test_the_default_is_the_bundled_default_yaml():
    """No --config: sweeps/default.yaml (shipped in the wheel as orchestrator/sweeps/default.yaml;
    tests/orchestrator/test_sweep_cli.py builds the wheel and loads it from there)."""
    spec, source = load_spec(None)
    assert source == str(SWEEPS_DIR / "default.yaml") and spec == load_spec("default")[0]


def test_smoke_spec_is_the_smallest_sweep_whose_report_decides():
    """Issue 21: the first run answers something. Every axis, and the seeds and LRs the deciding
    comparison needs: MIN_PAIRS seeds (each seed's LR held out on the others), and an LR grid with
    room on both sides of every arm's optimum; tiny trials. Its report: test_orchestrator_sweep.py."""
    from analysis.paradox import MIN_PAIRS

    configs = expand(load_spec(SWEEPS_DIR / "smoke.yaml")[0])
    found = axes(configs)
    assert found["optimizer"] == ["adamw", "muon"] and found["qk_norm"] == ["none", "rms"]
    assert len(found["seed"]) >= MIN_PAIRS and len(found["lr"]) >= 3
    assert len(configs) <= 64 and max(c.steps for c in configs) <= 100 and max(c.width for c in configs) <= 32


def test_paradox_spec_is_the_gpu_grid():
    spec, _ = load_spec(SWEEPS_DIR / "paradox.yaml")
    configs = expand(spec)
    found = axes(configs)
    assert min(found["width"]) == 256 and max(found["width"]) == 2048
    assert {c.d_head for c in configs} == {64}
    assert len(found["lr"]) >= 7 and len(found["seed"]) == 3
    assert found["qk_norm"] == ["layer", "none", "rms", "rms_frozen"]
    assert spec.resources.gpus_per_trial > 0


@pytest.mark.parametrize("name", ["lr.yaml", "lr_smoke.yaml"])
def test_lr_specs_load(name):
    spec, _ = load_lr_spec(SWEEPS_DIR / name)
    arms = expand_arms(spec)
    assert {a.split("_")[0] for a in arms} == {"adamw", "muon"}


def test_single_values_are_one_point_axes(tmp_path):
    spec, _ = load_spec(
        write_spec(tmp_path, grid={"optimizer": "muon", "qk_norm": "rms", "width": 32, "lr": 0.01, "seed": 3})
    )
    configs = expand(spec)
    assert len(configs) == 1 and configs[0].optimizer == "muon" and configs[0].seed == 3


def test_duplicate_points_run_once(tmp_path):
    # Points that train the same run once: muon_per_head does not act on AdamW. (A literal duplicate in
    # one axis, seed: [0, 0, 1], is refused: tests/reliability/test_hostile_input.py, issue 21.)
    spec, _ = load_spec(write_spec(tmp_path, grid={"muon_per_head": [False, True]}))
    assert len(expand(spec)) == (1 + 2) * 2 * 2  # (adamw once, muon twice) x qk_norm 2 x seed 2


def test_lr_from_study_multiplies_each_arms_best(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    best = {"adamw_none_w32": 0.01, "adamw_rms_w32": 0.02, "muon_none_w32": 0.04, "muon_rms_w32": 0.05}
    pq.write_table(pa.table({"arm": list(best), "best_lr": list(best.values())}), study / LR_BEST_FILE)
    spec, _ = load_spec(write_spec(tmp_path, grid={"lr": {"from_study": str(study), "multipliers": [0.5, 2]}}))
    configs = expand(spec)
    assert len(configs) == 4 * 2 * 2
    for c in configs:
        base = best[f"{c.optimizer}_{c.qk_norm}_w{c.width}"]
        assert c.lr in (pytest.approx(base * 0.5), pytest.approx(base * 2))


# ---- bad input ---------------------------------------------------------------------------------

BAD = {
    "unknown optimizer": (dict(grid={"optimizer": ["adamw", "sgd"]}), ["optimizer", "sgd"]),
    "width vs d_head": (dict(grid={"width": [40]}), ["width=40", "d_head=16"]),
    "lr <= 0": (dict(grid={"lr": [0.01, -0.001]}), ["lr", "-0.001"]),
    "lr zero": (dict(grid={"lr": [0]}), ["lr", "0"]),
    "empty grid": (dict(grid={"width": []}), ["width", "empty"]),
    "unknown top key": (dict(grdi={"x": 1}), ["grdi"]),
    "unknown train key": (dict(train={"learning_rate": 0.1}), ["learning_rate"]),
    "axis twice": (dict(train={"seed": 3}), ["seed"]),
    "missing corpus": (dict(train={"corpus": "/no/such/corpus.txt"}), ["corpus", "/no/such/corpus.txt"]),
    "bad name": (dict(name="../../etc"), ["name", "../../etc"]),
    "negative cpus": (dict(resources={"cpus_per_trial": 0}), ["cpus_per_trial", "0"]),
    "too many cpus": (dict(resources={"cpus_per_trial": 512}), ["cpus_per_trial", "512"]),
    "gpu on a cpu machine": (dict(resources={"gpus_per_trial": 1}), ["gpus_per_trial"]),
    "from_study missing": (dict(grid={"lr": {"from_study": "/no/such/study"}}), ["from_study", "/no/such/study"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_naming_field_and_value(case, tmp_path, capsys):
    if case == "gpu on a cpu machine":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    changes, needles = BAD[case]
    changes = dict(changes)
    name = changes.pop("name", "bad")
    config = write_spec(tmp_path, name="spec", **changes)
    if name != "bad":
        text = yaml.safe_load(config.read_text())
        text["name"] = name
        config.write_text(yaml.safe_dump(text))
    results = tmp_path / "results"
    code = sweep.main(cli_args(config, results, "--local"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    for needle in needles:
        assert needle in err, (needle, err)
    assert not results.exists()  # nothing written


def test_bad_corpus_content_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty_corpus"
    empty.mkdir()
    (empty / "a.txt").write_bytes(b"")
    config = write_spec(tmp_path, train={"corpus": str(empty)})
    assert sweep.main(cli_args(config, tmp_path / "r", "--local")) == 2
    assert "corpus" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_results_parent_exits_2(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "dir"
    assert sweep.main(cli_args(SWEEPS_DIR / "smoke.yaml", missing, "--local")) == 2
    err = capsys.readouterr().err
    assert "results" in err and str(missing) in err
    assert not missing.parent.exists()


def test_results_that_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert sweep.main(cli_args(SWEEPS_DIR / "smoke.yaml", target, "--local")) == 2
    assert "results" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert sweep.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_lr_study_bad_input_exits_2(tmp_path, capsys):
    spec = yaml.safe_load((SWEEPS_DIR / "lr_smoke.yaml").read_text())
    spec["search"]["lr_min"] = 0.5
    spec["search"]["lr_max"] = 0.1
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert lr_study.main(cli_args(path, tmp_path / "r", "--local")) == 2
    err = capsys.readouterr().err
    assert "lr_min" in err and "0.5" in err
    assert not (tmp_path / "r").exists()


def test_cli_exit_status_is_2_in_a_real_process(tmp_path, subprocess_env, python):
    config = write_spec(tmp_path, grid={"optimizer": ["adam"]})
    proc = subprocess.run(
        sweep_command(config, tmp_path),
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "optimizer" in proc.stderr and "'adam'" in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_check_results_names_the_sweep_folder(tmp_path):
    results = check_results(str(tmp_path), "abc")
    assert results.uri == str(tmp_path / "abc")
    assert not (tmp_path / "abc").exists()


def test_spec_model_rejects_fractional_gpus_above_one():
    with pytest.raises(ValueError, match="whole GPUs"):
        SweepSpec.model_validate({"name": "x", "grid": {}, "resources": {"gpus_per_trial": 1.5}})


def test_configerror_is_what_expand_raises(tmp_path):
    spec, _ = load_spec(write_spec(tmp_path, grid={"width": [40]}))
    with pytest.raises(ConfigError):
        expand(spec)


def test_init_can_be_a_grid_axis(tmp_path):
    from orchestrator.spec.sweep_file import SweepSpec, expand, spec_summary

    spec = SweepSpec.model_validate(
        {
            "name": "init",
            "grid": {
                "optimizer": ["adamw"],
                "qk_norm": ["none", "rms"],
                "width": [32],
                "lr": [1e-2],
                "seed": [0],
                "init_std": [0.02, 0.05],
                "init": ["normal", "torch"],
            },
            "train": {"d_head": 16, "steps": 10, "warmup": 2},
        }
    )
    configs = expand(spec)
    assert len(configs) == 2 * 2 * 2 and len({c.trial_id() for c in configs}) == 8
    assert {(c.init, c.init_std) for c in configs} == {
        ("normal", 0.02),
        ("normal", 0.05),
        ("torch", 0.02),
        ("torch", 0.05),
    }
    assert "init_std 2" in spec_summary(spec, configs) and "init 2" in spec_summary(spec, configs)


def test_the_default_tensorboard_logger_is_skipped_with_a_note_when_tensorboardx_is_missing(monkeypatch, capsys):
    """tensorboardX comes with ray[tune], but a trimmed environment may lack it: the default callback
    must not crash the sweep (a listed one is refused when the sweep file loads)."""
    from orchestrator.tune import tuner as tune_core

    monkeypatch.setattr(tune_core, "installed", lambda module: module != "tensorboardX")
    names = [type(cb).__name__ for cb in tune_core.logger_callbacks(["tensorboard"], "p")]
    assert names == ["JsonLoggerCallback", "CSVLoggerCallback"]
    assert "tensorboardX is not installed" in capsys.readouterr().err
    monkeypatch.setattr(tune_core, "installed", lambda module: True)
    assert "TBXLoggerCallback" in [type(cb).__name__ for cb in tune_core.logger_callbacks(["tensorboard"], "p")]
