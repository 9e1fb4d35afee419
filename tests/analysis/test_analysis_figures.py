"""The report's figures: every PNG is written for a synthetic sweep (one arm without any fit),
LR ticks show the grid's real values, and the forest plot takes the per-cell table."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402

from analysis import figures  # noqa: E402
from analysis.figures.common import lr_axis, lr_label, variant_colour  # noqa: E402
from analysis.figures.forest import FOREST_METRICS, forest_plot  # noqa: E402
from analysis.report import analyse  # noqa: E402
from benchmarks.synthetic_results import Effect, SyntheticSpec, write_results  # noqa: E402

LRS = (1e-3, 5e-3, 2.5e-2)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """muon/rms collapses within one probe interval (rate x60): no trial of that arm is fitted."""
    root = tmp_path_factory.mktemp("figs")
    spec = SyntheticSpec(
        effects={
            ("adamw", "rms"): Effect(loss=-0.05, pr=-0.08, rate_mult=1.5),
            ("muon", "rms"): Effect(rate_mult=60.0),
        },
        widths=(64, 128),
        lrs=LRS,
        seeds=(0, 1, 2),
        steps=150,
        rate_noise=0.1,
        point_noise=0.003,
        spectra="all",
    )
    write_results(spec, root / "sweep")
    r = analyse(root / "sweep", n_boot=200)
    paths = figures.draw_all(r, root / "figures")
    return dict(r=r, paths=paths, folder=root / "figures")


def test_every_figure_is_written_and_shows_data(drawn):
    names = {p.stem for p in drawn["paths"]}
    expected = (
        set(figures.FIGURES) if getattr(drawn["r"], "cells", None) is not None else set(figures.FIGURES) - {"forest"}
    )
    assert names == expected
    for name in names:
        img = mpimg.imread(drawn["folder"] / f"{name}.png")
        assert img.shape[0] > 300 and img.shape[1] > 500, name
        rgb = img[..., :3]
        assert (rgb.min(-1) < 0.5).mean() > 0.003, f"{name}: (almost) nothing drawn"
        if name != "spectra":  # synthetic spectra do not change: black (final) covers the rest
            assert ((rgb.max(-1) - rgb.min(-1)) > 0.3).mean() > 0.001, f"{name}: no coloured marks"


def test_the_arm_without_fits_is_censored_and_still_drawn(drawn):
    arm = drawn["r"].collapse_arm.filter((pl.col("metric") == "pr") & pl.col("tensor").is_in(["q", "k"]))
    mr = arm.filter((pl.col("optimizer") == "muon") & (pl.col("qk_norm") == "rms"))
    assert mr.height == 2 * len(LRS) * 2  # widths x LRs x tensors: every cell has a row
    assert (mr["n_fit_ok"] == 0).all() and (mr["n_censored"] == mr["n_trials"]).all()
    assert mr["rate_lower_bound_per_1k"].null_count() == 0
    # muon/rms's hollow markers are in the collapse figure, in rms's colour (one colour per variant)
    img = mpimg.imread(drawn["folder"] / "collapse_rate_vs_width.png")[..., :3]
    rms = np.array(matplotlib.colors.to_rgb(variant_colour("rms")))
    assert (np.abs(img - rms).max(-1) < 0.08).sum() > 50


@pytest.mark.parametrize(
    "x,label",
    [
        (1e-3, "1e-3"),
        (5e-3, "5e-3"),
        (2.5e-2, "2.5e-2"),
        (3e-2, "3e-2"),
        (0.1, "1e-1"),
        (1.0, "1e0"),
        (1.25e-4, "1.25e-4"),
    ],
)
def test_lr_labels_are_the_grid_values(x, label):
    assert lr_label(x) == label


def test_lr_axis_ticks_are_exactly_the_grid():
    fig, ax = plt.subplots()
    ax.plot(LRS, [1, 2, 3])
    lr_axis(ax, LRS)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-3", "5e-3", "2.5e-2"]
    np.testing.assert_allclose(ax.get_xticks(), LRS)
    plt.close(fig)


def _cells() -> pl.DataFrame:
    rows = []
    for o in ("adamw", "muon"):
        for w in (64, 128):
            for lr in LRS:
                for m in FOREST_METRICS:
                    rows.append(
                        dict(
                            optimizer=o,
                            qk_norm="rms",
                            width=w,
                            lr=lr,
                            metric=m,
                            n_pairs=3,
                            mean_diff=-0.02,
                            ci_low=-0.05,
                            ci_high=0.01,
                            p_value=0.2,
                            selection="cell",
                        )
                    )
            for m in FOREST_METRICS:
                rows.append(
                    dict(
                        optimizer=o,
                        qk_norm="rms",
                        width=w,
                        lr=5e-3,
                        metric=m,
                        n_pairs=2,
                        mean_diff=0.01,
                        ci_low=None,
                        ci_high=None,
                        p_value=None,
                        selection="best_lr",
                    )
                )
        for m in FOREST_METRICS:
            rows.append(
                dict(
                    optimizer=o,
                    qk_norm="rms",
                    width=None,
                    lr=None,
                    metric=m,
                    n_pairs=0,
                    mean_diff=None,
                    ci_low=None,
                    ci_high=None,
                    p_value=None,
                    selection="deciding",
                )
            )
    return pl.DataFrame(rows, infer_schema_length=None)


def test_forest_plot_from_a_cells_frame(tmp_path):
    path = forest_plot(_cells(), tmp_path / "forest.png")
    img = mpimg.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 800


def test_forest_plot_without_pairs_says_so(tmp_path):
    path = forest_plot(_cells().clear(), tmp_path / "forest.png")
    assert path.exists()
