"""The LR study's one-Tuner plumbing: arms handed out round-robin within their budgets, results
routed to their own arm, and no pruning before an arm has `min_completed` finished trials."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from orchestrator.tune.study_search import ArmScheduler, ArmSearch
from orchestrator.tune.trainable import TRIAL_KEY, trial_config

ARMS = {"adamw_none_w32": ("adamw", "none"), "muon_rms_w32": ("muon", "rms")}


def cfg(arm: str) -> dict:
    optimizer, qk_norm = ARMS[arm]
    return {"optimizer": optimizer, "qk_norm": qk_norm, "width": 32}


class FakeSearch:
    def __init__(self):
        self.n, self.results, self.completed = 0, [], []

    def suggest(self, trial_id):
        self.n += 1
        return {"lr": 0.01 * self.n}

    def on_trial_result(self, trial_id, result):
        self.results.append(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


class FakeAsha:
    def __init__(self, decision):
        self.decision, self.seen = decision, []

    def on_trial_add(self, controller, trial):
        self.seen.append(("add", trial))

    def on_trial_result(self, controller, trial, result):
        self.seen.append(("result", trial))
        return self.decision

    def on_trial_complete(self, controller, trial, result):
        self.seen.append(("complete", trial))

    def on_trial_remove(self, controller, trial):
        self.seen.append(("remove", trial))


def test_arm_search_alternates_arms_within_budget_and_routes_results():
    searchers = {arm: FakeSearch() for arm in ARMS}
    search = ArmSearch(
        searchers,
        {arm: cfg(arm) for arm in ARMS},
        {"adamw_none_w32": 3, "muon_rms_w32": 1},
        metric="objective",
        mode="min",
    )
    suggestions = [search.suggest(f"t{i}") for i in range(5)]
    arms = [s["optimizer"] for s in suggestions[:4]]  # flat: Tune's result.config["optimizer"]
    assert arms == ["adamw", "muon", "adamw", "adamw"]  # interleaved while both have trials left
    assert suggestions[4] == Searcher.FINISHED
    assert all("lr" in s and TRIAL_KEY not in s for s in suggestions[:4])
    assert all(trial_config(s).lr == s["lr"] for s in suggestions[:4])  # the study's LR is the trial's
    search.on_trial_result("t1", {"objective": 1.0})
    search.on_trial_complete("t0", {"objective": 1.0})
    assert searchers["muon_rms_w32"].results == ["t1"] and searchers["adamw_none_w32"].completed == ["t0"]


def test_arm_scheduler_prunes_only_after_min_completed_in_that_arm():
    ashas = {"adamw_none_w32": FakeAsha(TrialScheduler.STOP), "muon_rms_w32": FakeAsha(TrialScheduler.STOP)}
    sched = ArmScheduler(ashas, min_completed=2, completed={"muon_rms_w32": 5})
    adamw = SimpleNamespace(config=cfg("adamw_none_w32"))
    muon = SimpleNamespace(config={TRIAL_KEY: cfg("muon_rms_w32")})  # the form before issue 21 still routes
    sched.on_trial_add(None, adamw)
    assert ashas["adamw_none_w32"].seen == [("add", adamw)] and not ashas["muon_rms_w32"].seen
    assert sched.on_trial_result(None, adamw, {}) == TrialScheduler.CONTINUE  # 0 of 2 completed: kept
    assert sched.on_trial_result(None, muon, {}) == TrialScheduler.STOP  # 5 completed in earlier runs
    sched.on_trial_complete(None, adamw, {"final": True})
    sched.on_trial_complete(None, adamw, {"final": False})  # stopped early: not a completed trial
    assert sched.completed["adamw_none_w32"] == 1
    assert sched.on_trial_result(None, adamw, {}) == TrialScheduler.CONTINUE
    sched.on_trial_complete(None, adamw, {"final": True})
    assert sched.on_trial_result(None, adamw, {}) == TrialScheduler.STOP
    assert sched.kept["adamw_none_w32"] == 2
