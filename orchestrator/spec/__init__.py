"""The spec layer: what a sweep or an LR study will run, decided without Ray.

files.py       --config: a spec file, or a bundled spec's name (smoke, default, lr, ...)
overrides.py   --set key=value over the file's YAML
validation.py  strict sections, one-line messages with "did you mean"
run_spec.py    what sweep and LR-study files share (train:, resources, failure, checkpoints, results)
sweep_file.py  the grid, and its expansion into validated TrialConfigs
study_file.py  the arms and the Optuna search of an LR-study file
lr_best.py     lr_best.parquet, which an LR study writes and a sweep's `lr: {from_study: ...}` reads
prepare.py     every check a command makes before it writes anything or starts Ray
chunks.py      --chunk I/N: the I-th of N deterministic, cost-balanced parts of a grid
costs.py       parameters, tokens, FLOPs, memory and storage of one trial, by arithmetic
plan.py        --dry-run: the plan as text

The Ray Tune layer that runs what this layer decides is orchestrator.tune.
"""

from .run_spec import Resources, RunSpec
from .study_file import LRStudySpec, expand_arms, load_lr_spec
from .sweep_file import SweepSpec, expand, load_spec

__all__ = ["LRStudySpec", "Resources", "RunSpec", "SweepSpec", "expand", "expand_arms", "load_lr_spec", "load_spec"]
