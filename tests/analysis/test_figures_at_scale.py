"""Issue 22, figures at scale: an arm of many seeds is drawn as its mean, a band (the middle 95% of
its seeds per step) and its three lowest seeds, so a figure's artists do not grow with the seeds; a
small sweep still draws every seed; no legend is placed by matplotlib's "best" search; and the
helpers that make a study's figures fast (one group_by for the curves, one tight-layout pass, the
PNG writer) give what matplotlib would."""

from __future__ import annotations

import gc
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from PIL import Image  # noqa: E402

from analysis import figures  # noqa: E402
from analysis.figures.common import (
    BAND_QUANTILES,
    MAX_SEED_LINES,
    SAMPLED_SEEDS,
    draw_seed_panel,
    empty_panel,
    save_figure,  # noqa: E402
    seed_lines,
    step_ticks,
    tight_layout,
    variant_colour,
    wrap_title,
)
from analysis.report import analyse  # noqa: E402
from benchmarks.synthetic_results import SyntheticSpec, write_results  # noqa: E402

QK = ("none", "rms")
SEED_FIGURES = ("pr_over_training", "pr_by_lr_q", "pr_by_lr_k", "max_logit_over_training")


def _curves(n_trials: int, steps=(0, 25, 50, 100), group="a", seed0=0) -> pl.DataFrame:
    """One line group of `n_trials` trials, seeds given in reverse (the drawn ones must be the lowest)."""
    rng = np.random.default_rng(n_trials)
    rows = []
    for k in reversed(range(n_trials)):
        for s in steps:
            rows.append(
                dict(g=group, trial_id=f"{group}{k:03d}", seed=seed0 + k, step=s, v=0.8 - s / 400 + rng.normal(0, 0.02))
            )
    return pl.DataFrame(rows)


def _kept(r, folder):
    """draw_all's figures, kept open (plt.close patched) to read their artists."""
    kept = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "close", lambda fig=None: kept.append(fig))
        paths = figures.draw_all(r, folder)
    return paths, dict(zip(figures.EARLY + figures.LATE, kept, strict=True))  # the order they are drawn in


def _sweep(root, seeds):
    spec = SyntheticSpec(
        widths=(64,),
        lrs=(3e-3, 1e-2),
        seeds=tuple(seeds),
        steps=100,
        spectra="last",
        rate_noise=0.1,
        point_noise=0.003,
        logit_growth=20.0,
        junk_files=False,
    )
    write_results(spec, root / "s")
    return analyse(root / "s", n_boot=100)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """20 seeds per arm (more than MAX_SEED_LINES): every seed figure is summarised."""
    root = tmp_path_factory.mktemp("many")
    paths, figs = _kept(_sweep(root, range(20)), root / "figures")
    yield dict(paths=paths, figs=figs, folder=root / "figures")
    for f in figs.values():
        plt.close(f)


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """3 seeds per arm: every seed its own line, as before."""
    root = tmp_path_factory.mktemp("few")
    paths, figs = _kept(_sweep(root, range(3)), root / "figures")
    yield dict(paths=paths, figs=figs)
    for f in figs.values():
        plt.close(f)


def _data_axes(fig):
    """The panels with curves (an empty panel says "no ..." and has no lines)."""
    return [ax for ax in fig.axes if ax.get_lines()]


def test_seed_lines_are_the_mean_the_band_and_the_lowest_seeds():
    df = pl.concat([_curves(20, group="a"), _curves(3, group="b", seed0=7)])
    groups = seed_lines(df, ["g"], "v")
    a, b = groups[("a",)], groups[("b",)]
    assert a.summarised and a.n == 20 and not b.summarised and b.n == 3
    assert [s for s, _, _ in a.trials] == list(range(SAMPLED_SEEDS))  # the lowest seeds, in order
    assert [s for s, _, _ in b.trials] == [7, 8, 9]  # a small group: every trial
    wide = df.filter(pl.col("g") == "a").pivot(on="step", index="trial_id", values="v").drop("trial_id").to_numpy()
    np.testing.assert_array_equal(a.step, [0, 25, 50, 100])
    np.testing.assert_allclose(a.mean, wide.mean(axis=0))
    np.testing.assert_allclose(a.low, np.quantile(wide, BAND_QUANTILES[0], axis=0))
    np.testing.assert_allclose(a.high, np.quantile(wide, BAND_QUANTILES[1], axis=0))
    assert seed_lines(df.clear(), ["g"], "v") == {}


@pytest.mark.parametrize("n", [MAX_SEED_LINES + 1, 40, 300])
def test_the_artists_of_a_panel_do_not_grow_with_the_seeds(n):
    fig, ax = plt.subplots()
    g = seed_lines(_curves(n), ["g"], "v")[("a",)]
    assert draw_seed_panel(ax, [(g, "tab:orange", "rms", "-")])
    assert len(ax.get_lines()) == 1  # the mean
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    samples = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bands) == 1 and len(samples) == 1 and len(samples[0].get_segments()) == SAMPLED_SEEDS
    assert ax.get_lines()[0].get_label() == f"rms (n={n})"
    plt.close(fig)


def test_a_group_of_few_seeds_draws_each_seed():
    fig, ax = plt.subplots()
    g = seed_lines(_curves(MAX_SEED_LINES), ["g"], "v")[("a",)]
    assert not draw_seed_panel(ax, [(g, "tab:blue", "none", "--")])
    assert len(ax.get_lines()) == MAX_SEED_LINES + 1 and not ax.collections
    plt.close(fig)


