"""The GPU check runs end to end on a CPU (`--device cpu --tiny`): every section, a real local Ray
for the fractional-sharing rounds, every row with a positive throughput, the same figures in --json."""

import json
import re
import subprocess

import pytest

from benchmarks.gpu import SHARES, TINY, gpu_peak_tflops


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gpu_check_runs_tiny_on_cpu(tmp_path, tmp_path_factory, subprocess_env, python):
    out = tmp_path / "gpu.json"
    # Ray's session folder under pytest's base temp folder (short enough for Ray's unix sockets), as the
    # conftest's ray_session does; a private loopback instance with Ray's token auth left on.
    cmd = [
        python,
        "-m",
        "benchmarks.gpu",
        "--device",
        "cpu",
        "--tiny",
        "--json",
        str(out),
        "--ray-temp",
        str(tmp_path_factory.getbasetemp()),
    ]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    printed = [
        line.split()
        for line in proc.stdout.splitlines()
        if re.match(r"\s+(throughput|optimizer|probe|sharing)\s", line)
    ]
    expected = 2 * len(TINY["widths"]) + 2 + len(SHARES)
    assert len(printed) == expected, proc.stdout
    for fields in printed:  # section, config words..., tok/s, MFU, step ms, peak MiB
        tok_col = next(i for i, f in enumerate(fields) if f in ("n/a",) or f.endswith("%")) - 1
        assert float(fields[tok_col].replace(",", "")) > 0, fields

    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["skipped"] == []
    rows = report["rows"]
    assert len(rows) == expected
    assert all(r["tokens_per_s"] > 0 and r["step_ms"] > 0 for r in rows)
    assert [r["extra"]["trials"] for r in rows if r["section"] == "sharing"] == list(SHARES)
    assert all(r["peak_mib"] > 0 for r in rows)
    assert {r["label"].split()[1] for r in rows if r["section"] == "optimizer"} == {"adamw", "muon"}
    probes = [r["extra"] for r in rows if r["section"] == "probe"]
    assert len(probes) == len(TINY["widths"])
    # an early probe skips the val loss and attention statistics: cheaper than a regular one
    assert all(0 < p["probe"] < p["evals"] and p["log_ms"] < p["regular_ms"] for p in probes), probes
    # the whole-trial comparison only counts trials that ran every step (no figure from a diverged pair)
    assert all(p["e2e_overhead"] is not None and p["e2e_evals"] > 0 for p in probes), probes


def test_peak_table_matches_cuda_device_names():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_peak_tflops("NVIDIA H200") == 989
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_peak_tflops("NVIDIA A10G") == 125
    assert gpu_peak_tflops("NVIDIA L4") == 121
    assert gpu_peak_tflops("NVIDIA L40S") == 362
    assert gpu_peak_tflops("Tesla T4") is None
