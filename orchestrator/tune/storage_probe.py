"""Fail fast on storage: every node of a cluster must see the same results folder.

On a multi-node cluster each trial writes its metrics, spectra and checkpoints under the results
folder from whichever node runs it, and the driver reads them back. A local path that is not shared
(./results on the head, say) breaks that quietly: trials on other nodes write to their own disks,
fail at their first checkpoint, are retried elsewhere and leave partial rows behind. So before any
trial starts, `check_shared_storage` has the driver write a probe file under the results folder,
then runs one small Ray task pinned to each alive node (NodeAffinitySchedulingStrategy, soft=False)
that writes its own probe file and reads the driver's; the driver then reads every node's file.
Any miss ends the command with one message and exit status 2. The probe files are removed again.
A one-node Ray (a laptop) has nothing to check. Nodes that join later (an autoscaler adding GPU
workers) are not probed: on an autoscaling cluster use shared storage (s3://, gs://, or a file
system mounted at the same path everywhere) from the start.
"""

from __future__ import annotations

import socket
import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from trainer.config import ConfigError
from trainer.storage import ResultsDir

PROBE_DIR = ".storage-probe"  # <results>/<name>/.storage-probe/<token>/{driver,node-<id>} while probing
TIMEOUT_S = 120.0


def probe_on_node(uri: str, token: str, node_id: str) -> dict:
    """On one node: write node-<id> under the probe folder and read the driver's file back."""
    found = {"node_id": node_id, "hostname": socket.gethostname(), "wrote": False, "read": False, "error": None}
    try:
        results = ResultsDir(uri)
        results.write_bytes(node_id.encode(), PROBE_DIR, token, f"node-{node_id}")
        found["wrote"] = True
        if results.exists(PROBE_DIR, token, "driver"):
            with results.fs.open_input_stream(results.path(PROBE_DIR, token, "driver")) as f:
                found["read"] = f.read().decode() == token
    except Exception as exc:  # a read-only mount, missing credentials on that node, ...
        found["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return found


def cleanup_on_node(uri: str, token: str, node_id: str) -> None:
    """On one node: remove its own probe file (where storage is not shared, only it can)."""
    try:
        results = ResultsDir(uri)
        results.delete(PROBE_DIR, token, f"node-{node_id}")
        for parts in ((PROBE_DIR, token), (PROBE_DIR,)):
            if not results.listdir(*parts):
                results.delete_dir(*parts)
    except Exception:
        pass


# What the tasks run; a test swaps these to simulate a path that differs between nodes.
PROBE, CLEANUP = probe_on_node, cleanup_on_node


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_shared_storage(results: ResultsDir, nodes: list[dict] | None = None) -> int:
    """Raise ConfigError unless every alive node writes a file under `results` that the driver
    reads and reads the driver's; returns how many nodes were checked (0 or 1: nothing to check)."""
    nodes = alive_nodes() if nodes is None else nodes
    if len(nodes) < 2:
        return len(nodes)
    existed = results.exists()
    token = uuid.uuid4().hex[:12]
    results.write_bytes(token.encode(), PROBE_DIR, token, "driver")
    pinned = lambda fn, node: ray.remote(num_cpus=0, max_retries=0)(fn).options(  # noqa: E731
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    )
    try:
        reports = ray.get([pinned(PROBE, n).remote(results.uri, token, n["NodeID"]) for n in nodes], timeout=TIMEOUT_S)
        problems = []
        for node, found in zip(nodes, reports):
            where = f"node {node.get('NodeManagerAddress', '?')} ({found.get('hostname') or node['NodeID'][:8]})"
            if found["error"]:
                problems.append(f"{where} cannot write there ({found['error']})")
            elif not found["read"]:
                problems.append(f"{where} does not see the file the driver wrote")
            elif not results.exists(PROBE_DIR, token, f"node-{node['NodeID']}"):
                problems.append(f"the driver does not see the file {where} wrote")
    finally:
        try:
            ray.get([pinned(CLEANUP, n).remote(results.uri, token, n["NodeID"]) for n in nodes], timeout=TIMEOUT_S)
        except Exception:
            pass
        results.delete_dir(PROBE_DIR, token)
        if not results.listdir(PROBE_DIR):
            results.delete_dir(PROBE_DIR)
        if not existed and results.is_local and not results.listdir():
            results.delete_dir()  # leave no empty sweep folder behind a refusal
    if problems:
        raise ConfigError(
            f"results: {results.uri} is not shared by the {len(nodes)} nodes of this cluster "
            f"({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}). On a multi-node cluster the "
            "results must be shared storage: an s3:// or gs:// URI (--results s3://bucket/prefix), or a file "
            "system mounted at the same path on every node; a local path such as ./results only works on "
            "one machine"
        )
    return len(nodes)
