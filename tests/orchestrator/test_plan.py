"""`--dry-run`: the plan of a sweep or LR study, printed without Ray, CUDA or a single write."""

from __future__ import annotations

import time

import pytest
import torch

from orchestrator import lr_study, sweep
from orchestrator.spec import Resources, expand, load_spec, plan
from orchestrator.spec.files import SWEEPS_DIR
from tests.helpers import cli_args
from trainer.config import TrialConfig
from trainer.model import GPT


@pytest.mark.parametrize("qk_norm", ["none", "rms", "rms_frozen", "layer"])
def test_the_plan_counts_the_models_parameters(qk_norm):
    cfg = TrialConfig(width=96, depth=3, d_head=32, qk_norm=qk_norm, vocab_size=300)
    (row,) = plan.width_rows([cfg], Resources())
    assert row.params == sum(p.numel() for p in GPT(cfg.architecture()).parameters())


def test_optimizer_state_matches_torch_adamw():
    cfg = TrialConfig(width=64, depth=2, d_head=32)
    model = GPT(cfg.architecture())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim() > 0)
    assert plan.memory(cfg).optimizer == state


def test_paradox_plan_in_under_five_seconds(tmp_path, capsys):
    import ray

    started = ray.is_initialized()
    t0 = time.perf_counter()
    code = sweep.main(cli_args(SWEEPS_DIR / "paradox.yaml", tmp_path / "r", "--dry-run", "--gpu", "a10g"))
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert code == 0 and wall < 5, wall
    assert "768 trials" in out and "32 arms" in out and "GPU-hours" in out and "A10G-24GB" in out
    assert "results storage" in out and "checkpoints" in out
    assert not (tmp_path / "r").exists()  # nothing written
    assert ray.is_initialized() == started  # Ray not started


def test_per_width_resources_pack_the_plan(tmp_path):
    spec, _ = load_spec(SWEEPS_DIR / "paradox.yaml")
    resources = Resources.model_validate(
        {"gpus_per_trial": 0.5, "per_width": {256: {"gpus_per_trial": 0.25}, 2048: {"gpus_per_trial": 1}}}
    )
    assert [resources.for_width(w)[1] for w in (128, 256, 512, 1024, 2048)] == [0.5, 0.25, 0.25, 0.25, 1]
    rows = {r.width: r for r in plan.width_rows(expand(spec), resources)}
    assert rows[512].gpus_per_trial == 0.25 and rows[2048].gpus_per_trial == 1


def test_width_request_is_a_function_of_the_config():
    from orchestrator.tune.trainable import TRIAL_KEY
    from orchestrator.tune.tuner import WidthRequest

    resources = Resources.model_validate({"cpus_per_trial": 2, "per_width": {1024: {"gpus_per_trial": 1}}})
    request = WidthRequest(resources)
    assert request(TrialConfig(width=64).model_dump()) == {"cpu": 2.0, "gpu": 0.0}
    assert request(TrialConfig(width=1024).model_dump()) == {"cpu": 2.0, "gpu": 1.0}
    # a Tune experiment written before issue 21 (restored by --resume) holds the fields under TRIAL_KEY
    assert request({TRIAL_KEY: TrialConfig(width=1024).model_dump()}) == {"cpu": 2.0, "gpu": 1.0}


def test_bad_gpu_and_mfu_are_one_message(capsys):
    assert sweep.main(["--config", str(SWEEPS_DIR / "smoke.yaml"), "--dry-run", "--gpu", "TPU"]) == 2
    assert "--gpu" in capsys.readouterr().err
    assert sweep.main(["--config", str(SWEEPS_DIR / "smoke.yaml"), "--dry-run", "--mfu", "2"]) == 2
    assert "--mfu" in capsys.readouterr().err


def test_lr_study_dry_run(tmp_path, capsys):
    assert lr_study.main(cli_args(SWEEPS_DIR / "lr.yaml", tmp_path / "r", "--dry-run", "--trials", "3")) == 0
    out = capsys.readouterr().out
    assert "x 3 trials" in out and "upper bound" in out
    assert not (tmp_path / "r").exists()
