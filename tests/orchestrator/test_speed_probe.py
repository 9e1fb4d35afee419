"""--dry-run scales the table's cpu rows by how fast this machine runs the trainer now
(orchestrator.spec.speed): the same code ran the default sweep's steps 1.5x as long on the 2-core
machine two days after its calibration, and the stale rows then predicted 8:24 for 13:51."""

from __future__ import annotations

import json
import shutil

import pytest

from orchestrator import sweep
from orchestrator.spec import calibration, speed
from orchestrator.spec.calibration import load_table


def test_scaled_multiplies_every_time_of_one_device_only():
    table = load_table()
    doubled = table.scaled("cpu", 2.0)
    for before, after in zip(table.rows, doubled.rows, strict=True):
        if before.device != "cpu":
            assert after == before
            continue
        assert after.step_s == pytest.approx(2 * before.step_s)
        assert after.rate == pytest.approx(before.rate / 2)
        for attr in ("eval_s", "probe_s", "startup_s"):
            x = getattr(before, attr)
            assert getattr(after, attr) == (None if x is None else pytest.approx(2 * x))
    assert table.scaled("cpu", 1.0) is table


def test_the_reference_step_is_a_few_tens_of_milliseconds_of_cpu():
    step = speed.reference_step_s(steps=4)
    assert 1e-3 < step < 2.0  # the default width-64 step: 25-45 ms on the 2-core machine


def _plan(capsys, *args) -> dict:
    assert sweep.main(["--config", "default", "--dry-run", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_machine_half_as_fast_as_the_tables_doubles_the_trials_seconds(tmp_path, capsys, monkeypatch):
    """A table whose reference step is half of what this machine measures: every trial's seconds
    come out twice the table's, and the plan says why; QKC_SPEED_PROBE=0 plans with the rows as
    they are."""
    now = speed.reference_step_s()
    data = json.loads(calibration.TABLE.read_text())
    data["cpu_reference"] = {"step_s": now / 2, "source": "a test: a machine twice as fast as this one"}
    table = tmp_path / "table.json"
    table.write_text(json.dumps(data))
    monkeypatch.setattr(speed, "measured_now", lambda: now)  # the same measurement for both plans
    scaled = _plan(capsys, "--calibration", str(table), "--num-cpus", "2")
    monkeypatch.setenv("QKC_SPEED_PROBE", "0")
    plain = _plan(capsys, "--calibration", str(table), "--num-cpus", "2")
    assert scaled["calibration"]["speed"]["scale"] == pytest.approx(2.0)
    assert "scaled by 2.00" in scaled["calibration"]["speed"]["why"]
    assert plain["calibration"]["speed"]["scale"] == 1.0 and "QKC_SPEED_PROBE=0" in plain["calibration"]["speed"]["why"]
    assert scaled["trial_s_total"] == pytest.approx(
        2 * plain["trial_s_total"], rel=0.02
    )  # Ray's 0.08 s a trial is not scaled
    assert scaled["wall_s"] - scaled["driver_s"] == pytest.approx(2 * (plain["wall_s"] - plain["driver_s"]), rel=0.02)


def test_within_the_probes_noise_the_rows_are_used_as_they_are(tmp_path, capsys, monkeypatch):
    data = json.loads(calibration.TABLE.read_text())
    data["cpu_reference"] = {"step_s": 0.040, "source": "a test"}
    table = tmp_path / "table.json"
    table.write_text(json.dumps(data))
    monkeypatch.setattr(speed, "measured_now", lambda: 0.042)  # 5% slower: noise
    plan = _plan(capsys, "--calibration", str(table))
    assert plan["calibration"]["speed"]["scale"] == 1.0 and "within 10%" in plan["calibration"]["speed"]["why"]


def test_a_table_without_a_reference_plans_as_before_and_says_so(tmp_path, capsys):
    data = json.loads(calibration.TABLE.read_text())
    data.pop("cpu_reference", None)
    table = tmp_path / "old.json"
    table.write_text(json.dumps(data))
    plan = _plan(capsys, "--calibration", str(table))
    assert plan["calibration"]["speed"]["scale"] == 1.0 and "no reference step" in plan["calibration"]["speed"]["why"]


def test_a_gpu_plan_or_a_cluster_is_not_scaled_by_this_machine(capsys, monkeypatch):
    monkeypatch.setattr(speed, "measured_now", lambda: pytest.fail("measured for a plan it does not concern"))
    assert (
        sweep.main(["--config", "paradox", "--dry-run", "--json", "--device-kind", "h200", "--set", "grid.seed=[0]"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["calibration"]["speed"] is None
    plan = _plan(capsys, "--address", "10.0.0.1:6379")
    assert plan["calibration"]["speed"] is None


def test_the_text_plan_names_this_machines_speed(capsys, monkeypatch):
    monkeypatch.setattr(speed, "measured_now", lambda: 1.0)
    assert sweep.main(["--config", "default", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  this machine: cpu rows scaled by" in out and "ms of CPU here now" in out


def test_calibrate_writes_the_reference_beside_its_rows(tmp_path):
    """`--calibrate --out FILE` (tiny: one width, 4 steps, one job): the cpu rows and the reference
    step measured on the same machine in the same run."""
    from benchmarks import calibrate

    out = tmp_path / "table.json"
    shutil.copy(calibration.TABLE, out)
    assert calibrate.main(["--widths", "32", "--steps", "4", "--jobs", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    reference = data["cpu_reference"]
    assert 0 < reference["step_s"] < 2.0
    cpu_rows = [r for r in data["rows"] if r["device"] == "cpu"]
    assert {r["width"] for r in cpu_rows} == {32} and reference["source"] == cpu_rows[0]["source"]
    assert any(r["device"] != "cpu" for r in data["rows"])  # the GPU rows are kept


def test_a_probe_that_fails_leaves_the_rows_as_they_are(capsys, monkeypatch):
    def broken():
        raise RuntimeError("no torch kernels here")

    monkeypatch.setattr(speed, "measured_now", broken)
    plan = _plan(capsys)
    assert plan["calibration"]["speed"]["scale"] == 1.0
    assert "could not be timed here: RuntimeError: no torch kernels here" in plan["calibration"]["speed"]["why"]


@pytest.mark.parametrize("reference", [{"step_s": "fast"}, {"step_s": -1}, {"step_s": float("nan")}, [1, 2]])
def test_a_table_with_a_broken_reference_is_one_line_naming_it(tmp_path, capsys, reference):
    data = json.loads(calibration.TABLE.read_text())
    data["cpu_reference"] = reference
    table = tmp_path / "table.json"
    table.write_text(json.dumps(data))  # a NaN as JSON's NaN, which Python's json reads back
    assert sweep.main(["--config", "default", "--dry-run", "--calibration", str(table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cpu_reference.step_s must be a positive number" in err[0] and str(table) in err[0]
