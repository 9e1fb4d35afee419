"""orchestrator.tune sets Ray's quieting environment before Ray is imported: Ray reads some of it
once, at import (ray_constants.RAY_DEDUP_LOGS), and the commands import Ray through this package.
A user's own setting is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

CHILD = """
import json
import orchestrator.tune.sweep_run, orchestrator.tune.study_run  # what the two commands load
from ray._private import ray_constants
print(json.dumps({"dedup": ray_constants.RAY_DEDUP_LOGS}))
"""


def dedup_in_driver(env: dict) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["dedup"]


def test_the_drivers_log_dedup_is_off_unless_the_user_turns_it_on():
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS"}
    assert dedup_in_driver(env) is False
    assert dedup_in_driver({**env, "RAY_DEDUP_LOGS": "1"}) is True
