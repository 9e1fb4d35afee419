"""End-to-end sweeps on the shared local Ray: what a user checks in the results folder."""

from __future__ import annotations

import json

import polars as pl
import pytest

from analysis import report
from analysis.paradox import MIN_PAIRS
from orchestrator import sweep
from orchestrator.spec import expand, load_spec
from orchestrator.spec.files import SWEEPS_DIR
from tests.helpers import cli_args, write_spec
from trainer.provenance import hardware
from trainer.schema import ATTEMPTS_FILE, METRICS_KEY, SPECTRA_KEY, SWEEP_JSON, TRIALS_FILE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def read(folder, name):
    return pl.read_parquet(folder / name)


def dataset(folder, name):
    return pl.read_parquet(folder / name / "**" / "*.parquet", hive_partitioning=True)


def assert_one_row_per_key(folder):
    """Every key once, and (all trials have ended) every trial folder compacted into one part."""
    for name in ("metrics", "spectra"):
        trials = list((folder / name).iterdir())
        assert trials and all(len(list(t.glob("*.parquet"))) == 1 for t in trials), name
    metrics, spectra = dataset(folder, "metrics"), dataset(folder, "spectra")
    assert metrics.height == metrics.unique(list(METRICS_KEY)).height
    assert spectra.height == spectra.unique(list(SPECTRA_KEY)).height
    return metrics, spectra


