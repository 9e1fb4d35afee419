"""What every figure shares: the Agg backend, one colour per QK variant and one line style and
marker per optimizer (the same in every panel of every figure), the LR and step axes, readable
labels (analysis.labels), the arms of the sweep, each arm's best LR, and one safe write per figure
file (png at PNG_DPI, svg or pdf: FORMATS)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt  # noqa: E402 - the figure modules take plt from here, after use("Agg")
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from trainer.safeio import safe_write_bytes  # noqa: E402
from trainer.schema import QK_NORM_VARIANTS  # noqa: E402

from ..labels import mathtext, metric_label, tensor_label  # noqa: E402
from ..paradox import BASELINE, variants  # noqa: E402

ARM_KEYS = ("optimizer", "qk_norm", "width")
FORMATS = ("png", "svg", "pdf")  # --figure-format
PNG_DPI = 200
# The same figure, the same bytes: SVG element ids from a fixed salt, no creation dates in SVG / PDF.
matplotlib.rcParams["svg.hashsalt"] = "qk-collapse-sweep"
METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}

# One colour per QK variant (trainer.schema.QK_NORM_VARIANTS), in every panel of every figure; a
# variant the schema does not list takes the next spare colour. The optimizer is the line style and
# the marker, never the colour.
VARIANT_COLOURS = dict(
    zip(QK_NORM_VARIANTS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"))
)
SPARE_COLOURS = ("tab:pink", "tab:olive", "tab:cyan", "tab:gray")
OPT_LINESTYLES = {"adamw": "-", "muon": "--", "muon_per_head": "-."}
OPT_MARKERS = {"adamw": "o", "muon": "s", "muon_per_head": "D"}


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


def empty_panel(ax, text="no data"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", fontsize=8, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def step_ticks(max_step: float) -> list[int]:
    """Readable ticks of a symlog step axis: 0, then 1, 2, 5, 10, 20, 50, ... up to `max_step` (1, 3,
    10, 30, ... past three decades, 1, 10, 100, ... past five), always ending near the last step."""
    top = max(float(max_step or 0), 1.0)
    decades = math.log10(top)
    mantissas = (1, 2, 5) if decades <= 3 else (1, 3) if decades <= 5 else (1,)
    ticks = [0] + [m * 10**e for e in range(int(decades) + 1) for m in mantissas if m * 10**e <= top * 1.0001]
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


def step_axis(ax, max_step: float) -> None:
    """A symlog x axis of training steps (the dense early probes show) with readable ticks."""
    ax.set_xscale("symlog", linthresh=10, linscale=0.6)
    ax.xaxis.set_major_locator(FixedLocator(step_ticks(max_step)))
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
    then one safe write: never through a symlink, never half a file."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    buf = io.BytesIO()
    fig.savefig(buf, dpi=PNG_DPI, format=fmt, metadata=METADATA.get(fmt))
    safe_write_bytes(path, buf.getvalue())


def save_titled(fig, path: Path, title: str, partial: bool) -> Path:
    fig.suptitle(title + ("  [PARTIAL: sweep not finished]" if partial else ""), fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def seeds_and_mean(ax, g: pl.DataFrame, colour, label: str, ls: str = "-", value: str = "v") -> None:
    """Each trial of `g` (trial_id, step, `value`) a thin line, the mean over seeds (per step) a thick one
    (line style: the optimizer's)."""
    for _, s in g.group_by("trial_id", maintain_order=True):
        ax.plot(
            s.get_column("step").to_numpy(), s.get_column(value).to_numpy(), color=colour, ls=ls, lw=0.6, alpha=0.35
        )
    m = g.group_by("step").agg(pl.col(value).mean(), pl.len().alias("n")).sort("step")
    n = g.get_column("trial_id").n_unique()
    ax.plot(
        m.get_column("step").to_numpy(),
        m.get_column(value).to_numpy(),
        color=colour,
        ls=ls,
        lw=1.8,
        label=f"{label} (n={n})",
    )
