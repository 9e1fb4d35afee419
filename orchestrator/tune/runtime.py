"""Starting or joining Ray for a sweep: private and loopback-only on a laptop, `auto` on a cluster.

A private instance binds every server to 127.0.0.1, runs no dashboard and keeps Ray's token
authentication on (Ray 2.60 enables it for a local `ray.init()` and keeps the token in
~/.ray/auth_token; RAY_AUTH_MODE is left alone, so a user's setting is respected). It lives in a
short temporary folder: Ray's unix sockets must fit in 107 characters, which a long results path
or pytest's tmp_path would break.

That folder is private: Ray makes its temp folder world-readable and writable (0777, again each
time one of its processes starts), and its logs can hold what a runtime environment carried, so
each run's folder `r????????` lies in a per-user folder `qkc-<uid>` of mode 0700 (under
$RAY_TMPDIR or /tmp), which no other user can enter. A run
holds an flock on `r????????.lock` beside its folder while Ray runs there; the kernel drops it when
the process dies, so the next start removes the folders of killed runs (SIGKILL, OOM) and nothing
else: only in that private folder, only names of that pattern, only when no live process holds
their lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass, field

import ray
import torch
from ray._private import ray_constants

from trainer import host
from trainer.config import ConfigError

LOOPBACK = "127.0.0.1"


@dataclass
class RayHandle:
    """What `start_ray` did, so `stop` undoes exactly that."""

    mode: str  # "local" (started here), "cluster" (joined), "existing" (already initialised)
    address: str | None = None
    temp_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    temp: TempDir | None = None  # the private folder of a local Ray, with its lock

    def describe(self) -> str:
        resources = ray.cluster_resources()
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        gpus = f", {resources['GPU']:g} GPUs" if resources.get("GPU") else ""
        where = {
            "local": "private local Ray (127.0.0.1)",
            "cluster": f"Ray cluster at {self.address}",
            "existing": "the Ray instance already running in this process",
        }[self.mode]
        return f"{where}: {nodes} node(s), {resources.get('CPU', 0):g} CPUs{gpus}"

    def stop(self) -> None:
        if self.mode == "existing":
            return
        ray.shutdown()
        if self.mode == "local":
            _loopback_only(False)
        if self.temp is not None:
            release_temp_dir(self.temp)
        elif self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


# Ray's longest socket: <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, and AF_UNIX
# paths stop at 107 bytes: 62 for the session part (+2 for a 7-digit pid) leaves 43 for <temp>.
SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_1234567/sockets/plasma_store")
MAX_SOCKET_PATH = 107
RUN_FOLDER = re.compile(r"^r[a-z0-9_]{8}$")  # tempfile's names: "r" + 8 of [a-z0-9_]
LOCK_SUFFIX = ".lock"
FRESH_S = 10.0  # a lock file younger than this may not be locked yet: never judged


@dataclass
class TempDir:
    """One run's private Ray folder and the open, flock'ed descriptor of its lock file."""

    path: str
    fd: int


def private_folder(root: str) -> str:
    """<root>/qkc-<uid>, created with mode 0700; a ConfigError (one line) when it is a symlink, not a
    folder or someone else's."""
    path = os.path.join(root, f"qkc-{os.getuid()}")
    try:
        os.makedirs(root, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"Ray's temporary folder: cannot create {path!r}: {exc.strerror}; set RAY_TMPDIR") from None
    problem = (
        "is a symlink"
        if stat.S_ISLNK(info.st_mode)
        else "is not a folder"
        if not stat.S_ISDIR(info.st_mode)
        else f"belongs to uid {info.st_uid}, not this user"
        if info.st_uid != os.getuid()
        else None
    )
    if problem:
        raise ConfigError(
            f"Ray's temporary folder: {path!r} {problem}; remove it, or set RAY_TMPDIR to a folder of your own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def clean_leftovers(private: str) -> list[str]:
    """Remove what runs killed before they could clean up left in `private`: each `r????????`
    folder whose lock file no live process holds (and is not brand new). Returns what was removed."""
    removed = []
    for entry in os.scandir(private):
        run = entry.name[: -len(LOCK_SUFFIX)]
        if not entry.name.endswith(LOCK_SUFFIX) or not RUN_FOLDER.match(run):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < FRESH_S:
                continue
            folder = os.path.join(private, run)
            if os.path.isdir(folder) and not os.path.islink(folder):
                shutil.rmtree(folder, ignore_errors=True)
            os.unlink(entry.path)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


def private_temp_dir(root: str | None = None) -> TempDir:
    """A fresh, private folder for Ray's sessions and sockets, locked for this process:
    <root>/qkc-<uid>/r????????, under the first of `root`, $RAY_TMPDIR and /tmp where the socket
    paths fit. Leftovers of killed runs in the same private folder are removed first."""
    suffix = len(f"/qkc-{os.getuid()}/r12345678")
    fitting = [
        r for r in (root, os.environ.get("RAY_TMPDIR")) if r and len(str(r)) + suffix + SOCKET_SUFFIX <= MAX_SOCKET_PATH
    ]
    root = fitting[0] if fitting else ("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())
    private = private_folder(str(root))
    clean_leftovers(private)
    while True:
        fd, lock = tempfile.mkstemp(prefix="r", suffix=LOCK_SUFFIX, dir=private)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until release_temp_dir, or until this process dies
        path = lock[: -len(LOCK_SUFFIX)]
        try:
            os.mkdir(path, 0o700)
            return TempDir(path, fd)
        except FileExistsError:  # a stray folder of that name: take another name
            os.unlink(lock)
            os.close(fd)


def release_temp_dir(temp: TempDir) -> None:
    """Remove a run's folder, then its lock file, and drop the lock."""
    shutil.rmtree(temp.path, ignore_errors=True)
    try:
        os.unlink(temp.path + LOCK_SUFFIX)
    except FileNotFoundError:
        pass
    if temp.fd >= 0:
        os.close(temp.fd)
        temp.fd = -1


def running_cluster_address() -> str | None:
    """The address of a Ray cluster this machine belongs to (`ray start` / `ray up`), if it answers."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        from ray._private.utils import read_ray_address

        address = read_ray_address()
    except Exception:
        return None
    if not address or ":" not in address:
        return None
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None  # a stale address file from a cluster that is gone


def check_local_resources(num_cpus: int, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fail before starting Ray when one trial cannot fit on this machine (Tune would wait forever)."""
    if cpus_per_trial > num_cpus:
        raise ConfigError(
            f"resources.cpus_per_trial: {cpus_per_trial:g} is more than the {num_cpus} CPUs of this machine"
        )
    if gpus_per_trial > 0:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus_per_trial > max(have, 0) and not (0 < gpus_per_trial <= 1 and have >= 1):
            raise ConfigError(
                f"resources.gpus_per_trial: {gpus_per_trial:g} but this machine has {have} GPU(s); "
                "use gpus_per_trial: 0 here, or run on a GPU cluster (--address)"
            )


def start_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    local: bool = False,
    quiet: bool = True,
    temp_root: str | None = None,
) -> RayHandle:
    """Reuse an initialised Ray, join a cluster, or start a private loopback-only instance."""
    log_level = logging.ERROR if quiet else logging.WARNING
    if ray.is_initialized():
        return RayHandle(mode="existing")
    if address is None and not local:
        address = running_cluster_address()
    if address:
        ray.init(address=address, log_to_driver=not quiet, logging_level=log_level, configure_logging=True)
        return RayHandle(mode="cluster", address=address)
    temp = private_temp_dir(temp_root)
    _loopback_only(True)
    try:
        ray.init(
            num_cpus=num_cpus or host.cpus(),
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            _temp_dir=temp.path,
            log_to_driver=not quiet,
            logging_level=log_level,
            configure_logging=True,
        )
    except Exception:
        _loopback_only(False)
        release_temp_dir(temp)
        raise
    return RayHandle(mode="local", temp_dir=temp.path, temp=temp)


def _loopback_only(on: bool) -> None:
    """Make Ray treat 127.0.0.1 as this node's address, so that every server binds to loopback.

    On Linux Ray replaces a loopback `_node_ip_address` with the machine's routable IP (and binds
    GCS, raylet and workers there) unless clustering is off; the switch is read from
    `ray_constants` at call time, so flipping it here keeps a private instance off the network.
    """
    if not hasattr(_loopback_only, "default"):
        _loopback_only.default = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = _loopback_only.default and not on


def fits_a_node(cpus: float, gpus: float) -> bool:
    """Whether some live node has room for one trial (else Tune waits, e.g. for the autoscaler)."""
    for node in ray.nodes():
        have = node.get("Resources", {}) if node.get("Alive") else {}
        if have.get("CPU", 0) >= cpus and have.get("GPU", 0) >= gpus:
            return True
    return False


def quiet_tune_logging() -> None:
    """Tune logs warnings (slow syncs, resource hints) through `logging`; keep only errors.

    A failed trial's traceback is not repeated on the console: the monitor prints one line and
    files the error in trials.parquet / attempts.parquet (the full text stays in Tune's error.txt).
    """
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):  # per-trial tracebacks, "did not complete"
        logging.getLogger(name).setLevel(logging.CRITICAL)
