"""Reading the part files (issue 21): every Parquet read of the report goes through one skip-name-count
path; results paths are literal (no globbing); a part whose trial_id disagrees with its folder is
skipped; `analysis.load` is a plain function and `Report.tables()` is keyed by the files written."""

from __future__ import annotations

import inspect
import shutil

import polars as pl
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import loading
from analysis.features import build_features
from analysis.loading import load_results
from analysis.report import analyse, main, write_report
from benchmarks.synthetic_results import SyntheticSpec, write_results

SMALL = dict(
    optimizers=("adamw",),
    qk_norms=("none", "rms"),
    widths=(64,),
    lrs=(1e-2,),
    seeds=(0, 1, 2),
    steps=100,
    eval_every=25,
    spectra="ends",
    junk_files=False,
)


def small(folder, **kw):
    spec = SyntheticSpec(**{**SMALL, **kw})
    write_results(spec, folder)
    return folder


def trial_folder(sweep, dataset: str, qk_norm: str, seed: int = 0):
    """The folder of the trial the spectra figure draws for an arm (its lowest seed)."""
    (folder,) = [f for f in (sweep / dataset).iterdir() if f"_{qk_norm}_" in f.name and f"_s{seed}_" in f.name]
    return folder


def corrupt_middle(part) -> None:
    """Junk over the first column chunks; the footer (and so the contract check) stays intact."""
    data = bytearray(part.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    end = min(len(data) - footer, 400)
    data[4:end] = b"\xff" * (end - 4)
    part.write_bytes(bytes(data))


def vanish_after_listing(monkeypatch, victims):
    """Delete `victims` right after the footers were checked: the part a compaction removes between
    the listing and the read."""
    check = loading.check_parts

    def check_then_delete(files, expected):
        out = check(files, expected)
        for v in victims:
            if v in files:  # listed and checked: it goes now
                v.unlink()
        return out

    monkeypatch.setattr(loading, "check_parts", check_then_delete)


# ---- item 12: spectra and metrics parts that fail to read -------------------------------------
def test_corrupt_spectra_part_is_skipped_named_and_marks_the_report_partial(tmp_path, capsys):
    sweep = small(tmp_path / "sweep")
    (part,) = sorted(trial_folder(sweep, "spectra", "none").glob("*.parquet"))[-1:]
    corrupt_middle(part)
    r = analyse(sweep, n_boot=200)
    assert [p for p, _ in r.results.skipped] == [str(part)]
    assert r.verdict["partial"] is True
    assert any("skipped" in reason for reason in r.verdict["partial_reasons"])
    assert r.verdict["counts"]["skipped_files"][0][0] == str(part)
    assert main([str(sweep), "--n-boot", "200", "--quiet"]) == 0  # the figure reads what is left
    assert (sweep / "report" / "figures" / "spectra.png").stat().st_size > 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["metrics", "spectra"])
def test_part_removed_between_listing_and_reading_is_skipped_not_a_crash(tmp_path, monkeypatch, dataset):
    sweep = small(tmp_path / "sweep")
    victim = sorted(trial_folder(sweep, dataset, "rms").glob("*.parquet"))[-1]
    vanish_after_listing(monkeypatch, [victim])
    r = analyse(sweep, n_boot=200)
    assert [p for p, _ in r.results.skipped] == [str(victim)]
    assert "FileNotFoundError" in r.results.skipped[0][1] or "No such file" in r.results.skipped[0][1]
    assert r.verdict["partial"] is True


def test_part_removed_while_its_folder_is_listed_is_skipped_not_an_error(tmp_path, monkeypatch):
    """A compaction that deletes a part between the folder's listing and the part's stat."""
    import contextlib
    import os

    sweep = small(tmp_path / "sweep")
    victim = sorted(trial_folder(sweep, "spectra", "none").glob("*.parquet"))[-1]
    scandir = os.scandir

    class Vanishing:  # a directory entry whose file goes as it is looked at
        def __init__(self, entry):
            self.entry, self.name, self.path = entry, entry.name, entry.path

        def is_file(self):
            return self.entry.is_file()

        def is_dir(self):
            return self.entry.is_dir()

        def is_symlink(self):
            return self.entry.is_symlink()

        def stat(self, follow_symlinks=True):
            os.unlink(self.path)
            return os.stat(self.path, follow_symlinks=follow_symlinks)

    @contextlib.contextmanager
    def listing(path):
        with scandir(path) as entries:
            yield [Vanishing(e) if e.path == str(victim) else e for e in entries]

    monkeypatch.setattr(os, "scandir", listing)
    res = load_results(sweep)
    monkeypatch.undo()
    assert [p for p, _ in res.skipped] == [str(victim)] and res.partial_reasons()