def test_smoke_sweep_one_completed_row_per_grid_point(tmp_path, capsys):
    """The bundled smoke sweep, all of it (the only test that runs its 60 trials), then its report."""
    code = sweep.main(cli_args(SWEEPS_DIR / "smoke.yaml", tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    folder = tmp_path / "smoke"
    planned = {c.trial_id() for c in expand(load_spec(SWEEPS_DIR / "smoke.yaml")[0])}

    trials = read(folder, TRIALS_FILE)
    assert sorted(trials["trial_id"]) == sorted(planned)  # exactly one row per grid point
    assert set(trials["status"]) == {"completed"}
    assert (trials["steps_done"] == trials["steps_planned"]).all()
    assert trials["final_val_loss"].is_not_null().all() and trials["corpus_hash"].n_unique() == 1

    metrics, spectra = assert_one_row_per_key(folder)
    assert set(metrics["trial_id"]) == planned and set(spectra["trial_id"]) == planned
    assert {"train_loss", "val_loss", "pr", "erank"} <= set(metrics["name"])

    meta = json.loads((folder / SWEEP_JSON).read_text())
    assert meta["name"] == "smoke" and meta["n_trials"] == len(planned)
    assert meta["finished_at"] is not None and meta["started_at"] <= meta["finished_at"]
    assert meta["config"]["grid"]["optimizer"] == ["adamw", "muon"] and meta["versions"]["ray"]

    # Console: one line per event, a progress line, where the results are and the report command.
    assert "progress" in out and out.count("completed ") >= len(planned)
    assert "╭" not in out and "Trial status" not in out  # none of Ray's tables
    assert f"python -m analysis.report {folder}" in out

    # Each attempt names what decides its last digits: one torch thread (cpus_per_trial 1), the
    # kernel level of this machine
    attempts = read(folder, ATTEMPTS_FILE)
    assert set(attempts["torch_threads"]) == {1}
    assert set(attempts["torch_cpu_capability"]) == {hardware()["torch_cpu_capability"]}

    # Idempotent: running it again starts nothing.
    attempts_before = read(folder, ATTEMPTS_FILE).height
    assert sweep.main(cli_args(SWEEPS_DIR / "smoke.yaml", tmp_path)) == 0
    assert "already finished" in capsys.readouterr().out
    assert read(folder, ATTEMPTS_FILE).height == attempts_before
    assert read(folder, TRIALS_FILE).height == len(planned)

    # Issue 21: the first run answers something. Its report decides every comparison (enough pairs
    # at the held-out best LRs for the tests to run), the LR grid brackets every arm's optimum, and the
    # deciding result is drawn and named up front.
    assert report.main([str(folder), "--n-boot", "200", "--brief"]) == 0
    brief = capsys.readouterr().out.splitlines()
    verdict = json.loads((folder / "report" / "verdict.json").read_text())
    for opt in ("adamw", "muon"):
        decided = verdict["comparisons"][opt]["rms"]
        assert decided["state"] != "not_enough_data" and decided["n_pairs"] >= MIN_PAIRS, (opt, decided["state"])
        assert decided["effects"]["final_pr_q_sphere"]["ci_low"] is not None
    assert verdict["interaction"]["best_lr"]["muon"]["rms"]["final_val_loss"]["n_pairs"] >= MIN_PAIRS
    assert not [w for w in verdict["warnings"] if "bracket" in w], verdict["warnings"]
    assert not any("NOT ENOUGH DATA" in line for line in verdict["headline"])
    assert len(brief) == 5 and brief[1].startswith("Answer:") and "NOT ENOUGH DATA" not in brief[1], brief
    assert "[95% CI" in brief[1] and (folder / "report" / "figures" / "forest.png").exists()


def test_divergent_lr_is_marked_and_the_sweep_goes_on(tmp_path):
    config = write_spec(
        tmp_path,
        name="div",
        grid={"optimizer": "adamw", "qk_norm": "none", "lr": [1e-2, 10.0], "seed": 0},
        train={"max_loss": 6.0, "grad_clip": 0},
    )
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    trials = read(tmp_path / "div", TRIALS_FILE).sort("lr")
    assert trials["status"].to_list() == ["completed", "diverged"]
    assert trials["diverged_step"][1] is not None and trials["steps_done"][1] < trials["steps_planned"][1]
    metrics, _ = assert_one_row_per_key(tmp_path / "div")
    assert set(metrics["trial_id"]) == set(trials["trial_id"])


def test_failed_trials_retry_from_their_checkpoint(tmp_path):
    config = write_spec(
        tmp_path,
        name="retry",
        grid={"optimizer": "adamw", "qk_norm": "none", "seed": [0, 1]},
        failure={"max_retries": 1},
    )
    assert sweep.main(cli_args(config, tmp_path, "--inject-failure-at", "10", "--quiet")) == 0
    folder = tmp_path / "retry"
    assert set(read(folder, TRIALS_FILE)["status"]) == {"completed"}
    attempts = read(folder, ATTEMPTS_FILE).sort("started_at")
    for _, group in attempts.group_by("trial_id"):
        assert group["outcome"].to_list() == ["error", "completed"]
        assert "injected failure" in group["error"][0]
        assert group["resumed_step"][1] == 20  # checkpoint_every: 20
    assert_one_row_per_key(folder)


def test_failed_trials_are_filed_and_resume_continues_them(tmp_path, capsys):
    config = write_spec(
        tmp_path,
        name="resume",
        grid={"optimizer": "muon", "qk_norm": ["none", "rms"], "seed": 0},
        failure={"max_retries": 0},
    )
    args = cli_args(config, tmp_path, "--quiet")
    assert sweep.main([*args, "--inject-failure-at", "10"]) == 1
    folder = tmp_path / "resume"
    trials = read(folder, TRIALS_FILE)
    assert set(trials["status"]) == {"failed"}
    assert all("InjectedFailure" in e for e in trials["error"])
    assert all(len(list(t.glob("*.parquet"))) > 1 for t in (folder / "metrics").iterdir())  # not compacted
    assert json.loads((folder / SWEEP_JSON).read_text())["runs"][0]["tune_experiment"]
    capsys.readouterr()

    assert sweep.main([*args, "--resume"]) == 0
    assert "resuming Tune experiment" in capsys.readouterr().out
    trials = read(folder, TRIALS_FILE)
    assert set(trials["status"]) == {"completed"} and trials["error"].is_null().all()
    second = read(folder, ATTEMPTS_FILE).filter(pl.col("outcome") == "completed")
    assert second.height == 2 and (second["resumed_step"] == 20).all()
    assert_one_row_per_key(folder)


def test_resume_refuses_a_changed_grid(tmp_path, capsys):
    config = write_spec(tmp_path, name="changed", grid={"optimizer": "adamw", "qk_norm": "none", "seed": 0})
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    config = write_spec(tmp_path, name="changed", grid={"optimizer": "adamw", "qk_norm": "none", "seed": [0, 1]})
    assert sweep.main(cli_args(config, tmp_path, "--resume")) == 2
    assert "--resume" in capsys.readouterr().err
    # Without --resume the new point runs and the finished one is kept, not rerun.
    assert sweep.main(cli_args(config, tmp_path, "--quiet")) == 0
    trials = read(tmp_path / "changed", TRIALS_FILE)
    assert trials.height == 2 and set(trials["status"]) == {"completed"}
    assert read(tmp_path / "changed", ATTEMPTS_FILE).height == 2
