"""`python -m analysis.report` end to end on synthetic sweeps: every file, readable figures, the
terminal digest, partial sweeps, and folders with too little data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest

from analysis.report import main
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results

FIGURES = ("pr_over_training", "loss_vs_pr", "lr_sensitivity", "collapse_rate_vs_width")
TABLES = (
    "status",
    "paradox",
    "paradox_best_lr",
    "regression",
    "collapse_by_arm",
    "width_scaling",
    "lr_sensitivity",
    "loss_vs_lr",
    "paradox_cells",
    "paradox_layers",
    "interaction",
    "paradox_robustness",
    "lr_bracketing",
)
CONTRACT = ["optimizer", "qk_norm", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A running sweep with a planted paradox, a diverged LR, a replay, a truncated part."""
    root = tmp_path_factory.mktemp("report")
    spec = SyntheticSpec(
        effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.08, rate_mult=1.5)},
        widths=(64, 128, 256),
        rate_width_exp=0.5,
        rate_noise=0.1,
        point_noise=0.003,
        n_running=1,
        n_duplicated=1,
        n_truncated=1,
        diverge_if=lambda k: k.optimizer == "adamw" and k.lr == 3e-2 and k.seed == 0,
    )
    manifest = write_results(spec, root / "sweep")
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(root / "sweep"), "--out", str(out), "--n-boot", "500"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dict(proc=proc, out=out, manifest=manifest)


def test_report_exits_0_and_writes_every_file(report):
    assert report["proc"].returncode == 0, report["proc"].stderr
    out = report["out"]
    for name in ("summary.md", "paradox.csv", "collapse.csv", "verdict.json"):
        assert (out / name).stat().st_size > 0, name
    for t in TABLES:
        assert (out / "tables" / f"{t}.csv").exists() and (out / "tables" / f"{t}.tex").exists(), t
    for f in FIGURES:
        assert (out / "figures" / f"{f}.png").exists(), f


@pytest.mark.parametrize("name", FIGURES)
def test_figures_open_and_show_data(report, name):
    img = mpimg.imread(report["out"] / "figures" / f"{name}.png")
    assert img.shape[0] > 200 and img.shape[1] > 400
    rgb = img[..., :3]
    # coloured pixels: lines and markers, not just black axes on white
    coloured = (rgb.max(-1) - rgb.min(-1)) > 0.3
    assert coloured.mean() > 0.002, "figure has (almost) no coloured marks"


def test_paradox_csv_has_the_contract_columns_first(report):
    with open(report["out"] / "paradox.csv") as f:
        header = next(csv.reader(f))
    assert header[: len(CONTRACT)] == CONTRACT
    df = pl.read_csv(report["out"] / "paradox.csv")
    contract = {"final_val_loss", "final_pr_q", "final_pr_k", "final_pr_wq", "final_pr_wk"}
    stages = {"final_pr_q_sphere", "final_pr_k_sphere", "final_pr_q_pre", "final_pr_k_pre"}
    assert set(df["metric"]) == contract | stages  # the contract's metrics, and the q/k stages added
    assert df.height == 2 * 9  # 2 optimizers x 1 variant x 9 metrics


def test_verdict_json_reads_as_the_data_says(report):
    v = json.loads((report["out"] / "verdict.json").read_text())
    assert v["partial"] is True and any("running" in r for r in v["partial_reasons"])
    assert v["comparisons"]["adamw"]["rms"]["paradox"] is True
    # issue 9: the deciding pairs are at each arm's best LR (1e-2 for adamw), where nothing
    # diverged; the pooled judgement lost the lr 3e-2 pairs to divergence
    assert v["comparisons"]["adamw"]["rms"]["pooled"]["n_excluded_diverged"] > 0
    assert v["comparisons"]["adamw"]["rms"]["n_excluded_diverged"] == 0
    assert v["deciding_selection"] == "best_lr"
    assert v["comparisons"]["adamw"]["rms"]["directions"]["final_pr_q"] == "lower"
    assert v["comparisons"]["muon"]["rms"]["lr_bracketed"] is False  # muon's optimum is the top LR
    assert v["comparisons"]["muon"]["rms"]["paradox"] is False
    assert v["counts"]["duplicate_rows"] == report["manifest"]["duplicate_rows"]
    assert [p for p, _ in v["counts"]["skipped_files"]] == report["manifest"]["truncated"]
    assert v["rules"]["holm_family"]


