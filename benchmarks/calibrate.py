"""Calibrate `--dry-run`'s cost plan on this machine's CPU: real training steps of the trainer, timed.

    python -m benchmarks.trainer --calibrate [--widths 64 128 256] [--steps 60] [--jobs N] [--out FILE]
    python -m benchmarks.calibrate ...       # the same

For every case (width x optimizer x qk_norm, and Muon per head) it builds the trainer's own `Trial`
at the default sweep's shapes (depth 2, d_head 32, seq_len 128, batch 16, the stdlib corpus, one
torch thread as a CPU sweep gives each trial), runs `--steps` training steps with no probe between
the first and the last, and times, in CPU seconds of the process (with one thread the time on a core
of its own: other processes on a shared machine leave it nearly alone, wall time they do not):

- step_s: the mean training step (forward, backward, clip, optimizer step, logging), the first two
  steps left out (warm-up);
- eval_s: one probe at a regular step (the probe and the val loss from one forward, as the sweeps
  run it), probe_s: one early log-spaced probe (the spectra alone); each the median of 3;
- startup_s: what a trial spends outside its steps and probes: building the Trial (model, optimizer,
  held-out windows) plus the rest of `run()` (warm-up of the first step, the final flush and the
  compaction of its Parquet parts), i.e. construction + wall_s - steps x step_s - its two probes.

`--jobs N` (default: this machine's CPU count, as many one-thread trials as a CPU sweep runs at
once) runs the same cases in N processes at the same time, so that the figures carry the
contention of a full machine; each row is the mean over the processes. The rows replace the `cpu`
rows of the calibration table (orchestrator/spec/calibration.json; `--out` writes another file,
`--print` writes none), with `cpu_reference`: orchestrator.spec.speed's reference step timed alone
first, which `--dry-run` times again on the machine it runs on to scale these rows to its speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

from trainer.cli import ArgumentParser
from trainer.provenance import cpu_description, torch_cpu_capability

BASE = dict(  # sweeps/default.yaml's train section, less what a calibration turns off
    corpus="stdlib",
    max_corpus_bytes=4_000_000,
    depth=2,
    d_head=32,
    seq_len=128,
    batch_size=16,
    eval_every=20,
    checkpoint_every=0,
    device="cpu",
    threads=1,
)
# (optimizer, qk_norm, muon_per_head): every qk_norm variant under AdamW, the common ones under Muon
CASES = (
    [("adamw", q, False) for q in ("none", "rms", "rms_frozen", "layer", "qk_clip", "softcap")]
    + [("muon", q, False) for q in ("none", "rms", "rms_frozen")]
    + [("muon", "none", True)]
)


def _case_config(width: int, optimizer: str, qk_norm: str, per_head: bool, steps: int):
    from trainer.config import TrialConfig

    extra = {"muon_per_head": True} if per_head else {}
    return TrialConfig(
        **BASE,
        width=width,
        optimizer=optimizer,
        qk_norm=qk_norm,
        steps=steps,
        warmup=min(5, steps - 1),
        lr=2e-3,
        eval_schedule="every",
        **extra,
    )


# CPU seconds of this process: with one torch thread, the time on a core of its own, which other
# processes' load on a shared machine leaves (nearly) alone, unlike wall time.
CLOCK = time.process_time


def _median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return float(np.median(times))


def measure_case(cfg, tokens) -> dict:
    """step_s, eval_s, probe_s, startup_s of one case (see the module's docstring)."""
    from trainer.loop import Trial, TrialHooks
    from trainer.storage import ResultsDir

    class Clock(TrialHooks):
        def __init__(self):
            self.stamps: list[float] = []

        def on_step(self, step, info):
            self.stamps.append(CLOCK())

    with tempfile.TemporaryDirectory() as tmp:
        t0 = CLOCK()
        trial = Trial(cfg, ResultsDir(tmp), "calibrate", tokens, Clock(), None, None)
        trial.run()
        total = CLOCK() - t0
        gaps = np.diff(np.array(trial.hooks.stamps))[1:]  # step k's gap: on_step(k-1) to on_step(k); skip step 1
        step_s = float(np.mean(gaps[1:]))
        eval_s = _median_seconds(lambda: trial._evaluate(cfg.steps))  # a regular step: probe + val loss
        probe_s = _median_seconds(lambda: trial._evaluate(1))  # an early probe: spectra alone
        startup_s = total - cfg.steps * step_s - 2 * eval_s
    return dict(step_s=step_s, eval_s=eval_s, probe_s=probe_s, startup_s=max(0.0, startup_s))


def _worker(args) -> list[dict]:
    widths, steps = args
    import torch

    from trainer.data import load_tokens

    torch.set_num_threads(BASE["threads"])
    tokens = load_tokens(_case_config(widths[0], "adamw", "none", False, steps))
    measure_case(_case_config(widths[0], "adamw", "none", False, 10), tokens)  # warm-up: one-time costs, not a trial's
    out = []
    for width in widths:
        for optimizer, qk_norm, per_head in CASES:
            cfg = _case_config(width, optimizer, qk_norm, per_head, steps)
            out.append(
                dict(
                    width=width,
                    optimizer=optimizer,
                    qk_norm=qk_norm,
                    muon_per_head=per_head,
                    **measure_case(cfg, tokens),
                )
            )
    return out


def _reference_worker(_) -> float:
    from orchestrator.spec import speed

    return speed.reference_step_s()


def reference_step_s(processes: int = 3) -> float:
    """orchestrator.spec.speed's reference step, the median over `processes` fresh processes run one
    after the other (one process alone varies by about 10% from the next)."""
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return float(np.median(pool.map(_reference_worker, range(processes), chunksize=1)))


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    """The CPU as the calibration's source names it: model, torch's CPU kernel level, system: the
    rows hold for that machine (another CPU, or another kernel level, runs the same steps at
    another speed)."""
    described = cpu_description()
    return ", ".join(str(x) for x in (described["cpu_model"], torch_cpu_capability(), platform.system()) if x)


def calibrate(widths: list[int], steps: int, jobs: int, note: str = "") -> list[dict]:
    """The cpu rows of the calibration table, measured now."""
    import torch

    load0 = os.getloadavg()[0]
    if jobs > 1:
        with mp.get_context("spawn").Pool(jobs) as pool:
            runs = pool.map(_worker, [(widths, steps)] * jobs)
    else:
        runs = [_worker((widths, steps))]
    cpus = os.cpu_count() or 1
    source = (
        f"python -m benchmarks.trainer --calibrate, {cpus}-core {platform.machine()} "
        f"({_cpu()}), {jobs} at once, CPU time, "
        f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}, {note + ', ' if note else ''}"
        f"torch {torch.__version__}, {_commit()}, {dt.date.today().isoformat()}"
    )
    rows = []
    for i, first in enumerate(runs[0]):
        mean = {k: float(np.mean([run[i][k] for run in runs])) for k in ("step_s", "eval_s", "probe_s", "startup_s")}
        rows.append(
            dict(
                device="cpu",
                width=first["width"],
                optimizer=first["optimizer"],
                qk_norm=first["qk_norm"],
                muon_per_head=first["muon_per_head"],
                depth=BASE["depth"],
                d_head=BASE["d_head"],
                seq_len=BASE["seq_len"],
                batch_size=BASE["batch_size"],
                probe_seqs=32,
                threads=BASE["threads"],
                dtype="float32",
                compile=False,
                concurrent=jobs,
                step_s=round(mean["step_s"], 6),
                tokens_per_s=round(BASE["batch_size"] * BASE["seq_len"] / mean["step_s"], 1),
                eval_s=round(mean["eval_s"], 6),
                probe_s=round(mean["probe_s"], 6),
                startup_s=round(mean["startup_s"], 4),
                source=source,
            )
        )
    return rows


