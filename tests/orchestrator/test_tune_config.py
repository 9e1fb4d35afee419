"""A Tune trial's config is its TrialConfig fields, flat (`result.config["lr"]`, issue 21), and the
nested form of Tune experiments written before that still reads (`--resume` of such a sweep)."""

from __future__ import annotations

from ray.tune.search import Searcher

from orchestrator.tune.study_search import arm_of
from orchestrator.tune.trainable import TRIAL_KEY, trial_config
from orchestrator.tune.tuner import GridPoints
from trainer.config import TrialConfig

POINTS = [TrialConfig(width=64, lr=1e-3, seed=s).model_dump() for s in (0, 1, 2)]


def test_grid_points_hand_out_flat_configs_once_each_then_finish():
    search = GridPoints(POINTS)
    configs = [search.suggest(f"t{i}") for i in range(3)]
    assert [c["seed"] for c in configs] == [0, 1, 2] and all(c["lr"] == 1e-3 for c in configs)
    assert all(TRIAL_KEY not in c for c in configs)
    assert [trial_config(c) for c in configs] == [TrialConfig(**p) for p in POINTS]
    assert search.suggest("t3") == Searcher.FINISHED


def test_grid_points_restored_from_a_checkpoint_hand_out_only_the_rest(tmp_path):
    search = GridPoints(POINTS)
    search.suggest("t0")
    search.save(str(tmp_path / "state.pkl"))
    restored = GridPoints(POINTS)  # as Tuner.restore rebuilds it from tuner.pkl, before restore_from_dir
    restored.restore(str(tmp_path / "state.pkl"))
    assert [restored.suggest("a")["seed"], restored.suggest("b")["seed"]] == [1, 2]
    assert restored.suggest("c") == Searcher.FINISHED


def test_the_nested_config_of_an_experiment_before_issue_21_still_reads():
    cfg = TrialConfig(optimizer="muon", qk_norm="rms", width=128, lr=2e-3, seed=1)
    old = {TRIAL_KEY: cfg.model_dump()}  # what a sweep interrupted before the change has in its Tune state
    assert trial_config(old) == cfg and trial_config(old).trial_id() == cfg.trial_id()
    assert trial_config({**old, "lr": 5e-3}).lr == 5e-3  # a searcher's "lr" still overrides
    assert arm_of(old) == arm_of(cfg.model_dump())


def test_a_searchers_lr_overrides_the_flat_config():
    cfg = TrialConfig(width=64, lr=1e-3)
    assert trial_config({**cfg.model_dump(), "lr": 4e-3}) == cfg.model_copy(update={"lr": 4e-3})
