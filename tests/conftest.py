"""Shared fixtures.

`ray_session`: ONE local Ray instance for the whole test session (2 CPUs, loopback only, ~3 s to
start), so tests that run sweeps in-process do not each pay for a start. Code under test that
calls `orchestrator.runtime.start_ray` (or checks `ray.is_initialized()`) reuses it and leaves it
running. Tests that need a different Ray — a multi-node `ray.cluster_utils.Cluster`, or a sweep
killed with SIGINT — run it in a subprocess, so they never collide with this instance. Ray's
session folder goes under pytest's base temp folder when that path is short enough for Ray's
unix sockets (107 characters), else under /tmp.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    from orchestrator.runtime import start_ray

    handle = start_ray(num_cpus=2, local=True, temp_root=str(tmp_path_factory.getbasetemp()))
    yield handle
    handle.stop()


@pytest.fixture
def subprocess_env():
    """Environment for `python -m ...` subprocesses: this checkout importable, no inherited Ray address."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python():
    return sys.executable
