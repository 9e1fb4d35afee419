"""`--chunk I/N`: the chunks of one N partition the grid exactly, are the same on every run, are
balanced and mix the arms; a chunk is planned (`--dry-run`, `--chunks-for`) and runs as a sweep of
its own in <results>/<name>-chunkIofN."""

from __future__ import annotations

import json
import random

import pytest

from orchestrator import sweep
from orchestrator.spec import expand, load_spec
from orchestrator.spec.chunks import parse_chunk, partition
from orchestrator.spec.files import SWEEPS_DIR
from tests.helpers import SMOKE_OVERRIDES, SMOKE_SET, cli_args
from trainer.config import ConfigError
from trainer.schema import SWEEP_JSON, TRIALS_FILE

GPU_STUDY = SWEEPS_DIR / "gpu_study.yaml"


def grid(path=GPU_STUDY, overrides=None):
    return expand(load_spec(path, overrides)[0])


@pytest.mark.parametrize("count", [1, 7, 54, 324])
def test_chunks_partition_the_grid_exactly_and_stably(count):
    configs = grid()
    chunks = partition(configs, count)
    ids = [{c.trial_id() for c in chunk} for chunk in chunks]
    assert len(chunks) == count and all(ids)
    assert sum(len(s) for s in ids) == len(configs) == len(set().union(*ids))  # disjoint, union = grid
    assert max(map(len, ids)) - min(map(len, ids)) <= 1
    shuffled = configs[:]
    random.Random(0).shuffle(shuffled)  # the grid's order does not decide the chunks
    assert [{c.trial_id() for c in chunk} for chunk in partition(shuffled, count)] == ids
    assert [{c.trial_id() for c in chunk} for chunk in partition(configs, count)] == ids


def test_every_chunk_mixes_arms_and_cost_classes():
    for chunk in partition(grid(), 54):
        assert {c.width for c in chunk} == {256, 512, 1024}
        assert {c.optimizer for c in chunk} == {"adamw", "muon"}
        assert {c.qk_norm for c in chunk} == {"none", "rms", "rms_frozen"}


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"])
def test_a_bad_chunk_is_one_message(text, capsys):
    with pytest.raises(ConfigError, match="--chunk"):
        parse_chunk(text)
    assert sweep.main(["--config", "smoke", "--dry-run", f"--chunk={text}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --chunk") and err.count("\n") == 1
    assert parse_chunk(" 2 / 5 ").suffix == "chunk2of5"


def test_more_chunks_than_trials_is_refused(capsys):
    assert sweep.main(["--config", "smoke", "--dry-run", "--chunk", "1/9", *SMOKE_SET]) == 2  # the 8 of the tests
    assert "only 8 trials" in capsys.readouterr().err


def test_the_dry_run_of_a_chunk_is_that_chunks_plan(capsys):
    argv = ["--config", "gpu_study", "--dry-run", "--device-kind", "h200", "--json"]
    assert sweep.main([*argv, "--chunk", "3/54"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["chunk"] == {
        "study": "gpu_study",
        "index": 3,
        "count": 54,
        "trials_in_study": 324,
        "rule": plan["chunk"]["rule"],
    }
    assert plan["trials"] == 6 and "gpu_study-chunk3of54" in plan["plan"]
    assert 60 < plan["wall_s"] < 8 * 60  # a chunk of the bundled study fits a short lease of one H200
    assert sweep.main(argv) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["trials"] == 324 and whole["wall_s"] > 20 * plan["wall_s"]


def test_chunks_for_gives_the_fewest_chunks_that_fit(capsys):
    argv = ["--config", "gpu_study", "--device-kind", "h200", "--json"]
    assert sweep.main([*argv, "--chunks-for", "6"]) == 0
    sized = json.loads(capsys.readouterr().out)
    assert sized["chunks"] == len(sized["per_chunk"]) and sum(c["trials"] for c in sized["per_chunk"]) == 324
    assert all(c["wall_s"] <= 6 * 60 for c in sized["per_chunk"])
    assert f"--chunk I/{sized['chunks']}" in sized["command"]
    assert sweep.main(["--config", "gpu_study", "--device-kind", "h200", "--chunks-for", "6"]) == 0
    text = capsys.readouterr().out
    assert f"324 trials in {sized['chunks']} chunks of at most 6:00" in text and "heaviest" in text
    assert sweep.main([*argv, "--chunks-for", "0"]) == 2
    assert "--chunks-for" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_chunk_runs_as_a_sweep_of_its_own(tmp_path, capsys):
    import polars as pl

    smoke = SWEEPS_DIR / "smoke.yaml"
    short = ["steps=12", "warmup=2", *SMOKE_OVERRIDES]  # the tests' 8 trials of the smoke sweep
    wanted = {c.trial_id() for c in partition(grid(smoke, short), 3)[1]}
    sets = [arg for item in short for arg in ("--set", item)]
    assert sweep.main(cli_args(smoke, tmp_path, "--chunk", "2/3", *sets)) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "smoke-chunk2of3"
    assert "chunk 2 of 3 of sweep smoke (8 trials in all)" in out
    trials = pl.read_parquet(folder / TRIALS_FILE)
    assert set(trials["trial_id"]) == wanted and len(wanted) == 3 and set(trials["status"]) == {"completed"}
    meta = json.loads((folder / SWEEP_JSON).read_text())
    assert meta["chunk"]["index"] == 2 and meta["chunk"]["count"] == 3 and meta["chunk"]["study"] == "smoke"
    assert meta["name"] == "smoke-chunk2of3" and set(meta["trial_ids"]) == {t for t in trials["trial_id"]}
    assert not (tmp_path / "smoke").exists()
    # resumable and idempotent: run again (with --resume), nothing is run twice
    again = cli_args(smoke, tmp_path, "--chunk", "2/3", *sets, "--resume")
    assert sweep.main(again) == 0
    assert "all 3 trials already finished" in capsys.readouterr().out
