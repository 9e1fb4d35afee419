"""Every arm's LR study in ONE Tuner: a searcher and a scheduler that keep the arms apart.

- `StudySearch` is Ray Tune's OptunaSearch for one arm's study: it files trials that ASHA stopped
  as PRUNED and tags each Optuna trial with the sweep's trial_id.

Each arm (optimizer x qk_norm x width) keeps its own Optuna study (a `StudySearch`, i.e. Ray
Tune's OptunaSearch) and its own ASHA: trials of different arms are never compared, since their
losses differ for reasons that have nothing to do with the LR. One Tuner runs them all, so the
cluster stays busy until the last trial of the last arm (one Tuner per arm, one after another,
left slots idle at the end of each arm).

- `ArmSearch` hands out trials round-robin over the arms that still have trials to add, each with
  its arm's TrialConfig and the LR its study proposes, and routes results back by trial.
- `ArmScheduler` routes each trial to its arm's ASHA and never stops a trial while the arm has
  fewer than `min_completed` completed trials (counting earlier runs of the study): early on, a
  rung holds one or two trials and ASHA would otherwise prune on noise.
"""

from __future__ import annotations

from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..spec.lr_best import arm_name
from .reports import OBJECTIVE, as_report, is_final
from .trainable import trial_fields


class StudySearch(OptunaSearch):
    """OptunaSearch that files ASHA-stopped trials as PRUNED and tags trials with their trial_id."""

    def on_trial_result(self, trial_id, result):
        ot_trial, report = self._ot_trials.get(trial_id), as_report(result)
        if ot_trial is not None and "trial_id" not in ot_trial.user_attrs and report.get("sweep_trial_id"):
            ot_trial.set_user_attr("trial_id", report["sweep_trial_id"])
        # Intermediate values keyed by training step (not by report number, which a restart from a
        # checkpoint or an extra checkpoint report would shift), each step once.
        step, value = report.get("step"), report.get(OBJECTIVE)
        if ot_trial is None or trial_id in self._completed_trials or step is None or value is None:
            return
        if int(step) not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id, result=None, error=False):
        ot_trial, report = self._ot_trials.get(trial_id), as_report(result)
        if ot_trial is not None and result and trial_id not in self._completed_trials:
            final = is_final(report)
            ot_trial.set_user_attr(
                "status", "failed" if error else report.get("status", "pruned") if final else "pruned"
            )
            if not error and not final:  # stopped by ASHA before its last step
                self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result=result, error=error)


def arm_of(config: dict) -> str:
    trial = trial_fields(config)
    return arm_name(trial["optimizer"], trial["qk_norm"], trial["width"])


class ArmSearch(Searcher):
    """One searcher per arm behind one Tune searcher; `budget[arm]` trials are added to each."""

    def __init__(self, searchers: dict, configs: dict[str, dict], budget: dict[str, int], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.configs, self.left = searchers, configs, dict(budget)
        self.arm_of_trial: dict[str, str] = {}
        self._next = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # each arm's searcher was built with its space, metric and mode

    def suggest(self, trial_id: str):
        arms = [a for a in self.configs if self.left[a] > 0]
        if not arms:
            return Searcher.FINISHED
        for i in range(len(arms)):  # round-robin, skipping an arm whose searcher has nothing right now
            arm = arms[(self._next + i) % len(arms)]
            suggestion = self.searchers[arm].suggest(trial_id)
            if isinstance(suggestion, dict):
                self._next = (self._next + i + 1) % max(len(arms), 1)
                self.left[arm] -= 1
                self.arm_of_trial[trial_id] = arm
                return {**self.configs[arm], **suggestion}  # flat: the arm's fields, the study's "lr"
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        arm = self.arm_of_trial.get(trial_id)
        if arm is not None:
            self.searchers[arm].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        arm = self.arm_of_trial.get(trial_id)
        if arm is not None:
            self.searchers[arm].on_trial_complete(trial_id, result=result, error=error)


class ArmScheduler(FIFOScheduler):
    """An ASHA per arm; no early stop in an arm until `min_completed` of its trials completed."""

    def __init__(self, schedulers: dict, min_completed: int, completed: dict[str, int] | None = None):
        super().__init__()
        self.schedulers, self.min_completed = schedulers, min_completed
        self.completed = {arm: 0 for arm in schedulers} | dict(completed or {})
        self.kept: dict[str, int] = {arm: 0 for arm in schedulers}  # stops overridden (reported at the end)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _arm(self, trial) -> str:
        return arm_of(trial.config)

    def on_trial_add(self, tune_controller, trial) -> None:
        self.schedulers[self._arm(trial)].on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.schedulers[self._arm(trial)].on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        arm = self._arm(trial)
        decision = self.schedulers[arm].on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and self.completed[arm] < self.min_completed:
            self.kept[arm] += 1
            return TrialScheduler.CONTINUE
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        arm = self._arm(trial)
        if is_final(as_report(result)):
            self.completed[arm] += 1
        self.schedulers[arm].on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.schedulers[self._arm(trial)].on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ArmScheduler: " + ", ".join(f"{a} {n} completed" for a, n in self.completed.items())
