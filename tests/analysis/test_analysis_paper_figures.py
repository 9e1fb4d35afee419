"""Issue 21, item 6: figures and tables for a paper. One colour per QK variant in every panel and
figure, readable labels with units, a step axis with readable ticks, collapse markers that match
their legend, figures as png, svg or pdf (`--figure-format`), the forest plot in summary.md, and
.tex tables with readable headers."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from analysis import figures  # noqa: E402
from analysis.figures.collapse import NO_FIT_MARKERS  # noqa: E402
from analysis.figures.common import variant_colour  # noqa: E402
from analysis.figures.forest import forest_plot  # noqa: E402
from analysis.labels import metric_label  # noqa: E402
from analysis.report import analyse, main  # noqa: E402
from analysis.summary import markdown  # noqa: E402
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results  # noqa: E402
from trainer.schema import QK_NORM_VARIANTS  # noqa: E402

VARIANTS = ("none", "rms", "qk_clip", "softcap")
NAMES = set(QK_NORM_VARIANTS) | {"adamw", "muon", "muon_per_head"}  # values, not column names
MAGIC = {"png": b"\x89PNG", "svg": b"<svg", "pdf": b"%PDF"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four variants under two optimizers; muon/rms collapses within one probe interval (no fit)."""
    root = tmp_path_factory.mktemp("paper")
    spec = SyntheticSpec(
        qk_norms=VARIANTS,
        effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.08), ("muon", "rms"): Effect(rate_mult=60.0)},
        widths=(64,),
        lrs=(3e-3, 1e-2, 3e-2),
        seeds=(0, 1, 2),
        steps=150,
        spectra="ends",
        logit_growth=40.0,
        qk_clip_tau=30.0,
        junk_files=False,
    )
    write_results(spec, root / "s")
    return root / "s"


@pytest.fixture(scope="module")
def drawn(sweep, tmp_path_factory):
    """Every figure of the report, kept open (plt.close patched) to read its artists."""
    r = analyse(sweep, n_boot=200)
    kept = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "close", lambda fig=None: kept.append(fig))
        paths = figures.draw_all(r, tmp_path_factory.mktemp("figs"))
    figs = dict(zip(figures.EARLY + figures.LATE, kept, strict=True))  # the order they are drawn in
    yield dict(r=r, figs=figs, paths=paths)
    for f in kept:
        plt.close(f)


def _variants_in(label: str) -> set[str]:
    return set(re.findall(r"[a-z_]+", label)) & set(QK_NORM_VARIANTS)


def _rgb(colour) -> tuple:
    """A colour without its alpha (scatters are drawn half transparent), rounded."""
    return tuple(round(float(x), 6) for x in to_rgba(colour)[:3])


def _colour(artist):
    if isinstance(artist, PathCollection):
        return _rgb(artist.get_facecolor()[0])
    return _rgb(artist.get_color())


def _labelled(fig):
    """(label, artist) of every labelled line and scatter of every panel, and of the figure legend."""
    for ax in fig.axes:
        for artist in [*ax.get_lines(), *ax.collections]:
            if not artist.get_label().startswith("_"):
                yield artist.get_label(), artist
    for legend in fig.legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            yield text.get_text(), handle


def test_each_variant_has_one_colour_in_every_panel_and_every_figure(drawn):
    seen: dict[str, set] = {}
    for name, fig in drawn["figs"].items():
        for label, artist in _labelled(fig):
            found = _variants_in(label)
            if len(found) == 1 and not label.startswith(("tau", "cap")):
                seen.setdefault(found.pop(), set()).add((name, _colour(artist)))
    assert set(seen) == set(VARIANTS)
    for variant, where in seen.items():
        colours = {c for _, c in where}
        assert colours == {_rgb(variant_colour(variant))}, (variant, where)
        figs = {n for n, _ in where}
        assert {"pr_over_training", "lr_sensitivity", "loss_vs_pr", "max_logit_over_training"} <= figs, figs
    # the forest plot: every mark of an optimizer x variant row in that variant's colour
    for ax in drawn["figs"]["forest"].axes:
        variant = _variants_in(ax.get_title().split("minus")[0]).pop()
        marks = {_rgb(line.get_color()) for line in ax.get_lines() if line.get_linestyle() != ":"}
        assert marks == {_rgb(variant_colour(variant))}, ax.get_title()
    assert len(set(map(variant_colour, QK_NORM_VARIANTS))) == len(QK_NORM_VARIANTS)  # six distinct colours


