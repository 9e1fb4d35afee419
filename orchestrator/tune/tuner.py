"""The Tuner settings both commands share: the trainable with its corpus and resources attached,
trials named by their trial_id, experiment state under <results>/<name>/tune/, retries, the
checkpoint policy, and Tune's logger callbacks; and `GridPoints`, the searcher that hands a sweep's
grid points to Tune as flat configs.
"""

from __future__ import annotations

import json
import os
import re
import sys

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.search import Searcher

from trainer.data import TokenData
from trainer.storage import ResultsDir

from ..spec.prepare import TUNE_DIR
from ..spec.run_spec import Resources
from ..spec.validation import installed
from .checkpoints import CheckpointPruner, checkpoint_config
from .trainable import TrainableOptions, train_trial, trial_config, trial_fields

# Names of variables that hold credentials: never copied into a runtime_env (Ray's runtime-env agent
# logs runtime envs in plain text). AWS_ACCESS_KEY_ID goes too: an id without its secret would hide
# a node's own profile or instance role from the AWS SDK.
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)


def keep_secrets_out_of_runtime_envs() -> None:
    """Ray Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
    AWS_SECURITY_TOKEN from the driver's environment into every trainable's runtime_env
    (ray.tune.execution.class_cache), and the runtime-env agent then writes them into
    runtime_env_agent.log. Take those names off Tune's list: a private local Ray's workers inherit
    the driver's environment anyway, and a cluster's nodes get credentials from a profile or an
    instance role (docs/cluster.md)."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray: nothing to patch
        return
    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(names, (set, frozenset)):
        class_cache.ENV_VARS_TO_PROPAGATE = {n for n in names if not SECRET_ENV.search(n)}


keep_secrets_out_of_runtime_envs()


def make_trainable(tokens: dict[tuple, TokenData], results: ResultsDir, resources: Resources, **options):
    """`train_trial` with the corpus (sent once per worker) and each trial's CPUs and GPUs attached;
    `options` are further TrainableOptions fields."""
    cpus = resources.cpus_per_trial
    trainable_options = TrainableOptions(results_uri=results.uri, threads=max(1, int(cpus)), **options)
    trainable = tune.with_parameters(train_trial, tokens=tokens, options=trainable_options)
    if not resources.per_width:
        return tune.with_resources(trainable, {"cpu": cpus, "gpu": resources.gpus_per_trial})
    return tune.with_resources(trainable, WidthRequest(resources))


class WidthRequest:
    """Tune's resource request as a function of a trial's config: `resources.per_width` (a plain
    class rather than a closure, so that Tune can pickle it into its experiment state)."""

    def __init__(self, resources: Resources):
        self.resources = resources

    def __call__(self, config: dict) -> dict:
        cpus, gpus = self.resources.for_width(int(trial_fields(config)["width"]))
        return {"cpu": cpus, "gpu": gpus}


class GridPoints(Searcher):
    """Hands Tune the listed configs, one per trial, in order, then FINISHED: each trial's Tune
    config is one grid point's TrialConfig fields, flat (`result.config["lr"]`).

    Not Tune's `grid_search` (it varies values *inside* a param_space, so a list of whole configs
    has to sit under one key) nor BasicVariantGenerator(points_to_evaluate=...) (in Ray 2.60 every
    key of a point must already be in param_space, `_get_preset_variants`, and a point that differs
    from a fixed value there logs a warning). Its state (the points not yet handed out) is saved
    with the experiment, so `Tuner.restore` does not hand out a point twice."""

    def __init__(self, points: list[dict]):
        super().__init__()
        self.points, self.handed_out = [dict(p) for p in points], 0

    def suggest(self, trial_id: str):
        if self.handed_out >= len(self.points):
            return Searcher.FINISHED
        self.handed_out += 1
        return dict(self.points[self.handed_out - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # nothing to learn: the grid is fixed

    def save(self, checkpoint_path: str) -> None:
        """The state as JSON (the points are TrialConfig fields; nothing here is unpickled)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"points": self.points, "handed_out": self.handed_out}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.points, self.handed_out = state["points"], int(state["handed_out"])


def trial_name(trial) -> str:
    """A Tune trial's name: our trial_id, so Tune's logs and folders match trials.parquet."""
    return trial_config(trial.config).trial_id()


def trial_dirname(trial) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"


def tune_config(**settings):
    """TuneConfig with the shared settings: actors reused, trials named by trial_id."""
    return tune.TuneConfig(
        **settings, reuse_actors=True, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname
    )


def run_config(
    name: str, results: ResultsDir, max_retries: int, monitor, keep: str = "none", callbacks=("tensorboard",)
):
    """RunConfig: state under <results>/tune/<name> (Tune writes there through pyarrow, so an
    s3:// results URI holds it too), retries from the last checkpoint, our monitor, the
    checkpoints of finished trials pruned to `keep` (checkpoints.py), and Tune's own
    loggers (result.json, progress.csv, plus the spec's `callbacks`: see `logger_callbacks`)."""
    return tune.RunConfig(
        name=name,
        storage_path=f"{results.uri}/{TUNE_DIR}",
        failure_config=tune.FailureConfig(max_failures=max_retries),
        checkpoint_config=checkpoint_config(keep),
        callbacks=[
            monitor,
            CheckpointPruner(keep),
            *logger_callbacks(callbacks, results.uri.rstrip("/").rsplit("/", 1)[-1]),
        ],
        verbose=0,
    )


def logger_callbacks(names, project: str) -> list:
    """Tune's standard result.json and progress.csv loggers (so that `ResultGrid` and
    `Tuner.restore(...).get_results()` work on a sweep's tune/ folder), and the named integrations:
    tensorboard (TBXLoggerCallback: event files per trial), wandb (WandbLoggerCallback, project
    $WANDB_PROJECT or the sweep's name; WANDB_MODE=offline keeps it off the network), mlflow
    (MLflowLoggerCallback, tracking URI $MLFLOW_TRACKING_URI, experiment $MLFLOW_EXPERIMENT_NAME or the
    sweep's name). Tune's automatic loggers stay off (runtime.py), so each is added exactly once."""
    out = [JsonLoggerCallback(), CSVLoggerCallback()]
    for name in names:
        if name == "tensorboard":
            if not installed("tensorboardX"):  # only the default gets here: a listed one is checked on load
                print("note: tensorboardX is not installed, so no TensorBoard event files are written", file=sys.stderr)
                continue
            out.append(TBXLoggerCallback())
        elif name == "wandb":  # the optional integrations import their packages when built
            from ray.air.integrations.wandb import WandbLoggerCallback

            # Tune's logging actor inherits only the API key: hand it WANDB_MODE (offline) and WANDB_DIR too.
            init = {k: os.environ[v] for k, v in (("mode", "WANDB_MODE"), ("dir", "WANDB_DIR")) if os.environ.get(v)}
            out.append(
                WandbLoggerCallback(
                    project=os.environ.get("WANDB_PROJECT") or project,
                    group=os.environ.get("WANDB_GROUP"),
                    excludes=list(LOGGER_EXCLUDES),
                    **init,
                )
            )
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            out.append(
                MLflowLoggerCallback(
                    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                    experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or project,
                )
            )
        else:
            raise ValueError(f"unknown callback {name!r}")
    return out


# Report keys not worth sending to W&B: the trials.parquet row as JSON (in trials.parquet already).
LOGGER_EXCLUDES = ("row_json",)


def fit(tuner) -> bool:
    """Run the Tuner; True when Ctrl-C interrupted it (the caller settles and reports)."""
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    return False
