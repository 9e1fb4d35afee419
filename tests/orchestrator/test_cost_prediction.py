"""`--dry-run`'s cost plan predicts: measured throughput (the calibration table), not an assumed MFU,
checked against recorded sweeps; `--json`; and `--set` reaching every key of a sweep file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator import sweep
from orchestrator.spec import expand, load_spec
from orchestrator.spec import plan as plan_mod
from orchestrator.spec.calibration import Calibration, load_table
from orchestrator.spec.costs import find_gpu, flops_per_token, memory
from orchestrator.spec.overrides import apply_overrides
from trainer.config import ConfigError, TrialConfig

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_sweeps.json").read_text())


# ---- --set: dotted keys into nested mappings -------------------------------------------------
def test_set_reaches_per_width_resources():
    """The refusal of issue 'a cost plan that predicts': resources.per_width.256.gpus_per_trial was
    taken as one key of resources and refused with an unrelated did-you-mean."""
    spec, _ = load_spec("paradox", ["resources.per_width.256.gpus_per_trial=0.125"])
    assert spec.resources.per_width[256].gpus_per_trial == 0.125
    assert spec.resources.per_width[256].cpus_per_trial == 2  # the entry's other key is kept
    assert spec.resources.per_width[1024].gpus_per_trial == 0.5


def test_set_creates_a_new_width_entry_with_an_integer_key():
    spec, _ = load_spec("paradox", ["resources.per_width.4096.gpus_per_trial=2"])
    assert spec.resources.per_width[4096].gpus_per_trial == 2
    assert "4096" not in spec.resources.per_width


def test_set_keeps_a_key_the_file_writes_as_text():
    data = {"resources": {"per_width": {"256": {"gpus_per_trial": 1}}}}
    out = apply_overrides(data, ["resources.per_width.256.gpus_per_trial=0.5"])
    assert out["resources"]["per_width"] == {"256": {"gpus_per_trial": 0.5}}
    assert data["resources"]["per_width"]["256"]["gpus_per_trial"] == 1  # the file's mapping is not changed


@pytest.mark.parametrize(
    "item, check",
    [
        ("failure.max_retries=0", lambda s: s.failure.max_retries == 0),
        ("checkpoints.keep=last", lambda s: s.checkpoints.keep == "last"),
        ("train.steps=10", lambda s: s.train["steps"] == 10),
        ("grid.seed=[4]", lambda s: s.grid.seed == [4]),
        ("resources.max_concurrent=3", lambda s: s.resources.max_concurrent == 3),
    ],
)
def test_set_reaches_every_section(item, check):
    spec, _ = load_spec("paradox", [item])
    assert check(spec)


@pytest.mark.parametrize(
    "item, needles",
    [
        ("resources.per_width.256.gpus_per_tril=0.25", ["gpus_per_tril", "did you mean 'gpus_per_trial'"]),
        ("resources.per_widht.256.gpus_per_trial=0.25", ["per_widht", "did you mean 'per_width'"]),
        ("resources.per_width.big.gpus_per_trial=1", ["per_width", "integers", "'big'"]),
        ("failure.max_retries.x=1", ["failure.max_retries", "not a mapping"]),
        ("failure.max_retires=1", ["max_retires", "did you mean 'max_retries'"]),
        ("checkpoints.kep=last", ["kep", "did you mean 'keep'"]),
    ],
)
def test_an_unknown_nested_key_is_one_line_naming_it(item, needles, capsys):
    assert sweep.main(["--config", "paradox", "--dry-run", "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


# ---- the model ---------------------------------------------------------------------------------
def test_qk_clip_counts_one_more_qk_product_per_layer():
    none, clip = (TrialConfig(width=128, depth=3, seq_len=64, qk_norm=q) for q in ("none", "qk_clip"))
    assert flops_per_token(clip) - flops_per_token(none) == 2 * 3 * 64 * 128
    assert flops_per_token(clip, training=False) == flops_per_token(none, training=False)


def test_softcap_keeps_its_attention_scores_in_memory():
    kw = dict(width=256, depth=3, d_head=64, seq_len=128, batch_size=8, device="cpu")
    none, softcap, clip = (memory(TrialConfig(qk_norm=q, **kw)).activations for q in ("none", "softcap", "qk_clip"))
    scores = 8 * 4 * 128**2  # batch x heads x T x T, one layer
    assert softcap - none == 3 * scores * (4 + 4 + 4)  # fp32: tanh's and softmax's outputs, the probabilities
    assert clip - none == scores * 4  # one layer's scores at a time


def test_gpu_rows_interpolate_and_extrapolate_by_flops_per_token():
    cal = Calibration(load_table(), "h200")
    shape = dict(depth=4, d_head=64, seq_len=512, batch_size=32, device="cuda", compile=True)
    step = {w: cal.trial(TrialConfig(width=w, **shape)).step_s for w in (256, 512, 1024, 2048, 4096)}
    assert step[256] == pytest.approx(16384 / 1.79e6, rel=1e-4)  # the row itself
    assert step[2048] == pytest.approx(16384 / 408e3, rel=1e-4)
    assert step[256] < step[512] < step[1024] < step[2048] < step[4096]
    f = {w: flops_per_token(TrialConfig(width=w, **shape)) for w in (2048, 4096)}
    assert step[4096] / step[2048] == pytest.approx(f[4096] / f[2048])  # beyond the rows: the largest's FLOP/s


def test_gpu_sharing_and_muon_come_from_the_rows():
    cal = Calibration(load_table(), "h200")
    cfg = TrialConfig(width=256, depth=4, d_head=64, seq_len=512, batch_size=32, device="cuda")
    alone, eight = cal.trial(cfg).step_s, cal.trial(cfg, share=0.125).step_s
    assert 8 * 16384 / eight == pytest.approx(3.6e6, rel=0.01)  # 8 trials of 0.125 GPU: 3.6M tok/s together
    assert alone == pytest.approx(16384 / 1.70e6, rel=1e-4)
    muon = cal.trial(cfg.model_copy(update={"optimizer": "muon"}), share=0.125).step_s
    assert muon / eight == pytest.approx(62 / 36, rel=0.01)


def test_an_uncalibrated_gpu_is_scaled_by_peak_and_says_so():
    cal = Calibration(load_table(), "a10g", find_gpu("a10g").bf16_tflops)
    assert cal.scaled_from and "h200" in cal.scaled_from
    cfg = TrialConfig(width=256, depth=4, d_head=64, seq_len=512, batch_size=32, device="cuda")
    ref = Calibration(load_table(), "h200").trial(cfg).step_s
    assert cal.trial(cfg).step_s == pytest.approx(ref * 989 / 125)


# ---- the prediction against recorded sweeps ---------------------------------------------------
@pytest.mark.parametrize("name", sorted(RECORDED["sweeps"]))
def test_the_prediction_is_within_25_percent_of_a_recorded_sweep(name):
    """The bundled CPU sweeps as recorded on the 2-core machine (tests/orchestrator/data), against
    the package's cpu rows (measured on that machine) at its 2 CPUs, scaled as --dry-run scales them
    on the day of the run: by the run's reference step over the table's (orchestrator.spec.speed;
    the machine ran the same steps 1.5x as long on 2026-12-08 as on 2026-12-06/07). Rows
    recalibrated on another machine would not predict these, and should not be committed as the
    package's (write them elsewhere with --out; docs/performance.md)."""
    recorded = RECORDED["sweeps"][name]
    spec, _ = load_spec(recorded.get("spec", name))
    configs = expand(spec)
    assert len(configs) == recorded["trials"]
    table = load_table()
    scale = recorded["reference_step_s"] / table.cpu_reference["step_s"]
    table = table.scaled("cpu", scale)
    timing = plan_mod.predict(configs, spec.resources, device="cpu", gpu=find_gpu("h100"), num_cpus=2, table=table)
    assert timing["concurrency"] == 2
    assert abs(timing["wall_s"] / recorded["wall_s"] - 1) < 0.25, (timing["wall_s"], recorded["wall_s"])
    # and each width's trials, against the trials' own clock (their steps and probes)
    cal = Calibration(table, "cpu")
    for width in {a["width"] for a in recorded["arms"]}:
        arms = [a for a in recorded["arms"] if a["width"] == width]
        actual = sum(a["trial_wall_s"] * a["trials"] for a in arms)
        group = [c for c in configs if c.width == width]
        predicted = sum(cal.trial(c).seconds for c in group)
        assert abs(predicted / actual - 1) < 0.3, (width, predicted, actual)


