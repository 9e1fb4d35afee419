"""Shared fixtures.

`ray_session`: ONE local Ray instance for the whole test session (2 CPUs, loopback only, ~3 s to
start), so tests that run sweeps in-process do not each pay for a start. Code under test that
calls `orchestrator.tune.runtime.start_ray` (or checks `ray.is_initialized()`) reuses it and leaves it
running. Tests that need a different Ray — a multi-node `ray.cluster_utils.Cluster`, or a sweep
killed with SIGINT — run it in a subprocess, so they never collide with this instance. Ray's
session folder goes under pytest's base temp folder when that path is short enough for Ray's
unix sockets (107 characters), else under /tmp.

`subprocess_env` / `env`: the environment for `python -m ...` subprocesses (`env` also points Ray's
temporary folder at `ray_tmp`, so a test can check that a refused command never started Ray).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The checkout is installed editable here: setuptools' finder would serve any module a wheel lacks
# from the checkout, so the wheel's interpreter runs without it (a sitecustomize on PYTHONPATH).
NO_EDITABLE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
"""


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    from orchestrator.tune.runtime import start_ray

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


@pytest.fixture
def ray_tmp():
    """An empty folder for RAY_TMPDIR: a refusal test checks that Ray left nothing in it (never started).
    Short, under /tmp: Ray's sockets (107 characters) must fit under <it>/qkc-<uid>/r????????, or the
    command would put its Ray under /tmp instead."""
    folder = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def env(subprocess_env, ray_tmp):
    """subprocess_env with Ray's temporary folder set to `ray_tmp`."""
    return {**subprocess_env, "RAY_TMPDIR": str(ray_tmp)}


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """(site, env): the project's wheel, built from a copy of the sources (the checkout stays clean)
    and unpacked into `site`; `env` runs Python on it with the checkout off the path."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("trainer", "orchestrator", "analysis", "benchmarks", "sweeps"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    site = tmp / "site"
    zipfile.ZipFile(next((tmp / "dist").glob("*.whl"))).extractall(site)
    boot = tmp / "boot"
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(NO_EDITABLE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": f"{boot}{os.pathsep}{site}"}
    return site, env
