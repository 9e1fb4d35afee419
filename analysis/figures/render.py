"""Laying out and encoding the figures beside their drawing: each finished figure is laid out
(tight_layout), rendered and written by a forked child process while the report draws the next.

Why: at a study's scale (13,680 trials, nine figures, 261 panels) laying out and rendering take
about three quarters of the figures' time, and the report's drawing is one Python thread. A
forked child starts with the figure in memory (nothing pickled) and touches nothing but
matplotlib, Pillow and the file it writes; it never calls Polars, whose thread pool does not
survive a fork (a Polars call in a forked child waits forever: tried). The bytes written are the
ones the report process would write itself (the same code on the same figure). The children run
at a lower priority (CHILD_NICE), so the report's own work goes first; `python -m analysis.report`
hands seven figures to them before its fits (analysis.report.report_to), which then run beside the
rendering on the CPU they would leave idle.

Used only where fork is safe and worth it: on Linux, with at least two CPUs for this process.
Elsewhere, and for a single figure, everything runs in the process, one figure after another.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from trainer.errors import ConfigError

from ..forked import cpus, fork, read_all

MAX_JOBS = 9  # children at once, at most: one per figure of a report
CHILD_NICE = 10  # a child renders at this lower priority: the report's own work (the next figure, the fits) goes first
_MESSAGE_CHARS = 4_000  # a child's failure, as JSON, fits a pipe's buffer (64 KiB on Linux)


class Forked:
    """Runs `finish(fig)` for each submitted figure in a forked child, at most `jobs` at once.
    `close` waits for every child and raises the first failure, in submission order, as the
    exception the child raised, as far as the report tells them apart (a ConfigError for a planted
    symlink, an OSError with its errno for a full disk: what the report turns into its one-line errors)."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.running: dict[int, tuple[int, int]] = {}  # pid -> (submission index, read end of its pipe)
        self.failures: dict[int, BaseException] = {}
        self.submitted = 0

    def submit(self, fig, finish: Callable[[object], None], close: Callable[[object], None]) -> None:
        while len(self.running) >= self.jobs:
            self._reap()
        read, write = os.pipe()
        pid = fork()  # (the child touches only matplotlib, Pillow and its file: the module docstring)
        if pid == 0:  # the child: lay out, render, write, and leave without running the parent's exit code
            os.close(read)
            code = 0
            try:
                os.nice(CHILD_NICE)
                finish(fig)
            except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
                code = 1
                os.write(write, _described(e))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write)
        close(fig)  # the child has it; the parent's copy is only memory now
        self.running[pid] = (self.submitted, read)
        self.submitted += 1

    def _reap(self) -> None:
        """Wait for the oldest running child (only our own: os.wait() would also take the exit status
        of a process someone else in this program started, which its owner then never gets)."""
        pid = next(iter(self.running))
        _, status = os.waitpid(pid, 0)
        index, read = self.running.pop(pid)
        message = read_all(read)
        os.close(read)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            self.failures[index] = _rebuilt(message) or RuntimeError(
                f"drawing a figure: its process ended with status {code}"
            )

    def close(self) -> None:
        """Wait for every child started so far; raise the first failure (in submission order) among
        them, once: a later `close` raises only failures of children submitted since."""
        while self.running:
            self._reap()
        if self.failures:
            first = self.failures[min(self.failures)]
            self.failures.clear()
            raise first


def _described(e: BaseException) -> bytes:
    """A child's failure as JSON (nothing is unpickled here: a message and its kind): a ConfigError
    (a planted symlink), an OSError with its errno (a full disk), or anything else by its type name."""
    kind = "config" if isinstance(e, ConfigError) else "os" if isinstance(e, OSError) else "other"
    d = {"kind": kind, "type": type(e).__name__, "message": str(e)[:_MESSAGE_CHARS]}
    if isinstance(e, OSError):
        d.update(errno=e.errno, strerror=e.strerror, filename=None if e.filename is None else str(e.filename))
    return json.dumps(d).encode()


def _rebuilt(data: bytes) -> BaseException | None:
    """The exception `_described` wrote, as the report handles it: a ConfigError, an OSError with
    the same errno (trainer.safeio.environment_problem reads it), else a RuntimeError naming the type."""
    try:
        d = json.loads(data)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    message = str(d.get("message", ""))
    if d.get("kind") == "config":
        return ConfigError(message)
    if d.get("kind") == "os" and isinstance(d.get("errno"), int):
        args = (d["errno"], d.get("strerror") or os.strerror(d["errno"]))
        return OSError(*args, d["filename"]) if d.get("filename") else OSError(*args)
    return RuntimeError(f"{d.get('type', 'Exception')}: {message}")


_active: Forked | None = None  # while `forked_rendering` runs


@contextmanager
def forked_rendering(figures: int):
    """Inside, `finish_figure` hands each figure to a forked child (when `figures` > 1, on Linux
    with two CPUs or more); on leaving, every child has finished and the first failure is raised.
    Inside another (analysis.report.report_to: the early figures render while the fits run) it
    does nothing: the outer one's children go on (`wait_for_figures` waits for them)."""
    global _active
    jobs = MAX_JOBS if cpus() >= 2 else 1
    if (
        _active is not None
        or figures < 2
        or jobs < 2
        or not sys.platform.startswith("linux")
        or not hasattr(os, "fork")
    ):
        yield
        return
    _active = Forked(jobs)
    try:
        yield
    except BaseException:
        forked, _active = _active, None
        try:
            forked.close()  # no child left behind; the drawing's own failure is the one raised
        except BaseException:  # noqa: BLE001, S110
            pass
        raise
    forked, _active = _active, None
    forked.close()


def wait_for_figures() -> None:
    """Wait for every figure handed to a child so far and raise the first failure among them (once):
    write_report calls it before summary.md, whichever `forked_rendering` started the children."""
    if _active is not None:
        _active.close()


def finish_figure(fig, path: Path, finish: Callable[[object], None], close: Callable[[object], None]) -> Path:
    """`finish(fig)` (lay out, render, write `path`) and `close(fig)`: in a forked child while
    `forked_rendering` is on, else here and now."""
    if _active is None:
        try:
            finish(fig)
        finally:
            close(fig)
    else:
        _active.submit(fig, finish, close)
    return path


__all__ = ["Forked", "cpus", "finish_figure", "forked_rendering", "wait_for_figures"]
