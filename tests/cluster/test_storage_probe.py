"""Fail fast on storage: on a multi-node cluster every node must see the results folder.

A two-node `ray.cluster_utils.Cluster` runs both raylets on this machine, so they share its file
system and a local path *is* shared between them. The refusal is therefore simulated, honestly
named as such: the probe task that runs on the second node is wrapped so that it resolves the
results path to a different folder (as a node with its own local disk would), while the head node
and the driver see the real one. Everything else (the pinned Ray tasks, the files written and read,
the message, the exit status, the cleanup) is the real code path. Runs in a subprocess, like the
other multi-node tests, so it never collides with the session's shared Ray.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_logged, write_spec

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys, threading
from ray.cluster_utils import Cluster
config, results, private = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
head_id = cluster.head_node.node_id
import ray
ray.init(address=cluster.address)
from orchestrator import sweep
from orchestrator.tune import storage_probe
from trainer.storage import ResultsDir
shared = storage_probe.check_shared_storage(ResultsDir(results + "/shared"))  # the real probe: same disk

real_probe, real_cleanup = storage_probe.probe_on_node, storage_probe.cleanup_on_node
def seen_from(uri, node_id):
    # The simulation: the non-head node sees another folder at the same path (its own local disk).
    return uri if node_id == head_id else uri.replace(results, private)
storage_probe.PROBE = lambda uri, token, node_id: real_probe(seen_from(uri, node_id), token, node_id)
storage_probe.CLEANUP = lambda uri, token, node_id: real_cleanup(seen_from(uri, node_id), token, node_id)
code = sweep.main(["--config", config, "--results", results, "--quiet"])
print(json.dumps({"code": code, "shared": shared}), flush=True)
threading.Timer(30, os._exit, args=(0,)).start()
ray.shutdown()
cluster.shutdown()
os._exit(0)
"""


def test_a_results_path_that_is_not_shared_is_refused_before_any_trial(
    tmp_path, tmp_path_factory, subprocess_env, python
):
    config = write_spec(tmp_path, name="unshared")
    results, private = tmp_path / "results", tmp_path / "private"
    results.mkdir()
    private.mkdir()
    env = {**subprocess_env, "RAY_TMPDIR": str(tmp_path_factory.mktemp("rp", numbered=True))}
    code, output = run_logged(
        [python, "-c", SCRIPT, str(config), str(results), str(private)], env, tmp_path / "probe.log", 240
    )
    assert code == 0, output[-4000:]
    report = json.loads(next(ln for ln in reversed(output.splitlines()) if ln.startswith("{")))
    assert report["shared"] == 2  # both nodes probed, the real (shared) path passes
    assert report["code"] == 2, output[-4000:]
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "is not shared by the 2 nodes" in errors[0] and "s3://" in errors[0]
    left = [p for p in (results / "unshared").rglob("*") if p.is_file()] if (results / "unshared").exists() else []
    assert left == []  # no sweep.json, no trial rows, no probe file (the driver lock may leave the empty folder)
    assert not list(private.rglob("node-*")) and not list(results.rglob(".storage-probe"))
