"""What every figure shares: the Agg backend, one colour per QK variant and one line style and
marker per optimizer (the same in every panel of every figure), the LR and step axes, readable
labels (analysis.labels), the arms of the sweep, each arm's best LR, the per-trial curves of an arm
(seed_lines, draw_seed_panel: every seed, or past MAX_SEED_LINES the mean, a band and the
SAMPLED_SEEDS lowest seeds), the figure title (wrapped to the figure), one tight-layout pass, and
one safe write per figure file (png at PNG_DPI, svg or pdf: FORMATS)."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt  # noqa: E402 - the figure modules take plt from here, after use("Agg")
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.layout_engine import PlaceHolderLayoutEngine  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from trainer.safeio import safe_write_bytes  # noqa: E402
from trainer.schema import QK_NORM_VARIANTS  # noqa: E402

from ..labels import mathtext, metric_label, tensor_label  # noqa: E402
from ..paradox import BASELINE, variants  # noqa: E402
from .render import finish_figure  # noqa: E402

ARM_KEYS = ("optimizer", "qk_norm", "width")
FORMATS = ("png", "svg", "pdf")  # --figure-format
PNG_DPI = 200
PNG_COMPRESS_LEVEL = 3  # zlib level of the PNGs (Pillow's compress_level)
# The same figure, the same bytes: SVG element ids from a fixed salt, no creation dates in SVG / PDF.
matplotlib.rcParams["svg.hashsalt"] = "qk-collapse-sweep"
METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}
# What the figures are built under (figure_style). A panel's title at the top edge (axes.titley 1.0):
# matplotlib's automatic place (None) measures the panel's y axis, its ticks and tick labels, at
# every layout and every draw, only to lift the title over tick labels drawn above the panel or
# over the y axis's offset text; these figures draw no tick labels above a panel, and with offsets
# off (the tick labels give whole values, never "+4.4" at the axis top) nothing is there to lift it
# over: the same place, about a tenth less of the figures' CPU time at a study's scale (181 panels).
FIGURE_RC = {"axes.titley": 1.0, "axes.formatter.useoffset": False}

# One colour per QK variant (trainer.schema.QK_NORM_VARIANTS), in every panel of every figure; a
# variant the schema does not list takes the next spare colour. The optimizer is the line style and
# the marker, never the colour.
VARIANT_COLOURS = dict(
    zip(QK_NORM_VARIANTS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"))
)
SPARE_COLOURS = ("tab:pink", "tab:olive", "tab:cyan", "tab:gray")
OPT_LINESTYLES = {"adamw": "-", "muon": "--", "muon_per_head": "-."}
OPT_MARKERS = {"adamw": "o", "muon": "s", "muon_per_head": "D"}


def figure_style():
    """The context the figures are built in (FIGURE_RC): matplotlib's rc settings for these figures
    only, the caller's own unchanged after."""
    return matplotlib.rc_context(FIGURE_RC)


def opt_linestyle(optimizer: str) -> str:
    return OPT_LINESTYLES.get(optimizer, ":")


def opt_marker(optimizer: str) -> str:
    return OPT_MARKERS.get(optimizer, "P")


def base_variant(label: str) -> str:
    """The QK variant of an arm label: "rms [normal:0.02]" (an init axis: analysis.figures) -> "rms"."""
    return label.split(" [", 1)[0]


def variant_colour(variant: str) -> tuple:
    """The RGBA colour of a QK variant listed in trainer.schema (arm_colours colours the rest)."""
    return to_rgba(VARIANT_COLOURS.get(base_variant(variant), "black"))