def test_the_step_axis_has_readable_ticks(drawn):
    ax = drawn["figs"]["pr_over_training"].axes[0]
    drawn["figs"]["pr_over_training"].canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels == ["0", "1", "2", "5", "10", "20", "50", "100"], labels


def _texts(fig) -> list[str]:
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        if ax.get_legend() is not None:
            out.append(ax.get_legend().get_title().get_text())
    return [t for t in out if t]


def test_titles_and_axes_are_words_with_units_not_column_names(drawn):
    for name, fig in drawn["figs"].items():
        for text in _texts(fig):
            words = set(re.findall(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b", re.sub(r"\$[^$]*\$", "", text))) - NAMES
            assert not words, (name, text, words)
    loss_vs_pr = drawn["figs"]["loss_vs_pr"].axes
    assert loss_vs_pr[0].get_xlabel() == r"final sphere PR of q / $d_\mathrm{head}$"
    assert loss_vs_pr[0].get_ylabel() == "final val loss (nats/token)"
    assert metric_label("final_pr_q") == "final PR of q / d_head"


def test_collapse_markers_are_the_markers_of_its_legend(drawn):
    fig = drawn["figs"]["collapse_rate_vs_width"]
    legend = {(h.get_marker(), h.get_markerfacecolor() == "white") for h in fig.legends[0].legend_handles}
    drawn_marks = set()
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_marker() not in (None, "None", "", "_"):
                drawn_marks.add((line.get_marker(), line.get_markerfacecolor() == "white"))
        words = " ".join(t.get_text() for t in ax.texts)
        for kind, needle in (("fast", "censored fast"), ("slow", "censored slow")):
            if needle in words:  # a label naming a kind of censoring sits beside that kind's marker
                assert any(line.get_marker() == NO_FIT_MARKERS[kind] for line in ax.get_lines()), (kind, words)
    assert drawn_marks == legend, (drawn_marks, legend)
    assert ("^", True) in drawn_marks  # muon/rms: every fall too fast, drawn at its lower bound


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_figure_format_writes_every_figure_in_that_format(sweep, tmp_path, fmt):
    out = tmp_path / "r"
    assert main([str(sweep), "--out", str(out), "--n-boot", "200", "--quiet", "--figure-format", fmt]) == 0
    for name in figures.FIGURES:
        data = (out / "figures" / f"{name}.{fmt}").read_bytes()
        assert MAGIC[fmt] in data[:400], name
    assert not list((out / "figures").glob("*.png"))
    summary = (out / "summary.md").read_text()
    assert f"(figures/forest.{fmt})" in summary and ".png" not in summary


def test_png_is_drawn_at_a_print_resolution(drawn):
    import matplotlib.image as mpimg

    path = next(p for p in drawn["paths"] if p.stem == "loss_vs_pr")
    assert path.suffix == ".png" and MAGIC["png"] in path.read_bytes()[:8]
    width_in = drawn["figs"]["loss_vs_pr"].get_size_inches()[0]
    assert mpimg.imread(path).shape[1] == pytest.approx(width_in * figures.PNG_DPI, abs=2)


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_a_vector_figure_is_the_same_bytes_every_time(tmp_path, drawn, fmt):
    cells = drawn["r"].cells
    first = forest_plot(cells, tmp_path / f"a.{fmt}").read_bytes()
    assert forest_plot(cells, tmp_path / f"b.{fmt}").read_bytes() == first


def test_summary_md_shows_the_forest_plot_up_front(drawn):
    text = markdown(drawn["r"])
    link = "![The deciding comparison: paired effects, variant minus none](figures/forest.png)"
    assert link in text
    assert text.index(link) < text.index("## Data") < text.index("## Figures")


def test_tex_tables_have_readable_headers(sweep, tmp_path):
    out = tmp_path / "r"
    assert main([str(sweep), "--out", str(out), "--n-boot", "200", "--quiet"]) == 0
    for tex in (out / "tables").glob("*.tex"):
        lines = tex.read_text().splitlines()
        header = lines[lines.index(r"\toprule") + 1]
        assert r"\_" not in header, (tex.name, header)
    lines = (out / "tables" / "paradox_best_lr.tex").read_text().splitlines()
    header = lines[lines.index(r"\toprule") + 1]
    cells = header.removesuffix(r" \\").split(" & ")
    assert r"Mean diff. [95\% CI]" in cells and "p (Holm)" in cells and "QK variant" in cells
    assert len(cells) <= 10, cells  # the CSV has 16 columns
    body = "\n".join(lines)
    assert r"final sphere PR of q / $d_\mathrm{head}$" in body and "[" in body


def test_tex_cells_are_escaped_character_by_character_and_symbols_set_as_math():
    """The .tex cells (analysis.tables._tex, analysis.labels.tex_math) as the plain rule gives them:
    each special character escaped alone, then each symbol as math; tex_math looks for a symbol
    only where an escaped underscore is, so every symbol must have one."""
    import numpy as np

    from analysis.labels import _MATH, tex_math
    from analysis.tables import _TEX_ESCAPE, _tex

    assert all("_" in symbol for symbol in _MATH)
    rng = np.random.default_rng(0)
    alphabet = list("ab_ WqkdhedmolzQK%&$#{}~^\\0.5-e") + list(_MATH)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 12))))
        escaped = "".join(_TEX_ESCAPE.get(c, c) for c in text)
        for plain, math in _MATH.items():
            escaped = escaped.replace(plain.replace("_", r"\_"), math)
        assert tex_math(_tex(text)) == escaped, text


