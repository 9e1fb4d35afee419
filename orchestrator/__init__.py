"""Ray Tune sweeps and Optuna LR studies over the trainer.

    import orchestrator
    res = orchestrator.run_sweep("smoke", results="/tmp/r")   # -> SweepResult(results=..., exit_code=..., grid)

The commands `python -m orchestrator.sweep` and `python -m orchestrator.lr_study` and this Python
API parse their arguments into typed options (options.py) and make one library call each in the
Ray Tune layer (orchestrator.tune), after the spec layer (orchestrator.spec, no Ray) has validated
everything. `import orchestrator` stays light: Ray, Tune and torch are imported when `run_sweep`
is called. `python -m orchestrator.pack` (pack.py) puts results folders in a few files of bounded
size for the trip back from a GPU lease, and restores them.
"""

from .api import run_sweep
from .options import StudyOptions, SweepOptions, SweepResult

__all__ = ["StudyOptions", "SweepOptions", "SweepResult", "run_sweep"]
