"""Throwaway machines made of Linux namespaces, to test `ray up` over real SSH on one host.

A `Lab` is a private L2 network: a bridge inside a dedicated "router" network namespace, with one
veth pair per machine (the bridge end in the router namespace, `eth0` in the machine's). Addresses
exist only inside those namespaces and no namespace has a default route, so nothing can reach
the host's network or the internet, and the host's own namespaces are never touched.

A `Machine` is a network namespace plus a process tree started with
`ip netns exec NS unshare --pid --fork --kill-child --mount-proc`: its PID 1 (sshd for a node,
`sleep` for the client) sees only its own processes, so `ray stop` on one node cannot touch
another's Ray. Its mount namespace gives it its own /root (the SSH user's home, so ~/.ray,
~/.bashrc and the project copy are per machine), /tmp (Ray's session folder, the launcher's
state files), /run, and the lab's shared folder at /mnt (the "NFS export" every node sees at the
same path). The host's Python is bound in read-only, so nothing a machine installs can change
the host: nodes install into their own virtualenv (~/venv, over the host's site-packages).

Everything is started by PID and ended by PID: `Lab.close()` kills each machine's `unshare`
process (whose --kill-child takes the whole PID namespace with it), then any process still in one
of the lab's network namespaces, then deletes the namespaces (which deletes veths and bridge).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.0"  # /24, exists only inside the lab's namespaces
TOOLS = ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "rsync")


class LabUnavailable(RuntimeError):
    """This host cannot make network namespaces (e.g. an unprivileged container)."""


def missing_prerequisite() -> str | None:
    """Why the lab cannot run here (None when it can)."""
    if not sys.platform.startswith("linux"):
        return "needs Linux network, PID and mount namespaces"
    if os.geteuid() != 0:
        return "needs root (ip netns, unshare, mount)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install -y iproute2 util-linux openssh-client rsync)"
    if sshd_path() is None:
        return "sshd is not installed (apt-get install -y openssh-server)"
    return None


def sshd_path() -> str | None:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    return found


def run(cmd: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True, **kw)


def host_home() -> Path:
    """The root user's home as sshd sees it (pw_dir), which each machine replaces with its own."""
    return Path(pwd.getpwuid(0).pw_dir)


