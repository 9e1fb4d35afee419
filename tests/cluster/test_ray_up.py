"""`ray up` for real: cluster-onprem.yaml on two SSH nodes made of Linux namespaces.

A client machine (where a user runs `ray up`), a head and a worker, each in its own network, PID
and mount namespaces on a private bridge (10.213.0.0/24, reachable from nowhere else; see
netlab.py), each node with its own key-only sshd on port 22. The test follows docs/cluster.md as
a user would: generate the token and chmod 600 it, `ray up -y` the repository's
cluster-onprem.yaml with only the addresses and the SSH user/key filled in, wait for the worker,
run the smoke sweep on the head with `--address auto` into the shared folder, then `ray down -y`.
It asserts that all 8 trials completed on both nodes, that `ray status` without the token is
refused while the token-bearing one answers, and that `ray down` stops Ray on the worker too.
Needs root, `ip netns`, sshd and rsync: it skips, saying which is missing, elsewhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster import netlab
from tests.helpers import SMOKE_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
HEAD, WORKER, CLIENT = 10, 11, 2  # host numbers in 10.213.0.0/24

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def lab(tmp_path):
    reason = netlab.missing_prerequisite()
    if reason:
        pytest.skip(f"two-node `ray up` test: {reason}")
    try:
        with netlab.Lab(tmp_path) as lab:
            yield lab
    except netlab.LabUnavailable as exc:
        pytest.skip(f"two-node `ray up` test: {exc}")


def onprem_config(head_ip: str, worker_ip: str) -> dict:
    """cluster-onprem.yaml as a user fills it in: addresses, SSH user and key; nothing else."""
    config = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
    config["provider"]["head_ip"] = head_ip
    config["provider"]["worker_ips"] = [worker_ip]
    config["auth"] = {"ssh_user": "root", "ssh_private_key": "~/.ssh/id_ed25519"}
    return config


def active_nodes(status_output: str) -> int:
    """Node count in the `Active:` block of `ray status` (lines like ` 2 local.cluster.node`)."""
    block = status_output.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(int(n) for n in re.findall(r"^\s*(\d+) \S", block, flags=re.MULTILINE))


def test_ray_up_smoke_sweep_on_two_nodes_then_down(lab, tmp_path):
    import polars as pl

    started = time.monotonic()
    log = tmp_path / "commands.log"
    keys = tmp_path / "keys"
    keys.mkdir()
    netlab.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab client", "-f", str(keys / "id")])
    pub = (keys / "id.pub").read_text()

    client = lab.add("client", CLIENT, sshd=False, project=ROOT)
    head = lab.add("head", HEAD, sshd=True, authorized_key=pub)
    worker = lab.add("worker", WORKER, sshd=True, authorized_key=pub)
    (client.home / ".ssh").mkdir(mode=0o700)
    shutil.copy(keys / "id", client.home / ".ssh" / "id_ed25519")
    (client.home / "cluster.yaml").write_text(yaml.safe_dump(onprem_config(head.ip, worker.ip), sort_keys=False))

    def on_client(command: str, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        return client.run(command, env=env, cwd="~/qk-collapse-sweep", timeout=timeout, log=log)

    def explain(result) -> str:
        tail = "\n".join(f"--- {m.name} boot log ---\n{m.log.read_text()[-3000:]}" for m in (head, worker))
        return f"rc {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}\n{tail}"

    # docs/cluster.md, step 1: the cluster's token, readable by its owner only.
    r = on_client("ray get-auth-token --generate >/dev/null && chmod 600 ~/.ray/auth_token")
    assert r.returncode == 0, explain(r)

    # Step 2: ray up. The head comes up here; its autoscaler (v1) then sets up the worker over SSH.
    r = on_client("ray up -y --log-color false ~/cluster.yaml", timeout=180)
    assert r.returncode == 0, explain(r)
    t_up = time.monotonic() - started

    head_address = f"{head.ip}:6379"
    deadline = time.monotonic() + 120
    while True:
        r = on_client(f"RAY_AUTH_MODE=token ray status --address {head_address}", timeout=30)
        if r.returncode == 0 and active_nodes(r.stdout) >= 2:
            break
        assert time.monotonic() < deadline, "the worker never joined:\n" + explain(r)
        time.sleep(2)
    t_joined = time.monotonic() - started
    for m in (client, head, worker):  # the token reached every node, readable by its owner only
        assert (m.home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600, m.name
    assert (head.home / ".ray" / "auth_token").read_text() == (client.home / ".ray" / "auth_token").read_text()

    # Without the token (another HOME, no RAY_AUTH_MODE), the cluster refuses to answer.
    r = on_client(f"mkdir -p /tmp/stranger && HOME=/tmp/stranger ray status --address {head_address}", timeout=60)
    assert r.returncode != 0, "a tokenless `ray status` was answered:\n" + explain(r)
    assert re.search(r"auth|token|unauthenticated", r.stdout + r.stderr, re.IGNORECASE), explain(r)

    # Step 3: the smoke sweep on the head, results in the folder every node mounts at /mnt.
    r = on_client(
        "ray exec ~/cluster.yaml 'cd ~/qk-collapse-sweep && python -m orchestrator.sweep "
        "--config sweeps/smoke.yaml --results /mnt/results --address auto "
        + " ".join(f"--set '\\''{item}'\\''" for item in SMOKE_OVERRIDES)  # the tests' 8 trials
        + "'",
        timeout=240,
    )
    assert r.returncode == 0, explain(r)
    t_sweep = time.monotonic() - started

    results = lab.shared / "results" / "smoke"
    trials = pl.read_parquet(results / "trials.parquet")
    assert trials.height == 8 and trials["status"].to_list() == ["completed"] * 8, trials
    attempts = pl.read_parquet(results / "attempts.parquet").filter(pl.col("outcome") == "completed")
    assert set(attempts["node_ip"]) == {head.ip, worker.ip}, attempts.select("trial_id", "node_ip", "node_id")
    assert attempts["node_id"].n_unique() == 2

    # Step 4: ray down stops the head; the workers' watcher stops Ray there within seconds.
    r = on_client("ray down -y --log-color false ~/cluster.yaml", timeout=120)
    assert r.returncode == 0, explain(r)
    deadline = time.monotonic() + 45
    while any(name in ("raylet", "gcs_server") for m in (head, worker) for name in m.processes()):
        assert time.monotonic() < deadline, (
            f"Ray still running after `ray down`: head {head.processes()}, worker {worker.processes()}"
        )
        time.sleep(1)
    t_down = time.monotonic() - started
    with log.open("a") as f:
        f.write(f"\nup {t_up:.0f} s, worker joined {t_joined:.0f} s, sweep done {t_sweep:.0f} s, down {t_down:.0f} s\n")
    print(
        f"ray up {t_up:.0f} s | worker joined {t_joined:.0f} s | sweep done {t_sweep:.0f} s | "
        f"down and stopped {t_down:.0f} s"
    )
