"""Hostile input to orchestrator.sweep and orchestrator.lr_study (the audit of hostile configs): each
is refused with one line naming what is wrong and exit status 2, before Ray starts and without
touching what a results folder already holds.

All run in-process. The tests of an existing results folder run the command without --dry-run (the
folder is read only then); Ray's session is replaced by one that fails the test, so a check that
let the folder through would fail at once rather than run trials.
"""

from __future__ import annotations

import copy
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import orchestrator
from orchestrator import lr_study, sweep
from orchestrator.spec.validation import MAX_TRIALS
from orchestrator.tune import sweep_run
from tests.helpers import BUNDLED_SMOKE, cli_args, write_spec
from trainer.errors import ConfigError, short_repr
from trainer.schema import SWEEP_JSON, TRIALS_FILE, TRIALS_SCHEMA

HUGE = "9" * 5000  # past Python's 4300-digit limit on reading an integer
HUGE_INT = 10**5000 - 1  # the same number, made without reading it (int(HUGE) is refused)


def refused(capsys, main, argv) -> str:
    """stderr of a command that must refuse its input: exit status 2, one line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes: what a refused run must leave as it was."""
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture
def no_ray(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("Ray started: the folder should have been refused before")

    monkeypatch.setattr(sweep_run, "ray_session", started)


# ---- 1. integers past 4300 digits --------------------------------------------------------------


def test_a_huge_integer_in_a_sweep_file_names_its_key(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"seed": "SEEDS"})
    spec.write_text(spec.read_text().replace("SEEDS", f"[0, {HUGE}]"))
    err = refused(capsys, sweep.main, ["--config", str(spec), "--dry-run"])
    assert f"{spec}: grid.seed.1: an integer of 5000 digits" in err


@pytest.mark.parametrize(
    "main, argv, says",
    [
        (sweep.main, ["--set", f"train.steps={HUGE}"], "--set 'train.steps': an integer of 5000 digits"),
        (lr_study.main, ["--config", "lr_smoke", "--set", f"steps={HUGE}"], "--set 'steps': an integer of 5000 digits"),
        (sweep.main, ["--chunk", f"{HUGE}/2"], "--chunk: I and N may have at most 9 digits"),
    ],
    ids=["sweep --set", "lr_study --set", "--chunk"],
)
def test_a_huge_integer_on_the_command_line_is_one_line(main, argv, says, capsys):
    config = [] if "--config" in argv else ["--config", "smoke"]
    assert says in refused(capsys, main, [*config, *argv, "--dry-run"])


def test_short_repr_names_a_huge_integer_by_its_length():
    # str() of an integer past 4300 digits raises: an error message must not
    assert short_repr(HUGE_INT) == "<an integer of 5000 digits>"
    assert short_repr([0, -(10**60)]) == "[0, <an integer of 61 digits>]"
    assert short_repr(12345) == "12345" and short_repr(10**40) == "<an integer of 41 digits>"


@pytest.mark.parametrize("where", ["overrides dict", "spec mapping"])
def test_run_sweep_refuses_a_huge_integer_with_a_config_error(tmp_path, no_ray, where):
    spec, overrides = "smoke", {"train.steps": HUGE_INT}
    if where == "spec mapping":  # the smoke sweep as a mapping, steps past Python's limit
        spec, overrides = copy.deepcopy(BUNDLED_SMOKE), None
        spec["train"]["steps"] = HUGE_INT
    with pytest.raises(ConfigError, match="an integer of 5000 digits") as e:
        orchestrator.run_sweep(spec, results=tmp_path / "r", overrides=overrides)
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()


# ---- 2., 3., 8.: what an existing results folder holds -----------------------------------------


def previous_folder(tmp_path, record: dict) -> tuple:
    """A sweep file and its results folder holding `record` as sweep.json."""
    spec = write_spec(tmp_path, "t")
    folder = tmp_path / "r" / "t"
    folder.mkdir(parents=True)
    (folder / SWEEP_JSON).write_text(json.dumps({"kind": "sweep", "name": "t", **record}))
    return spec, folder


