"""Ray Tune sweeps and Optuna LR studies over the trainer; `python -m orchestrator.sweep` is the CLI.

    import orchestrator
    res = orchestrator.run_sweep("smoke", results="/tmp/r")   # -> SweepResult(results=..., grid=ResultGrid)

`import orchestrator` stays light: `orchestrator.api` imports Ray, Tune and torch only when
`run_sweep` is called.
"""

from .api import SweepResult, run_sweep

__all__ = ["SweepResult", "run_sweep"]
