"""The progress line's ETA (orchestrator.tune.progress): what a user reads while a sweep runs.

The trials run on a simulated clock: two at a time, a worker's first trial slower (it imports
torch), after a Ray start of 7 s, as measured on the default sweep. What a user checks is that the
ETA is near the time that is really left, from the first trial on."""

from __future__ import annotations

import pytest

from orchestrator.spec.plan import Expected, costing_key, expected_trials, predict, resolve_device
from orchestrator.spec.sweep_file import expand, load_spec
from orchestrator.tune import progress as progress_module
from orchestrator.tune.progress import Progress

RAY_START_S = 7.0


def _configs(n: int):
    spec, _ = load_spec("default")
    return expand(spec)[:n]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _seconds(text: str) -> float:
    h, m, s = (int(x) for x in text.split(":"))
    return 3600 * h + 60 * m + s


def _run(monkeypatch, configs, durations, expected, lanes: int = 2):
    """Runs `configs` on `lanes` workers with the given wall seconds each, the running ones reporting
    their step at every event; returns (ETA shown, time really left) after every trial that ends,
    and the ETA shown before any trial started."""
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    status: dict[str, str] = {}
    plan = {c.trial_id(): c for c in configs}
    p = Progress(plan, len(plan), set(plan), status.get, verbose=False, expected=expected)
    before = p.eta()
    clock.now = RAY_START_S
    ends = []  # (end time, trial_id) of each trial as the lanes take them in order
    free = [RAY_START_S] * lanes
    for tid, d in zip(plan, durations, strict=True):
        lane = min(range(lanes), key=lambda i: free[i])
        ends.append((free[lane], free[lane] + d, tid))
        free[lane] += d
    finish = max(free)
    events = sorted([(s, 0, t) for s, _, t in ends] + [(e, 1, t) for _, e, t in ends])
    span = {t: (s, e) for s, e, t in ends}
    seen = []
    for when, kind, tid in events:
        clock.now = when
        for other, state in status.items():  # the running trials report their step, as trials do
            if state == "running" and other != tid:
                s, e = span[other]
                p.advanced(other, plan[other], int(plan[other].steps * (when - s) / (e - s)) - 1)
        if kind == 0:
            status[tid] = "running"
            p.started(tid)
        else:
            status[tid] = "completed"
            cfg = plan[tid]
            p.ended(tid, cfg, {"status": "completed", "steps_done": cfg.steps}, {})
            seen.append((_seconds(p.eta()), finish - when))
    return before, seen


def test_first_eta_is_near_the_time_left_when_trials_run_as_planned(monkeypatch):
    """20 trials planned at 10 s, two at once; each worker's first takes 20 s. The old estimate
    (FLOPs left at the pace since Ray started) said 243 s at the first ending with 90 s left."""
    configs = _configs(20)
    expected = Expected({costing_key(c): 10.0 for c in configs}, mean=10.0, parallel=2.0)
    before, seen = _run(monkeypatch, configs, [20.0, 20.0] + [10.0] * 18, expected)
    assert _seconds(before) == 100  # nothing ran yet: the plan's 20 x 10 s / 2
    for shown, left in seen[:-2]:
        assert abs(shown - left) <= 0.25 * left + 2, (shown, left)
    assert seen[-1][0] == 0


def test_eta_follows_the_observed_pace_when_the_plan_is_off(monkeypatch):
    """Every trial takes twice the plan's seconds: half-way the ETA is within 10% of what is left."""
    configs = _configs(100)
    expected = Expected({costing_key(c): 5.0 for c in configs}, mean=5.0, parallel=2.0)
    _, seen = _run(monkeypatch, configs, [10.0] * 100, expected)
    shown, left = seen[49]
    assert left == pytest.approx(250.0)
    assert abs(shown - left) <= 0.10 * left


def test_without_a_plan_the_eta_waits_for_work_and_starts_its_clock_at_the_first_trial(monkeypatch):
    """A calibration table with no rows for the device (no plan): FLOPs at the pace since the first
    trial started (Ray's start is not counted)."""
    configs = _configs(10)
    before, seen = _run(monkeypatch, configs, [10.0] * 10, None)
    assert before == "--:--:--"
    shown, left = seen[1]  # two trials of the same width done at 10 s: 8 x 10 s / 2 lanes left
    assert shown == left == 40


def test_the_plan_of_a_running_sweep_is_the_dry_runs_without_the_driver():
    """expected_trials: the same calibration as `--dry-run` on the run's CPUs; the ETA's clock starts
    at the first trial, so the driver's start-up is left out."""
    spec, _ = load_spec("default")
    configs = expand(spec)
    found = expected_trials(configs, spec.resources, num_cpus=2, num_gpus=None)
    device, gpu = resolve_device(configs, None, "H100-80GB")
    plan = predict(configs, spec.resources, device=device, gpu=gpu, num_cpus=2)
    assert sum(found.of(c) for c in configs) == pytest.approx(plan["trial_s_total"])
    assert found.mean * len(configs) / found.parallel == pytest.approx(plan["wall_s"] - plan["driver_s"])
    # a width-128 trial is planned at about twice a width-64 one on a CPU, not at its FLOPs' 4x
    by_width = {w: [found.of(c) for c in configs if c.width == w] for w in (64, 128)}
    ratio = (sum(by_width[128]) / len(by_width[128])) / (sum(by_width[64]) / len(by_width[64]))
    assert 1.5 < ratio < 3.0
    # a trial at another LR and seed (as an LR study's searcher proposes) costs what its arm does
    moved = configs[0].model_copy(update={"lr": 0.0123, "seed": 7})
    assert found.of(moved) == found.of(configs[0])


def test_an_lr_studys_eta_starts_from_its_budget_before_the_searcher_proposes_anything(monkeypatch):
    """The study's monitor knows no trial yet, only how many each arm adds: the plan prices them."""
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    expected = Expected({}, mean=30.0, parallel=2.0)
    p = Progress({}, 40, set(), {}.get, verbose=False, expected=expected)
    assert _seconds(p.eta()) == 40 * 30 / 2
    old = Progress({}, 40, set(), {}.get, verbose=False)
    assert old.eta() == "--:--:--"
