"""The calibration commands: `python -m benchmarks.trainer --calibrate` (real trainer steps, CPU rows)
and `python -m benchmarks.gpu --calibrate` (its figures as rows of the GPU it runs on)."""

from __future__ import annotations

import json

import pytest

from benchmarks import calibrate
from benchmarks.gpu import FULL, Row, calibration_rows, gpu_kind
from orchestrator.spec.calibration import TABLE, Calibration, load_table
from trainer.config import TrialConfig


def test_gpu_names_map_to_device_kinds():
    assert gpu_kind("NVIDIA H200") == "h200"
    assert gpu_kind("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_kind("NVIDIA L40S") == "l40s" and gpu_kind("NVIDIA L4") == "l4"
    assert gpu_kind("Some TPU") is None


def test_gpu_figures_become_table_rows(tmp_path):
    rows = [
        Row("throughput", "w256 eager", 1.7e6, 256, 16384 / 1.7e6 * 1e3),
        Row("throughput", "w1024 eager", 9.76e5, 1024, 16384 / 9.76e5 * 1e3),
        Row("compiled", "w256 compiled", 1.79e6, 256, 16384 / 1.79e6 * 1e3),
        Row("optimizer", "w1024 adamw", 9.7e5, 1024, 17.0),
        Row("optimizer", "w1024 muon (NS bf16)", 6.0e5, 1024, 27.4),
        Row("probe", "w256 11+21 in 2000", 1.7e6, 256, 9.6, extra={"log_ms": 3.0, "regular_ms": 5.0}),
        Row("sharing", "w256 x4 (num_gpus=0.25)", 3.6e6, 256, 18.2, extra={"trials": 4, "per_trial_tokens_per_s": 9e5}),
    ]
    table_rows = calibration_rows(rows, FULL, "h100", "test")
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"rows": table_rows}))
    cal = Calibration(load_table(path), "h100")
    by = {(r.width, r.optimizer, r.compile, r.concurrent): r for r in cal.rows}
    assert set(by) == {(256, "adamw", False, 1), (1024, "adamw", False, 1), (256, "adamw", True, 1),
                       (1024, "muon", False, 1), (256, "adamw", False, 4)}  # fmt: skip
    assert by[(1024, "muon", False, 1)].step_s / by[(1024, "adamw", False, 1)].step_s == pytest.approx(
        27.4 / 17.0, rel=1e-4
    )
    assert by[(256, "adamw", False, 1)].eval_s == pytest.approx(0.005) and by[(256, "adamw", False, 1)].probe_s == 0.003
    cfg = TrialConfig(width=256, depth=4, d_head=64, seq_len=512, batch_size=32, device="cuda")
    assert 4 * 16384 / cal.trial(cfg, share=0.25).step_s == pytest.approx(3.6e6, rel=0.01)


@pytest.mark.slow
def test_cpu_calibration_times_real_steps_and_writes_cpu_rows(tmp_path, capsys):
    """A tiny calibration (width 32, a few steps, one process) into a copy of the table: the cpu rows
    are replaced, the GPU rows kept."""
    table = tmp_path / "calibration.json"
    data = json.loads(TABLE.read_text())
    gpu_rows = len([r for r in data["rows"] if r["device"] != "cpu"])
    table.write_text(json.dumps(data))
    assert calibrate.main(["--widths", "32", "--steps", "8", "--jobs", "1", "--out", str(table)]) == 0
    rows = json.loads(table.read_text())["rows"]
    cpu = [r for r in rows if r["device"] == "cpu"]
    assert len(rows) - len(cpu) == gpu_rows and len(cpu) == len(calibrate.CASES)
    assert all(r["step_s"] > 0 and r["eval_s"] > 0 and r["probe_s"] > 0 and r["startup_s"] >= 0 for r in cpu)
    assert {(r["optimizer"], r["qk_norm"], r["muon_per_head"]) for r in cpu} == set(calibrate.CASES)
    assert "benchmarks.trainer --calibrate" in cpu[0]["source"]
    assert "wrote the cpu rows" in capsys.readouterr().out