def test_tick_labels_give_whole_values_and_titles_sit_above_their_panels(tmp_path):
    """A sweep whose losses differ in the fifth decimal: matplotlib would label the loss axes
    "1e-5 +2" at an axis end and ticks of 0.5, 1.0, ... (a reader adds them up); the figures give
    the values themselves. Each panel's title sits above its panel, clear of every other panel."""
    flat = SyntheticSpec(
        widths=(64,), seeds=(0, 1), steps=100, lr_curvature=1e-5, loss_noise=1e-6, pr_noise=1e-6, junk_files=False
    )
    write_results(flat, tmp_path / "s")
    r = analyse(tmp_path / "s", n_boot=100)
    kept = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "close", lambda fig=None: kept.append(fig))
        figures.draw_all(r, tmp_path / "figs")
    figs = dict(zip(figures.EARLY + figures.LATE, kept, strict=True))
    try:
        for name, fig in figs.items():
            fig.tight_layout()
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
            for i, ax in enumerate(fig.axes):
                for axis in (ax.xaxis, ax.yaxis):
                    offset = axis.get_offset_text().get_text()  # a multiplier ("1e-6") may stay, an offset not
                    assert not re.sub("^1e\u2212?[0-9]+", "", offset), (name, ax.get_title(), offset)
                if not ax.get_title():
                    continue
                title = ax.title.get_window_extent(renderer)
                assert title.y0 >= ax.get_window_extent(renderer).y1, (name, ax.get_title())
                others = [b for j, b in enumerate(boxes) if j != i]
                assert not any(title.overlaps(b) for b in others), (name, ax.get_title())
        ticks = [t.get_text() for t in figs["lr_sensitivity"].axes[0].get_yticklabels() if t.get_text()]
        assert all(float(t.replace("\u2212", "-")) > 1 for t in ticks), ticks  # losses, not offsets from one
    finally:
        for fig in kept:
            plt.close(fig)
