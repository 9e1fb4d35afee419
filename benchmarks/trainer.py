"""Trainer throughput on CPU: tokens/s with and without the probe, and Muon vs AdamW step time.

    python -m benchmarks.trainer [--widths 128 256] [--steps 101] [--threads 2]

Model as in the issue: depth 2, d_head 32, batch 32 x 128, byte tokens from the stdlib corpus.
Every figure is a ratio inside one run (this machine is noisy). Probe overhead is reported two ways:
measured (tokens/s with the default cadence vs none) and derived (one eval's cost divided by
eval_every train steps), the latter being far less noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from trainer.config import TrialConfig
from trainer.data import load_tokens
from trainer.loop import Trial, TrialHooks
from trainer.storage import ResultsDir


class StepClock(TrialHooks):
    def __init__(self):
        self.stamps: list[float] = []

    def on_step(self, step, info):
        self.stamps.append(time.perf_counter())


def timed_run(cfg: TrialConfig, tokens) -> tuple[float, float, float]:
    """Train-step seconds (evals included where they fall), one eval's seconds, and optimizer-step seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(cfg, ResultsDir(tmp), "bench", tokens, StepClock(), None, None)
        trial.run()
        gaps = np.diff(np.array(trial.hooks.stamps))[1:]  # skip step 0 (warm-up + first eval)
        # Without evals the median is the robust step time; with evals the mean carries their cost.
        step_s = float(np.median(gaps) if cfg.eval_every > cfg.steps else np.mean(gaps))
        t0 = time.perf_counter()
        trial._evaluate(0)
        eval_s = time.perf_counter() - t0
        grads = [(p, torch.randn_like(p) * 1e-3) for p in trial.model.parameters()]
        opt_times = []
        for _ in range(5):
            for p, g in grads:
                p.grad = g.clone()
            t0 = time.perf_counter()
            for opt in trial.optimizers:
                opt.step()
            opt_times.append(time.perf_counter() - t0)
        return step_s, eval_s, float(np.median(opt_times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256])
    p.add_argument("--steps", type=int, default=101)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = dict(depth=2, d_head=32, batch_size=32, seq_len=128, steps=args.steps, warmup=5,
                checkpoint_every=0, device="cpu", max_corpus_bytes=4_000_000)
    tokens = load_tokens(TrialConfig(**base))
    tok_per_step = base["batch_size"] * base["seq_len"]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps, {tok_per_step} tokens/step")
    print(f"{'width':>5} {'optimizer':>9} {'tok/s no-probe':>15} {'tok/s probe@50':>15} {'overhead meas.':>15} "
          f"{'overhead derived':>17} {'step ms':>8} {'opt.step ms':>12}")
    for width in args.widths:
        step_ms = {}
        for optimizer in ("adamw", "muon"):
            cfg_off = TrialConfig(**base, width=width, optimizer=optimizer, eval_every=10**9)
            cfg_on = TrialConfig(**base, width=width, optimizer=optimizer, eval_every=50)
            off_s, eval_s, opt_s = timed_run(cfg_off, tokens)
            on_s, _, _ = timed_run(cfg_on, tokens)
            measured = on_s / off_s - 1
            derived = eval_s / (50 * off_s)
            step_ms[optimizer] = off_s * 1000
            print(f"{width:>5} {optimizer:>9} {tok_per_step / off_s:>15,.0f} {tok_per_step / on_s:>15,.0f} "
                  f"{measured:>15.1%} {derived:>17.2%} {off_s * 1000:>8.1f} {opt_s * 1000:>12.1f}", flush=True)
        print(f"{width:>5} muon/adamw train-step time ratio: {step_ms['muon'] / step_ms['adamw']:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