@pytest.mark.parametrize(
    "record, says",
    [
        ({"config": {"name": "t", "train": 5}}, "config.train is malformed (5)"),
        ({"config": {"name": "t", "grid": [1]}}, "config.grid is malformed ([1])"),
        ({"corpus_hash": None}, "corpus_hash is malformed (None"),
        ({"corpus_hash": {}}, "corpus_hash is malformed ({}"),
    ],
    ids=["train 5", "grid list", "corpus_hash null", "corpus_hash {}"],
)
def test_a_malformed_sweep_json_is_refused_and_kept(tmp_path, capsys, no_ray, record, says):
    spec, folder = previous_folder(tmp_path, record)
    before = snapshot(folder)
    err = refused(capsys, sweep.main, [*cli_args(spec, tmp_path / "r"), "--local"])
    assert f"{folder}/{SWEEP_JSON}: {says}" in err
    assert snapshot(folder) == before


def trials_table(width_type: pa.DataType) -> pa.Table:
    """One finished trial's row, its width column of `width_type`."""
    schema = TRIALS_SCHEMA.set(TRIALS_SCHEMA.get_field_index("width"), pa.field("width", width_type))
    row = {name: None for name in schema.names} | {"trial_id": "t1", "status": "completed", "width": "32", "lr": 0.01}
    if width_type != pa.string():
        row["width"] = 32
    return pa.Table.from_pylist([row], schema=schema)


def test_a_trials_parquet_of_another_schema_is_refused_before_ray(tmp_path, capsys, no_ray):
    spec, folder = previous_folder(tmp_path, {})
    pq.write_table(trials_table(pa.string()), folder / TRIALS_FILE)
    before = snapshot(folder)
    err = refused(capsys, sweep.main, [*cli_args(spec, tmp_path / "r"), "--local"])
    assert f"{folder}/{TRIALS_FILE}: column 'width' has type string, the schema says int64" in err
    assert snapshot(folder) == before


def test_a_trials_parquet_as_the_trainer_writes_it_passes_the_schema_check(tmp_path):
    from orchestrator.spec.prepare import check_trials_schema
    from trainer.storage import ResultsDir
    from trainer.trials import write_trials

    results = ResultsDir(tmp_path)
    write_trials(results, trials_table(pa.int64()).to_pylist())
    check_trials_schema(results)  # dictionary-encoded trial_id, int64 width: no error
    pq.write_table(trials_table(pa.int64()), tmp_path / TRIALS_FILE)  # a plain string trial_id (older files)
    check_trials_schema(results)


# ---- 4. the number of trials -------------------------------------------------------------------


def test_a_grid_past_the_limit_is_refused_before_it_is_built(capsys):
    seeds = ",".join(map(str, range(3000)))
    lrs = ",".join(f"{1e-4 * (1 + i / 3000):.8g}" for i in range(3000))
    err = refused(
        capsys,
        sweep.main,
        ["--config", "smoke", "--set", f"grid.seed=[{seeds}]"] + ["--set", f"grid.lr=[{lrs}]", "--dry-run"],
    )
    assert f"lr 3000 x seed 3000 = 36,000,000 trials, more than the limit of {MAX_TRIALS:,}" in err


def test_the_bundled_studies_are_within_the_limit(capsys):
    assert sweep.main(["--config", "paradox", "--dry-run", "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["trials"] <= MAX_TRIALS / 100


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--trials", "1000000000"], "4 arms x 1,000,000,000 (--trials) = 4,000,000,000 trials"),
        (["--set", "search.trials_per_arm=10000000"], "4 arms x 10,000,000 (search.trials_per_arm)"),
    ],
)
def test_lr_study_trials_past_the_limit(capsys, argv, says):
    err = refused(capsys, lr_study.main, ["--config", "lr_smoke", *argv, "--dry-run"])
    assert says in err and f"the limit of {MAX_TRIALS:,}" in err


# ---- 5. results locations an unset variable leaves ---------------------------------------------


@pytest.mark.parametrize(
    "results, says",
    [
        ("s3://", "results: 's3://' names no bucket or host"),
        ("gs:///prefix", "results: 'gs:///prefix' names no bucket or host"),
        ("s3:/bucket", "results: 's3:/bucket' looks like a URI with a slash missing"),
        ("", "results: the folder is empty (got ''"),
    ],
)
@pytest.mark.parametrize("main, config", [(sweep.main, "smoke"), (lr_study.main, "lr_smoke")], ids=["sweep", "lr"])
def test_a_results_location_without_a_place_is_refused(tmp_path, capsys, monkeypatch, main, config, results, says):
    monkeypatch.chdir(tmp_path)
    for dry in ([], ["--dry-run"]):
        assert says in refused(capsys, main, ["--config", config, "--results", results, "--local", *dry])
    assert os.listdir(tmp_path) == []  # no ./s3:/smoke, no ./results