def test_collapse_csv_holds_trial_and_arm_rows(report):
    df = pl.read_csv(report["out"] / "collapse.csv", infer_schema_length=None)
    assert set(df["level"]) == {"trial", "arm"}
    arm = df.filter((pl.col("level") == "arm") & (pl.col("metric") == "pr") & (pl.col("tensor") == "q"))
    assert arm.height == 2 * 2 * 3 * 3  # optimizer x qk_norm x width x lr: LRs never pooled
    # every cell with 2+ fitted seeds has a (t) interval; fit statuses are counted, none dropped
    assert arm.filter(pl.col("n_fit_ok") >= 2)["rate_per_1k_steps_ci_low"].null_count() == 0
    counted = sum(arm[c] for c in ("n_fit_ok", "n_censored", "n_censored_slow", "n_no_fall", "n_failed"))
    assert (counted == arm["n_trials"]).all()
    # the planted 1.5x faster collapse of adamw/rms: rms over none in the same (width, lr) cell,
    # geometric mean over cells (comparing across widths or LRs would mix in their effects)
    a = arm.filter(pl.col("optimizer") == "adamw").pivot(
        on="qk_norm", index=["width", "lr"], values="rate_per_1k_steps"
    )
    ratio = float(np.exp(np.log(a["rms"] / a["none"]).mean()))
    assert ratio == pytest.approx(1.5, rel=0.1)


def test_terminal_and_summary_show_the_key_tables_and_label_partial(report):
    stdout = report["proc"].stdout
    summary = (report["out"] / "summary.md").read_text()
    for text in (stdout, summary):
        assert "PARTIAL" in text
        assert "WARNING: the LR grid does not bracket muon/none width 64" in text  # issue 9
    # the terminal: each claim's decision; summary.md: the verdict in full and the key tables
    assert ": SUPPORTED." in stdout and ": INCONCLUSIVE." in stdout
    assert "PARADOX SUPPORTED" in summary and "NO EFFECT" in summary
    assert "LR sensitivity" in summary and "final_pr_q" in summary
    assert report["manifest"]["truncated"][0] in stdout
    assert "![PR over training](figures/pr_over_training.png)" in summary


def test_default_out_is_inside_the_results_folder(tmp_path, capsys):
    spec = SyntheticSpec(optimizers=("adamw",), widths=(64,), lrs=(1e-2,), seeds=(0, 1, 2), steps=100)
    write_results(spec, tmp_path / "s")
    assert main([str(tmp_path / "s"), "--quiet", "--n-boot", "200"]) == 0
    assert (tmp_path / "s" / "report" / "verdict.json").exists()
    assert capsys.readouterr().out == ""


def test_standalone_trial_without_pairs_says_not_enough_data(tmp_path, capsys):
    """What `python -m trainer.train --smoke` leaves: one trial, no sweep.json."""
    spec = SyntheticSpec(
        optimizers=("adamw",), qk_norms=("none",), widths=(64,), lrs=(1e-2,), seeds=(0,), steps=100, sweep_json=False
    )
    write_results(spec, tmp_path / "one")
    assert main([str(tmp_path / "one"), "--n-boot", "200"]) == 0
    v = json.loads((tmp_path / "one" / "report" / "verdict.json").read_text())
    assert v["partial"] is False and v["comparisons"] == {}
    assert any("NOT ENOUGH DATA" in line for line in v["headline"])
    for f in FIGURES:
        assert (tmp_path / "one" / "report" / "figures" / f"{f}.png").exists()


def test_sweep_with_nothing_finished_reports_not_enough_data(tmp_path):
    spec = SyntheticSpec(
        optimizers=("adamw",), widths=(64,), lrs=(1e-2,), seeds=(0, 1, 2), steps=100, n_running=6, finished=False
    )
    write_results(spec, tmp_path / "s")
    assert main([str(tmp_path / "s"), "--quiet", "--n-boot", "200"]) == 0
    v = json.loads((tmp_path / "s" / "report" / "verdict.json").read_text())
    assert v["partial"] is True
    assert v["comparisons"]["adamw"]["rms"]["state"] == "not_enough_data"
    df = pl.read_csv(tmp_path / "s" / "report" / "paradox.csv")
    assert (df["n_pairs"] == 0).all()


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main([str(tmp_path), "--n-boot", "5"]) == 2
    assert "--n-boot" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_sweep_that_has_just_started_is_reported_as_partial(tmp_path):
    """trials.parquet without rows, no metrics yet: a report that says so, not a crash."""
    import pyarrow.parquet as pq

    from trainer.schema import TRIALS_SCHEMA

    (tmp_path / "s").mkdir()
    pq.write_table(TRIALS_SCHEMA.empty_table(), tmp_path / "s" / "trials.parquet")
    (tmp_path / "s" / "sweep.json").write_text(
        json.dumps({"name": "s", "n_trials": 8, "started_at": "2025-01-01T00:00:00", "finished_at": None})
    )
    assert main([str(tmp_path / "s"), "--quiet"]) == 0
    v = json.loads((tmp_path / "s" / "report" / "verdict.json").read_text())
    assert v["partial"] is True and "0 of 8 planned trials exist" in v["partial_reasons"]
    for f in FIGURES:
        assert (tmp_path / "s" / "report" / "figures" / f"{f}.png").exists()
