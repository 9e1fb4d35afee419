"""One driver per results folder: an exclusive lock file in <results>/<name>.

Two drivers on one folder would each train every trial, mark the other's live trials failed and
delete its parts. The first driver creates `driver.lock` (pid, host, start time, a heartbeat
timestamp that a thread refreshes every HEARTBEAT_S); a second driver finds it and exits 2
naming the holder. A lock whose holder is gone is taken over with a message: a dead pid on this
host, or (for a holder on another host) a heartbeat older than STALE_S.

A driver paused for longer than that (SIGSTOP, a suspended laptop, a VM frozen) may find its lock
taken over when it wakes. It must not go on: both drivers would run the remaining trials and
overwrite each other's trials.parquet. Its heartbeat thread notices (the next beat reads another
token) and so does its next ledger write (`check_held`, which re-reads the lock when no beat has
confirmed it lately); either calls `on_lost`, which for a command prints one line and ends the
process at once (exit 3), so its trials stop with it and it writes nothing more.

On a local disk the lock is created with an atomic hard link (it exists whole or not at all);
on an object store (s3://, gs://) there is no atomic create, so two drivers started within the
same second may both proceed (documented in docs/reliability.md). Not the `filelock` package: it
covers only the local-disk part (an OS lock on a local path), not a lock on an object store, a
holder named by pid and host in the refusal, a takeover of a dead holder's lock across hosts, or
a paused driver finding out that it lost its lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from trainer.config import ConfigError, short_repr
from trainer.safeio import environment_problem
from trainer.storage import ResultsDir

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 5.0
STALE_S = 60.0


class LockHeld(ConfigError):
    """Another live driver holds the results folder: exit 2."""


class LockLost(RuntimeError):
    """This driver's lock was taken over (and `on_lost` returned): it must not write."""


_HELD: dict[str, DriverLock] = {}  # results URI -> the lock this process holds there