def python_binds() -> list[Path]:
    """Host folders that hold the running Python and its packages, to bind read-only into machines."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    return sorted(paths)


BOOT = r"""#!/bin/bash
# Runs as PID 1 of a fresh PID + mount namespace, inside the machine's network namespace.
set -euo pipefail
mount --make-rprivate /
home_src="$LAB_MACHINE/home"
# The host's Python, read-only, at the same paths (they may lie under the home we replace).
for p in $LAB_PYTHON; do
  if [[ "$p" == "$LAB_HOST_HOME"/* ]]; then dst="$home_src/${p#"$LAB_HOST_HOME"/}"; else dst="$p"; fi
  mkdir -p "$dst"
  mount --rbind "$p" "$dst"
  mount -o remount,bind,ro "$dst"
done
if [[ -n "${LAB_PROJECT:-}" ]]; then          # the client's checkout, read-only, at ~/qk-collapse-sweep
  mkdir -p "$home_src/qk-collapse-sweep"
  mount --bind "$LAB_PROJECT" "$home_src/qk-collapse-sweep"
  mount -o remount,bind,ro "$home_src/qk-collapse-sweep"
fi
mount --bind "$LAB_SHARED" /mnt
mount --rbind "$home_src" "$LAB_HOST_HOME"
mount --bind "$LAB_MACHINE/tmp" /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -m 755 /run/sshd
ip link set lo up
if [[ -n "${LAB_VENV_PYTHON:-}" ]]; then      # a node: its own virtualenv over the host's packages
  "$LAB_VENV_PYTHON" -m venv --without-pip --system-site-packages "$LAB_HOST_HOME/venv"
  if [[ -n "${LAB_EXTRA_SITE:-}" ]]; then
    echo "$LAB_EXTRA_SITE" > "$LAB_HOST_HOME"/venv/lib/python*/site-packages/_host_env.pth
  fi
  printf '#!%s\nfrom ray.scripts.scripts import main\nmain()\n' "$LAB_HOST_HOME/venv/bin/python" \
    > "$LAB_HOST_HOME/venv/bin/ray"
  chmod 755 "$LAB_HOST_HOME/venv/bin/ray"
fi
echo "lab: booted"
exec "$@"
"""


@dataclass
class Machine:
    name: str  # short name: head, worker, client
    netns: str
    ip: str
    path: Path  # host folder: home/, tmp/, boot.sh, boot.log
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.path / "boot.log"

    @property
    def home(self) -> Path:
        """The machine's home folder as seen from the host (the machine sees it as its /root)."""
        return self.path / "home"

    def init_pid(self) -> int:
        """Host PID of the machine's PID 1 (the child of `unshare --fork`)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        if not children:
            raise RuntimeError(f"{self.name}: machine has no PID 1 (see {self.log}):\n{self.log.read_text()}")
        return int(children[0])

    def run(
        self,
        command: str,
        env: dict[str, str] | None = None,
        cwd: str = "/root",
        timeout: float = 60,
        log: Path | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a bash command inside the machine (its network, PID and mount namespaces)."""
        base = {
            "HOME": str(host_home()),
            "USER": "root",
            "LANG": "C.UTF-8",
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        base.update(env or {})
        cmd = [
            "nsenter",
            "-t",
            str(self.init_pid()),
            "-n",
            "-m",
            "-p",
            "--",
            "/bin/bash",
            "-c",
            f"cd {cwd} && {command}",
        ]
        started = time.monotonic()
        try:
            result = subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            result = subprocess.CompletedProcess(cmd, 124, out, f"timed out after {timeout:.0f} s")
        if log is not None:
            with log.open("a") as f:
                f.write(
                    f"\n$ [{self.name}] {command}   (rc {result.returncode}, "
                    f"{time.monotonic() - started:.1f} s)\n{result.stdout}{result.stderr}"
                )
        return result

    def pids(self) -> list[int]:
        """Host PIDs of every process in the machine's network namespace."""
        out = run(["ip", "netns", "pids", self.netns], check=False).stdout
        return [int(p) for p in out.split()]

    def processes(self) -> list[str]:
        names = []
        for pid in self.pids():
            try:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                pass
        return names


class Lab:
    """A private network of namespace machines; use as a context manager (cleanup on exit)."""

    def __init__(self, base: Path, prefix: str | None = None):
        self.base = base
        self.prefix = prefix or f"qk{os.getpid()}"
        self.router = f"{self.prefix}-r"
        self.shared = base / "shared"
        self.machines: dict[str, Machine] = {}
        self._netns: list[str] = []

    # -- network ---------------------------------------------------------------------------------
    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._netns.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def __enter__(self) -> Lab:
        self.shared.mkdir(parents=True, exist_ok=True)
        try:
            try:
                self._add_netns(self.router)
            except subprocess.CalledProcessError as exc:
                raise LabUnavailable(f"`ip netns add` fails here: {exc.stderr.strip()}") from exc
            run(["ip", "-n", self.router, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", self.router, "link", "set", "br0", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- machines --------------------------------------------------------------------------------
    def add(
        self, name: str, host: int, sshd: bool, authorized_key: str | None = None, project: Path | None = None
    ) -> Machine:
        """Create machine `name` at 10.213.0.<host>: its namespace, link, home and PID 1."""
        m = Machine(name=name, netns=f"{self.prefix}-{name[0]}", ip=f"{SUBNET}.{host}", path=self.base / name)
        self.machines[name] = m
        for sub in ("home", "tmp"):
            (m.path / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(m.home, 0o700)
        self._add_netns(m.netns)
        veth = f"v{name[0]}"
        run(["ip", "-n", self.router, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", m.netns])
        run(["ip", "-n", self.router, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "-n", m.netns, "addr", "add", f"{m.ip}/24", "dev", "eth0"])
        run(["ip", "-n", m.netns, "link", "set", "eth0", "up"])

        boot = m.path / "boot.sh"
        boot.write_text(BOOT)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LAB_MACHINE": str(m.path),
            "LAB_SHARED": str(self.shared),
            "LAB_HOST_HOME": str(host_home()),
            "LAB_PYTHON": " ".join(str(p) for p in python_binds()),
        }
        if project is not None:
            env["LAB_PROJECT"] = str(project)
        if sshd:
            assert authorized_key
            self._prepare_sshd(m, authorized_key)
            env["LAB_VENV_PYTHON"] = str(Path(sys.base_prefix) / "bin" / "python3")
            if sys.prefix != sys.base_prefix:  # the tests run in a virtualenv: nodes see its packages
                env["LAB_EXTRA_SITE"] = sysconfig.get_paths()["purelib"]
            command = [sshd_path(), "-D", "-e", "-f", f"{host_home()}/.sshd/sshd_config"]
        else:
            command = ["sleep", "infinity"]
        with m.log.open("w") as log:
            m.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    m.netns,
                    "unshare",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "--",
                    "/bin/bash",
                    str(boot),
                    *command,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while "lab: booted" not in m.log.read_text():
            if m.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not boot:\n{m.log.read_text()}")
            time.sleep(0.1)
        return m

    def _prepare_sshd(self, m: Machine, authorized_key: str) -> None:
        sshd_dir = m.home / ".sshd"
        ssh_dir = m.home / ".ssh"
        sshd_dir.mkdir(mode=0o700)
        ssh_dir.mkdir(mode=0o700)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"{m.name} host key",
                "-f",
                str(sshd_dir / "host_ed25519"),
            ]
        )
        (ssh_dir / "authorized_keys").write_text(authorized_key)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        home = host_home()
        (sshd_dir / "sshd_config").write_text(
            textwrap.dedent(f"""\
            # Key-only sshd for one lab machine; listens on port 22 of its own network namespace.
            Port 22
            ListenAddress {m.ip}
            HostKey {home}/.sshd/host_ed25519
            PidFile none
            UsePAM no
            PermitRootLogin prohibit-password
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            AuthorizedKeysFile .ssh/authorized_keys
            StrictModes yes
            MaxStartups 100
            MaxSessions 100
            LogLevel INFO
            """)
        )
        # The node's login shells use its virtualenv (made at boot), as a user's venv would be.
        (m.home / ".bashrc").write_text(f"export PATH={home}/venv/bin:$PATH\n")

    # -- cleanup ---------------------------------------------------------------------------------
    def close(self) -> None:
        for m in self.machines.values():
            if m.proc is not None and m.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGKILL)  # --kill-child: its PID namespace dies with it
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        for ns in reversed(self._netns):
            for _ in range(50):
                out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
                if not out:
                    break
                for pid in out:  # only processes inside namespaces this lab created
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            run(["ip", "netns", "del", ns], check=False)
        self._netns.clear()