def test_many_seeds_draw_means_bands_and_a_few_seeds(many):
    assert {p.stem for p in many["paths"]} == set(figures.FIGURES)
    for name in figures.FIGURES:
        assert (many["folder"] / f"{name}.png").stat().st_size > 10_000, name
    for name in SEED_FIGURES:
        fig = many["figs"][name]
        title = fig._suptitle.get_text()
        assert "middle 95% of seeds" in title and f"the {SAMPLED_SEEDS} lowest seeds" in title, title
        panels = _data_axes(fig)
        assert panels, name
        for ax in panels:
            means = ax.get_lines()
            assert 1 <= len(means) <= len(QK), (name, ax.get_title(), len(means))  # 20 seeds, one line per arm
            assert all(line.get_linewidth() == pytest.approx(1.8) for line in means)
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert len(bands) == 1 and len(bands[0].get_paths()) == len(means), (name, ax.get_title())
            band_colours = {tuple(np.round(c[:3], 6)) for c in bands[0].get_facecolors()}
            assert band_colours <= {tuple(np.round(to_rgb(variant_colour(q)), 6)) for q in QK}
            sampled = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
            assert sampled == SAMPLED_SEEDS * len(means), (name, ax.get_title())
            legend = ax.get_legend()
            if legend is not None:
                assert "band: 95% of seeds" in legend.get_title().get_text()
                assert all("(n=20)" in t.get_text() for t in legend.get_texts())


def test_a_small_sweep_still_draws_every_seed(few):
    for name in SEED_FIGURES:
        fig = few["figs"][name]
        assert "middle 95%" not in fig._suptitle.get_text()
        assert _data_axes(fig), name
        for ax in _data_axes(fig):
            assert not any(isinstance(c, (PolyCollection, LineCollection)) for c in ax.collections), name
            lines = ax.get_lines()
            means = [line for line in lines if line.get_linewidth() == pytest.approx(1.8)]
            thin = [line for line in lines if line.get_linewidth() == pytest.approx(0.6)]
            assert len(thin) == 3 * len(means) and means, (name, ax.get_title())  # every seed of every arm
            legend = ax.get_legend()
            if legend is not None:
                assert "thin: each seed" in legend.get_title().get_text() or "thin: seeds" in (
                    legend.get_title().get_text()
                )


def test_no_legend_is_placed_by_a_search(many, few):
    for drawn in (many, few):
        for name, fig in drawn["figs"].items():
            legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
            for legend in legends:
                assert legend._loc != 0, name  # 0: "best", whose cost grows with the lines drawn


def test_step_ticks_for_narrow_panels():
    assert step_ticks(300) == [0, 1, 2, 5, 10, 20, 50, 100, 200]  # as before
    assert step_ticks(300, sparse=True) == [0, 10, 100, 300]
    assert step_ticks(20_000, sparse=True) == [0, 10, 100, 1000, 10_000, 20_000]
    assert step_ticks(5, sparse=True) == [0, 1, 5]


def test_titles_wrap_to_the_figure_but_never_inside_math():
    long = "PR of q / $d_\\mathrm{head}$ and $s_i / \\sum_j s_j$ over training " * 4
    wrapped = wrap_title(long.strip() + "  [PARTIAL: sweep not finished]", 7.5)
    lines = wrapped.split("\n")
    assert len(lines) > 1 and all(line.count("$") % 2 == 0 for line in lines)
    assert "  [PARTIAL" in wrapped or "\n[PARTIAL" in wrapped
    assert wrap_title("short  title", 7.5) == "short  title"


def _grid(rows=3, cols=4):
    fig, axes = plt.subplots(rows, cols, figsize=(10, 7))
    for i, ax in enumerate(axes.flat):
        ax.plot(np.arange(10), np.arange(10) ** (1 + i % 3), label="a line")
        ax.set_title(f"panel {i}\nsecond line")
        ax.set_ylabel("y label" if i % cols == 0 else "")
    fig.legend(handles=axes.flat[0].get_lines(), loc="lower center")
    fig.suptitle("a title")
    return fig


def test_tight_layout_with_a_rect_is_matplotlibs():
    rect = (0, 0.06, 1, 1)
    ours, theirs = _grid(), _grid()
    tight_layout(ours, rect=rect)
    theirs.tight_layout(rect=rect)
    for k, v in vars(theirs.subplotpars).items():
        assert getattr(ours.subplotpars, k) == pytest.approx(v, abs=1e-12), k
    plt.close(ours)
    plt.close(theirs)


def test_a_png_is_matplotlibs_pixels_at_the_reports_dpi(tmp_path):
    ours, theirs = _grid(2, 2), _grid(2, 2)
    for fig in (ours, theirs):
        fig.tight_layout()
    save_figure(ours, tmp_path / "ours.png")
    buf = io.BytesIO()
    theirs.savefig(buf, format="png", dpi=figures.PNG_DPI)
    a, b = Image.open(tmp_path / "ours.png"), Image.open(io.BytesIO(buf.getvalue()))
    assert a.mode == b.mode == "RGBA" and a.size == b.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.info["dpi"] == pytest.approx(b.info["dpi"])
    plt.close(ours)
    plt.close(theirs)


def test_an_empty_panel_leaves_its_rows_shared_ticks():
    fig, axes = plt.subplots(1, 3, sharey="row")
    for ax in axes[:2]:
        ax.plot([0, 1], [0.4, 0.8])
    empty_panel(axes[2], "no completed trials")
    fig.canvas.draw()
    assert len(axes[0].get_yticks()) > 2  # set_yticks([]) on a shared axis would empty the whole row
    assert not [t for t in axes[2].get_yticklabels() if t.get_visible() and t.get_text()]
    plt.close(fig)


def test_draw_all_leaves_the_garbage_collector_as_it_was(many):
    assert gc.get_freeze_count() == 0  # draw_all froze the objects alive before it, then unfroze them
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with figures.objects_frozen():
            assert gc.get_freeze_count() == frozen  # a process that froze objects itself: left alone
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
