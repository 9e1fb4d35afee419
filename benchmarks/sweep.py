"""Sweep efficiency on CPUs: how much of the machine goes to training, how much to Ray and Tune.

    python -m benchmarks.sweep [--steps 200] [--width 64] [--num-cpus N] [--results DIR]

Runs a 16-trial sweep (adamw/muon x none/rms x 2 LRs x 2 seeds, one CPU per trial) through
`orchestrator.run_sweep` (the same library call as `python -m orchestrator.sweep`) on a private
local Ray and prints

    efficiency = (sum of trial training time) / (wall time x concurrent slots)     target >= 0.85
    overhead per trial = (wall time x slots - sum of training time) / trials       seconds

both for the Tune phase (Tuner.fit: actor start, scheduling, reporting, checkpoints, the driver
writing trials.parquet) and end to end (plus validation, the corpus, starting and stopping Ray).
"Training time" is each trial's own `wall_s` (the trainer's clock from its first to last step,
evals and probes included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

from orchestrator import run_sweep
from trainer.cli import ArgumentParser
from trainer.schema import SWEEP_JSON, TRIALS_FILE

TARGET = 0.85


def bench_spec(steps: int, width: int) -> dict:
    return {
        "name": "bench",
        "grid": {
            "optimizer": ["adamw", "muon"],
            "qk_norm": ["none", "rms"],
            "width": [width],
            "lr": [3e-3, 1e-2],
            "seed": [0, 1],
        },
        "train": {
            "corpus": "stdlib",
            "max_corpus_bytes": 4_000_000,
            "depth": 2,
            "d_head": 32,
            "seq_len": 128,
            "batch_size": 16,
            "steps": steps,
            "warmup": max(1, steps // 10),
            "eval_every": 25,
            "checkpoint_every": 100,
            "device": "cpu",
        },
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent": None},
        "failure": {"max_retries": 0},
    }


def parse_args(argv):
    p = ArgumentParser(
        prog="python -m benchmarks.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=200, help="steps per trial (default 200, ~8 s at width 64)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--results", help="where to write (default: a temporary folder, removed afterwards)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep = args.results is not None
    root = Path(args.results) if keep else Path(tempfile.mkdtemp(prefix="qk-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    config = root / "bench.yaml"
    config.write_text(yaml.safe_dump(bench_spec(args.steps, args.width)))
    cpus = args.num_cpus or os.cpu_count() or 1
    t0 = time.perf_counter()
    code = run_sweep(config, results=root, local=True, num_cpus=cpus, quiet=True).exit_code
    total = time.perf_counter() - t0
    if code != 0:
        print(f"benchmark sweep failed (exit {code})", file=sys.stderr)
        return code
    folder = root / "bench"
    trials = pl.read_parquet(folder / TRIALS_FILE)
    run = json.loads((folder / SWEEP_JSON).read_text())["runs"][-1]
    n, train = trials.height, float(trials["wall_s"].sum())
    slots = min(cpus, n)  # one CPU per trial
    fit = float(run["fit_wall_s"])
    figures = {
        "trials": n,
        "slots": slots,
        "steps": args.steps,
        "width": args.width,
        "train_s_sum": round(train, 2),
        "train_s_mean": round(train / n, 2),
        "fit_wall_s": round(fit, 2),
        "total_wall_s": round(total, 2),
        "efficiency_fit": round(train / (fit * slots), 3),
        "efficiency_total": round(train / (total * slots), 3),
        "overhead_per_trial_fit_s": round((fit * slots - train) / n, 2),
        "overhead_per_trial_total_s": round((total * slots - train) / n, 2),
    }
    print(f"16-trial CPU sweep: {n} trials x {args.steps} steps (width {args.width}), {slots} slots")
    print(f"  training time (sum of trial wall_s)   {train:8.1f} s   ({train / n:.1f} s a trial)")
    print(f"  Tune phase wall (Tuner.fit)           {fit:8.1f} s")
    print(f"  end-to-end wall (incl. Ray start/stop) {total:7.1f} s")
    print(f"  efficiency, Tune phase                {figures['efficiency_fit']:8.3f}   (target >= {TARGET})")
    print(f"  efficiency, end to end                {figures['efficiency_total']:8.3f}")
    print(
        f"  Ray/Tune overhead per trial           {figures['overhead_per_trial_fit_s']:8.2f} s  "
        f"(end to end {figures['overhead_per_trial_total_s']:.2f} s)"
    )
    if args.json:
        print(json.dumps(figures))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if figures["efficiency_fit"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
