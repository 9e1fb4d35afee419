"""The command lines of orchestrator.sweep, orchestrator.lr_study and trainer.train (issue 21, item 4):
the shared options (one parent parser), defaults in --help, suggestions for mistyped flags, the
command a spec file of the other kind needs, and lr_study's --set, --resume and --progress-every.

All but the last test run in-process without Ray.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import optuna
import pytest

from analysis import report
from orchestrator import cli, lr_study, sweep
from orchestrator.spec import load_lr_spec, load_spec
from orchestrator.spec.files import REPO_ROOT, SWEEPS_DIR, check_kind
from orchestrator.tune.study_run import check_resume_arms, last_targets, trial_budget
from orchestrator.tune.study_storage import study_finished
from tests.helpers import cli_args
from trainer import train
from trainer.cli import ArgumentParser
from trainer.config import ConfigError
from trainer.schema import LR_BEST_FILE, SWEEP_JSON

SHARED = ("--config", "--set", "--results", "--resume", "--progress-every")
PARSERS = {"sweep": sweep.build_parser, "lr_study": lr_study.build_parser, "train": train.build_parser}


def option(p: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return p._option_string_actions[flag]


def one_line_exit(capsys, main, argv) -> str:
    """stderr of a command that must exit 2 with one line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # as every refusal
    return err


# ---- lr_study: --set, --resume, --progress-every ----------------------------------------------


def test_lr_study_takes_set_resume_and_progress_every():
    options, dry_run = lr_study.parse_args(
        ["--config", "lr_smoke", "--set", "search.trials_per_arm=2", "--set", "steps=20", "--resume"]
        + ["--progress-every", "5", "--results", "/tmp/r"]
    )
    assert options.overrides == ("search.trials_per_arm=2", "steps=20") and options.resume and not dry_run
    assert options.progress_every == 5.0
    assert options.again == "python -m orchestrator.lr_study --config lr_smoke --set search.trials_per_arm=2 " + (
        "--set steps=20 --progress-every 5 --results /tmp/r --resume"
    )
    default, _ = lr_study.parse_args([])
    assert default.overrides == () and not default.resume and default.progress_every == 30.0


def test_lr_study_again_drops_trials_which_resume_refuses(capsys):
    options, _ = lr_study.parse_args(["--config", "lr_smoke", "--trials", "3", "--results", "/tmp/r"])
    assert options.again == "python -m orchestrator.lr_study --config lr_smoke --results /tmp/r --resume"
    options, _ = lr_study.parse_args(["--trials=3", "--config", "lr_smoke"])
    assert options.again == "python -m orchestrator.lr_study --config lr_smoke --resume"
    err = one_line_exit(capsys, lr_study.main, ["--resume", "--trials", "3"])
    assert "leave out --trials" in err


@pytest.mark.parametrize("main", [sweep.main, lr_study.main], ids=["sweep", "lr_study"])
def test_progress_every_refuses_a_negative_number(main, capsys):
    err = one_line_exit(capsys, main, ["--progress-every", "-1", "--dry-run"])  # --dry-run: never a run
    assert "--progress-every must be 0 or more seconds, got -1.0" in err


def test_lr_study_set_overrides_every_section_of_the_study_file():
    spec, _ = load_lr_spec(
        "lr_smoke",
        ["search.trials_per_arm=2", "arms.width=[32,64]", "qk_norm=[rms]", "steps=20", "failure.max_retries=0"],
    )
    assert spec.search.trials_per_arm == 2 and spec.arms.width == [32, 64] and spec.arms.qk_norm == ["rms"]
    assert spec.train["steps"] == 20 and spec.failure.max_retries == 0