@pytest.mark.parametrize(
    "out, says",
    [("", "out: the folder is empty (got ''"), ("s3://", "out: 's3://' names no bucket or host")],
)
def test_a_trials_out_without_a_place_is_refused(tmp_path, capsys, monkeypatch, out, says):
    """The trainer's own --out (trainer.storage.check_location, shared with the sweep's results)."""
    from trainer import train

    monkeypatch.chdir(tmp_path)
    assert says in refused(capsys, train.main, ["--out", out])
    assert os.listdir(tmp_path) == []


# ---- 6. a null axis ----------------------------------------------------------------------------


def test_a_null_grid_axis_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"width": None})
    assert "width: null" in spec.read_text()
    err = refused(capsys, sweep.main, ["--config", str(spec), "--dry-run"])
    assert f"{spec}: grid.width is null" in err
    assert "grid.seed is null" in refused(
        capsys, sweep.main, ["--config", "smoke", "--set", "grid.seed=null", "--dry-run"]
    )


# ---- 7. lr_study --dry-run checks the storage as a run does ------------------------------------


@pytest.mark.parametrize(
    "url, says",
    [
        ("notaurl", "is not a database URL"),
        ("sqlite:///nonexistent/dir/x.db", "does not exist"),
        ("sqlite://", "has no database file"),
    ],
)
def test_lr_study_dry_run_checks_the_storage(tmp_path, capsys, monkeypatch, url, says):
    monkeypatch.chdir(tmp_path)
    argv = ["--config", "lr_smoke", "--set", f"search.storage={url}", "--dry-run"]
    err = refused(capsys, lr_study.main, argv)
    assert err.startswith("error: search.storage: ") and says in err and repr(url) in err


# ---- 9. messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["[0,1", "[0,,1]", "{a: 1"])
def test_malformed_list_syntax_in_set_says_so(capsys, value):
    err = refused(capsys, sweep.main, ["--config", "smoke", "--set", f"grid.seed={value}", "--dry-run"])
    assert f"--set 'grid.seed': {value!r} is not a valid YAML list or mapping" in err


@pytest.mark.parametrize(
    "item, says",
    [
        ("name=x", "name is not a key --set can change (--set reaches train.KEY, grid.KEY"),
        ("results=/tmp", "results is not a key --set can change"),
        ("callbacks=[]", "callbacks is not a key --set can change"),
        ("grid=null", "grid is a section; set one key in it (grid.KEY=VALUE)"),
        ("resources=null", "resources is a section"),
    ],
)
def test_a_top_level_key_in_set_says_what_set_reaches(capsys, item, says):
    err = refused(capsys, sweep.main, ["--config", "smoke", "--set", item, "--dry-run"])
    assert f"--set {item.split('=')[0]!r}: {says}" in err and "trial setting" not in err


def test_a_folder_or_a_link_loop_as_config(tmp_path, capsys):
    (tmp_path / "adir.yaml").mkdir()
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    err = refused(capsys, sweep.main, ["--config", str(tmp_path / "adir.yaml"), "--dry-run"])
    assert f"config: {str(tmp_path / 'adir.yaml')!r} is a folder, not a spec file" in err
    err = refused(capsys, lr_study.main, ["--config", str(tmp_path / "a.yaml"), "--dry-run"])
    assert f"config: {str(tmp_path / 'a.yaml')!r} cannot be read: Too many levels of symbolic links" in err


def test_device_kind_names_each_kind_once(capsys):
    err = refused(capsys, sweep.main, ["--config", "gpu_study", "--device-kind", "tpu", "--dry-run"])
    kinds = err.split("is not one of ")[1].strip().split(", ")
    assert "a100" in kinds and len(kinds) == len(set(kinds))


@pytest.mark.parametrize(
    "item, says",
    [
        ("grid.lr=abc", "grid.lr.0: Input should be a valid number (got 'abc')"),
        ("grid.lr={from_study: 5}", "grid.lr.from_study: Input should be a valid string (got 5)"),
        ("grid.lr={multipliers: [1]}", "grid.lr.from_study: Field required"),
    ],
)
def test_an_lr_error_names_the_form_it_was_meant_as(capsys, item, says):
    err = refused(capsys, sweep.main, ["--config", "smoke", "--set", item, "--dry-run"])
    assert says in err and "FromStudy" not in err and "list[float]" not in err and ";" not in err
