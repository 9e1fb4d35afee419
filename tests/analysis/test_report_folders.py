"""`python -m analysis.report DIR1 DIR2 ...`: several results folders of one study (the chunks of
`orchestrator.sweep --chunk I/N`) read as one dataset (analysis.loading.combine) give the report of
the undivided sweep; folders that are not one study, a trial in two folders, or several folders
without --out are refused with one line and exit status 2."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from analysis.loading import ResultsError, load_results
from analysis.report import analyse, main
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results
from trainer.schema import METRICS_DIR, SPECTRA_DIR, SWEEP_JSON, TRIALS_FILE

TRAIN = {"depth": 2, "d_head": 32, "steps": 300, "eval_every": 25}


def split(whole, dest, count=2, indices=None, train=TRAIN, corpus_hash="abc123"):
    """The trials of the sweep folder `whole` dealt into chunk folders `dest/study-chunkIofN` (trial k
    to chunk k mod count: every chunk mixes the arms), each with its own trials.parquet, sweep.json
    (as a chunk's: config.train, corpus_hash, chunk) and trials' metrics and spectra folders; the
    folders of `indices` only (default all), in that order."""
    table = pq.read_table(whole / TRIALS_FILE)
    ids = table.column("trial_id").to_pylist()
    base = json.loads((whole / SWEEP_JSON).read_text())
    folders = []
    for i in indices or range(1, count + 1):
        name = f"study-chunk{i}of{count}"
        folder = dest / name
        mine = [t for k, t in enumerate(ids) if k % count == i - 1]
        for dataset in (METRICS_DIR, SPECTRA_DIR):
            for t in mine:
                src = whole / dataset / f"trial_id={t}"
                if src.exists():
                    shutil.copytree(src, folder / dataset / src.name)  # copy2: the parts keep their mtimes
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pc.is_in(table.column("trial_id"), pc.cast(mine, "string"))), folder / TRIALS_FILE)
        sweep = {
            **base,
            "name": name,
            "n_trials": len(mine),
            "config": {"name": name, "train": dict(train)},
            "corpus_hash": corpus_hash,
            "chunk": {"study": "study", "index": i, "count": count, "trials_in_study": len(ids)},
        }
        (folder / SWEEP_JSON).write_text(json.dumps(sweep))
        folders.append(folder)
    return folders


def edit_sweep(folder, **changes):
    sweep = json.loads((folder / SWEEP_JSON).read_text())
    sweep.update(changes)
    (folder / SWEEP_JSON).write_text(json.dumps(sweep))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One synthetic sweep (a planted paradox, a diverged trial, a replayed part) and its two chunks."""
    root = tmp_path_factory.mktemp("folders")
    spec = SyntheticSpec(
        effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.08)},
        n_duplicated=1,
        diverge_if=lambda k: k.optimizer == "adamw" and k.lr == 3e-2 and k.seed == 0,
    )
    write_results(spec, root / "whole")
    edit_sweep(root / "whole", name="study", config={"name": "study", "train": TRAIN}, corpus_hash="abc123")
    return root, split(root / "whole", root / "chunks")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_the_chunks_together_give_the_report_of_the_undivided_sweep(study, tmp_path):
    root, chunks = study
    whole = analyse(root / "whole", n_boot=200)
    both = analyse([str(c) for c in chunks], n_boot=200)
    assert both.results.trials.height == whole.results.trials.height
    assert len(both.results.metric_parts) == len(whole.results.metric_parts)
    assert both.results.folders and [f.path for f in both.results.folders] == chunks
    assert all(p.path.is_relative_to(root / "chunks") for p in both.results.metric_parts)  # each part its own path
    for key in ("claims", "headline", "partial", "partial_reasons", "design", "scope", "primary_metric"):
        assert both.verdict[key] == whole.verdict[key], key
    counts = {k: v for k, v in both.verdict["counts"].items() if k != "planned"}
    assert counts == {k: v for k, v in whole.verdict["counts"].items() if k != "planned"}
    assert both.verdict["counts"]["planned"] == whole.results.trials.height
    assert both.verdict["sweep"] == "study" and both.verdict["results_dir"] == f"{chunks[0]}, {chunks[1]}"
    tables, expected = both.tables(), whole.tables()
    assert list(tables) == list(expected)
    for name, df in expected.items():  # same rows, same order: trial order across folders does not matter
        assert tables[name].equals(df), name

    # the command: one report, written where --out says; the same claims as the undivided sweep's
    out = tmp_path / "report"
    assert main([str(chunks[0]), str(chunks[1]), "--out", str(out), "--n-boot", "200", "--quiet"]) == 0
    written = json.loads((out / "verdict.json").read_text())
    assert written["claims"] == json.loads(json.dumps(whole.verdict["claims"]))
    assert written["sweep"] == "study" and not written["partial"]
    assert not any((c / "report").exists() for c in chunks)


