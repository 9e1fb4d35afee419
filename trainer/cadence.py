"""When the probe runs: a pure function of the config, so a restored trial probes the same steps.

PR often falls within the first tens of steps (time constants of 10-30 steps were measured at
lr 2.5e-2), so probing only every `eval_every` steps drops exactly the fastest collapses. The `log`
schedule adds probes at log-spaced steps (ratio LOG_RATIO) from step 1 up to the first regular
point (`eval_every`); val_loss is computed from the same forward pass when the probe and val windows are the
same (the default), and otherwise only at the regular points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # any object with steps, eval_every and eval_schedule will do (the report passes config_json)
    from .config import TrialConfig

LOG_RATIO = 1.5


def regular_steps(cfg: TrialConfig) -> set[int]:
    """Step 0, every eval_every steps, and the end (step == steps, after the last update)."""
    return set(range(0, cfg.steps, cfg.eval_every)) | {cfg.steps}


def eval_steps(cfg: TrialConfig) -> list[int]:
    """Every step at which the probe runs (ascending; `steps` itself is the final eval)."""
    steps = regular_steps(cfg)
    if cfg.eval_schedule == "log":
        point = 1.0
        while round(point) < min(cfg.eval_every, cfg.steps):
            steps.add(round(point))
            point = max(point * LOG_RATIO, round(point) + 1.0)
    return sorted(steps)