def test_spectra_part_removed_while_the_figures_are_drawn_changes_nothing(tmp_path):
    """The spectra figure draws what the analysis read (Results.spectra_of: each drawn trial's
    spectra read once, before the verdict), so a compaction between the analysis and the figure
    neither fails the figure nor makes it disagree with the verdict."""
    sweep = small(tmp_path / "sweep")
    r = analyse(sweep, n_boot=200)
    victim = sorted(trial_folder(sweep, "spectra", "none").glob("*.parquet"))[-1]
    victim.unlink()
    write_report(r, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "spectra.png").stat().st_size > 0
    assert r.results.skipped == [] and not r.partial


def test_results_collect_skips_a_vanished_spectra_part(tmp_path):
    """The API's own read: `Results.collect` goes through the same path as the report."""
    sweep = small(tmp_path / "sweep")
    res = load_results(sweep)
    victim = res.spectra_parts[0].path
    victim.unlink()
    df = res.collect("spectra", lambda lf: lf.filter(pl.col("tensor") == "q"))
    assert df.height > 0 and [p for p, _ in res.skipped] == [str(victim)]
    assert res.partial_reasons()


# ---- item 13: glob characters in the results path ---------------------------------------------
def test_a_folder_named_with_brackets_is_read_literally(tmp_path):
    sweep = small(tmp_path / "res[2]" / "smoke")
    (tmp_path / "res2").mkdir()  # what the glob [2] would match instead
    res = load_results(tmp_path / "res[2]")
    assert res.trials.height == 6 and res.metric_parts
    feats = build_features(res)
    assert feats.curves["trial_id"].n_unique() == 6 and res.skipped == []
    assert main([str(sweep), "--n-boot", "200", "--quiet"]) == 0


def test_a_star_in_the_path_does_not_read_the_neighbouring_sweep(tmp_path):
    small(tmp_path / "a*")
    small(tmp_path / "ab", seeds=(7, 8))
    res = load_results(tmp_path / "a*")
    assert res.trials.height == 6 and not any("_s7_" in t for t in res.trials["trial_id"])
    feats = build_features(res)
    assert set(feats.curves["trial_id"]) == set(res.trials["trial_id"])
    assert feats.metric_rows == res.metrics.select(pl.len()).collect().item()


def test_a_backtick_in_the_path_keeps_summary_md_a_code_span(tmp_path):
    """Issue 21 item 15: summary.md names the results folder in a Markdown code span; a backtick in
    the path used to close it early."""
    sweep = small(tmp_path / "res`x")
    assert main([str(sweep), "--n-boot", "200", "--quiet"]) == 0
    summary = (sweep / "report" / "summary.md").read_text()
    line = next(ln for ln in summary.splitlines() if ln.startswith("- Results folder:"))
    assert line == f"- Results folder: `` {sweep} ``"


# ---- item 14: a part copied into another trial's folder ---------------------------------------
@pytest.mark.parametrize("statistics", [True, False])
def test_part_in_another_trials_folder_is_skipped_and_marks_partial(tmp_path, statistics):
    sweep = small(tmp_path / "sweep")
    source = sorted(trial_folder(sweep, "metrics", "none").glob("*.parquet"))[-1]
    target = trial_folder(sweep, "metrics", "rms") / "part-000000900-000000999.parquet"
    if statistics:
        shutil.copy(source, target)
    else:  # a writer that leaves out column statistics: the check reads the trial_id column instead
        pq.write_table(pq.read_table(source), target, write_statistics=False)
    res = load_results(sweep)
    assert [p for p, _ in res.skipped] == [str(target)]
    reason = res.skipped[0][1]
    assert source.parent.name.removeprefix("trial_id=") in reason and target.parent.name in reason
    assert res.partial_reasons()
    assert all(p.path != target for p in res.metric_parts)


# ---- item 7: analysis.load is a function, tables() keyed by file name -------------------------
def test_analysis_load_is_a_plain_function():
    import analysis.loading  # noqa: F401 - importing the module must not replace the function

    assert inspect.isfunction(analysis.load)
    assert analysis.load.__module__ == "analysis"
    assert analysis.Results is loading.Results and analysis.ResultsError is loading.ResultsError


def test_tables_are_keyed_by_the_files_written(tmp_path):
    sweep = small(tmp_path / "sweep")
    r = analysis.analyse(sweep, n_boot=200)
    out = tmp_path / "out"
    write_report(r, out)
    written = {p.stem for p in (out / "tables").glob("*.csv")} | {p.stem for p in out.glob("*.csv")}
    tables = r.tables()
    assert set(tables) == written
    assert all(isinstance(t, pl.DataFrame) for t in tables.values())
    for name, df in tables.items():
        csv = out / "tables" / f"{name}.csv"
        assert pl.read_csv(csv if csv.exists() else out / f"{name}.csv").height == df.height, name
    # the old keys (the Report's field names) still work
    assert tables["cells"] is r.cells and tables["collapse_arm"] is r.collapse_arm and "lr_curve" in tables