@pytest.mark.parametrize(
    "item, needles",
    [
        ("search.trial_per_arm=2", ["unknown key 'trial_per_arm' in search", "did you mean 'trials_per_arm'"]),
        ("grid.seed=[0,1]", ["expected train.KEY, arms.KEY, search.KEY", "or a train setting"]),
        ("lr=0.01", ["an LR study searches the LR", "search.lr_min"]),
    ],
)
def test_a_bad_set_on_a_study_is_one_line_naming_the_key(item, needles, capsys):
    assert lr_study.main(["--config", "lr_smoke", "--set", item, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set ") and err.count("\n") == 1
    assert all(n in err for n in needles), err


def test_lr_study_dry_run_plans_the_overridden_study(capsys, tmp_path):
    argv = cli_args("lr_smoke", tmp_path, "--set", "arms.width=[32,64]", "--set", "search.trials_per_arm=2")
    assert lr_study.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 arm(s) x 2 trials" in out and "total: 16 trials" in out
    assert not list(tmp_path.iterdir())  # a plan writes nothing


# ---- lr_study --resume: the budget an interrupted run left ---------------------------------------


def test_trial_budget_without_resume_adds_a_full_budget_to_every_arm():
    spec, _ = load_lr_spec("lr_smoke")
    options, _ = lr_study.parse_args([])
    budget, targets, note = trial_budget(options, spec, {"a": 3, "b": 0}, {"runs": [{"targets": {"a": 9, "b": 9}}]})
    assert budget == {"a": 4, "b": 4} and targets == {"a": 7, "b": 4} and note is None
    options, _ = lr_study.parse_args(["--trials", "2"])
    assert trial_budget(options, spec, {"a": 3}, None)[:2] == ({"a": 2}, {"a": 5})


def test_trial_budget_with_resume_runs_what_the_last_run_left():
    spec, _ = load_lr_spec("lr_smoke")
    options, _ = lr_study.parse_args(["--resume"])
    previous = {"runs": [{"targets": {"a": 1}}, {"targets": {"a": 8, "b": 8}}]}  # the last run counts
    budget, targets, note = trial_budget(options, spec, {"a": 8, "b": 5}, previous)
    assert budget == {"a": 0, "b": 3} and targets == {"a": 8, "b": 8} and note is None
    budget, _, note = trial_budget(options, spec, {"a": 0}, None)  # nothing on record: a full budget, said
    assert budget == {"a": 4} and "no earlier run on record" in note
    assert trial_budget(options, spec, {"a": 0}, {"runs": [{"started_at": "x"}]})[0] == {"a": 4}  # an older run


def test_resume_refuses_other_arms_and_a_malformed_record():
    check_resume_arms({"a": 4, "b": 4}, {"a": 0, "b": 0}, "f.yaml", type("R", (), {"uri": "/r"}))
    check_resume_arms(None, {"a": 0}, "f.yaml", type("R", (), {"uri": "/r"}))
    with pytest.raises(ConfigError, match=r"--resume: the arms of f.yaml .*left out: b; new: c.*without --resume"):
        check_resume_arms({"a": 4, "b": 4}, {"a": 0, "c": 0}, "f.yaml", type("R", (), {"uri": "/r"}))
    with pytest.raises(ConfigError, match="targets is malformed"):
        last_targets({"runs": [{"targets": {"a": "8"}}]})


def test_study_finished_counts_completed_and_pruned_trials(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study_finished(storage, "arm") == 0
    study = optuna.create_study(study_name="arm", storage=storage)
    for state in ("COMPLETE", "COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        trial = study.ask()
        if state != "RUNNING":
            study.tell(trial, 1.0 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    assert study_finished(storage, "arm") == 3


# ---- one parent parser: the same options, the same help ----------------------------------------


def test_sweep_and_lr_study_share_the_spec_options_with_the_same_help():
    ps, pl = sweep.build_parser(), lr_study.build_parser()
    for flag in SHARED:
        a, b = option(ps, flag), option(pl, flag)
        assert (a.dest, a.default, a.type, a.metavar, a.nargs) == (b.dest, b.default, b.type, b.metavar, b.nargs)
        if flag != "--config":  # --config names each command's kind of file, bundled names and default
            assert a.help == b.help, flag
    assert option(ps, "--config").metavar == "NAME"
    assert "(default: default)" in option(ps, "--config").help and "(default: lr)" in option(pl, "--config").help
    every_flag = set(ps._option_string_actions) & set(pl._option_string_actions)
    for flag in every_flag:  # --address, --dry-run, --gpu, ...: one text too
        assert option(ps, flag).help == option(pl, flag).help or flag == "--config", flag


@pytest.mark.parametrize("name", PARSERS)
def test_help_shows_every_default(name):
    p = PARSERS[name]()
    assert isinstance(p, ArgumentParser)
    formatter = p._get_formatter()
    for action in p._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action)
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in text, (name, action.option_strings, text)
    text = p.format_help()
    if name != "train":
        assert "--progress-every S" in text and "(default: 30.0)" in text


def test_progress_every_default_is_in_the_help_of_sweep_and_lr_study(capsys):
    for main in (sweep.main, lr_study.main):
        with pytest.raises(SystemExit) as exit_:
            main(["--help"])
        assert exit_.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "seconds between progress lines (one also follows each trial) (default: 30.0)" in out


# ---- a mistyped flag -------------------------------------------------------------------------------


def test_a_mistyped_flag_names_the_closest_one(capsys):
    err = one_line_exit(capsys, sweep.main, ["--dry-rn"])
    assert err == "error: unrecognized argument --dry-rn (did you mean --dry-run?)\n"
    err = one_line_exit(capsys, lr_study.main, ["--trails", "3", "--progres-every=5"])
    assert err.endswith(
        "error: unrecognized arguments: --trails (did you mean --trials?) 3 "
        "--progres-every=5 (did you mean --progress-every?)\n"
    )
    err = one_line_exit(capsys, train.main, ["--out", "/tmp/never", "--fersh"])
    assert err == "error: unrecognized argument --fersh (did you mean --fresh?)\n"


def test_the_reports_flags_are_answered_as_every_commands(capsys, tmp_path):
    """analysis.report uses the same parser: one line, exit 2, the flag meant (it printed argparse's
    usage block and no suggestion)."""
    err = one_line_exit(capsys, report.main, [str(tmp_path), "--no-cahce"])
    assert err == "error: unrecognized argument --no-cahce (did you mean --no-cache?)\n"
    err = one_line_exit(capsys, report.main, [str(tmp_path), "--figure-format", "jpg"])
    assert err.startswith("error: argument --figure-format: invalid choice: 'jpg'")


def test_a_bare_spec_name_is_answered_with_config(capsys):
    """`python -m orchestrator.sweep smoke`, as a new user types it: the flag that takes it."""
    err = one_line_exit(capsys, sweep.main, ["smoke"])
    assert err == "error: unrecognized argument smoke (did you mean --config smoke?)\n"
    err = one_line_exit(capsys, lr_study.main, ["sweeps/lr_study.yaml"])
    assert err == "error: unrecognized argument sweeps/lr_study.yaml (did you mean --config sweeps/lr_study.yaml?)\n"
    err = one_line_exit(capsys, train.main, ["--out", "/tmp/never", "trial.yaml"])
    assert err == "error: unrecognized argument trial.yaml (did you mean --config trial.yaml?)\n"


def test_no_suggestion_when_nothing_is_close_or_the_flag_is_hidden(capsys):
    assert one_line_exit(capsys, sweep.main, ["--zzz"]).endswith("error: unrecognized argument --zzz\n")
    err = one_line_exit(capsys, sweep.main, ["--inject-fail-at", "3"])  # a hidden test option is never offered
    assert err.endswith("error: unrecognized arguments: --inject-fail-at 3\n")


def test_other_argparse_errors_are_one_line_too(capsys):
    err = one_line_exit(capsys, sweep.main, ["--num-cpus", "0"])
    assert err == "error: --num-cpus must be at least 1, got 0\n"
    err = one_line_exit(capsys, train.main, [])
    assert "the following arguments are required: --out" in err


def test_a_mistyped_flag_from_python_m_exits_2(subprocess_env, python):
    done = subprocess.run(
        [python, "-m", "orchestrator.sweep", "--dry-rn"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=subprocess_env,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: unrecognized argument --dry-rn (did you mean --dry-run?)"]


def test_cli_reexports_the_trainers_parser():
    assert cli.ArgumentParser is ArgumentParser
    assert isinstance(cli.spec_arguments(kind="sweep", bundled="x", default="x"), ArgumentParser)


# ---- a spec file of the other kind ------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_an_lr_study_file_given_to_sweep_names_lr_study(dry_run, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert sweep.main(["--config", "sweeps/lr.yaml", *dry_run]) == 2
    assert capsys.readouterr().err == (
        "error: sweeps/lr.yaml is an LR-study file (it has `arms:`/`search:`); "
        "run it with python -m orchestrator.lr_study --config sweeps/lr.yaml\n"
    )
    assert sweep.main(["--config", "lr_smoke", *dry_run]) == 2  # a bundled name too
    assert "run it with python -m orchestrator.lr_study --config lr_smoke\n" in capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_a_sweep_file_given_to_lr_study_names_sweep(dry_run, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert lr_study.main(["--config", "sweeps/smoke.yaml", *dry_run]) == 2
    assert capsys.readouterr().err == (
        "error: sweeps/smoke.yaml is a sweep file (it has `grid:`); "
        "run it with python -m orchestrator.sweep --config sweeps/smoke.yaml\n"
    )


def test_the_kind_check_leaves_mixed_and_right_files_to_validation(tmp_path):
    check_kind({"name": "x", "grid": {}, "arms": {}}, "sweep", "f")  # both: validation names the stray key
    check_kind({"name": "x", "grid": {}}, "sweep", "f")
    check_kind({"name": "x"}, "lr_study", "f")  # an LR-study file may leave arms and search to their defaults
    check_kind(["not", "a", "mapping"], "sweep", "f")
    with pytest.raises(ConfigError, match=r"^f is an LR-study file \(it has `search:`\)"):
        check_kind({"name": "x", "search": {}}, "sweep", "f")
    assert load_spec(SWEEPS_DIR / "smoke.yaml")[0].name == "smoke"
    assert load_lr_spec(SWEEPS_DIR / "lr_smoke.yaml")[0].name == "lr_smoke"


# ---- lr_study --resume and --progress-every, end to end ----------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_lr_study_resume_runs_only_what_the_last_run_left(tmp_path, capsys):
    args = cli_args("lr_smoke", tmp_path, "--set", "search.trials_per_arm=1", "--set", "qk_norm=[none]")
    assert lr_study.main([*args, "--quiet"]) == 0
    folder = tmp_path / "lr_smoke"
    storage = f"sqlite:///{folder / 'studies' / 'optuna.db'}"
    sizes = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert sizes == {"adamw_none_w32": 1, "muon_none_w32": 1}
    record = json.loads((folder / SWEEP_JSON).read_text())
    assert record["runs"][-1]["targets"] == {"adamw_none_w32": 1, "muon_none_w32": 1}
    # As if that run had been interrupted one trial short in one arm:
    record["runs"][-1]["targets"]["muon_none_w32"] = 2
    record["finished_at"] = None
    (folder / SWEEP_JSON).write_text(json.dumps(record))
    capsys.readouterr()
    assert lr_study.main([*args, "--resume", "--progress-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "resuming: 1 trial(s) left of the last run's budget over 2 arms" in out
    assert "progress" in out  # --progress-every 0: a progress line at every event
    sizes = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert sizes == {"adamw_none_w32": 1, "muon_none_w32": 2}
    # Nothing left: --resume runs nothing and rewrites lr_best.parquet.
    (folder / LR_BEST_FILE).unlink()
    assert lr_study.main([*args, "--resume"]) == 0
    assert "nothing to run" in capsys.readouterr().out and (folder / LR_BEST_FILE).exists()
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == sizes


@pytest.mark.parametrize("module", ["report", "sweep", "trainer", "calibrate", "gpu"])
def test_the_benchmarks_answer_a_mistyped_flag_in_one_line(module, capsys):
    """The benchmark commands use the commands' parser: one line naming the closest flag, exit 2."""
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as e:
        main(["--hepl"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "--hepl (did you mean --help?)" in err
