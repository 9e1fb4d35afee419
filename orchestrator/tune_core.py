"""The Ray Tune core that `orchestrator.sweep` and `orchestrator.lr_study` share.

Both commands: pick where Ray runs (and check that a trial fits there), read each corpus once,
start or join Ray for the run (a `ray_session`), wrap the trainable with its corpus and resources,
and build Tuners whose trials are named by their trial_id and whose experiment state lives in
<results>/<name>/tune/. Ray and Tune are imported inside the functions that need them, so that
validating input (and failing with exit status 2) never waits for them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from trainer.config import ConfigError, TrialConfig
from trainer.data import TokenData, corpus_key, load_tokens
from trainer.safeio import EXIT_ENVIRONMENT, environment_problem
from trainer.storage import ResultsDir

from . import runtime
from .spec import Resources
from .validation import installed

TUNE_DIR = "tune"  # <results>/<name>/tune: Tune's experiment state and trial checkpoints
EXIT_BAD_INPUT, EXIT_TRIALS_FAILED, EXIT_INTERRUPTED = 2, 1, 130  # EXIT_ENVIRONMENT = 3 (a full disk)


def bad_input(err: ConfigError) -> int:
    """One line on stderr and exit status 2: how every command refuses bad input."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def environment_failure(problem: str, where: str, hint: str) -> int:
    """One line on stderr and exit status 3: the machine, not the input, failed (a full disk)."""
    print(f"error: {where}: {problem}; {hint}", file=sys.stderr, flush=True)
    return EXIT_ENVIRONMENT


def guarded(body, results: ResultsDir, command: str, again: str) -> int:
    """Run `body` (the part of a command that writes) holding the results folder's driver lock.

    Another driver's lock and unsafe paths (ConfigError) end with exit 2; a full disk, quota or
    read-only file system with exit 3 and the command that continues; anything else propagates."""
    from .lock import DriverLock

    try:
        with DriverLock(results, command):
            return body()
    except ConfigError as err:
        return bad_input(err)
    except Exception as exc:  # noqa: BLE001 - only the machine's failures are turned into one line
        problem = environment_problem(exc)
        if problem is None:
            raise
        return environment_failure(
            problem, f"writing to {results.uri}", f"free space (or fix the file system), then continue with: {again}"
        )


def choose_address(
    address: str | None, local: bool, num_cpus: int | None, resources: Resources, widths=None
) -> str | None:
    """The Ray cluster to join (None: start a private local Ray, which must have room for the
    largest trial of the grid's `widths`)."""
    address = None if local else (address or runtime.running_cluster_address())
    if address is None:
        cpus, gpus = resources.largest(widths)
        runtime.check_local_resources(num_cpus or os.cpu_count() or 1, cpus, gpus)
    return address


def load_corpora(configs: list[TrialConfig]) -> dict[tuple, TokenData]:
    """Each distinct corpus once (usually one), keyed like trainer.data.corpus_key."""
    tokens: dict[tuple, TokenData] = {}
    for cfg in configs:
        key = corpus_key(cfg)
        if key not in tokens:
            tokens[key] = load_tokens(cfg)
    return tokens


@contextmanager
def ray_session(
    address: str | None, num_cpus: int | None, *, local: bool, verbose_ray: bool
) -> Iterator[runtime.RayHandle]:
    """Ray for one run: started or joined, Tune's logging quieted; on the way out the registered
    monitor is forgotten and Ray is stopped (or left alone if it was running before)."""
    from .monitor import register

    handle = runtime.start_ray(address, num_cpus, local=local, quiet=not verbose_ray)
    restore_sigterm = sigterm_as_sigint()  # after ray.init, which installs Ray's own (C++) SIGTERM handler
    try:
        if not verbose_ray:
            runtime.quiet_tune_logging()
        yield handle
    finally:
        restore_sigterm()
        register(None)
        handle.stop()


def sigterm_as_sigint():
    """Treat SIGTERM (`kill`, a scheduler's stop, `timeout`) as Ctrl-C: Tune stops the trials, saves
    its experiment state, and the command prints the --resume hint and exits 130, instead of Ray's
    handler dumping a C++ stack and aborting. Returns the function that restores the old handler.
    A no-op outside the main thread (a signal handler can only be set there)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def forward(signum, frame):
        signal.raise_signal(signal.SIGINT)  # Tune's SIGINT handler: the first stops gracefully

    previous = signal.signal(signal.SIGTERM, forward)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set from C


def make_trainable(tokens: dict[tuple, TokenData], results: ResultsDir, resources: Resources, **options):
    """`train_trial` with the corpus (sent once per worker) and each trial's CPUs and GPUs attached;
    `options` are further TrainableOptions fields."""
    from ray import tune

    from .trainable import TrainableOptions, train_trial

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
        from .trainable import trial_config

        cpus, gpus = self.resources.for_width(trial_config(config).width)
        return {"cpu": cpus, "gpu": gpus}


def trial_name(trial) -> str:
    """A Tune trial's name: our trial_id, so Tune's logs and folders match trials.parquet."""
    from .trainable import trial_config

    return trial_config(trial.config).trial_id()


def trial_dirname(trial) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"


def tune_config(**settings):
    """TuneConfig with the shared settings: actors reused, trials named by trial_id."""
    from ray import tune

    return tune.TuneConfig(
        **settings, reuse_actors=True, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname
    )


def run_config(
    name: str, results: ResultsDir, max_retries: int, monitor, keep: str = "none", callbacks=("tensorboard",)
):
    """RunConfig: state under <results>/tune/<name> (Tune writes there through pyarrow, so an
    s3:// results URI holds it too), retries from the last checkpoint, our monitor, the
    checkpoints of finished trials pruned to `keep` (orchestrator.checkpoints), and Tune's own
    loggers (result.json, progress.csv, plus the spec's `callbacks`: see `logger_callbacks`)."""
    from ray import tune

    from .checkpoints import CheckpointPruner, checkpoint_config

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
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    out = [JsonLoggerCallback(), CSVLoggerCallback()]
    for name in names:
        if name == "tensorboard":
            if not installed("tensorboardX"):  # only the default gets here: a listed one is checked on load
                print("note: tensorboardX is not installed, so no TensorBoard event files are written", file=sys.stderr)
                continue
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif name == "wandb":
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