def _shade(colour, k: int) -> tuple:
    """The k-th init of one variant: its colour (k = 0), then lighter and darker in turn."""
    r, g, b, a = to_rgba(colour)
    if k == 0:
        return (r, g, b, a)
    f = min(0.3 * ((k + 1) // 2), 0.75)
    towards = 1.0 if k % 2 else 0.0
    return (r + (towards - r) * f, g + (towards - g) * f, b + (towards - b) * f, a)


def lr_label(x: float) -> str:
    """The grid value as written: 1e-3, 5e-3, 2.5e-2 (never rounded to one digit)."""
    if x is None or not np.isfinite(x) or x <= 0:
        return str(x)
    e = math.floor(math.log10(x) + 1e-9)
    m = round(x / 10**e, 6)
    if m >= 10:
        m, e = m / 10, e + 1
    return f"{m:g}e{e}"


def lr_axis(ax, lrs) -> None:
    """Log x axis whose ticks are exactly the LRs of the grid, labelled with their values."""
    lrs = sorted(set(float(x) for x in lrs))
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(lrs, [lr_label(x) for x in lrs], fontsize=7, rotation=45 if len(lrs) > 4 else 0)
    if lrs:
        ax.set_xlim(lrs[0] / 1.6, lrs[-1] * 1.6)


def arm_colours(finals: pl.DataFrame) -> dict[tuple[str, str], tuple]:
    """The colour of every (optimizer, qk_norm) arm: its variant's (VARIANT_COLOURS), whatever the
    optimizer, so a variant has one colour in every panel and figure. With an init axis (labels
    "rms [normal:0.02]") each init of a variant is a shade of the variant's colour."""
    opts = sorted(set(finals.get_column("optimizer").drop_nulls().to_list()))
    qks = [BASELINE] + variants(finals)
    spare = sorted({base_variant(q) for q in qks} - set(VARIANT_COLOURS))
    base = {**VARIANT_COLOURS, **{v: SPARE_COLOURS[i % len(SPARE_COLOURS)] for i, v in enumerate(spare)}}
    seen: dict[str, int] = {}
    colour = {}
    for q in qks:
        b = base_variant(q)
        colour[q] = _shade(base[b], seen.get(b, 0))
        seen[b] = seen.get(b, 0) + 1
    return {(o, q): colour[q] for o in opts for q in qks}


def by_arm(df: pl.DataFrame, colours: dict):
    """(optimizer, qk_norm), rows: in the legend order (optimizer, then none first)."""
    keys = list(colours) + sorted(set(df.select("optimizer", "qk_norm").iter_rows()) - set(colours))
    for o, q in keys:
        g = df.filter((pl.col("optimizer") == o) & (pl.col("qk_norm") == q))
        if g.height:
            yield (o, q), g


def qk_order(finals: pl.DataFrame) -> list[str]:
    return [BASELINE] + variants(finals) if finals.height else [BASELINE]


def sweep_arms(finals: pl.DataFrame) -> list[tuple[str, str, int]]:
    """Every (optimizer, qk_norm, width) of the sweep, in report order."""
    if finals.height == 0:
        return []
    order = {q: i for i, q in enumerate(qk_order(finals))}
    arms = finals.select(*ARM_KEYS).unique().drop_nulls().rows()
    return sorted(arms, key=lambda a: (a[0], order.get(a[1], 99), a[2]))


def best_lr_map(best: pl.DataFrame) -> dict[tuple, float]:
    """{(optimizer, qk_norm, width): best LR} from the best-LR table (`Report.best_lrs`, with
    qk_norm labelled per init by `draw_all` when the sweep has several)."""
    if best.height == 0:
        return {}
    return {(o, q, w): lr for o, q, w, lr in best.select(*ARM_KEYS, "best_lr").iter_rows()}


def best_lr_frame(best_lr: dict[tuple, float], like: pl.DataFrame) -> pl.DataFrame:
    """best_lr_map as rows (optimizer, qk_norm, width, lr), typed as the same columns of `like`:
    an inner join on all four keeps each arm's best-LR rows (arms without a best LR: none)."""
    rows = [(*arm, lr) for arm, lr in best_lr.items() if lr is not None]
    cols = [*ARM_KEYS, "lr"]
    schema = {c: like.schema[c] if c in like.columns else None for c in cols}
    if not rows:
        return pl.DataFrame(schema={c: t or pl.Null for c, t in schema.items()})
    out = pl.DataFrame(rows, schema=cols, orient="row")
    return out.with_columns(pl.col(c).cast(t) for c, t in schema.items() if t is not None)


def empty_panel(ax, text="no data"):
    """A panel without data: the text, no ticks. Ticks of an axis shared with other panels are
    hidden on this panel only (set_xticks([]) would empty every panel sharing it)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", fontsize=8, wrap=True)
    if len(ax.get_shared_x_axes().get_siblings(ax)) > 1:
        ax.tick_params(axis="x", which="both", bottom=False, top=False, labelbottom=False, labeltop=False)
    else:
        ax.set_xticks([])
    if len(ax.get_shared_y_axes().get_siblings(ax)) > 1:
        ax.tick_params(axis="y", which="both", left=False, right=False, labelleft=False, labelright=False)
    else:
        ax.set_yticks([])


def x_labels_outer(axes, drawn) -> None:
    """In a grid of panels with the same x axis (`axes`, a 2-D array; `drawn[i][j]` whether panel
    (i, j) has data), the x tick labels only under the lowest drawn panel of each column: fewer
    labels to lay out and draw, and none between the rows."""
    rows, cols = len(axes), len(axes[0]) if len(axes) else 0
    for j in range(cols):
        below = False  # a drawn panel further down this column
        for i in range(rows - 1, -1, -1):
            if drawn[i][j] and below:
                axes[i][j].tick_params(axis="x", labelbottom=False)
            below |= bool(drawn[i][j])


def step_ticks(max_step: float, sparse: bool = False) -> list[int]:
    """Readable ticks of a symlog step axis: 0, then 1, 2, 5, 10, 20, 50, ... up to `max_step` (1, 3,
    10, 30, ... past three decades, 1, 10, 100, ... past five; 10, 100, ... when `sparse`: narrow
    panels), always ending near the last step."""
    top = max(float(max_step or 0), 1.0)
    decades = math.log10(top)
    mantissas = (1,) if sparse else (1, 2, 5) if decades <= 3 else (1, 3) if decades <= 5 else (1,)
    first = 1 if sparse and top >= 10 else 0  # sparse: 0, 10, 100 (1 sits on 0 in a narrow panel)
    ticks = [0] + [m * 10**e for e in range(first, int(decades) + 1) for m in mantissas if m * 10**e <= top * 1.0001]
    if ticks[-1] <= 0.5 * top:  # the last step itself (40 after 20; not 150 after 100: too close)
        ticks.append(int(round(top)))
    return ticks


def step_label(v: float, _pos=None) -> str:
    """A step as written: 0, 5, 200, 5k, 20k, 1.5M."""
    v = float(v)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:g}{unit}"
    return f"{v:g}"


def step_axis(ax, max_step: float, sparse: bool = False) -> None:
    """A symlog x axis of training steps (the dense early probes show) with readable ticks (only
    the powers of ten when `sparse`: narrow panels)."""
    ax.set_xscale("symlog", linthresh=10, linscale=0.6)
    ax.xaxis.set_major_locator(FixedLocator(step_ticks(max_step, sparse)))
    ax.xaxis.set_major_formatter(FuncFormatter(step_label))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(0, max(float(max_step or 0), 1.0) * 1.05)


def pr_label(tensor: str) -> str:
    """The y label of a PR / d_head figure: "PR of q on the sphere / d_head" in matplotlib math."""
    return mathtext(f"PR of {tensor_label(tensor)} / d_head")


def label(name: str) -> str:
    """A finals column as an axis label with its unit (analysis.labels.metric_label)."""
    return mathtext(metric_label(name))


def save_figure(fig, path: Path) -> None:
    """The figure's bytes in memory, in the format of the file's suffix (png at PNG_DPI, svg, pdf),
    then one safe write: never through a symlink, never half a file. The placeholder layout engine
    `fig.tight_layout()` leaves behind is dropped first: with it, savefig lays the whole figure out
    once more without drawing (the same bytes either way; a third of the time of a figure of many
    panels). A PNG is deflated at PNG_COMPRESS_LEVEL by Pillow (its default, 6, costs more time than
    the figure's drawing for a few percent of file size)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        fig.set_layout_engine(None)
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if fmt == "png" else {}
    fig.savefig(buf, dpi=PNG_DPI, format=fmt, metadata=METADATA.get(fmt), **extra)
    safe_write_bytes(path, buf.getvalue())


def tight_layout(fig, rect=None) -> None:
    """`fig.tight_layout(rect=rect)`, matplotlib's own. (A hand-written single measuring pass saved
    about 1.5 s on a study's figures but left a panel of zero height, and a divide-by-zero warning,
    on a sweep of one trial.)"""
    if rect is None:
        fig.tight_layout()
    else:
        fig.tight_layout(rect=rect)


def wrap_title(text: str, width_in: float, fontsize: float = 11) -> str:
    """`text` with each line broken at spaces to fit `width_in` inches at `fontsize` (an average
    character 0.6 em wide, as DejaVu Sans), never inside a $...$ math span."""
    most = max(30, int(0.95 * width_in * 72 / (0.6 * fontsize)))
    out = []
    for line in text.split("\n"):
        words = re.findall(r"\s*(?:(?:[^\s$]*\$[^$]*\$)+[^\s$]*|\S+)", line)  # each with the spaces before it
        cur = ""
        for w in words:
            if cur and len(cur) + len(w) > most:
                out.append(cur)
                cur = w.lstrip()
            else:
                cur = cur + w if cur else w.lstrip()
        out.append(cur)
    return "\n".join(out)


def suptitle(fig, title: str, partial: bool) -> None:
    """The figure's title (PARTIAL while the sweep runs), wrapped to the figure's width
    (wrap_title), 0.1 inch below the top edge however tall the figure: matplotlib's default (2% of
    the height) leaves 0.7 inch above the title of a tall figure, and tight_layout, which assumes
    the title at the edge, lets it run into the panels."""
    text = wrap_title(title + ("  [PARTIAL: sweep not finished]" if partial else ""), fig.get_figwidth())
    fig.suptitle(text, fontsize=11, y=1 - 0.1 / fig.get_figheight())


def finish(fig, path: Path, rect=None) -> Path:
    """The figure laid out (`tight_layout` with `rect`), saved to `path` (`save_figure`) and closed:
    in a forked child while the report draws the next figure (analysis.figures.render)."""

    def lay_out_and_save(f) -> None:
        tight_layout(f, rect)
        save_figure(f, path)

    return finish_figure(fig, path, lay_out_and_save, plt.close)


def save_titled(fig, path: Path, title: str, partial: bool) -> Path:
    suptitle(fig, title, partial)
    return finish(fig, path)


# Per-trial curves at scale: a line group (one arm at one LR in one panel) of more than
# MAX_SEED_LINES trials is drawn as the mean over its trials, a band of the middle BAND_SHARE of
# them per step (the BAND_QUANTILES, linear interpolation) and the trials of its SAMPLED_SEEDS
# lowest seeds; up to MAX_SEED_LINES trials, every trial is its own thin line (small sweeps).
MAX_SEED_LINES = 8
SAMPLED_SEEDS = 3
BAND_QUANTILES = (0.025, 0.975)
BAND_SHARE = "95%"


@dataclass(frozen=True)
class SeedLines:
    """The curves of one line group: the mean over its `n` trials per step, the band (the
    BAND_QUANTILES of the trials per step) and the trials drawn, (seed, steps, values) in seed order:
    all of them up to MAX_SEED_LINES, else the SAMPLED_SEEDS lowest seeds (`summarised`)."""

    n: int
    step: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    trials: list
    summarised: bool


def _runs(df: pl.DataFrame, keys: list[str]) -> tuple[list[tuple], np.ndarray]:
    """(key, start row) of each run of equal `keys` in `df` (sorted by them): one pass, no filter
    per group."""
    if df.height == 0:
        return [], np.zeros(0, np.int64)
    first = np.array(
        df.select(pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys)).to_series().to_numpy()
    )
    first[0] = True
    return df.filter(pl.Series(first)).select(keys).rows(), np.flatnonzero(first)


def seed_lines(
    df: pl.DataFrame,
    keys,
    value: str = "v",
    max_lines: int = MAX_SEED_LINES,
    sampled: int = SAMPLED_SEEDS,
) -> dict[tuple, SeedLines]:
    """{group key: SeedLines} of `df` (trial_id, seed, step, `value` and the `keys` columns), one
    group per distinct `keys`: one group_by over (keys, step) for the mean and the band, one over
    the trials for those drawn (the lowest seeds, then trial ids), each read into numpy once and
    cut at its groups' boundaries; no per-group filter or frame."""
    keys = list(keys)
    if df.height == 0:
        return {}
    order = ["seed", "trial_id"] if "seed" in df.columns else ["trial_id"]
    lo, hi = BAND_QUANTILES
    stats = (
        df.group_by(*keys, "step")
        .agg(
            pl.col(value).mean().alias("mean"),
            pl.col(value).quantile(lo, interpolation="linear").alias("low"),
            pl.col(value).quantile(hi, interpolation="linear").alias("high"),
        )
        .sort(*keys, "step")
    )
    trials = (
        df.select(*keys, *order)
        .unique(subset=[*keys, "trial_id"])
        .sort(*keys, *order)
        .with_columns(pl.int_range(pl.len()).over(keys).alias("_rank"), pl.len().over(keys).alias("_n"))
    )
    drawn = trials.filter((pl.col("_n") <= max_lines) | (pl.col("_rank") < sampled))
    lines = (
        df.select(*keys, "trial_id", "step", value)
        .join(
            drawn.select(*keys, "trial_id", "_rank", *(["seed"] if "seed" in order else [])),
            on=[*keys, "trial_id"],
            how="inner",
            nulls_equal=True,
        )
        .sort(*keys, "_rank", "step")
    )
    n_of = {tuple(r[:-1]): r[-1] for r in trials.filter(pl.col("_rank") == 0).select(*keys, "_n").iter_rows()}
    # the drawn trials of each group: (seed, steps, values), cut where the group or the rank changes
    line_keys, line_starts = _runs(lines, keys)
    rank = lines.get_column("_rank").to_numpy()
    seeds = lines.get_column("seed").to_numpy() if "seed" in lines.columns else rank
    l_step, l_value = lines.get_column("step").to_numpy(), lines.get_column(value).to_numpy()
    trial_cuts = np.flatnonzero(np.diff(rank) != 0) + 1
    drawn_of = {}
    for key, a, b in zip(line_keys, line_starts, np.r_[line_starts[1:], rank.size]):
        cuts = trial_cuts[np.searchsorted(trial_cuts, a, side="right") : np.searchsorted(trial_cuts, b)].tolist()
        drawn_of[key] = [(seeds[x], l_step[x:y], l_value[x:y]) for x, y in zip([a, *cuts], [*cuts, b])]
    stat_keys, stat_starts = _runs(stats, keys)
    cols = {c: stats.get_column(c).to_numpy() for c in ("step", "mean", "low", "high")}
    out = {}
    for key, a, b in zip(stat_keys, stat_starts, np.r_[stat_starts[1:], stats.height]):
        n = int(n_of.get(key, 0))
        out[key] = SeedLines(
            n=n,
            step=cols["step"][a:b],
            mean=cols["mean"][a:b],
            low=cols["low"][a:b],
            high=cols["high"][a:b],
            trials=drawn_of.get(key, []),
            summarised=n > max_lines,
        )
    return out


def draw_seed_panel(ax, entries) -> bool:
    """The line groups of one panel, `entries` (SeedLines, colour, label, line style) in legend
    order: each group's mean over all its trials a thick line labelled "<label> (n=<trials>)" in its
    colour and line style (the optimizer's). A group of every trial (`summarised` false) draws each a
    thin line, as always; a summarised one its band of the middle BAND_SHARE of its trials and the
    trials of its SAMPLED_SEEDS lowest seeds. The bands of the panel are one PolyCollection and the
    sampled trials one LineCollection, under the means: a fixed number of artists per panel however
    many seeds. True when a group is summarised."""
    bands, band_colours = [], []
    samples, sample_colours, sample_styles = [], [], []
    for g, colour, label, ls in entries:
        if g.summarised:
            ok = np.isfinite(g.low) & np.isfinite(g.high)
            x, lo, hi = g.step[ok], g.low[ok], g.high[ok]
            if x.size:
                bands.append(np.column_stack([np.r_[x, x[::-1]], np.r_[lo, hi[::-1]]]))
                band_colours.append(colour)
            for _seed, steps, values in g.trials:
                samples.append(np.column_stack([steps, values]))
                sample_colours.append(colour)
                sample_styles.append(ls)
        else:
            for _seed, steps, values in g.trials:
                ax.plot(steps, values, color=colour, ls=ls, lw=0.6, alpha=0.35)
        ax.plot(g.step, g.mean, color=colour, ls=ls, lw=1.8, label=f"{label} (n={g.n})")
    if bands:
        ax.add_collection(
            PolyCollection(bands, facecolors=band_colours, alpha=0.2, linewidths=0, zorder=1, label="_bands")
        )
    if samples:  # a few sampled seeds show over the band
        ax.add_collection(
            LineCollection(
                samples,
                colors=sample_colours,
                linestyles=sample_styles,
                linewidths=0.7,
                alpha=0.6,
                zorder=1.9,
                label="_sampled seeds",
            )
        )
    if bands or samples:
        ax.autoscale_view()
    return any(g.summarised for g, *_ in entries)


def draw_seed_lines(ax, g: SeedLines, colour, label: str, ls: str = "-") -> None:
    """One line group alone (draw_seed_panel)."""
    draw_seed_panel(ax, [(g, colour, label, ls)])


def seeds_note(summarised: bool) -> str:
    """What the thin lines (or the band) are, short, for a legend title: "thin: each seed" when
    every trial is drawn, else "band: 95% of seeds" (seeds_title says the rest)."""
    return f"band: {BAND_SHARE} of seeds" if summarised else "thin: each seed"


def seeds_title(summarised: bool) -> str:
    """A figure title's words for its lines: " (thin: seeds; thick: their mean)" when every trial is
    drawn, else a second line naming the mean, the band and the sampled seeds."""
    if summarised:
        lo, hi = (f"{100 * x:g}" for x in BAND_QUANTILES)
        return (
            f"\nthick: mean over seeds; band: middle {BAND_SHARE} of seeds ({lo}th to {hi}th percentile per step);"
            f" thin: the {SAMPLED_SEEDS} lowest seeds (arms of more than {MAX_SEED_LINES} seeds)"
        )
    return " (thin: seeds; thick: their mean)"


def seeds_and_mean(ax, g: pl.DataFrame, colour, label: str, ls: str = "-", value: str = "v") -> bool:
    """Each trial of `g` (trial_id, step, `value`; one line group) a thin line, the mean over seeds
    (per step) a thick one; past MAX_SEED_LINES trials the mean, the band and the SAMPLED_SEEDS
    lowest seeds (seed_lines, draw_seed_lines). True when summarised."""
    groups = seed_lines(g.with_columns(pl.lit(0).alias("_group")), ["_group"], value)
    for sl in groups.values():
        draw_seed_lines(ax, sl, colour, label, ls)
        return sl.summarised
    return False