def add_arguments(p: argparse.ArgumentParser, *, widths_default: bool = True) -> None:
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes measuring at once (default: CPUs)")
    p.add_argument("--out", help="write the table here (default: the package's orchestrator/spec/calibration.json)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the rows, write nothing")
    p.add_argument("--note", default="", help="words for the rows' provenance, e.g. 'idle' or 'busy'")


def run(widths: list[int], steps: int, args) -> int:
    from orchestrator.spec import calibration

    if steps < 4:
        raise SystemExit(f"--calibrate: --steps must be at least 4 (the first two are left out), got {steps}")
    t0 = time.perf_counter()
    reference = reference_step_s()  # alone, before the jobs: what --dry-run compares this machine with
    rows = calibrate(widths, steps, max(1, args.jobs), args.note)
    print(f"calibration: {len(rows)} cpu rows in {time.perf_counter() - t0:.0f} s ({rows[0]['source']})")
    print(f"reference step (orchestrator.spec.speed, alone): {reference * 1e3:.2f} ms of CPU")
    print(
        f"{'width':>5} {'optimizer':>9} {'qk_norm':>10} {'per_head':>8} {'step ms':>8} {'tok/s':>8} "
        f"{'eval ms':>8} {'probe ms':>8} {'startup s':>9}"
    )
    for r in rows:
        print(
            f"{r['width']:>5} {r['optimizer']:>9} {r['qk_norm']:>10} {str(r['muon_per_head']):>8} "
            f"{r['step_s'] * 1e3:>8.2f} {r['tokens_per_s']:>8.0f} {r['eval_s'] * 1e3:>8.1f} "
            f"{r['probe_s'] * 1e3:>8.1f} {r['startup_s']:>9.3f}",
            flush=True,
        )
    if not args.print_only:
        path = calibration.write_rows(
            rows,
            device="cpu",
            path=args.out,
            cpu_reference={"step_s": round(reference, 6), "source": rows[0]["source"]},
        )
        print(f"wrote the cpu rows of {path}")
    return 0


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=60, help="training steps timed per case")
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args.widths, args.steps, args)


if __name__ == "__main__":
    raise SystemExit(main())
