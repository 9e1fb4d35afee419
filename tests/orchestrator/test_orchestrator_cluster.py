"""Sweeps on Ray clusters other than the shared test instance: each runs in a subprocess.

- A two-node `ray.cluster_utils.Cluster` (two raylets on this machine): trials land on both nodes.
- A sweep interrupted with Ctrl-C (SIGINT) and continued with --resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import polars as pl
import pytest

from tests.helpers import completed_ids, run_logged, sweep_command, wait_for, write_spec
from trainer.schema import ATTEMPTS_FILE, METRICS_KEY, SWEEP_JSON, TRIALS_FILE

pytestmark = pytest.mark.slow

TWO_NODES = r"""
import json, os, sys, threading
from ray.cluster_utils import Cluster
config, results = sys.argv[1:3]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print("cluster up", flush=True)
from orchestrator import sweep
code = sweep.main(["--config", config, "--results", results, "--address", cluster.address, "--progress-every", "10"])
print(json.dumps({"code": code, "nodes": [cluster.head_node.node_id, worker.node_id]}), flush=True)
threading.Timer(30, os._exit, args=(0,)).start()  # never hang on teardown (Ray's reaper cleans up)
cluster.shutdown()
os._exit(0)
"""


def test_sweep_on_a_two_node_cluster_uses_both_nodes(tmp_path, tmp_path_factory, subprocess_env, python):
    config = write_spec(
        tmp_path,
        name="two",
        grid={"optimizer": "adamw", "qk_norm": ["none", "rms"], "seed": [0, 1]},
        train={"steps": 120},
    )
    # Ray's session folders and its address file go under a short folder of this test, not /tmp/ray.
    env = {**subprocess_env, "RAY_TMPDIR": str(tmp_path_factory.mktemp("rc", numbered=True))}
    code, output = run_logged([python, "-c", TWO_NODES, str(config), str(tmp_path)], env, tmp_path / "two.log", 240)
    assert code == 0, output[-4000:]
    report = json.loads(next(ln for ln in reversed(output.splitlines()) if ln.startswith("{")))
    assert report["code"] == 0
    folder = tmp_path / "two"
    trials = pl.read_parquet(folder / TRIALS_FILE)
    assert trials.height == 4 and set(trials["status"]) == {"completed"}
    used = set(pl.read_parquet(folder / ATTEMPTS_FILE)["node_id"])
    assert used == set(report["nodes"])  # trials ran on the head and on the second node
    assert "Ray cluster at" in json.loads((folder / SWEEP_JSON).read_text())["runs"][-1]["ray"]


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, subprocess_env, python):
    config = write_spec(
        tmp_path,
        name="intr",
        grid={"optimizer": "adamw", "qk_norm": "none", "seed": [0, 1, 2]},
        train={"steps": 600, "warmup": 20, "eval_every": 100, "checkpoint_every": 50},
        resources={"max_concurrent": 1},
    )
    command = sweep_command(config, tmp_path, "--local", "--num-cpus", "1")
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env, start_new_session=True
        )
        try:
            assert wait_for(lambda: completed_ids(log), proc, 180), log.read_text()
            done = completed_ids(log)

            def next_trial_checkpointed():
                # A second checkpoint in Tune's folder of a trial still running: a trial's report waits
                # until the driver asks for the next result, so by then the driver holds the first one.
                # (On the first alone, Ctrl-C can come before the driver has taken it; the resume then
                # rightly starts that trial over, and this test would see no resumed attempt.)
                found = (tmp_path / "intr" / "tune").glob("*/*/checkpoint_*")
                return any(
                    c.name != "checkpoint_000000" and not any(c.parent.name.startswith(t) for t in done) for c in found
                )

            assert wait_for(next_trial_checkpointed, proc, 120), log.read_text()
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            code = proc.wait(timeout=120)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    output = log.read_text()
    assert code == 130, output
    assert "--resume" in output
    folder = tmp_path / "intr"
    first = pl.read_parquet(folder / TRIALS_FILE)
    done_first = set(first.filter(pl.col("status") == "completed")["trial_id"])
    assert len(done_first) >= 1 and json.loads((folder / SWEEP_JSON).read_text())["finished_at"] is None

    code, output = run_logged([*command, "--resume"], subprocess_env, tmp_path / "resume.log", 300)
    assert code == 0, output[-4000:]
    trials = pl.read_parquet(folder / TRIALS_FILE)
    assert trials.height == 3 and set(trials["status"]) == {"completed"}
    attempts = pl.read_parquet(folder / ATTEMPTS_FILE)
    for trial_id in done_first:  # finished before the interrupt: never run again
        assert attempts.filter(pl.col("trial_id") == trial_id).height == 1
    continued = attempts.filter(pl.col("resumed_step").is_not_null())
    assert continued.height >= 1 and (continued["resumed_step"] >= 50).all()
    assert json.loads((folder / SWEEP_JSON).read_text())["finished_at"] is not None
    metrics = pl.read_parquet(folder / "metrics" / "**" / "*.parquet", hive_partitioning=True)
    assert metrics.height == metrics.unique(list(METRICS_KEY)).height
