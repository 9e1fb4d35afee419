"""Trainer throughput on CPU: tokens/s with and without the probe, and Muon vs AdamW step time.

    python -m benchmarks.trainer [--widths 128 256] [--steps 300] [--threads 1] [--batch 16]
                                 [--only reference|probe|kernels] [--compile]
    python -m benchmarks.trainer --calibrate [--widths 64 128 256] [--steps 60] [--jobs N] [--out FILE]

`--calibrate` measures the CPU rows of `--dry-run`'s calibration table instead (benchmarks/calibrate.py:
real training steps, probes and start-up of the trainer per width x optimizer x qk_norm, one thread per
trial, as many at once as a CPU sweep runs) and writes them to orchestrator/spec/calibration.json.

Model: depth 2, d_head 32, seq_len 128, byte tokens from the stdlib corpus.
First, the project's model against a plain nanoGPT-style reference with the same shapes (fused qkv
Linear, causal SDPA, GELU MLP, LayerNorm, learned positions, tied head) at batch 32: forward +
backward + AdamW step, no metrics, interleaved round by round; the ratios are project/reference
throughput, with each run as its trainer runs it (the project flushes denormals to zero, nanoGPT
does not) and like for like (the reference flushing too).
Then the probe table at the trainer's defaults (batch 16, a probe of 32 held-out sequences, which
also gives the val loss at the regular steps, eval_every 50 plus log-spaced early probes).
Every figure is a ratio inside one run (this machine is noisy). The cost of evaluation is reported
as: measured (tokens/s with the default cadence vs none), evals derived (every eval of the schedule
timed alone, divided by the training time: far less noisy) and probe derived (the same minus what a
trainer without the probe spends on val loss at the regular steps: the probe's own cost).
`--only kernels`: the trainer's train step (batch --batch) at qk_norm none and rms with every fast
path of trainer.kernels on, and with each turned off alone (its generic path instead), interleaved
step by step and timed in CPU seconds (blind to other processes' load); off/on - 1 is what that
kernel saves.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import calibrate
from trainer import kernels
from trainer.cadence import eval_steps, regular_steps
from trainer.cli import ArgumentParser
from trainer.config import TrialConfig
from trainer.data import load_tokens, train_batch
from trainer.loop import Trial, TrialHooks
from trainer.model import GPT
from trainer.optim import build_optimizers
from trainer.storage import ResultsDir


class ReferenceBlock(nn.Module):
    """nanoGPT's block (bias=False): one fused qkv Linear, causal SDPA, GELU MLP, pre-LayerNorm."""

    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.mlp_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    """nanoGPT's model.py with these shapes: token + learned position embeddings, tied head."""

    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.width)
        self.h = nn.ModuleList(ReferenceBlock(cfg.width, cfg.n_heads) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width, bias=False)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def versus_reference(
    cfg: TrialConfig, tokens, rounds: int = 10, steps_per_round: int = 3, compile_: bool = False
) -> dict[str, float]:
    """Median seconds of forward + backward + AdamW step (+ zero_grad) for the project's GPT (its own
    optimizer groups), the reference (nanoGPT's groups: decay on 2-D) and, with `compile_`, the
    project's GPT under torch.compile; interleaved round by round so that load drift hits all alike.

    Each runs as its trainer runs it: the project's with denormals flushed to zero (trainer.loop sets
    it on a CPU), nanoGPT's as its train.py leaves the CPU (gradual underflow: subnormal attention
    gradients then slow the flash-attention backward and the matmuls several-fold as training goes
    on). `reference_ftz` is the reference with flushing too: the like-for-like figure."""
    torch.manual_seed(0)
    project = GPT(cfg.architecture())
    reference, reference_ftz = ReferenceGPT(cfg), ReferenceGPT(cfg)
    reference_ftz.load_state_dict(reference.state_dict())

    def nanogpt_adamw(model):  # nanoGPT's groups: decay on 2-D
        groups = [
            {"params": [p for p in model.parameters() if p.ndim == 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ]
        return [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)]

    runs = {  # name: (model, optimizers, flush denormals); each model takes the same steps
        "project": (project, build_optimizers(project, cfg, torch.device("cpu")), True),
        "reference": (reference, nanogpt_adamw(reference), False),
        "reference_ftz": (reference_ftz, nanogpt_adamw(reference_ftz), True),
    }
    if compile_:
        compiled = GPT(cfg.architecture())
        runs["compiled"] = (torch.compile(compiled), build_optimizers(compiled, cfg, torch.device("cpu")), True)
    batches = [tuple(torch.from_numpy(a) for a in train_batch(tokens, cfg, s)) for s in range(4)]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds + 1):  # round 0 warms up (and compiles)
        for name, (model, optimizers, flush) in runs.items():
            torch.set_flush_denormal(flush)
            for i in range(steps_per_round):
                x, y = batches[i % len(batches)]
                t0 = time.perf_counter()
                _, loss = model(x, y)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                if r:
                    times[name].append(time.perf_counter() - t0)
    torch.set_flush_denormal(False)
    return {name: float(np.median(t)) for name, t in times.items()}


