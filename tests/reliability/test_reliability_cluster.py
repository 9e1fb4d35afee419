"""A worker node dies in the middle of a sweep (a spot preemption, a kernel panic, a pulled cable).

Two-node `ray.cluster_utils.Cluster` in a subprocess (so it never meets the shared test Ray): two
trials run at once, one on each node; once both have passed a checkpoint the worker is removed
without a graceful shutdown. Its trial must be retried from its last checkpoint on the surviving
node, the sweep must complete, and the dataset must hold every step of every trial exactly once.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from tests.helpers import run_logged, write_spec
from trainer.cadence import eval_steps
from trainer.config import TrialConfig
from trainer.schema import ATTEMPTS_FILE, METRICS_KEY, SPECTRA_KEY, TRIALS_FILE

pytestmark = pytest.mark.slow

STEPS, EVERY = 600, 50

NODE_DIES = r"""
import json, os, sys, threading, time
from pathlib import Path
from ray.cluster_utils import Cluster

config, results, name = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print("cluster up", flush=True)
folder = Path(results, name)
killed = {}

def kill_the_worker_mid_trial():
    # Both trials run at once (one CPU per node, one per trial): once each has a second checkpoint
    # (checkpoint_000001), the worker's trial is mid-way with something to resume from.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        trial_dirs = {p.parent for p in folder.glob("tune/run-*/*/checkpoint_00000[1-9]")}
        if len(trial_dirs) >= 2:
            cluster.remove_node(worker, allow_graceful=False)
            killed["at"] = time.time()
            print("worker removed", flush=True)
            return
        time.sleep(0.05)

threading.Thread(target=kill_the_worker_mid_trial, daemon=True).start()
from orchestrator import sweep
code = sweep.main(["--config", config, "--results", results, "--address", cluster.address, "--progress-every", "60"])
print(json.dumps({"code": code, "killed": bool(killed), "head": cluster.head_node.node_id,
                  "worker": worker.node_id}), flush=True)
threading.Timer(30, os._exit, args=(0,)).start()  # never hang on teardown
cluster.shutdown()
os._exit(0)
"""


def test_worker_node_dies_mid_sweep_trials_resume_elsewhere_and_no_step_is_lost(
    tmp_path, tmp_path_factory, subprocess_env, python
):
    config = write_spec(
        tmp_path,
        name="lost",
        grid={"optimizer": "adamw", "qk_norm": "none", "seed": [0, 1]},
        train={"steps": STEPS, "warmup": 20, "eval_every": EVERY, "checkpoint_every": EVERY, "corpus": "synthetic"},
        failure={"max_retries": 2},
    )
    env = {**subprocess_env, "RAY_TMPDIR": str(tmp_path_factory.mktemp("rn", numbered=True))}
    code, output = run_logged(
        [python, "-c", NODE_DIES, str(config), str(tmp_path), "lost"], env, tmp_path / "lost.log", 300
    )
    assert code == 0, output[-4000:]
    report = json.loads(next(ln for ln in reversed(output.splitlines()) if ln.startswith("{")))
    assert report["killed"], "the worker was never removed (trials too short?):\n" + output[-3000:]
    assert report["code"] == 0, output[-4000:]  # the sweep completed in spite of the lost node
    folder = tmp_path / "lost"

    trials = pl.read_parquet(folder / TRIALS_FILE)
    assert trials.height == 2 and set(trials["status"]) == {"completed"}, trials
    assert (trials["steps_done"] == STEPS).all()

    attempts = pl.read_parquet(folder / ATTEMPTS_FILE).sort("started_at")
    on_worker = attempts.filter(pl.col("node_id") == report["worker"])
    assert on_worker.height == 1 and on_worker["outcome"][0] == "error", attempts  # lost with its node
    lost = on_worker["trial_id"][0]
    retry = attempts.filter((pl.col("trial_id") == lost) & (pl.col("node_id") != report["worker"]))
    assert retry["outcome"].to_list() == ["completed"], attempts
    assert retry["node_id"][0] == report["head"]  # ran again on the node that survived ...
    resumed = retry["resumed_step"][0]
    assert resumed is not None and resumed >= EVERY and resumed % EVERY == 0, attempts  # ... from a checkpoint
    assert on_worker["last_step"][0] >= resumed - 1

    metrics = pl.read_parquet(folder / "metrics" / "**" / "*.parquet", hive_partitioning=False)
    spectra = pl.read_parquet(folder / "spectra" / "**" / "*.parquet", hive_partitioning=False)
    assert metrics.height == metrics.unique(list(METRICS_KEY)).height  # no step twice, replays included
    assert spectra.height == spectra.unique(list(SPECTRA_KEY)).height
    for trial_id in trials["trial_id"]:
        mine = metrics.filter(pl.col("trial_id") == trial_id)
        steps = mine.filter(pl.col("name") == "train_loss")["step"].sort().to_list()
        assert steps == list(range(STEPS)), trial_id  # no step missing
        cfg = TrialConfig.model_validate_json(trials.filter(pl.col("trial_id") == trial_id)["config_json"][0])
        evals = mine.filter(pl.col("name") == "val_loss")["step"].sort().to_list()
        assert set(evals) >= set(range(0, STEPS, EVERY)) | {STEPS}, trial_id  # every regular eval, replays included
        probe_steps = spectra.filter(pl.col("trial_id") == trial_id)["step"].unique().sort().to_list()
        assert probe_steps == eval_steps(cfg), trial_id  # the log-spaced early probes too
