"""trainer.host.cpus: the CPUs a process may run on (its affinity), the one count the local Ray's
slots, the sweep plan and the report's forked children all size themselves by."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # as `taskset -c N` or a one-CPU cpuset would
from trainer.host import cpus
from analysis.forked import can_fork
print(json.dumps({"cpus": cpus(), "can_fork": can_fork(), "machine": os.cpu_count()}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_process_pinned_to_one_cpu_counts_one_and_forks_no_child():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["cpus"] == 1 and found["can_fork"] is False
    assert found["machine"] >= 1  # os.cpu_count() still counts the machine's


def test_cpus_is_the_affinity_here():
    from trainer.host import cpus

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpus() == expected >= 1
