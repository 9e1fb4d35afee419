"""One driver per results folder: an exclusive lock file in <results>/<name>.

Two drivers on one folder would each train every trial, mark the other's live trials failed and
delete its parts. The first driver creates `driver.lock` (pid, host, start time, a heartbeat
timestamp that a thread refreshes every HEARTBEAT_S); a second driver finds it and exits 2
naming the holder. A lock whose holder is gone is taken over with a message: a dead pid on this
host, or (for a holder on another host) a heartbeat older than STALE_S.

On a local disk the lock is created with an atomic hard link (it exists whole or not at all);
on an object store (s3://, gs://) there is no atomic create, so two drivers started within the
same second may both proceed (documented in docs/reliability.md).
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
from trainer.storage import ResultsDir

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 5.0
STALE_S = 60.0


class LockHeld(ConfigError):
    """Another live driver holds the results folder: exit 2."""


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
    ):
        self.results, self.command = results, command
        self.heartbeat_s, self.stale_s, self.stream = heartbeat_s, stale_s, stream
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
        """Create the lock if there is none; True on success."""
        self.results.makedirs()
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
        self._thread = threading.Thread(target=self._beat, name="driver-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        self.results.write_bytes(json.dumps(self.record).encode(), LOCK_FILE)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self.read() or {}).get("token") != self.token:
                    print(
                        f"  warning: the lock in {self.results.uri} was taken by another driver",
                        file=self.stream,
                        flush=True,
                    )
                    return
                self._write()
            except Exception:  # noqa: BLE001 - a missed heartbeat (a full disk) must not kill the driver
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
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
