"""The machine this process runs on, as its scheduler lets it: one answer for every part of the
project that sizes work to the CPUs (a local Ray's slots, the sweep plan's wall time, the report's
forked children)."""

from __future__ import annotations

import os


def cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what a container's cpuset or `taskset`
    leaves it), else the machine's count. os.cpu_count() counts every CPU of the machine, also
    where this process may use fewer: a local Ray given that many slots runs more trials at once
    than there are CPUs to run them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
