"""The GPU check: what one GPU does with this trainer, in one call of under 5 minutes, ending in one
table of the figures the GPU work is judged by, each beside its goal.

    python -m benchmarks.gpu [--json OUT] [--budget 240] [--peak-tflops X] [--sections throughput,packed]
    python -m benchmarks.gpu --device cpu --tiny      # the same code paths on a CPU, in seconds (CI)
    python -m benchmarks.gpu --calibrate [--calibration-out FILE]   # and rewrite this GPU's calibration rows

The table (`summary`), with the goals of issue 19: tokens/s and MFU of one model at each width;
K trials packed on the GPU, summed tokens/s and MFU (goal at width 256: MFU >= 25%); the Muon arm's
optimizer step at width 1024 with Newton-Schulz batched over same-shape matrices (the trainer's
CUDA path; goal <= 3 ms) and unbatched, against AdamW's; the Muon / AdamW train step (goal <= 1.15);
and a trial's start-up, from launching its process to its first finished training step (goal
<= 10 s).

`--calibrate` turns the figures into rows of `--dry-run`'s calibration table
(orchestrator/spec/calibration.json, or FILE) for this GPU's kind (h200, h100, ...), replacing its
rows there: throughput eager and compiled per width (AdamW, qk_norm none), Muon at the optimizer
section's width (AdamW's step there x the measured Muon/AdamW ratio, Newton-Schulz as the trainer
runs it), the probe section's early and regular eval seconds on the eager rows, the packed (or
sharing) section's trials per GPU as rows with `concurrent` k, and the start-up section's seconds
as every eager row's start-up. On --device cpu it needs --calibration-out (the CPU's own rows come
from `python -m benchmarks.trainer --calibrate`).

Sections, in the order they run (each catches its own failure and prints it; a global time budget
skips what is left):
  throughput   tokens/s, MFU and peak memory at widths 256, 512, 1024, 2048 (bf16 autocast on CUDA), eager
  optimizer    AdamW, and Muon (bf16 Newton-Schulz on CUDA) batched and unbatched, at width 1024:
               train-step, optimizer-step and Muon's own step time
  packed       K trials of one width on the GPU at once, each a fresh process running the trainer's
               own `trainer.loop.Trial` (what a sweep's fractional gpus_per_trial does, without Ray):
               width 256 x 4 and x 8, 512 x 4, 1024 x 2; tokens/s and MFU summed over the window
               in which all K ran their timed steps, after a warm-up and released together
  startup      one fresh trial process alone: launch to the end of its first training step, in
               phases (interpreter, imports, corpus, model and CUDA start, first step with its probe)
  probe        the probe's cost against training at sweeps/paradox.yaml's cadence (32 held-out
               sequences that also give the val loss; every 100 steps over 2000 plus log-spaced
               early probes), at widths 256 and 1024: the time the training loop waits for each
               kind of eval (on a GPU the probe's CPU half runs in a thread and is not waited for),
               and whole trials of 400 steps with 14 extra probes against none, timed end to end
  compiled     the throughput section again with torch.compile (it costs the most time)
  sharing      only when named in --sections: 1, 2 and 4 trials of width 256 on one GPU through
               Ray's fractional GPUs (num_gpus = 1/k each; on --device cpu, num_cpus = 1/k of one
               CPU), aggregate tokens/s over the window in which all k trials were running

Shapes are those of sweeps/paradox.yaml and sweeps/gpu_study.yaml (depth 4, d_head 64, batch 32 x
512, byte vocab); --tiny shrinks them (widths 32/64, depth 2, d_head 16, batch 8 x 64, a few steps,
two packed processes) to test the script.

MFU = tokens/s x FLOPs per token / peak FLOP/s, with FLOPs per trained token (PaLM's convention,
`orchestrator.costs.flops_per_token`):
    6 N + 12 L T C,   N = L (4 + 2 mlp_ratio) C^2 + V C
(N the parameters in matrix products: q, k, v, o, the MLP and the head; L depth, T seq_len, C width;
12 L T C counts QK^T and AV at full T x T, as MFU is usually quoted, although causal SDPA skips half).
The peak is the dense bf16 figure of the GPU named by torch.cuda.get_device_name (H100/H200 989,
A100 312, L40S 362, A10G 125, L4 121 TFLOP/s), or --peak-tflops.
Peak memory is torch.cuda.max_memory_allocated per measurement; on CPU the process's peak RSS.
"""

# ruff: noqa: E402 - the clock below is read before torch and the trainer are imported (startup_rows)
from __future__ import annotations

import time

_T_IMPORT = time.time()  # a worker's first line of this module: its interpreter is up (see startup_rows)

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty, Queue

import torch

from orchestrator.spec.costs import GPUS, flops_per_token
from trainer.cadence import eval_steps, regular_steps
from trainer.cli import ArgumentParser
from trainer.config import TrialConfig
from trainer.data import load_tokens, train_batch
from trainer.loop import Trial, TrialHooks, autocast_for, pick_device
from trainer.model import GPT
from trainer.optim import Muon, build_optimizers
from trainer.storage import ResultsDir

_T_IMPORTED = time.time()  # torch and the trainer imported
ROOT = Path(__file__).resolve().parent.parent