def kernel_steps(cfg: TrialConfig, tokens, rounds: int = 30) -> dict[str, float]:
    """Median CPU seconds of the trainer's train step (forward, backward, clip, optimizer steps) with
    every fast path of trainer.kernels on ("all") and with each turned off alone (its name); one model,
    one step per path in turn, denormals flushed as the trainer does. CPU time of this process, not
    wall time: with one thread it is the step time on a core of its own, and other processes' load on
    a shared machine leaves it alone."""
    torch.manual_seed(0)
    model = GPT(cfg.architecture())
    optimizers = build_optimizers(model, cfg, torch.device("cpu"))
    batches = [tuple(torch.from_numpy(a) for a in train_batch(tokens, cfg, s)) for s in range(4)]
    variants = ["all", *kernels.FAST]
    times: dict[str, list[float]] = {name: [] for name in variants}
    torch.set_flush_denormal(True)
    for r in range(rounds + 1):  # round 0 warms up
        x, y = batches[r % len(batches)]
        for name in variants:
            with kernels.generic(name) if name != "all" else nullcontext():
                t0 = time.process_time()
                _, loss = model(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                if r:
                    times[name].append(time.process_time() - t0)
    torch.set_flush_denormal(False)
    return {name: float(np.median(t)) for name, t in times.items()}


class StepClock(TrialHooks):
    def __init__(self):
        self.stamps: list[float] = []

    def on_step(self, step, info):
        self.stamps.append(time.perf_counter())


def timed_run(cfg: TrialConfig, tokens) -> tuple[float, float, float, float]:
    """Train-step seconds (evals included where they fall), the seconds of all evals of the schedule,
    the seconds a trainer without the probe would spend on val loss at the same steps (a plain
    forward over the val batches at each regular step), and optimizer-step seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(cfg, ResultsDir(tmp), "bench", tokens, StepClock(), None, None)
        trial.run()
        gaps = np.diff(np.array(trial.hooks.stamps))[1:]  # skip step 0 (warm-up + first eval)
        step_s = float(np.mean(gaps))  # the mean carries the evals' cost (and the machine's noise, both ways)
        eval_s = val_s = 0.0
        for step in eval_steps(cfg):  # median of 3 timings each; a regular step also computes val loss
            eval_s += median_seconds(lambda step=step: trial._evaluate(step))
            if step in regular_steps(cfg):
                val_s += median_seconds(lambda: plain_val_loss(trial))
        grads = [(p, torch.randn_like(p) * 1e-3) for p in trial.model.parameters()]
        opt_times = []
        for _ in range(5):
            for p, g in grads:
                p.grad = g.clone()
            t0 = time.perf_counter()
            for opt in trial.optimizers:
                opt.step()
            opt_times.append(time.perf_counter() - t0)
        return step_s, eval_s, val_s, float(np.median(opt_times))


def median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.no_grad()
def plain_val_loss(trial: Trial) -> float:
    """Val loss as a trainer without the probe computes it: the SDPA forward over the val batches."""
    trial.model.eval()
    loss = float(np.mean([trial.model(x, y)[1].item() for x, y in trial.val]))
    trial.model.train()
    return loss


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", help="default 128 256 (--calibrate: 64 128 256)")
    p.add_argument("--steps", type=int, help="default 300 (--calibrate: 60 per case)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a CPU sweep gives each trial 1)")
    p.add_argument("--batch", type=int, default=16, help="train batch of the probe table (the trainer's default)")
    p.add_argument(
        "--only",
        choices=("reference", "probe", "kernels"),
        help="run only the reference comparison, the probe table, or the table of trainer.kernels' fast paths",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="interleaved rounds of the reference comparison (3 steps each); --only kernels runs 3x as many of 1 step",
    )
    p.add_argument("--compile", action="store_true", help="also time the project's model under torch.compile")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the CPU rows of --dry-run's calibration table (default widths 64 128 256, 60 steps)",
    )
    calibrate.add_arguments(p)
    args = p.parse_args(argv)
    if args.calibrate:
        return calibrate.run(args.widths or [64, 128, 256], args.steps or 60, args)
    args.widths, args.steps = args.widths or [128, 256], args.steps or 300
    torch.set_num_threads(args.threads)
    base = dict(
        depth=2,
        d_head=32,
        batch_size=32,
        seq_len=128,
        steps=args.steps,
        warmup=5,
        checkpoint_every=0,
        device="cpu",
        max_corpus_bytes=4_000_000,
    )
    tokens = load_tokens(TrialConfig(**base))
    tok_per_step = base["batch_size"] * base["seq_len"]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps, {tok_per_step} tokens/step")
    if args.only == "kernels":
        print(
            f"trainer.kernels: CPU ms of a train step at batch {args.batch} x 128, each fast path off alone vs all on"
        )
        print(f"{'width':>5} {'qk_norm':>7} {'kernel':>12} {'step ms':>8} {'off ms':>8} {'saves':>7}")
        for width, qk_norm in itertools.product(args.widths, ("none", "rms")):
            cfg = TrialConfig(**{**base, "batch_size": args.batch}, width=width, qk_norm=qk_norm)
            s = kernel_steps(cfg, tokens, 3 * args.rounds)
            for name in kernels.FAST:
                print(
                    f"{width:>5} {qk_norm:>7} {name:>12} {s['all'] * 1000:>8.1f} {s[name] * 1000:>8.1f} "
                    f"{s[name] / s['all'] - 1:>7.1%}",
                    flush=True,
                )
        return 0
    if args.only != "probe":
        print(
            f"{'width':>5} {'project tok/s':>14} {'nanoGPT-style tok/s':>20} {'ratio':>6} "
            f"{'nanoGPT-style, FTZ':>19} {'ratio':>6}"
            + (f" {'compiled tok/s':>15} {'ratio':>6}" if args.compile else "")
        )
        for width in args.widths:
            s = versus_reference(TrialConfig(**base, width=width), tokens, args.rounds, compile_=args.compile)
            line = (
                f"{width:>5} {tok_per_step / s['project']:>14,.0f} {tok_per_step / s['reference']:>20,.0f} "
                f"{s['reference'] / s['project']:>5.2f}x {tok_per_step / s['reference_ftz']:>19,.0f} "
                f"{s['reference_ftz'] / s['project']:>5.2f}x"
            )
            if args.compile:
                line += f" {tok_per_step / s['compiled']:>15,.0f} {s['reference_ftz'] / s['compiled']:>5.2f}x"
            print(line, flush=True)
        if args.only == "reference":
            return 0
    print(
        f"probe table: the trainer's defaults (batch {args.batch} x 128, probe 32 sequences, eval_every 50, "
        f"log-spaced early probes: {len(eval_steps(TrialConfig(**base, eval_every=50)))} evals in {args.steps} steps)"
    )
    print(
        f"{'width':>5} {'optimizer':>9} {'tok/s no-probe':>15} {'tok/s probe':>15} {'evals meas.':>12} "
        f"{'evals derived':>14} {'probe derived':>14} {'step ms':>8} {'opt.step ms':>12}"
    )
    for width in args.widths:
        step_ms = {}
        for optimizer in ("adamw", "muon"):
            probe_base = {**base, "batch_size": args.batch}
            cfg_off = TrialConfig(
                **probe_base, width=width, optimizer=optimizer, eval_every=10**9, eval_schedule="every"
            )
            cfg_on = TrialConfig(**probe_base, width=width, optimizer=optimizer, eval_every=50)
            off_s, _, _, opt_s = timed_run(cfg_off, tokens)
            on_s, evals_s, val_s, _ = timed_run(cfg_on, tokens)
            train_s, probe_tokens = args.steps * off_s, args.batch * base["seq_len"]
            step_ms[optimizer] = off_s * 1000
            print(
                f"{width:>5} {optimizer:>9} {probe_tokens / off_s:>15,.0f} {probe_tokens / on_s:>15,.0f} "
                f"{on_s / off_s - 1:>12.1%} {evals_s / train_s:>14.2%} {(evals_s - val_s) / train_s:>14.2%} "
                f"{off_s * 1000:>8.1f} {opt_s * 1000:>12.1f}",
                flush=True,
            )
        print(
            f"{width:>5} muon/adamw train-step time ratio: {step_ms['muon'] / step_ms['adamw']:.2f}x (target <= 1.5x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