def test_dry_run_json_is_one_object_on_stdout(capsys):
    assert sweep.main(["--config", "default", "--dry-run", "--json", "--num-cpus", "2"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out)
    for key in ("trials", "tokens", "flops", "gpu_hours", "wall_s", "cpu_core_hours", "device", "calibration"):
        assert key in plan, key
    assert plan["trials"] == 180 and plan["device"] == "cpu" and plan["gpu_hours"] == 0
    assert plan["concurrency"] == 2 and "2 CPUs" in plan["concurrency_assumption"]
    assert plan["cpu_core_hours"] > 0 and plan["wall_s"] > 0
    assert {w["width"] for w in plan["per_width"]} == {64, 128}
    assert plan["calibration"]["rows"] and all(r["source"] for r in plan["calibration"]["rows"])
    assert math.isclose(sum(w["trial_s_total"] for w in plan["per_width"]), plan["trial_s_total"])


def test_dry_run_text_states_hours_time_and_assumption(capsys):
    assert sweep.main(["--config", "default", "--dry-run", "--num-cpus", "2"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "predicted:" in ln)
    assert "CPU core-hours" in line and "wall time" in line and " 0 CPU" not in line
    assert "concurrency: 2 CPUs (--num-cpus)" in out and "rows from: python -m benchmarks.trainer --calibrate" in out


def test_a_gpu_sweep_prints_nonzero_gpu_hours(capsys):
    assert sweep.main(["--config", "paradox", "--dry-run", "--device-kind", "h200", "--set", "grid.seed=[0]"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours" in out and "0.0 GPU-hours" not in out and "issue 19 report, H200, torch 2.11" in out
    assert "time on h200 (H200-141GB)" in out


def test_the_device_kind_must_match_the_trials(capsys):
    assert sweep.main(["--config", "default", "--dry-run", "--device-kind", "h200"]) == 2
    assert "CPU" in capsys.readouterr().err
    assert sweep.main(["--config", "paradox", "--dry-run", "--device-kind", "cpu"]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert sweep.main(["--config", "paradox", "--dry-run", "--device-kind", "tpu"]) == 2
    assert "--device-kind" in capsys.readouterr().err


def test_a_missing_calibration_table_is_one_message(tmp_path):
    with pytest.raises(ConfigError, match="calibration table"):
        load_table(tmp_path / "none.json")