FULL = dict(
    widths=(256, 512, 1024, 2048),
    optimizer_width=1024,
    share_width=256,
    depth=4,
    d_head=64,
    seq_len=512,
    batch_size=32,
    warmup_steps=5,
    timed_steps=20,
    share_steps=150,
    packs=((256, 4), (256, 8), (512, 4), (1024, 2)),  # (width, trials): K processes on one GPU
    probe_widths=(256, 1024),
    probe_steps=2000,
    probe_every=100,
    e2e_steps=400,
)
TINY = dict(
    widths=(32, 64),
    optimizer_width=64,
    share_width=32,
    depth=2,
    d_head=16,
    seq_len=64,
    batch_size=8,
    warmup_steps=2,
    timed_steps=4,
    share_steps=60,
    packs=((32, 2),),
    probe_widths=(32,),
    probe_steps=300,
    probe_every=50,
    e2e_steps=40,
)
SHARES = (1, 2, 4)
DEFAULT_SECTIONS = ("throughput", "optimizer", "packed", "startup", "probe", "compiled")


@dataclass
class Row:
    section: str
    label: str
    tokens_per_s: float
    width: int
    step_ms: float
    mfu: float | None = None
    peak_mib: float | None = None
    extra: dict = field(default_factory=dict)


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> bool:
        return self.spent() < self.seconds


def gpu_peak_tflops(name: str) -> float | None:
    """Dense bf16 TFLOP/s of a GPU named like 'NVIDIA H100 80GB HBM3' (longest model name first: L40S before L4)."""
    models = sorted(((g.name.split("-")[0], g.bf16_tflops) for g in GPUS), key=lambda m: -len(m[0]))
    upper = name.upper()
    return next((tflops for model, tflops in models if model in upper), None)


def make_cfg(shape: dict, width: int, device: str, **kw) -> TrialConfig:
    """A trial of the check's shape; no probe (eval_every past the end) unless `kw` asks for one."""
    settings = dict(
        width=width,
        depth=shape["depth"],
        d_head=shape["d_head"],
        seq_len=shape["seq_len"],
        batch_size=shape["batch_size"],
        corpus="synthetic",
        device=device,
        steps=shape["warmup_steps"] + shape["timed_steps"],
        warmup=1,
        eval_every=10**9,
        eval_schedule="every",
        checkpoint_every=0,
        probe_seqs=2,
        eval_batches=1,
    )
    if device == "cpu":
        settings["threads"] = 1  # a CPU check of the code paths, not of the CPU: no oversubscription
    return TrialConfig(**{**settings, **kw})


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(cfg: TrialConfig, shape: dict, tokens, muon_batched: bool | None = None) -> dict:
    """The trainer's train step (forward under autocast, backward, clip, every optimizer), timed after
    warm-up; also the optimizer step and, for Muon, Muon's own step (its matrices; the embedding,
    head and gains are AdamW's). `muon_batched` overrides how Muon runs Newton-Schulz (the trainer
    batches same-shape matrices on CUDA, not on the CPU)."""
    device = pick_device(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # as Trial does
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.architecture()).to(device)
    forward = torch.compile(model) if cfg.compile else model
    optimizers = build_optimizers(model, cfg, device)
    if muon_batched is not None:
        for opt in optimizers:
            if isinstance(opt, Muon):
                opt.batched = muon_batched
    autocast = autocast_for(cfg, device)
    batches = [tuple(torch.from_numpy(a).to(device) for a in train_batch(tokens, cfg, s)) for s in range(4)]
    step_s, opt_s, first_s = [], [], []
    for step in range(cfg.steps):
        x, y = batches[step % len(batches)]
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            _, loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        sync(device)
        t1 = time.perf_counter()
        for i, opt in enumerate(optimizers):
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i == 0:
                sync(device)
                ta = time.perf_counter()
        sync(device)
        t2 = time.perf_counter()
        if step >= shape["warmup_steps"]:
            step_s.append(t2 - t0)
            opt_s.append(t2 - t1)
            first_s.append(ta - t1)
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"non-finite loss at width {cfg.width}")
    median = statistics.median(step_s)
    return dict(
        step_s=median,
        opt_s=statistics.median(opt_s),
        muon_s=statistics.median(first_s) if cfg.optimizer == "muon" else None,
        tokens_per_s=cfg.batch_size * cfg.seq_len / median,
        peak_mib=peak_memory_mib(device),
    )


def throughput_rows(section: str, shape: dict, args, budget: Budget, peak: float | None, compile_: bool) -> list[Row]:
    rows = []
    for width in shape["widths"]:
        if not budget.left():
            print(f"  width {width}: skipped (time budget of {budget.seconds:g} s spent)")
            continue
        cfg = make_cfg(shape, width, args.device, compile=compile_)
        t0 = time.perf_counter()
        m = measure_steps(cfg, shape, load_tokens(cfg))
        mfu = m["tokens_per_s"] * flops_per_token(cfg) / (peak * 1e12) if peak else None
        row = Row(
            section,
            f"w{width} {'compiled' if compile_ else 'eager'}",
            m["tokens_per_s"],
            width,
            m["step_s"] * 1e3,
            mfu,
            m["peak_mib"],
            {"wall_s": time.perf_counter() - t0},
        )
        print_row(row)
        rows.append(row)
    return rows


OPTIMIZER_CASES = (("adamw", None), ("muon", True), ("muon", False))  # (optimizer, Newton-Schulz batched)


