"""The Python API: orchestrator.run_sweep, analysis.load and analysis.analyse; Tune's own outputs
(result.json, progress.csv, TensorBoard events) so that ResultGrid works on a sweep's tune/ folder;
and the optional W&B / MLflow callbacks (offline / a local file store: no network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import analysis
import orchestrator
from orchestrator.spec.files import SWEEPS_DIR
from tests.helpers import SMOKE_OVERRIDES, cli_args
from trainer.config import ConfigError
from trainer.schema import TRIALS_FILE

FAST = ["steps=20", "warmup=2", "eval_every=10", "checkpoint_every=10", *SMOKE_OVERRIDES]  # 8 short trials


def test_imports_stay_light():
    code = (
        "import sys, inspect, orchestrator, analysis, analysis.loading; "
        "heavy = [m for m in ('ray', 'torch', 'scipy', 'matplotlib', 'statsmodels') if m in sys.modules]; "
        "assert not heavy, heavy; assert inspect.isfunction(analysis.load) and callable(orchestrator.run_sweep)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session):
    folder = tmp_path_factory.mktemp("api")
    return orchestrator.run_sweep("smoke", results=folder, overrides=FAST)


def test_run_sweep_returns_the_folder_and_tunes_result_grid(swept):
    assert swept.ok and swept.exit_code == 0 and swept.path.name == "smoke"
    trials = pl.read_parquet(swept.path / TRIALS_FILE)
    assert trials.height == 8 and set(trials["status"]) == {"completed"}
    frame = swept.grid.get_dataframe()
    assert frame.shape[0] == 8 and set(frame["sweep_trial_id"]) == set(trials["trial_id"])
    assert swept.grid.num_errors == 0


def test_result_grid_configs_are_the_trials_fields_and_the_best_result_has_an_lr(swept):
    trials = pl.read_parquet(swept.path / TRIALS_FILE)
    best = swept.grid.get_best_result()  # ranked by "objective" without naming it
    assert best.config["lr"] in set(trials["lr"]) and "trial" not in best.config
    assert best.metrics["objective"] == min(r.metrics["objective"] for r in swept.grid)
    row = trials.filter(pl.col("trial_id") == best.metrics["sweep_trial_id"]).row(0, named=True)
    assert {k: best.config[k] for k in ("optimizer", "qk_norm", "width", "lr", "seed")} == {
        k: row[k] for k in ("optimizer", "qk_norm", "width", "lr", "seed")
    }


def test_tunes_standard_outputs_are_written_and_restore_works(swept):
    from ray import tune

    from orchestrator.tune.trainable import train_trial

    experiment = Path(swept.experiment)
    for trial_dir in (p for p in experiment.iterdir() if p.is_dir()):
        names = {p.name for p in trial_dir.iterdir()}
        assert {"result.json", "progress.csv", "params.json"} <= names, names
        assert any(n.startswith("events.out.tfevents") for n in names), names  # callbacks: [tensorboard]
    results = tune.Tuner.restore(str(experiment), trainable=train_trial).get_results()
    frame = results.get_dataframe()
    assert frame.shape[0] == 8 and frame["sweep_trial_id"].is_unique
    assert (frame["status"] == "completed").all()
    assert results.get_best_result(metric="objective", mode="min").config["lr"] == 0.01  # docs/api.md


def test_run_sweep_again_runs_nothing_and_returns_the_same_grid(swept):
    again = orchestrator.run_sweep("smoke", results=swept.path.parent, overrides=FAST)
    assert again.ok and again.experiment == swept.experiment and len(again.grid) == 8


def test_analysis_load_and_analyse_return_polars_frames(swept):
    res = analysis.load(swept.results)
    assert isinstance(res, analysis.Results) and res.trials.height == 8
    metrics = res.metrics.filter(pl.col("name") == "train_loss").collect()
    assert metrics.height == 8 * 20 and metrics["trial_id"].dtype == pl.String
    report = analysis.analyse(swept.results, n_boot=200)
    assert isinstance(report, analysis.Report)
    tables = report.tables()
    assert {"finals", "paradox", "collapse_by_arm", "status", "loss_vs_lr"} <= set(tables)  # the files' names
    assert all(isinstance(t, pl.DataFrame) for t in tables.values())
    assert report.finals.height == 8 and report.status["total"].sum() == 8
    assert json.loads(json.dumps(report.verdict))["comparisons"] is not None


def test_run_sweep_takes_a_mapping_and_refuses_bad_input(tmp_path, ray_session):
    import yaml

    spec = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
    spec["name"] = "mapped"
    spec["grid"] = {"optimizer": "adamw", "qk_norm": "none", "width": 32, "lr": 1e-2, "seed": 0}
    result = orchestrator.run_sweep(
        spec, results=tmp_path, overrides={"train.steps": 10, "train.warmup": 1}, quiet=True
    )
    assert result.ok and len(result.grid) == 1
    assert pl.read_parquet(result.path / TRIALS_FILE)["steps_done"].to_list() == [10]
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        orchestrator.run_sweep("smoke", results=tmp_path, overrides=["stpes=5"])
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        orchestrator.run_sweep("smoek", results=tmp_path)
    assert not (tmp_path / "smoke").exists()


# ---- W&B and MLflow (optional extras) ----------------------------------------------------------


def one_trial_spec(name: str, callbacks: list[str]) -> dict:
    import yaml

    spec = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
    spec.update(name=name, callbacks=callbacks)
    spec["grid"] = {"optimizer": "adamw", "qk_norm": "none", "width": 32, "lr": 1e-2, "seed": 0}
    spec["train"].update(steps=10, warmup=1, eval_every=5, checkpoint_every=10)
    return spec


def test_mlflow_callback_logs_to_a_local_file_store(tmp_path, ray_session, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.x: file stores only on request
    result = orchestrator.run_sweep(one_trial_spec("mlf", ["mlflow"]), results=tmp_path)
    assert result.ok
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("mlf")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and "val_loss" in runs[0].data.metrics


def test_wandb_callback_runs_offline(tmp_path, ray_session, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = orchestrator.run_sweep(one_trial_spec("wb", ["wandb", "tensorboard"]), results=tmp_path)
    assert result.ok
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_a_missing_callback_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    from orchestrator import sweep

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    import yaml

    path = tmp_path / "cb.yaml"
    path.write_text(yaml.safe_dump(one_trial_spec("cb", ["wandb"])))
    assert sweep.main(cli_args(path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "callbacks" in err and "pip install 'qk-collapse-sweep[wandb]'" in err, err
    assert not (tmp_path / "cb").exists()
