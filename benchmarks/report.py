"""Wall time and peak memory of `python -m analysis.report` on a large synthetic sweep.

    python -m benchmarks.report [--metric-rows 10000000] [--spectra-rows 100000] [--keep DIR]

Writes a synthetic results folder (benchmarks.synthetic_results: 2 optimizers x 4 qk_norm x 3
widths x 6 LRs x as many seeds as the row target needs) under a temporary folder, runs the report
in a child process, and prints the child's wall time and peak RSS against the targets (30 s, 3 GB).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.synthetic_results import SyntheticSpec, eval_steps, row_template, write_results

TARGET_S, TARGET_GB = 30.0, 3.0


def rows_per_trial(spec: SyntheticSpec, width: int) -> int:
    """Metric rows one trial of this width writes (the writer's own row template, so the count
    follows every metric and stage the synthetic results record)."""
    return int(row_template(spec, width // spec.d_head).step.size)


def make_spec(metric_rows: int, spectra_rows: int) -> SyntheticSpec:
    base = SyntheticSpec(
        name="bench",
        qk_norms=("none", "rms", "rms_frozen", "layer"),
        widths=(64, 128, 256),
        lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
        seeds=(0,),
        spectra="last",
        rate_noise=0.1,
        rate_width_exp=0.5,
        point_noise=0.003,
        n_duplicated=3,
        n_truncated=1,
        junk_files=True,
        # a few diverged trials (AdamW at the top LR, seed 0)
        diverge_if=lambda k: k.optimizer == "adamw" and k.lr >= 3e-1 and k.seed == 0,
    )
    per_seed = sum(rows_per_trial(base, w) for w in base.widths) * (
        len(base.optimizers) * len(base.qk_norms) * len(base.lrs)
    )
    base.seeds = tuple(range(max(1, math.ceil(metric_rows / per_seed))))
    n_trials = len(base.grid())
    per_trial = {
        m: sum(f * 4 * base.depth * (w // base.d_head) for w in base.widths) / len(base.widths)
        for m, f in (("last", 1), ("ends", 2), ("all", len(eval_steps(base))))
    }
    base.spectra = min(per_trial, key=lambda m: abs(per_trial[m] * n_trials - spectra_rows))
    if spectra_rows == 0:
        base.spectra = "none"
    return base


def run(metric_rows: int, spectra_rows: int, root: Path) -> dict:
    spec = make_spec(metric_rows, spectra_rows)
    t0 = time.perf_counter()
    manifest = write_results(spec, root / "bench")
    gen_s = time.perf_counter() - t0
    out = root / "report"
    cmd = [sys.executable, "-m", "analysis.report", str(root / "bench"), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss_gb = usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)
    return dict(
        trials=manifest["n_trials"],
        metric_rows=manifest["metric_rows"],
        spectra_rows=manifest["spectra_rows"],
        generate_s=gen_s,
        report_s=wall,
        peak_rss_gb=rss_gb,
        rc=rc,
        out=str(out),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    ap.add_argument("--metric-rows", type=int, default=10_000_000)
    ap.add_argument("--spectra-rows", type=int, default=100_000)
    ap.add_argument("--keep", help="write the synthetic sweep and report here and keep them")
    args = ap.parse_args(argv)
    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=True)
        r = run(args.metric_rows, args.spectra_rows, root)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
            r = run(args.metric_rows, args.spectra_rows, Path(tmp))
    print(
        f"synthetic sweep: {r['trials']} trials, {r['metric_rows']:,} metric rows, "
        f"{r['spectra_rows']:,} spectra rows (generated in {r['generate_s']:.1f} s)"
    )
    print(
        f"report: wall {r['report_s']:.1f} s (target < {TARGET_S:.0f} s), "
        f"peak RSS {r['peak_rss_gb']:.2f} GB (target < {TARGET_GB:.0f} GB), "
        f"cpus {os.cpu_count()}, exit status {r['rc']}"
    )
    ok = r["rc"] == 0 and r["report_s"] < TARGET_S and r["peak_rss_gb"] < TARGET_GB
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