def optimizer_rows(shape: dict, args, budget: Budget, peak: float | None) -> list[Row]:
    """AdamW, and Muon with Newton-Schulz batched over same-shape matrices (what the trainer runs on
    CUDA) and one matrix at a time: the train step, the optimizer step and Muon's own step."""
    rows = []
    width = shape["optimizer_width"]
    for optimizer, batched in OPTIMIZER_CASES:
        if not budget.left():
            print(f"  {optimizer}: skipped (time budget spent)")
            continue
        cfg = make_cfg(shape, width, args.device, optimizer=optimizer)
        m = measure_steps(cfg, shape, load_tokens(cfg), muon_batched=batched)
        ns = "bf16" if pick_device(cfg).type == "cuda" else "fp32"
        mfu = m["tokens_per_s"] * flops_per_token(cfg) / (peak * 1e12) if peak else None
        how = "batched" if batched else "unbatched"
        extra = {"opt_step_ms": m["opt_s"] * 1e3}
        if optimizer == "muon":
            extra.update(muon_step_ms=m["muon_s"] * 1e3, ns=how)
        row = Row(
            "optimizer",
            f"w{width} {optimizer}" + (f" (NS {ns} {how})" if optimizer == "muon" else ""),
            m["tokens_per_s"],
            width,
            m["step_s"] * 1e3,
            mfu,
            m["peak_mib"],
            extra,
        )
        note = f"optimizer.step {extra['opt_step_ms']:.2f} ms" + (
            f" (Muon's own {extra['muon_step_ms']:.2f} ms)" if optimizer == "muon" else ""
        )
        print_row(row, note=note)
        rows.append(row)
    adamw = next((r for r in rows if r.label.split()[1] == "adamw"), None)
    muon = next((r for r in rows if r.extra.get("ns") == "batched"), None)
    if adamw and muon:
        print(
            f"  muon/adamw: train step {muon.step_ms / adamw.step_ms:.2f}x, optimizer step "
            f"{muon.extra['opt_step_ms'] / adamw.extra['opt_step_ms']:.2f}x"
        )
    return rows


