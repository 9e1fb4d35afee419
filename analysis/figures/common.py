"""What every figure shares: the Agg backend, colours per arm, the LR axis, the arms of the sweep,
each arm's best LR, and one safe write per PNG."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt  # noqa: E402 - the figure modules take plt from here, after use("Agg")
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import NullFormatter, NullLocator  # noqa: E402

from trainer.safeio import safe_write_bytes  # noqa: E402

from ..paradox import BASELINE, variants  # noqa: E402

OPT_STYLE = {0: "-", 1: "--", 2: ":", 3: "-."}
ARM_KEYS = ("optimizer", "qk_norm", "width")


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
    """One colour per (optimizer, qk_norm), stable for a given set of arms."""
    opts = sorted(set(finals.get_column("optimizer").drop_nulls().to_list()))
    qks = [BASELINE] + variants(finals)
    cmap = plt.get_cmap("tab10" if len(opts) * len(qks) <= 10 else "tab20")
    keys = [(o, q) for o in opts for q in qks]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


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


def save_png(fig, path: Path) -> None:
    """PNG bytes in memory, then one safe write: never through a symlink, never half a file."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    safe_write_bytes(path, buf.getvalue())


def save_titled(fig, path: Path, title: str, partial: bool) -> Path:
    fig.suptitle(title + ("  [PARTIAL: sweep not finished]" if partial else ""), fontsize=11)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path
