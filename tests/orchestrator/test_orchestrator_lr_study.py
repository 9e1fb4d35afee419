"""LR studies on the smoke arms: best LRs, resumed studies, and a sweep that uses them."""

from __future__ import annotations

import json

import optuna
import polars as pl
import pytest

from orchestrator import lr_study, sweep
from orchestrator.spec.files import SWEEPS_DIR
from tests.helpers import cli_args, write_spec
from trainer.schema import LR_BEST_FILE, SWEEP_JSON, TRIALS_FILE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
ARMS = {"adamw_none_w32", "adamw_rms_w32", "muon_none_w32", "muon_rms_w32"}


def studies(folder):
    storage = f"sqlite:///{folder / 'studies' / 'optuna.db'}"
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}


def test_lr_study_resumes_and_feeds_a_sweep(tmp_path, capsys):
    args = cli_args(SWEEPS_DIR / "lr_smoke.yaml", tmp_path, "--trials", "3")
    assert lr_study.main(args) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "lr_smoke"
    best = pl.read_parquet(folder / LR_BEST_FILE)
    assert set(best["arm"]) == ARMS
    assert {"arm", "best_lr", "best_loss", "n_trials"} <= set(best.columns)
    assert best["best_lr"].is_not_null().all() and (best["best_lr"] > 0).all()
    assert (best["n_trials"] == 3).all()
    assert "best_lr" in out and all(arm in out for arm in ARMS)  # printed as a table
    assert studies(folder) == {arm: 3 for arm in ARMS}
    trials = pl.read_parquet(folder / TRIALS_FILE)
    assert trials.height == 12 and set(trials["status"]) <= {"completed", "pruned", "diverged"}
    for dataset in ("metrics", "spectra"):  # every trial ends with one part per folder, pruned ones too
        parts = {d.name: len(list(d.glob("*.parquet"))) for d in (folder / dataset).iterdir()}
        assert len(parts) == 12 and set(parts.values()) == {1}, parts
    assert json.loads((folder / SWEEP_JSON).read_text())["kind"] == "lr_study"
    assert len(list((folder / "tune").glob("arms-*"))) == 1  # every arm in one Tuner, not one Tuner per arm
    storage = f"sqlite:///{folder / 'studies' / 'optuna.db'}"
    for arm in ARMS:  # intermediate values keyed by training step, not by report number: the last is step 40
        for trial in optuna.load_study(study_name=arm, storage=storage).trials:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                assert max(trial.intermediate_values) == 40, trial.intermediate_values

    # Running it again adds trials to the same studies (and explores new LRs).
    assert lr_study.main(args) == 0
    assert studies(folder) == {arm: 6 for arm in ARMS}
    best = pl.read_parquet(folder / LR_BEST_FILE)
    assert (best["n_trials"] == 6).all()
    assert pl.read_parquet(folder / TRIALS_FILE)["lr"].n_unique() > 3

    # A sweep with lr: {from_study: ...} runs each arm at its best LR times each multiplier.
    config = write_spec(
        tmp_path, name="tuned", grid={"lr": {"from_study": str(folder), "multipliers": [0.5, 1.0]}, "seed": 0}
    )
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    swept = pl.read_parquet(tmp_path / "tuned" / TRIALS_FILE)
    assert swept.height == 8 and set(swept["status"]) == {"completed"}
    best_lr = dict(zip(best["arm"], best["best_lr"]))
    for row in swept.iter_rows(named=True):
        base = best_lr[f"{row['optimizer']}_{row['qk_norm']}_w{row['width']}"]
        assert any(row["lr"] == pytest.approx(base * m, rel=1e-2) for m in (0.5, 1.0)), (row["lr"], base)