# ---- the probe's cost -------------------------------------------------------------------------
def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of `fn` after one warm-up call. `fn` may return seconds of its own to leave out
    (time spent waiting for work that is not the caller's)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        excluded = fn()
        sync(device)
        times.append(time.perf_counter() - t0 - (excluded or 0.0))
    return statistics.median(times)


def eval_costs(trial: Trial, device: torch.device) -> tuple[float, float, float]:
    """Seconds the training loop waits for an early (log-spaced) probe and for a regular one (with val
    loss and attention statistics), and of the plain val-loss forward a trainer without the probe
    would run. On a GPU the probe's CPU half finishes in a thread (Trial.finisher) while training
    goes on: it is waited for outside the timed calls."""

    def probe_at(step):
        trial._evaluate(step)
        started = time.perf_counter()
        trial._drain(wait=True)
        return time.perf_counter() - started  # waiting for the thread: not the loop's time

    def val_forward():
        with torch.no_grad(), trial.autocast:
            for x, y in trial.val:
                trial.model(x, y)[1].item()

    return timed(lambda: probe_at(1), device), timed(lambda: probe_at(0), device), timed(val_forward, device)


def probe_rows(shape: dict, args, budget: Budget, step_ms: dict[int, float]) -> list[Row]:
    """What the probe costs against training at sweeps/paradox.yaml's cadence (a probe of one batch
    of held-out sequences that also gives the val loss, eval_every 100 over 2000 steps, log-spaced
    early probes): each kind of eval timed alone (median of 3), the train step from the throughput
    section. `probe` is the share net of the val loss a trainer pays anyway."""
    rows = []
    for width in shape["probe_widths"]:
        if not budget.left():
            print(f"  width {width}: skipped (time budget spent)")
            continue
        cfg = make_cfg(
            shape,
            width,
            args.device,
            steps=shape["probe_steps"],
            eval_every=shape["probe_every"],
            eval_schedule="log",
            probe_seqs=shape["batch_size"],
            eval_batches=1,
        )
        device = pick_device(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            trial = Trial(cfg, ResultsDir(tmp), "probe", load_tokens(cfg), TrialHooks(), None, None)

            log_s, regular_s, val_s = eval_costs(trial, device)
        whole_runs = end_to_end_overhead(shape, width, args.device)
        if width not in step_ms:
            step_ms[width] = measure_steps(make_cfg(shape, width, args.device), shape, load_tokens(cfg))["step_s"] * 1e3
        steps = eval_steps(cfg)
        n_regular = len(regular_steps(cfg))
        n_log = len(steps) - n_regular
        train_s = cfg.steps * step_ms[width] / 1e3
        evals = (n_log * log_s + n_regular * regular_s) / train_s
        probe_only = (n_log * log_s + n_regular * (regular_s - val_s)) / train_s
        row = Row(
            "probe",
            f"w{width} {n_log}+{n_regular} in {cfg.steps}",
            cfg.batch_size * cfg.seq_len / (step_ms[width] / 1e3),
            width,
            step_ms[width],
            None,
            peak_memory_mib(device),
            {
                "log_ms": log_s * 1e3,
                "regular_ms": regular_s * 1e3,
                "val_ms": val_s * 1e3,
                "evals": evals,
                "probe": probe_only,
                **whole_runs,
            },
        )
        print_row(
            row,
            note=f"probe {probe_only:.1%}, with val {evals:.1%} of training (evals: early {log_s * 1e3:.1f} ms, "
            f"regular {regular_s * 1e3:.1f} ms, val forward {val_s * 1e3:.1f} ms); whole trials of "
            f"{whole_runs['e2e_steps']} steps with {whole_runs['e2e_evals']} evals vs none: "
            + (
                f"{whole_runs['e2e_overhead']:+.1%}"
                if whole_runs["e2e_overhead"] is not None
                else whole_runs["e2e_note"]
            ),
        )
        rows.append(row)
    return rows


def end_to_end_overhead(shape: dict, width: int, device: str) -> dict:
    """Wall time of whole trials with the probe at a dense cadence (eval_every = steps / 4 with the
    early log-spaced probes) against the same trials probing only at the start and the end: what the
    probe costs as the trainer runs, its thread (on a GPU) included. Median of 2 pairs. The trials
    train at a learning rate every width survives (1e-3, a tenth of the steps warming up); a pair in
    which a trial stops early (diverged) gives no figure: trials of different lengths do not compare."""
    steps = shape["e2e_steps"]
    kw = dict(steps=steps, probe_seqs=shape["batch_size"], eval_batches=1, lr=1e-3, warmup=max(1, steps // 10))
    on = make_cfg(shape, width, device, eval_every=steps // 4, eval_schedule="log", **kw)
    off = make_cfg(shape, width, device, **kw)  # eval_every past the end: probes at 0 and the end only
    tokens = load_tokens(on)
    walls: dict[str, list[float]] = {"on": [], "off": []}
    result = {"e2e_steps": steps, "e2e_evals": len(eval_steps(on)) - 2, "e2e_overhead": None}
    for _ in range(2):
        for name, cfg in (("off", off), ("on", on)):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                row = Trial(cfg, ResultsDir(tmp), "e2e", tokens, TrialHooks(), None, None).run()
                walls[name].append(time.perf_counter() - t0)
            if row["status"] != "completed":
                return {**result, "e2e_note": f"{name} trial {row['status']} at step {row['steps_done']}: no figure"}
    return {**result, "e2e_overhead": statistics.median(walls["on"]) / statistics.median(walls["off"]) - 1}


# ---- sharing one GPU between trials (Ray) ----------------------------------------------------
class _Stamps(TrialHooks):
    def __init__(self):
        self.stamps: list[float] = []

    def on_step(self, step, info):
        self.stamps.append(time.time())


def _import_trainer() -> int:
    import trainer.loop  # noqa: F401

    return os.getpid()


def shared_trial(cfg_json: str, warmup_steps: int, barrier) -> dict:
    """One Ray task: the trainer's Trial, started once every trial of the round is built."""
    import ray

    cfg = TrialConfig.model_validate_json(cfg_json)
    device = pick_device(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens = load_tokens(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        # A few throwaway steps first: CUDA's lazy start-up (context, cuBLAS, kernels) in each process
        # must not delay one trial's timed steps behind the others'.
        Trial(cfg.model_copy(update={"steps": 3}), ResultsDir(tmp), "warm", tokens, TrialHooks(), None, None).run()
        trial = Trial(cfg, ResultsDir(tmp), "share", tokens, _Stamps(), None, None)
        ray.get(barrier.wait.remote())  # returns to every trial at once, when the last one arrives
        row = trial.run()
        stamps = trial.hooks.stamps
    if row["status"] != "completed":
        raise RuntimeError(f"shared trial ended {row['status']}")
    return dict(
        stamps=stamps[warmup_steps - 1 :],  # the end of each step after warm-up (the first is the start)
        step_tokens=cfg.batch_size * cfg.seq_len,
        peak_mib=peak_memory_mib(device),
        gpus=ray.get_gpu_ids(),
    )


def overlapped_throughput(results: list[dict]) -> tuple[float, float, bool]:
    """Aggregate tokens/s while every trial was running, the seconds of that window, and whether
    there was one. Trials released together still reach their timed steps at different moments
    (process and CUDA start-up, the OS scheduler): counting only the window they share keeps solo
    steps out of the figure. Without a shared window (an oversubscribed CPU), the whole span."""
    start = max(r["stamps"][0] for r in results)
    end = min(r["stamps"][-1] for r in results)
    if end > start:
        tokens = sum(r["step_tokens"] * sum(start < t <= end for t in r["stamps"]) for r in results)
        return tokens / (end - start), end - start, True
    start, end = min(r["stamps"][0] for r in results), max(r["stamps"][-1] for r in results)
    return sum(r["step_tokens"] * (len(r["stamps"]) - 1) for r in results) / (end - start), end - start, False


def sharing_rows(shape: dict, args, budget: Budget) -> list[Row]:
    import ray

    from orchestrator.tune.runtime import start_ray

    on_gpu = args.device == "cuda"
    gpus = torch.cuda.device_count() if on_gpu else 0
    handle = start_ray(
        num_cpus=max(os.cpu_count() or 1, max(SHARES)) if on_gpu else 1, local=True, temp_root=args.ray_temp
    )
    rows = []
    try:
        if on_gpu and not ray.cluster_resources().get("GPU"):
            raise RuntimeError(f"Ray sees no GPU (torch sees {gpus})")

        @ray.remote(num_cpus=0)
        class Barrier:  # an async actor: every wait() returns together once n have arrived
            def __init__(self, n):
                import asyncio

                self.n, self.arrived, self.all_in = n, 0, asyncio.Event()

            async def wait(self):
                self.arrived += 1
                if self.arrived >= self.n:
                    self.all_in.set()
                await self.all_in.wait()

        # Start every worker process at once (each imports torch and the trainer), not one round at a time.
        warm = ray.remote(_import_trainer).options(
            num_gpus=1 / max(SHARES) if on_gpu else 0, num_cpus=1 if on_gpu else 1 / max(SHARES)
        )
        ray.get([warm.remote() for _ in range(max(SHARES))], timeout=max(budget.seconds - budget.spent(), 30.0))
        for k in SHARES:
            if not budget.left():
                print(f"  {k} trials: skipped (time budget spent)")
                continue
            share = 1 / k
            cfg = make_cfg(shape, shape["share_width"], args.device, steps=shape["warmup_steps"] + shape["share_steps"])
            barrier = Barrier.remote(k)
            task = ray.remote(shared_trial).options(
                num_gpus=share if on_gpu else 0, num_cpus=1 if on_gpu else share, max_retries=0
            )
            refs = [task.remote(cfg.model_dump_json(), shape["warmup_steps"], barrier) for _ in range(k)]
            try:  # never wait past the budget (a task that cannot be placed would wait forever)
                results = ray.get(refs, timeout=max(budget.seconds - budget.spent(), 30.0))
            except ray.exceptions.GetTimeoutError:
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise RuntimeError(f"{k} trials did not finish within the time budget") from None
            total, window, overlapped = overlapped_throughput(results)
            peak = max(r["peak_mib"] for r in results)
            row = Row(
                "sharing",
                f"w{shape['share_width']} x{k} ({'num_gpus' if on_gpu else 'num_cpus'}={share:g})",
                total,
                shape["share_width"],
                k * results[0]["step_tokens"] / total * 1e3,  # one trial's step time while sharing
                None,
                peak,
                {
                    "trials": k,
                    "per_trial_tokens_per_s": total / k,
                    "window_s": window,
                    "overlapped": overlapped,
                    "peak_mib_each": [r["peak_mib"] for r in results],
                },
            )
            print_row(
                row,
                note=f"{total / k:,.0f} tok/s per trial" + ("" if overlapped else " (never all at once: whole span)"),
            )
            rows.append(row)
            ray.kill(barrier)
    finally:
        handle.stop()
    return rows


# ---- trials packed on one GPU, and a trial's start-up: fresh processes, no Ray ------------------
def worker_main(job_json: str) -> int:
    """`python -m benchmarks.gpu --worker JOB`: one trial process, as a sweep starts one. It builds
    the trainer's Trial and runs a few throwaway steps (the end of the first is its start-up: from
    the launch of this process to its first finished training step, CUDA's lazy start included);
    with `timed`, it then builds the timed Trial, prints READY, waits for a line on stdin and runs
    it, stamping the end of every step. The last line it prints is RESULT and a JSON object."""
    t_main = time.time()
    job = json.loads(job_json)
    cfg = TrialConfig.model_validate_json(job["cfg"])
    device = pick_device(cfg)
    tokens = load_tokens(cfg)
    t_data = time.time()
    out = dict(started=_T_IMPORT, imported=_T_IMPORTED, main=t_main, data=t_data)
    with tempfile.TemporaryDirectory() as tmp:
        hooks = _Stamps()
        warm_cfg = cfg.model_copy(update={"steps": job["warm_steps"], "warmup": 1})
        warm = Trial(warm_cfg, ResultsDir(tmp), "warm", tokens, hooks, None, None)
        out["built"] = time.time()
        warm.run()
        out["first_step"] = hooks.stamps[0]
        if job.get("timed"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            trial = Trial(cfg, ResultsDir(tmp), "packed", tokens, _Stamps(), None, None)
            print("READY", flush=True)
            sys.stdin.readline()  # every trial of the round starts together
            row = trial.run()
            out.update(
                status=row["status"],
                stamps=trial.hooks.stamps[job["skip_steps"] - 1 :],
                step_tokens=cfg.batch_size * cfg.seq_len,
            )
        out["peak_mib"] = peak_memory_mib(device)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


class Workers:
    """K worker processes (`--worker`), their output lines read by threads (never a blocked pipe)."""

    def __init__(self, jobs: list[dict], threads: int):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.lines: Queue = Queue()
        self.procs, self.launched, self.logs = [], [], []
        for i, job in enumerate(jobs):
            log = tempfile.TemporaryFile(mode="w+")
            self.launched.append(time.time())
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.gpu", "--worker", json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=ROOT,
            )
            self.procs.append(proc)
            self.logs.append(log)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc) -> None:
        for line in proc.stdout:
            self.lines.put((i, line.rstrip("\n")))
        self.lines.put((i, None))

    def wait_for(self, word: str, deadline: float) -> dict[int, str]:
        """Each worker's first line starting with `word` (RuntimeError naming the first that failed)."""
        got: dict[int, str] = {}
        while len(got) < len(self.procs):
            try:
                i, line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except Empty:
                raise RuntimeError(
                    f"workers not {word} within the time budget ({len(got)} of {len(self.procs)})"
                ) from None
            if line is None and i not in got:
                raise RuntimeError(f"worker {i} ended before {word}: {self.tail(i)}")
            if line and line.startswith(word):
                got[i] = line[len(word) :].strip()
        return got

    def tail(self, i: int) -> str:
        self.procs[i].wait(timeout=30)
        self.logs[i].seek(0)
        return " | ".join(self.logs[i].read().strip().splitlines()[-3:])

    def go(self) -> None:
        for proc in self.procs:
            proc.stdin.write("GO\n")
            proc.stdin.flush()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in self.logs:
            log.close()


def worker_threads(device: str, k: int) -> int:
    """Torch threads per worker: a CPU check gives each one (no oversubscription); on a GPU, two
    each as a GPU sweep's trials get (cpus_per_trial 2), fewer when K x 2 would pass the CPUs."""
    if device == "cpu":
        return 1
    return max(1, min(2, (os.cpu_count() or 2) // k))


def packed_rows(shape: dict, args, budget: Budget, peak: float | None) -> list[Row]:
    """K trials of one width on one GPU at once, each its own process (the trainer's Trial), as a sweep
    packs them with a fractional gpus_per_trial: tokens/s and MFU summed over the window in which all
    K ran their timed steps, released together after their warm-up."""
    rows = []
    for width, k in shape["packs"]:
        if not budget.left():
            print(f"  w{width} x{k}: skipped (time budget spent)")
            continue
        threads = worker_threads(args.device, k)
        cfg = make_cfg(shape, width, args.device, steps=shape["warmup_steps"] + shape["share_steps"], threads=threads)
        job = dict(cfg=cfg.model_dump_json(), warm_steps=3, timed=True, skip_steps=shape["warmup_steps"])
        deadline = time.monotonic() + max(budget.seconds - budget.spent(), 60.0)
        workers = Workers([job] * k, threads)
        try:
            workers.wait_for("READY", deadline)
            workers.go()
            results = [json.loads(v) for _, v in sorted(workers.wait_for("RESULT", deadline).items())]
        finally:
            workers.close()
        if any(r["status"] != "completed" for r in results):
            raise RuntimeError(f"a packed trial ended {[r['status'] for r in results]}")
        total, window, overlapped = overlapped_throughput(results)
        mfu = total * flops_per_token(cfg) / (peak * 1e12) if peak else None
        row = Row(
            "packed",
            f"w{width} x{k} (processes)",
            total,
            width,
            k * results[0]["step_tokens"] / total * 1e3,  # one trial's step time while packed
            mfu,
            max(r["peak_mib"] for r in results),
            {
                "trials": k,
                "per_trial_tokens_per_s": total / k,
                "window_s": window,
                "overlapped": overlapped,
                "threads": threads,
                "peak_mib_each": [r["peak_mib"] for r in results],
            },
        )
        print_row(
            row,
            note=f"summed; {total / k:,.0f} tok/s per trial"
            + ("" if overlapped else " (never all at once: whole span)"),
        )
        rows.append(row)
    return rows


def startup_rows(shape: dict, args, budget: Budget) -> list[Row]:
    """A trial's start-up: from launching a fresh Python process to the end of its first training
    step (interpreter, imports of torch and the trainer, the corpus, the model on the device and
    CUDA's lazy start, the step-0 probe, the first step), at the packing width, alone on the device."""
    width = shape["share_width"]
    cfg = make_cfg(shape, width, args.device, threads=worker_threads(args.device, 1))
    job = dict(cfg=cfg.model_dump_json(), warm_steps=2, timed=False)
    workers = Workers([job], worker_threads(args.device, 1))
    try:
        (result,) = (json.loads(v) for v in workers.wait_for("RESULT", time.monotonic() + 120).values())
    finally:
        workers.close()
    launched = workers.launched[0]
    phases = {
        "interpreter": result["started"] - launched,
        "imports": result["imported"] - result["started"],
        "corpus": result["data"] - result["main"],
        "build": result["built"] - result["data"],
        "first_step": result["first_step"] - result["built"],
    }
    startup = result["first_step"] - launched
    step_s = max(phases["first_step"], 1e-6)
    row = Row(
        "startup",
        f"w{width} launch->1st step",
        cfg.batch_size * cfg.seq_len / step_s,
        width,
        step_s * 1e3,
        None,
        result["peak_mib"],
        {"startup_s": startup, **{f"{k}_s": v for k, v in phases.items()}},
    )
    print_row(row, note=f"{startup:.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return [row]


# ---- the one table -----------------------------------------------------------------------------
GOALS = dict(packed_mfu=0.25, muon_step_ms=3.0, muon_ratio=1.15, startup_s=10.0)


def summary(rows: list[Row], shape: dict) -> list[dict]:
    """The figures the GPU work is judged by, each with its goal (issue 19) and whether it is met."""
    out = []

    def add(what, measured, goal="", met=None):
        out.append(dict(what=what, measured=measured, goal=goal, met=met))

    for r in rows:
        if r.section == "throughput":
            add(f"one model, w{r.width}: tokens/s, MFU", f"{_si(r.tokens_per_s)}, {_pct(r.mfu)}")
    for r in rows:
        if r.section == "packed":
            goal = r.width == shape["share_width"]
            add(
                f"packed w{r.width} x{r.extra['trials']} (processes): summed tokens/s, MFU",
                f"{_si(r.tokens_per_s)}, {_pct(r.mfu)}",
                f"MFU >= {GOALS['packed_mfu']:.0%}" if goal else "",
                (r.mfu >= GOALS["packed_mfu"]) if goal and r.mfu is not None else None,
            )
    opt = {(r.label.split()[1], r.extra.get("ns")): r for r in rows if r.section == "optimizer"}
    width = shape["optimizer_width"]
    for ns in ("batched", "unbatched"):
        r = opt.get(("muon", ns))
        if r:
            ms = r.extra["opt_step_ms"]
            add(
                f"Muon arm's optimizer step, w{width}, NS {ns} (Muon's own)",
                f"{ms:.2f} ms ({r.extra['muon_step_ms']:.2f} ms)",
                f"<= {GOALS['muon_step_ms']:g} ms" if ns == "batched" else "",
                ms <= GOALS["muon_step_ms"] if ns == "batched" else None,
            )
    adamw, muon = opt.get(("adamw", None)), opt.get(("muon", "batched"))
    if adamw:
        add(f"AdamW optimizer step, w{width}", f"{adamw.extra['opt_step_ms']:.2f} ms")
    if adamw and muon:
        ratio = muon.step_ms / adamw.step_ms
        add(
            f"Muon / AdamW train step, w{width} (NS batched)",
            f"{ratio:.2f}x ({muon.step_ms:.1f} / {adamw.step_ms:.1f} ms)",
            f"<= {GOALS['muon_ratio']:g}",
            ratio <= GOALS["muon_ratio"],
        )
    for r in rows:
        if r.section == "startup":
            add(
                f"start-up, w{r.width}: process launch to first finished step",
                f"{r.extra['startup_s']:.1f} s",
                f"<= {GOALS['startup_s']:g} s",
                r.extra["startup_s"] <= GOALS["startup_s"],
            )
    return out


def _si(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def print_summary(items: list[dict], title: str) -> None:
    print(f"\nsummary: {title}")
    print(f"  {'what':<68} {'measured':<24} {'goal':<12} met")
    for it in items:
        met = "" if it["met"] is None else ("yes" if it["met"] else "NO")
        print(f"  {it['what']:<68} {it['measured']:<24} {it['goal']:<12} {met}", flush=True)


# ---- the calibration table ---------------------------------------------------------------------
def gpu_kind(name: str) -> str | None:
    """'NVIDIA H200' -> 'h200' (orchestrator.spec.calibration.device_kind of the GPU table's name)."""
    from orchestrator.spec.calibration import device_kind

    models = sorted((g.name for g in GPUS), key=lambda m: -len(m.split("-")[0]))
    upper = name.upper()
    return next((device_kind(m) for m in models if m.split("-")[0] in upper), None)


def calibration_rows(rows: list[Row], shape: dict, kind: str, source: str) -> list[dict]:
    """The table rows (orchestrator.spec.calibration.Row fields) from the check's rows."""
    common = dict(
        device=kind,
        depth=shape["depth"],
        d_head=shape["d_head"],
        seq_len=shape["seq_len"],
        batch_size=shape["batch_size"],
        vocab_size=256,
        probe_seqs=shape["batch_size"],
        threads=None,
        dtype="bfloat16" if kind != "cpu" else "float32",
        muon_per_head=False,
        qk_norm="none",
        startup_s=None,
    )
    tokens = shape["batch_size"] * shape["seq_len"]
    out: dict[tuple, dict] = {}

    def add(width, optimizer, compile_, concurrent, step_s, what, **kw):
        out[(width, optimizer, compile_, concurrent)] = dict(
            common,
            width=width,
            optimizer=optimizer,
            compile=compile_,
            concurrent=concurrent,
            step_s=round(step_s, 7),
            tokens_per_s=round(tokens / step_s, 1),
            eval_s=kw.get("eval_s"),
            probe_s=kw.get("probe_s"),
            source=f"{source}: {what}",
        )

    for r in rows:
        if r.section in ("throughput", "compiled"):
            add(r.width, "adamw", r.section == "compiled", 1, r.step_ms / 1e3, f"{r.section} section")
    skip = "batched" if kind == "cpu" else "unbatched"  # Muon as the trainer runs it there (trainer.optim)
    opt = {r.label.split()[1]: r for r in rows if r.section == "optimizer" and r.extra.get("ns") != skip}
    if "adamw" in opt and "muon" in opt:
        width = opt["muon"].width
        base = out.get((width, "adamw", False, 1))
        step = (base["step_s"] if base else opt["adamw"].step_ms / 1e3) * opt["muon"].step_ms / opt["adamw"].step_ms
        add(width, "muon", False, 1, step, "optimizer section: AdamW's step x the Muon/AdamW ratio measured there")
    for r in rows:
        if r.section == "probe" and (r.width, "adamw", False, 1) in out:
            row = out[(r.width, "adamw", False, 1)]
            row["eval_s"] = round(r.extra["regular_ms"] / 1e3, 6)
            row["probe_s"] = round(r.extra["log_ms"] / 1e3, 6)
            row["source"] += " + probe section"
        if r.section in ("sharing", "packed") and r.extra.get("trials", 1) > 1:
            k = r.extra["trials"]
            add(
                r.width,
                "adamw",
                False,
                k,
                tokens / r.extra["per_trial_tokens_per_s"],
                f"{r.section} section, {k} trials on one GPU",
            )
    start = next((r for r in rows if r.section == "startup"), None)
    if start is not None:  # a trial's fixed cost: a fresh process to its first step (eager trials)
        for row in out.values():
            if not row["compile"]:
                row["startup_s"] = round(start.extra["startup_s"], 3)
                row["source"] += " + startup section"
    return list(out.values())


# ---- output ------------------------------------------------------------------------------------
HEADER = f"  {'section':<10} {'config':<28} {'tok/s':>12} {'MFU':>6} {'step ms':>9} {'peak MiB':>9}  note"


def print_row(row: Row, note: str = "") -> None:
    mfu = f"{row.mfu:.1%}" if row.mfu is not None else "n/a"
    peak = f"{row.peak_mib:,.0f}" if row.peak_mib is not None else "n/a"
    print(
        f"  {row.section:<10} {row.label:<28} {row.tokens_per_s:>12,.0f} {mfu:>6} {row.step_ms:>9.1f} {peak:>9}  {note}",
        flush=True,
    )


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and few steps (CI, or a CPU)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the torch.compile section (default: on, except with --tiny)",
    )
    p.add_argument("--budget", type=float, default=240.0, help="seconds; sections after it are skipped (default 240)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: from the GPU's name)"
    )
    p.add_argument("--json", metavar="OUT", help="also write the figures here as JSON")
    p.add_argument(
        "--sections", default=None, help="comma-separated sections to run (default: all), e.g. throughput,probe"
    )
    p.add_argument(
        "--ray-temp", default=None, help="sharing section: Ray's session folder (default $RAY_TMPDIR or /tmp)"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one trial process of the packed and startup sections
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="write this GPU's rows of --dry-run's calibration table from the figures (see above)",
    )
    p.add_argument(
        "--calibration-out", metavar="FILE", help="with --calibrate: the table to write (default: the package's)"
    )
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.calibrate and args.device == "cpu" and not args.calibration_out:
        p.error(
            "--calibrate on --device cpu needs --calibration-out FILE (the CPU's rows: python -m benchmarks.trainer --calibrate)"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu: --device cuda but torch sees no CUDA device (use --device cpu --tiny)", file=sys.stderr)
        return 2
    shape = TINY if args.tiny else FULL
    do_compile = (not args.tiny) if args.compile is None else args.compile
    budget = Budget(args.budget)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    peak = args.peak_tflops if args.peak_tflops else (gpu_peak_tflops(name) if args.device == "cuda" else None)
    print(
        f"benchmarks.gpu: {name}, torch {torch.__version__}, peak {peak or 'n/a'} TFLOP/s (bf16 dense), "
        f"depth {shape['depth']}, d_head {shape['d_head']}, batch {shape['batch_size']} x {shape['seq_len']}, "
        f"budget {args.budget:g} s"
    )
    print(HEADER)
    step_ms: dict[int, float] = {}  # eager train-step ms per width, from the throughput section

    def throughput():
        rows = throughput_rows("throughput", shape, args, budget, peak, False)
        step_ms.update({r.width: r.step_ms for r in rows})
        return rows

    sections = [  # what the summary judges first; then what only the calibration table uses
        ("throughput", throughput),
        ("optimizer", lambda: optimizer_rows(shape, args, budget, peak)),
        ("packed", lambda: packed_rows(shape, args, budget, peak)),
        ("startup", lambda: startup_rows(shape, args, budget)),
        ("probe", lambda: probe_rows(shape, args, budget, step_ms)),
        ("compiled", lambda: throughput_rows("compiled", shape, args, budget, peak, True)),
        ("sharing", lambda: sharing_rows(shape, args, budget)),
    ]
    chosen = set(args.sections.split(",")) if args.sections else set(DEFAULT_SECTIONS)
    if not do_compile and not args.sections:
        chosen.discard("compiled")
    unknown = chosen - {name for name, _ in sections}
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; known: {', '.join(name for name, _ in sections)}")
    sections = [(name, run) for name, run in sections if name in chosen]
    rows, errors, skipped = [], {}, []
    for section, run in sections:
        if not budget.left():
            print(f"  {section}: skipped (time budget of {args.budget:g} s spent after {budget.spent():.0f} s)")
            skipped.append(section)
            continue
        t0 = time.perf_counter()
        try:
            rows += run()
            print(f"  ({section}: {time.perf_counter() - t0:.0f} s)", flush=True)
        except Exception as exc:  # one broken section must not lose the others
            errors[section] = f"{type(exc).__name__}: {exc}"
            print(f"  {section}: FAILED: {errors[section]}", flush=True)
            traceback.print_exc(limit=3, file=sys.stderr)
    if not do_compile and not args.sections:
        print("  compiled: not run (--tiny; pass --compile to run it)")
    table = summary(rows, shape)
    print_summary(
        table,
        f"{name}, {shape['depth']} layers, d_head {shape['d_head']}, batch {shape['batch_size']} x {shape['seq_len']}"
        + (" (--tiny: the goals are for the full shapes on a GPU)" if args.tiny else ""),
    )
    print(f"done in {budget.spent():.0f} s" + (f"; {len(errors)} section(s) failed" if errors else ""))
    if args.calibrate:
        import datetime as dt

        from orchestrator.spec.calibration import write_rows

        kind = gpu_kind(name) if args.device == "cuda" else "cpu"
        if kind is None:
            print(f"benchmarks.gpu: --calibrate: {name!r} is not in orchestrator.spec.costs.GPUS; rows not written")
            errors["calibrate"] = f"unknown GPU {name!r}"
        else:
            source = f"python -m benchmarks.gpu --calibrate, {name}, torch {torch.__version__}, {dt.date.today().isoformat()}"
            table_rows = calibration_rows(rows, shape, kind, source)
            if not any(r["optimizer"] == "adamw" and not r["compile"] and r["concurrent"] == 1 for r in table_rows):
                # every plan starts from these rows: without them the table's own rows are kept
                print(f"calibration: no eager throughput measured; the {kind} rows are left as they were")
                errors["calibrate"] = "no eager throughput rows"
            else:
                path = write_rows(table_rows, device=kind, path=args.calibration_out)
                print(f"calibration: wrote {len(table_rows)} {kind} rows to {path}")
    if args.json:
        out = dict(
            device=args.device,
            device_name=name,
            torch=torch.__version__,
            peak_tflops=peak,
            tiny=args.tiny,
            shape={k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()},
            rows=[asdict(r) for r in rows],
            summary=table,
            errors=errors,
            skipped=skipped,
            elapsed_s=budget.spent(),
        )
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
