"""analysis.figures.render: the figures laid out, rendered and written in forked children while the
report draws the next one give the same bytes as drawn one after another in the process, and a
child's failure is the report's own one-line error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from analysis import figures
from analysis.figures import FIGURES, draw_all, render
from analysis.report import analyse, main
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results

SPEC = dict(
    widths=(64, 128),
    lrs=(3e-3, 1e-2),
    seeds=(0, 1, 2),
    steps=100,
    eval_every=25,
    spectra="ends",
    effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.1)},
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render") / "sweep"
    write_results(SyntheticSpec(**SPEC), folder)
    return folder


def figure_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def counted_forks(monkeypatch) -> list[int]:
    """The pids of the children render forks from now on (render.os.fork counted)."""
    forks = []
    fork = os.fork

    def counted_fork():
        pid = fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(render.os, "fork", counted_fork)
    return forks


def test_forked_figures_are_the_bytes_drawn_in_the_process(sweep, tmp_path, monkeypatch):
    r = analyse(sweep, cache=False)
    monkeypatch.setattr(render, "cpus", lambda: 2)
    forks = counted_forks(monkeypatch)
    draw_all(r, tmp_path / "forked")
    assert len(forks) == len(FIGURES)  # every figure was finished in a child
    monkeypatch.setattr(render, "cpus", lambda: 1)  # one CPU: no child
    draw_all(r, tmp_path / "here")
    assert len(forks) == len(FIGURES)
    forked, here = figure_bytes(tmp_path / "forked"), figure_bytes(tmp_path / "here")
    assert sorted(forked) == sorted(f"{name}.png" for name in FIGURES)
    assert forked == here
    for pid in forks:  # every child was waited for: none is left behind
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_a_figure_that_fails_in_its_child_is_the_reports_one_line_error(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(render, "cpus", lambda: 2)
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    target = tmp_path / "bashrc"
    target.write_text("original\n")
    (out / "figures" / "spectra.png").symlink_to(target)  # planted: the child writing it must refuse
    assert main([str(sweep), "--out", str(out), "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "spectra.png" in err and "symlink" in err
    assert target.read_text() == "original\n"
    assert (out / "figures" / "forest.png").is_file()  # the other figures were written
    assert not (out / "summary.md").exists()  # the report stopped at the failure


def test_a_child_that_dies_is_reported_not_ignored(tmp_path):
    forked = render.Forked(2)

    def die(_fig):
        os.kill(os.getpid(), 9)

    forked.submit(object(), die, lambda _fig: None)
    with pytest.raises(RuntimeError, match="status -9"):
        forked.close()


def test_a_childs_failure_comes_back_as_the_report_handles_it():
    """Through the pipe as JSON (nothing unpickled): a full disk stays an OSError with its errno (the
    report's one-line environment error), a refused symlink a ConfigError, anything else named."""
    import errno

    from trainer.errors import ConfigError
    from trainer.safeio import UnsafePath, environment_problem

    full = render._rebuilt(render._described(OSError(errno.ENOSPC, "No space left on device", "/r/figures/a.png")))
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC and full.filename == "/r/figures/a.png"
    assert environment_problem(full) == "No space left on device"
    refused = render._rebuilt(render._described(UnsafePath("/r/figures/spectra.png is a symlink")))
    assert isinstance(refused, ConfigError) and "spectra.png" in str(refused)
    other = render._rebuilt(render._described(ZeroDivisionError("division by zero")))
    assert isinstance(other, RuntimeError) and str(other) == "ZeroDivisionError: division by zero"
    assert render._rebuilt(b"not json") is None


def test_the_report_waits_only_for_its_own_children(sweep, tmp_path, monkeypatch):
    """A program that runs the report beside a process of its own still gets that process's exit
    status: the figures' children are waited for by pid, never with a wait for any child."""
    import subprocess
    import sys
    import time

    r = analyse(sweep, cache=False)
    monkeypatch.setattr(render, "cpus", lambda: 2)
    mine = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not os.path.exists(f"/proc/{mine.pid}/stat"):
        time.sleep(0.05)
    while time.monotonic() < deadline and open(f"/proc/{mine.pid}/stat").read().split()[2] != "Z":
        time.sleep(0.05)  # until it has exited (a zombie: its status not yet taken)
    draw_all(r, tmp_path / "figures")
    assert mine.wait(timeout=30) == 3


def test_the_command_renders_the_early_figures_while_the_fits_run(sweep, tmp_path, monkeypatch):
    """`python -m analysis.report` hands the figures that need no fits (EARLY) to children before the
    collapse fits start, and its figures are the bytes draw_all gives for the same report."""
    import analysis.report as report

    monkeypatch.setattr(render, "cpus", lambda: 2)
    forks, at_fits = counted_forks(monkeypatch), []
    fits = report.collapse_per_trial

    def timed_fits(*args, **kwargs):
        at_fits.append(len(forks))
        return fits(*args, **kwargs)

    monkeypatch.setattr(report, "collapse_per_trial", timed_fits)
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--quiet", "--no-cache"]) == 0
    assert at_fits == [len(figures.EARLY)]  # every early figure was with its child when the fits began
    assert len(forks) == len(FIGURES)
    r = analyse(sweep, cache=False)
    draw_all(r, tmp_path / "all")
    assert figure_bytes(out / "figures") == figure_bytes(tmp_path / "all")
    assert (out / "summary.md").is_file()


def test_the_early_hook_sees_what_the_report_says(sweep):
    seen = []
    r = analyse(sweep, cache=False, early=seen.append)
    (e,) = seen
    assert e.partial == r.partial and e.partial_reasons == r.verdict["partial_reasons"]
    for name in ("finals", "best_lrs", "lr_curve"):
        assert getattr(e, name).equals(getattr(r, name)), name
    assert e.features is r.features and e.results is r.results


def test_an_early_figure_that_fails_stops_the_report_before_summary(sweep, tmp_path, monkeypatch, capsys):
    """As a late figure's failure (above): its child ran while the fits did; the report waits for it."""
    name = "pr_by_lr_q"
    assert name in figures.EARLY
    monkeypatch.setattr(render, "cpus", lambda: 2)
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    target = tmp_path / "bashrc"
    target.write_text("original\n")
    (out / "figures" / f"{name}.png").symlink_to(target)
    assert main([str(sweep), "--out", str(out), "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"{name}.png" in err, err
    assert target.read_text() == "original\n"
    assert not (out / "summary.md").exists()


def test_a_child_renders_at_a_lower_priority(tmp_path):
    """The report's own work (the next figure, the fits) goes first: children are niced."""
    forked = render.Forked(2)
    said = tmp_path / "nice"
    forked.submit(object(), lambda _fig: said.write_text(str(os.nice(0))), lambda _fig: None)
    forked.close()
    assert int(said.read_text()) == min(19, os.nice(0) + render.CHILD_NICE)


def test_the_spectra_find_the_pr_minimum_the_fits_find(sweep):
    """The spectra figure is drawn before the fits: its PR-minimum step, found for the drawn trials
    alone (collapse.min_steps), is the collapse fits' min_step for every trial and tensor."""
    import polars as pl

    from analysis.collapse import min_steps
    from analysis.figures import rank_tensors

    r = analyse(sweep, cache=False)
    tensors = rank_tensors(r.features.curves)
    ids = r.finals.get_column("trial_id").to_list()
    found = min_steps(r.features.curves, ids[::2], tensors)  # every other trial: a subset, as the figure asks
    fits = r.collapse_trial.filter((pl.col("metric") == "pr") & pl.col("tensor").is_in(list(tensors)))
    expected = {
        (t, x): m for t, x, m in fits.select("trial_id", "tensor", "min_step").iter_rows() if t in set(ids[::2])
    }
    assert found and found.keys() == expected.keys()
    assert all(found[k] == expected[k] for k in found)
    assert min_steps(r.features.curves, [], tensors) == {}
