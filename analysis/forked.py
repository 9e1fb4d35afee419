"""A list of independent pure-Python/pyarrow jobs shared with one forked child: `map_halves`.

The report reads the footer of every part before it reads any data (analysis.contract.check_parts):
41,043 footers of a 13,680-trial study took 4.2 s on one CPU, mostly Python around pyarrow, which
threads do not speed up (the GIL: 2.4 s became 6 s). A forked child takes the second half of the
list while this process does the first.

Rules for what runs in the child (the same as for the figures, analysis.figures.render): no Polars
(its thread pool does not survive a fork: a group-by in a forked child waited forever), only
Python and pyarrow, whose thread pools are re-created after a fork. The child's results come back
as one JSON document through a pipe (never pickled); a result the child did not send (it died, was
killed, or failed) is computed here, so the answer is the same list whatever happens to the child.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from trainer.host import cpus

T = TypeVar("T")
R = TypeVar("R")

FORK_AT = 2_000  # items: below this a fork (a few ms) is not worth it


def can_fork() -> bool:
    """Linux with two CPUs or more (where this process may use them)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and cpus() >= 2


def fork() -> int:
    """os.fork(), without Python 3.12+'s warning that forking a process with threads (Polars' pool)
    can deadlock a child that takes a lock one of them held: the children here take none of theirs
    (module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def read_all(fd: int) -> bytes:
    """Everything a pipe's read end gives until its writers have closed it."""
    chunks = []
    while chunk := os.read(fd, 65_536):
        chunks.append(chunk)
    return b"".join(chunks)


def map_halves(
    fn: Callable[[T], R],
    items: Sequence[T],
    to_json: Callable[[R], Any],
    from_json: Callable[[Any], R],
    fork_at: int | None = None,
) -> Iterable[R]:
    """fn(x) for each of `items`, in order: with at least `fork_at` items (FORK_AT when not given)
    and a second CPU, the second half computed by a forked child and a list returned; else each
    computed here as it is iterated. `to_json(result)` must give what json.dumps takes, and
    `from_json` must turn that back into the result. `fn` must not call Polars (module docstring)."""
    if len(items) < (FORK_AT if fork_at is None else fork_at) or not can_fork():
        return map(fn, items)
    half = len(items) // 2
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # the child: the second half, then exit without running the parent's cleanup
        code = 0
        try:
            os.close(read_end)
            done = [to_json(fn(x)) for x in items[half:]]
            data = json.dumps(done, separators=(",", ":")).encode()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        except BaseException:  # noqa: BLE001 - the parent computes whatever did not come back
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    mine = [fn(x) for x in items[:half]]
    data = read_all(read_end)
    os.close(read_end)
    os.waitpid(pid, 0)
    try:
        theirs = [from_json(r) for r in json.loads(data)] if data else []
    except ValueError:
        theirs = []
    if len(theirs) != len(items) - half:  # the child did not finish: do its half here
        theirs = [fn(x) for x in items[half:]]
    return mine + theirs


__all__ = ["FORK_AT", "can_fork", "cpus", "fork", "map_halves", "read_all"]
