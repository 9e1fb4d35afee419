"""Issue 21, items 3 and 2b: the report opens with five lines (the question, the answer with its
interval, the scope, what to do, where the details are) in summary.md and on the terminal, and
`python -m analysis.report DIR --brief` prints only them."""

from __future__ import annotations

import json

import pytest

from analysis.brief import LABELS, brief_lines, plain
from analysis.report import main
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """AdamW with a planted paradox (rms lowers the loss and the PR), Muon without an effect."""
    root = tmp_path_factory.mktemp("brief")
    spec = SyntheticSpec(
        effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.08)},
        widths=(64,),
        lrs=(3e-3, 1e-2, 3e-2, 1e-1),
        seeds=(0, 1, 2, 3),
        steps=60,
        spectra="last",
        junk_files=False,
    )
    write_results(spec, root / "s")
    return root / "s"


@pytest.fixture(scope="module")
def ran(sweep, tmp_path_factory):
    """The full terminal output, summary.md and verdict.json of one report run."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("out")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(sweep), "--out", str(out), "--n-boot", "200"]) == 0
    return dict(
        stdout=buf.getvalue(),
        summary=(out / "summary.md").read_text(),
        verdict=json.loads((out / "verdict.json").read_text()),
        out=out,
    )


def test_summary_md_opens_with_the_five_lines(ran):
    first = ran["summary"].splitlines()[:5]
    assert [line.split(":**", 1)[0] for line in first] == [f"- **{label}" for label in LABELS], first
    question, answer, scope, todo, details = first
    assert "QK-Norm" in question and "lower rank" in question and question.endswith("?")
    # the answer, with its interval: AdamW's planted paradox, Muon without an effect
    assert "the paradox holds under adamw" in answer.lower() and "[95% CI" in answer
    assert "adamw (4 pairs): PARADOX" in answer and "muon (4 pairs): no effect detected" in answer
    for words in ("Width 64", "depth 2", "d_head 32", "60 steps", "tokens per trial", "4 seeds", "this scope only"):
        assert words in scope, (words, scope)
    assert "With AdamW keep QK-Norm" in todo
    assert "figures/forest.png" in details and "verdict.json" in details
    # the full report follows: its title, then the question, answers, scope and advice as before
    assert ran["summary"].splitlines()[6].startswith("# QK-Norm collapse report")


def test_the_terminal_prints_the_same_five_lines_first(ran):
    printed = ran["stdout"].splitlines()
    summary = [plain(line) for line in ran["summary"].splitlines()[:5]]
    assert printed[:4] == summary[:4]  # question, answer, scope, what to do: word for word
    assert printed[4].startswith("Details: ") and f"{ran['out']}/summary.md" in printed[4]
    assert f"{ran['out']}/figures/forest.png" in printed[4]


def test_the_terminal_is_short_and_the_tables_are_in_summary_md(ran):
    """Issue 21 item 3: the console printed ~330 lines; now the five lines, then the claims each with
    its decision, the warnings and where the files are, at most 60 lines in all."""
    printed = ran["stdout"].splitlines()
    assert [line.split(":", 1)[0] for line in printed[:5]] == list(LABELS)
    assert len(printed) <= 60, len(printed)
    claims = ran["verdict"]["claims"]
    assert len(claims) >= 5
    for claim in claims:  # every claim, each with its decision
        decided = [line for line in printed[5:] if f": {claim['verdict'].upper()}. {claim['because']}." in line]
        assert len(decided) == 1, claim
    assert f"{ran['out']}/summary.md" in "\n".join(printed[5:]) and f"{ran['out']}/tables/" in ran["stdout"]
    assert printed[-2] == f"report written to {ran['out']}" and printed[-1].endswith(" s)")
    title = "Deciding: paired differences at each arm's held-out best LR per width"
    assert title not in ran["stdout"] and title in ran["summary"]  # the long tables: summary.md only
    assert "LR sensitivity per arm" not in ran["stdout"] and "LR sensitivity per arm" in ran["summary"]


def test_the_verbose_terminal_adds_the_key_tables(sweep, ran, tmp_path):
    from analysis.report import analyse
    from analysis.summary import terminal

    report = analyse(str(sweep), n_boot=200)
    short, long = terminal(report, tmp_path), terminal(report, tmp_path, verbose=True)
    title = "-- Deciding: paired differences at each arm's held-out best LR per width"
    assert title not in short and title in long and "-- LR sensitivity per arm" in long
    assert long.splitlines()[:5] == short.splitlines()[:5] and len(long.splitlines()) > 100


def test_many_claims_and_warnings_stay_within_the_terminals_lines(ran, tmp_path):
    """A sweep with many variants, widths and edge optima: the terminal names how many more claims
    and warnings summary.md holds instead of printing them all."""
    from types import SimpleNamespace

    from analysis.summary import terminal

    verdict = dict(ran["verdict"])
    verdict["claims"] = verdict["claims"] * 8
    verdict["warnings"] = [f"WARNING: the LR grid does not bracket adamw/rms width {w}: ..." for w in range(30)]
    verdict["partial"], verdict["partial_reasons"] = True, ["3 trial(s) still running"]
    verdict["counts"] = dict(
        verdict["counts"], skipped_files=[[f"metrics/p{i}.parquet", "truncated"] for i in range(9)]
    )
    printed = terminal(SimpleNamespace(verdict=verdict), tmp_path).splitlines()
    assert len(printed) <= 5 + 40 and [line.split(":", 1)[0] for line in printed[:5]] == list(LABELS)
    assert "PARTIAL: 3 trial(s) still running" in printed and "  skipped metrics/p0.parquet: truncated" in printed
    more = [line for line in printed if line.startswith("... ")]
    assert len(more) == 3 and all("summary.md" in line for line in more)  # skipped parts, claims, warnings
    assert sum(line.startswith("WARNING: the LR grid does not bracket") for line in printed) >= 3


def test_brief_prints_only_the_five_lines(sweep, ran, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "r"), "--n-boot", "200", "--brief"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and [line.split(":", 1)[0] for line in printed] == list(LABELS)
    assert printed[:4] == ran["stdout"].splitlines()[:4]
    assert (tmp_path / "r" / "summary.md").exists()  # the report is written as without --brief


def test_brief_and_quiet_do_not_go_together(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--out", str(tmp_path / "r"), "--brief", "--quiet"])
    assert e.value.code == 2


def test_a_sweep_that_cannot_answer_says_what_to_run():
    """The smoke sweep before issue 21: 2 seeds, 1 LR; every comparison short of pairs."""
    short = {"state": "not_enough_data", "n_pairs": 2, "effects": {}, "paradox": False}
    verdict = {
        "partial": False,
        "min_pairs": 3,
        "comparisons": {"adamw": {"rms": short}, "muon": {"rms": short}},
        "claims": [{"id": "lower_loss", "optimizer": "adamw", "variant": "rms", "verdict": "inconclusive"}],
        "warnings": ["WARNING: the LR grid does not bracket adamw/none width 32: ..."],
        "scope": {},
    }
    _, answer, scope, todo, _ = brief_lines(verdict, "here")
    assert answer.startswith("Answer: NOT ENOUGH DATA") and "adamw (2 pairs)" in answer
    assert scope.startswith("Scope: Unknown")
    assert "add seeds" in todo and "widen the LR grid" in todo
