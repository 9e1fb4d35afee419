"""The checkpoint lifecycle: finished trials leave no Tune checkpoints behind (checkpoints.keep),
and `train.save_final` writes final weights that load with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator import sweep
from tests.helpers import cli_args, write_spec
from trainer.config import TrialConfig
from trainer.model import GPT
from trainer.schema import WEIGHTS_DIR

pytestmark = pytest.mark.slow

GRID = {"optimizer": "adamw", "qk_norm": ["none", "rms"], "seed": 0}


def checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "tune").rglob("checkpoint_*") if p.is_dir())


def test_finished_trials_keep_no_checkpoints_and_save_final_weights(tmp_path, ray_session):
    config = write_spec(tmp_path, name="ck", grid=GRID, train={"checkpoint_every": 10, "save_final": True})
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    folder = tmp_path / "ck"
    assert (folder / "tune").is_dir() and checkpoints(folder) == []
    weights = sorted((folder / WEIGHTS_DIR).glob("*.pt"))
    assert len(weights) == 2
    state = torch.load(weights[0], weights_only=True)
    cfg = TrialConfig.model_validate_json(state["config_json"])
    assert state["trial_id"] == weights[0].stem and state["step"] == cfg.steps
    GPT(cfg.architecture()).load_state_dict(state["model"])  # every tensor, every name


def test_keep_best_leaves_one_checkpoint_per_trial(tmp_path, ray_session):
    config = write_spec(tmp_path, name="best", grid=GRID, train={"checkpoint_every": 10}, checkpoints={"keep": "best"})
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    found = checkpoints(tmp_path / "best")
    assert len(found) == 2 and len({p.parent for p in found}) == 2
    assert not (tmp_path / "best" / WEIGHTS_DIR).exists()  # save_final is off by default


def test_save_final_does_not_rename_trials():
    assert TrialConfig(save_final=True).trial_id() == TrialConfig().trial_id()