def check_held(results: ResultsDir) -> None:
    """Before a driver writes a shared file in `results`: if it holds a lock there that another
    driver took over, `on_lost` runs (and, for a command, the process ends)."""
    lock = _HELD.get(results.uri)
    if lock is not None:
        lock.verify()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class DriverLock:
    """`with DriverLock(results, command):` holds <results>/driver.lock for the body."""

    def __init__(
        self,
        results: ResultsDir,
        command: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
        stream=sys.stdout,
        on_lost=None,
    ):
        """`on_lost(lock, holder)` runs when this driver finds that another one took the lock over
        (None: a warning; a write checked with `check_held` then raises LockLost)."""
        self.results, self.command = results, command
        self.heartbeat_s, self.stale_s, self.stream = heartbeat_s, stale_s, stream
        self.on_lost = on_lost
        self.lost: dict | None = None  # the record of the driver that took the lock over
        self.confirmed_at = time.monotonic()  # when the lock was last seen to be ours
        self._losing = threading.Lock()
        self.token = uuid.uuid4().hex
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "token": self.token,
            "started_at": time.time(),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- reading and judging ---------------------------------------------------------------
    def read(self) -> dict | None:
        """The current lock record; {} for an unreadable one; None when there is no lock."""
        try:
            if not self.results.exists(LOCK_FILE):
                return None
            data = self.results.read_json(LOCK_FILE)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            return {}

    def stale_reason(self, holder: dict) -> str | None:
        """Why the holder cannot be alive, or None when it may be."""
        beat = holder.get("heartbeat")
        age = time.time() - beat if isinstance(beat, (int, float)) else None
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            if pid != os.getpid() and not _pid_alive(pid):
                return f"pid {pid} on this host is not running"
            if pid == os.getpid() and holder.get("token") != self.token:
                return f"pid {pid} is this process (a restarted container?)"
        if age is None:
            return "it has no readable heartbeat" if not self._young(holder) else None
        if age > self.stale_s:
            return f"its heartbeat is {age:.0f} s old (more than {self.stale_s:.0f} s)"
        return None

    def _young(self, holder: dict) -> bool:
        """A lock file being written right now (unreadable, modified in the last stale_s)."""
        if not self.results.is_local:
            return False
        try:
            return time.time() - self.results.local_path(LOCK_FILE).stat().st_mtime < self.stale_s
        except OSError:
            return False

    def describe(self, holder: dict) -> str:
        beat = holder.get("heartbeat")
        age = f", heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
        return (
            f"pid {short_repr(holder.get('pid'), 20)} on host {short_repr(holder.get('host'), 60)} "
            f"({short_repr(holder.get('command'), 40)}{age})"
        )

    # ---- acquiring -------------------------------------------------------------------------
    def _create(self) -> bool:
        """Create the lock if there is none; True on success. A results folder the file system will
        not create although its checks passed (a pseudo file system such as /proc, a server that
        refuses the folder) is a ConfigError: one line, exit 2, nothing written; a full disk or a
        read-only file system stays an OSError, for the caller's exit 3."""
        try:
            self.results.makedirs()
        except OSError as exc:
            if environment_problem(exc) is not None:
                raise
            why = exc.strerror or " ".join(str(exc).split())
            raise ConfigError(f"results: cannot create the folder {self.results.uri}: {why}") from None
        data = json.dumps(self.record).encode()
        if not self.results.is_local:
            if self.results.exists(LOCK_FILE):
                return False
            self.results.write_bytes(data, LOCK_FILE)
            return True
        path = self.results.local_path(LOCK_FILE)
        tmp = path.with_name(f".{LOCK_FILE}.{self.token[:8]}.tmp")
        try:
            tmp.write_bytes(data)
            os.link(tmp, path)  # atomic: fails when the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> DriverLock:
        for _ in range(3):
            if self._create():
                break
            holder = self.read()
            if holder is None:
                continue  # released in between: try again
            reason = self.stale_reason(holder)
            if reason is None:
                raise LockHeld(
                    f"{self.results.uri} is in use by another driver: {self.describe(holder)}; "
                    f"wait for it to finish or stop it (a lock without a heartbeat for {self.stale_s:.0f} s "
                    f"is taken over); the lock is {self.results.uri}/{LOCK_FILE}"
                )
            print(
                f"  taking over a stale lock in {self.results.uri}: {self.describe(holder)}, {reason}",
                file=self.stream,
                flush=True,
            )
            self._write()
            time.sleep(0.2)  # two drivers taking over at once: the last writer wins, the other sees it
            if (self.read() or {}).get("token") == self.token:
                break
        else:
            holder = self.read() or {}
            raise LockHeld(f"{self.results.uri} is in use by another driver: {self.describe(holder)}")
        if (self.read() or {}).get("token") != self.token:
            raise LockHeld(f"{self.results.uri} is in use by another driver: {self.describe(self.read() or {})}")
        self.confirmed_at = time.monotonic()
        _HELD.setdefault(self.results.uri, self)  # (a test may hold two: the first is the driver)
        self._thread = threading.Thread(target=self._beat, name="driver-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        self.results.write_bytes(json.dumps(self.record).encode(), LOCK_FILE)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self.confirm()
                if held is False:
                    return
                if held:  # (unreadable now: neither refreshed nor given up)
                    self._write()
            except Exception:  # noqa: BLE001 - a missed heartbeat (a full disk) must not kill the driver
                pass

    def verify(self) -> None:
        """Before a write: read the lock again, on a local disk every time (a small file: a driver
        resumed after a pause of any length must not write once more), on an object store when no
        heartbeat has confirmed it for two periods (the process was paused, or the heartbeat thread
        starved; each read is a request); `on_lost` runs if it is not ours."""
        stale = time.monotonic() - self.confirmed_at > 2 * self.heartbeat_s
        if self.lost is not None or self.results.is_local or stale:
            if self.confirm() is False:
                raise LockLost(f"{self.results.uri}: another driver took over the lock: {self.describe(self.lost)}")

    def confirm(self) -> bool | None:
        """True when the lock file still holds this driver's token; False when it holds another
        driver's or is gone (then `on_lost` has run); None when it cannot be read now, after a few
        tries (an object store that does not answer): not taken as lost, nor as confirmed."""
        if self.lost is not None:
            self._lose(self.lost)
            return False
        for attempt in range(3):
            holder = self.read()
            if holder is None or holder.get("token") not in (None, self.token):
                self._lose(holder or {})  # gone, or another driver's
                return False
            if holder.get("token") == self.token:
                self.confirmed_at = time.monotonic()
                return True
            time.sleep(0.2 * (attempt + 1))
        return None

    def _lose(self, holder: dict) -> None:
        with self._losing:
            first = self.lost is None
            if first:
                self.lost = holder
        if self.on_lost is not None:  # each time it is noticed: a command's ends the process the first time
            self.on_lost(self, self.lost)
        elif first:
            print(
                f"  warning: the lock in {self.results.uri} was taken by another driver", file=self.stream, flush=True
            )

    def release(self) -> None:
        self._stop.set()
        if _HELD.get(self.results.uri) is self:
            del _HELD[self.results.uri]
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.heartbeat_s + 1)
        try:
            if (self.read() or {}).get("token") == self.token:
                self.results.delete(LOCK_FILE)
        except OSError:
            pass

    def __enter__(self) -> DriverLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
