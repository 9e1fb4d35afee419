"""One run's Ray: where it runs, the driver lock around everything that writes, and signals.

Both commands choose an address (a cluster to join, or a private local Ray that must have room for
the largest trial), hold the results folder's driver lock while they write (`guarded`), and run
their Tuner inside a `ray_session`, which treats SIGTERM as Ctrl-C and stops (or leaves) Ray after.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from trainer import host
from trainer.config import ConfigError, TrialConfig
from trainer.safeio import environment_problem
from trainer.storage import ResultsDir

from ..exits import EXIT_ENVIRONMENT, bad_input, environment_failure, network_problem
from ..spec.plan import Expected, expected_trials
from ..spec.run_spec import Resources
from . import runtime
from .lock import DriverLock
from .monitor import register


def choose_address(
    address: str | None, local: bool, num_cpus: int | None, resources: Resources, widths=None
) -> str | None:
    """The Ray cluster to join (None: start a private local Ray, which must have room for the
    largest trial of the grid's `widths`)."""
    address = None if local else (address or runtime.running_cluster_address())
    if address is None:
        cpus, gpus = resources.largest(widths)
        runtime.check_local_resources(num_cpus or host.cpus(), cpus, gpus)
    return address


def expected_on_ray(configs: list[TrialConfig], resources: Resources, gpu_name: str) -> Expected | None:
    """The plan of the trials a run schedules on the CPUs and GPUs of the Ray it joined: the prior
    of the progress line's ETA (orchestrator.tune.progress)."""
    have = ray.cluster_resources()
    cpus, gpus = int(have.get("CPU", 0)), int(have.get("GPU", 0))
    return expected_trials(configs, resources, num_cpus=cpus or None, num_gpus=gpus or None, gpu_name=gpu_name)


def guarded(body, results: ResultsDir, command: str, again: str) -> int:
    """Run `body` (the part of a command that writes) holding the results folder's driver lock.

    Another driver's lock and unsafe paths (ConfigError) end with exit 2; a full disk, quota or
    read-only file system, or an object store that stopped answering, with exit 3 and the command
    that continues; a lock that another driver took over (this one was paused too long) ends the
    process at once with exit 3 (`exit_on_lost`); anything else propagates."""
    try:
        with DriverLock(results, command, on_lost=exit_on_lost):
            return body()
    except ConfigError as err:
        return bad_input(err)
    except Exception as exc:  # noqa: BLE001 - only the machine's failures are turned into one line
        problem = environment_problem(exc)
        if problem is not None:
            return environment_failure(
                problem,
                f"writing to {results.uri}",
                f"free space (or fix the file system), then continue with: {again}",
            )
        problem = None if results.is_local else network_problem(exc)
        if problem is None:
            raise
        return environment_failure(problem, f"cannot reach {results.uri}", f"when it answers, continue with: {again}")


_EXITING = threading.Lock()


def exit_on_lost(lock: DriverLock, holder: dict) -> None:
    """Another driver took this one's lock over (this process was paused, or cut off, for longer than
    the lock's stale limit) and runs the sweep now: stop at once, writing nothing more. One line and
    exit 3, without unwinding: the private Ray and this driver's trials end with the process (as when
    a driver is killed), and whatever it wrote is kept (every file was written whole)."""
    with _EXITING:  # the heartbeat thread and a write may notice together: one line
        try:
            sys.stdout.flush()
            problem = (
                f"this driver lost its lock to another driver, {lock.describe(holder)}, which took it over "
                f"while this one was paused (a lock without a heartbeat for {lock.stale_s:.0f} s is taken over)"
                if holder
                else "this driver lost its lock: the lock file is gone (another driver took the folder over "
                "while this one was paused, or the file was deleted)"
            )
            environment_failure(
                problem,
                str(lock.results.uri),
                "it stopped its trials and wrote nothing more; the other driver carries on with the sweep",
            )
        finally:
            os._exit(EXIT_ENVIRONMENT)


@contextmanager
def ray_session(
    address: str | None, num_cpus: int | None, *, local: bool, verbose_ray: bool
) -> Iterator[runtime.RayHandle]:
    """Ray for one run: started or joined, Tune's logging quieted; on the way out the registered
    monitor is forgotten and Ray is stopped (or left alone if it was running before)."""
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
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def forward(signum, frame):
        signal.raise_signal(signal.SIGINT)  # Tune's SIGINT handler: the first stops gracefully

    previous = signal.signal(signal.SIGTERM, forward)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set from C