def test_each_folders_partial_reasons_are_named_and_missing_chunks_counted(study, tmp_path):
    root, _ = study
    chunks = split(root / "whole", tmp_path, count=3, indices=[1, 2])
    edit_sweep(chunks[1], finished_at=None, n_trials=99)
    reasons = load_results(chunks).partial_reasons()
    n = load_results(chunks[1]).trials.height
    assert reasons == [
        "study-chunk2of3: sweep.json has no finished_at (the sweep has not finished)",
        f"study-chunk2of3: {n} of 99 planned trials exist",
        "1 of 3 chunks of study are not among the folders read (chunk 3)",
    ]
    # one folder alone reads as it always did: a chunk is a sweep of its own
    assert load_results(chunks[0]).partial_reasons() == [] and load_results(chunks[0]).folders == []


def test_a_trial_in_two_folders_is_refused(study, tmp_path, capsys):
    root, _ = study
    a, b = split(root / "whole", tmp_path)
    moved = next((a / METRICS_DIR).iterdir())  # a trial of chunk 1 copied into chunk 2 as well
    shutil.copytree(moved, b / METRICS_DIR / moved.name)
    assert main([str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    tid = moved.name.removeprefix("trial_id=")
    assert f"trial '{tid}' is in two results folders, {a} and {b}" in err
    assert not (tmp_path / "out").exists()
    # a row of trials.parquet in both is refused the same way
    shutil.rmtree(b / METRICS_DIR / moved.name)
    pq.write_table(pq.read_table(a / TRIALS_FILE), b / TRIALS_FILE)
    with pytest.raises(ResultsError, match=f"is in two results folders, {a} and {b}"):
        load_results([a, b])


def test_folders_of_different_studies_are_refused(study, tmp_path, capsys):
    root, _ = study
    a = split(root / "whole", tmp_path / "steps", indices=[1])[0]
    b = split(root / "whole", tmp_path / "steps", train={**TRAIN, "steps": 600}, indices=[2])[0]
    assert main([str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert f"{b}: train.steps is 600, but {a} has 300: not one study" in err
    c = split(root / "whole", tmp_path / "corpus", corpus_hash="other", indices=[2])[0]
    assert main([str(a), str(c), "--out", str(tmp_path / "out")]) == 2
    assert f"{c}: corpus_hash is 'other', but {a} has 'abc123'" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_several_folders_need_out_and_each_once(study, capsys):
    _, chunks = study
    assert main([str(c) for c in chunks]) == 2
    assert "2 results folders are read as one study: --out DIR is required" in one_line_error(capsys)
    assert not any((c / "report").exists() for c in chunks)
    assert main([str(chunks[0]), str(chunks[0]), "--out", str(chunks[0].parent / "out")]) == 2
    assert f"{chunks[0]}: the same results folder is given twice" in one_line_error(capsys)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_two_real_chunks_reported_together(tmp_path, capsys):
    """A real sweep in two chunks (`--chunk 1/2`, `--chunk 2/2`), then one report over both."""
    from orchestrator import sweep
    from orchestrator.spec.files import SWEEPS_DIR
    from tests.helpers import SMOKE_OVERRIDES, cli_args

    sets = [arg for item in ["steps=12", "warmup=2", *SMOKE_OVERRIDES] for arg in ("--set", item)]
    for i in (1, 2):
        assert sweep.main(cli_args(SWEEPS_DIR / "smoke.yaml", tmp_path, "--chunk", f"{i}/2", *sets)) == 0
    chunks = [tmp_path / f"smoke-chunk{i}of2" for i in (1, 2)]
    capsys.readouterr()
    out = tmp_path / "report"
    assert main([str(c) for c in chunks] + ["--out", str(out), "--n-boot", "100", "--brief"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["sweep"] == "smoke" and verdict["counts"]["trials"] == verdict["counts"]["planned"] == 8
    assert not verdict["partial"], verdict["partial_reasons"]
    assert verdict["results_dir"] == f"{chunks[0]}, {chunks[1]}"
