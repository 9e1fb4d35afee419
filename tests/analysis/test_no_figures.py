"""`python -m analysis.report DIR --no-figures`: the tables, verdict.json and summary.md of the full
report, to the byte, without a figure drawn, named or left behind from an earlier report."""

from __future__ import annotations

import contextlib
import io

import pytest

from analysis.figures import FIGURES
from analysis.report import main
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results

SAME_FILES = ("verdict.json", "paradox.csv", "collapse.csv")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("nofig")
    spec = SyntheticSpec(
        effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.08)},
        widths=(64, 128),
        lrs=(3e-3, 1e-2, 3e-2),
        seeds=(0, 1, 2),
        steps=60,
        spectra="last",
        junk_files=False,
    )
    write_results(spec, root / "s")
    return root / "s"


def run(args: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def reports(sweep, tmp_path_factory):
    """A full report, then --no-figures into the same folder (an earlier report's figures there, and
    a file of the user's and a link to one beside them), and --no-figures into a fresh folder."""
    full = tmp_path_factory.mktemp("full")
    run([str(sweep), "--out", str(full), "--quiet"])
    again = tmp_path_factory.mktemp("again")
    run([str(sweep), "--out", str(again), "--quiet"])
    figures = again / "figures"
    mine = tmp_path_factory.mktemp("mine") / "notes.txt"
    mine.write_text("the user's own file")
    (figures / "notes.txt").write_text("kept")
    (figures / "spectra.svg").symlink_to(mine)  # a figure name that is a link: unlinked, never followed
    printed = run([str(sweep), "--out", str(again), "--no-figures"])
    fresh = tmp_path_factory.mktemp("fresh")
    brief = run([str(sweep), "--out", str(fresh), "--no-figures", "--brief"])
    return dict(full=full, again=again, fresh=fresh, printed=printed, brief=brief, mine=mine)


def test_the_tables_and_verdict_are_the_full_reports_to_the_byte(reports):
    full, fresh = reports["full"], reports["fresh"]
    for name in SAME_FILES:
        assert (fresh / name).read_bytes() == (full / name).read_bytes(), name
    tables = sorted(p.name for p in (full / "tables").iterdir())
    assert tables and sorted(p.name for p in (fresh / "tables").iterdir()) == tables
    for name in tables:
        assert (fresh / "tables" / name).read_bytes() == (full / "tables" / name).read_bytes(), name


def test_no_figure_is_drawn_named_or_left_behind(reports):
    fresh, again = reports["fresh"], reports["again"]
    assert not (fresh / "figures").exists()
    left = sorted(p.name for p in (again / "figures").iterdir())
    assert left == ["notes.txt"], left  # the earlier report's figures removed, the user's file kept
    assert not any((again / "figures" / f"{name}.png").exists() for name in FIGURES)
    assert reports["mine"].read_text() == "the user's own file"  # the link removed, not what it named
    for out in (fresh, again):
        summary = (out / "summary.md").read_text()
        assert "figures/" not in summary and "![" not in summary
        assert "# QK-Norm collapse report" in summary and "## Verdict" in summary
    assert "figures" not in reports["printed"] and "figures" not in reports["brief"]
    assert len(reports["brief"].splitlines()) == 5 and "summary.md" in reports["brief"]


def test_a_figure_that_cannot_be_removed_is_one_line_and_exit_2(sweep, reports, tmp_path, monkeypatch, capsys):
    """The file system refuses (a read-only folder for a user that is not root): one line naming
    the file, exit 2, no traceback, and no report file written."""
    import pathlib
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reports["full"] / "figures", out / "figures")
    refused = out / "figures" / "forest.png"

    def unlink(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    assert main([str(sweep), "--out", str(out), "--no-figures", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(refused) in err[0] and "Permission denied" in err[0], err
    assert not (out / "summary.md").exists() and not (out / "verdict.json").exists()
    assert refused.exists()
