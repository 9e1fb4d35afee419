"""Writing tables: CSV for machines, LaTeX for papers, Markdown for summary.md, text for the
terminal. Numbers keep full precision in CSV; the other formats round to 4 significant digits."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from trainer.safeio import safe_mkdir, safe_write_text

_TEX_ESCAPE = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def to_markdown(df: pl.DataFrame, max_rows: int | None = None) -> str:
    if df.width == 0:
        return "_(no rows)_\n"
    rows = df.rows() if max_rows is None else df.head(max_rows).rows()
    out = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * df.width]
    out += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    if max_rows is not None and df.height > max_rows:
        out.append(f"\n_({df.height - max_rows} more rows in the CSV)_")
    return "\n".join(out) + "\n"


def _tex(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(c, c) for c in s)


def to_latex(df: pl.DataFrame, caption: str = "") -> str:
    align = "".join("r" if df.schema[c].is_numeric() else "l" for c in df.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_tex(c) for c in df.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_tex(fmt(v)) for v in r) + r" \\" for r in df.rows()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_text(df: pl.DataFrame, max_rows: int = 40) -> str:
    """Aligned plain text for the terminal."""
    if df.width == 0:
        return "(no rows)\n"
    rows = [[fmt(v) for v in r] for r in df.head(max_rows).rows()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(df.columns)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(df.columns), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if df.height > max_rows:
        out.append(f"... {df.height - max_rows} more rows")
    return "\n".join(out) + "\n"


def write_table(df: pl.DataFrame, folder: Path, name: str, caption: str = "") -> None:
    """tables/<name>.csv and tables/<name>.tex"""
    folder = safe_mkdir(folder)
    safe_write_text(folder / f"{name}.csv", df.write_csv())
    safe_write_text(folder / f"{name}.tex", to_latex(df, caption))
