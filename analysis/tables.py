"""Writing tables: CSV for machines, LaTeX for papers, Markdown for summary.md, text for the
terminal. Numbers keep full precision in CSV; the other formats round to 4 significant digits.

The LaTeX table is the CSV made readable (`latex_view`): headers in words (analysis.labels: "Mean
diff. [95% CI]", "p (Holm)", not mean_diff, ci_low, ci_high), each estimate and its interval in one
cell, metric names in words, the diagnostic columns (sd_diff, dz, p_wilcoxon, pairs lost) and the
text columns with one value in every row left to the CSV (the caption names those values)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from trainer.safeio import safe_mkdir, safe_write, safe_write_text

from .labels import header, metric_label, tex_math

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


_TEX_TABLE = str.maketrans(_TEX_ESCAPE)  # one C call per cell (a study's tables: 146k cells)


def _tex(s: str) -> str:
    return s.translate(_TEX_TABLE)


TEX_HIDDEN = ("sd_diff", "dz", "p_wilcoxon", "n_excluded_diverged", "n_excluded_other")  # in the CSV only
ESTIMATES = ("mean_diff", "coef", "slope")  # the column that ci_low / ci_high bound


def _with_interval(value, low, high) -> str:
    if value is None:
        return ""
    if low is None or high is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def latex_view(df: pl.DataFrame, caption: str = "") -> tuple[pl.DataFrame, dict[str, str], str]:
    """The table as a paper shows it: (frame, {column: header}, caption). An estimate and its
    `<x>_ci_low` / `<x>_ci_high` (or mean_diff / coef / slope and `ci_low` / `ci_high`) become one
    cell "x [low, high]"; `metric` values are words; TEX_HIDDEN columns and text columns with one
    value in every row (of two or more rows) go, the latter named in the caption."""
    bounds = {}
    for c in df.columns:
        if f"{c}_ci_low" in df.columns and f"{c}_ci_high" in df.columns:
            bounds[c] = (f"{c}_ci_low", f"{c}_ci_high")
    plain = next((c for c in ESTIMATES if c in df.columns and c not in bounds), None)
    if plain and "ci_low" in df.columns and "ci_high" in df.columns:
        bounds[plain] = ("ci_low", "ci_high")
    dropped = {b for pair in bounds.values() for b in pair} | {c for c in TEX_HIDDEN if c in df.columns}
    constant = []
    if df.height >= 2:
        for c in df.columns:
            if c not in dropped and df.schema[c] == pl.String and df.get_column(c).n_unique() == 1:
                constant.append(c)
    out = df.with_columns(
        pl.struct(c, *bounds[c])
        .map_elements(lambda r, c=c: _with_interval(r[c], *(r[b] for b in bounds[c])), return_dtype=pl.String)
        .alias(c)
        for c in bounds
    )
    if "metric" in out.columns:
        out = out.with_columns(pl.col("metric").map_elements(metric_label, return_dtype=pl.String))
    out = out.select([c for c in df.columns if c not in dropped and c not in constant])
    headers = {c: header(c) + (" [95% CI]" if c in bounds else "") for c in out.columns}
    notes = [f"{header(c)}: {df.get_column(c)[0]}" for c in constant if df.get_column(c)[0] is not None]
    if notes:
        caption = (caption + ". " if caption else "") + "In every row: " + "; ".join(notes)
    return out, headers, caption


def to_latex(df: pl.DataFrame, caption: str = "", headers: dict[str, str] | None = None) -> str:
    """A booktabs `tabular` in a `table`; `headers` (column -> header, plain text: analysis.labels)
    replace the column names."""
    headers = headers or {}
    align = "".join("r" if df.schema[c].is_numeric() else "l" for c in df.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(tex_math(_tex(headers.get(c, c))) for c in df.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(tex_math(_tex(fmt(v))) for v in r) + r" \\" for r in df.rows()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{tex_math(_tex(caption))}}}")
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
    """tables/<name>.csv (every column, full precision) and tables/<name>.tex (`latex_view`)."""
    folder = safe_mkdir(folder)
    safe_write(folder / f"{name}.csv", df.write_csv)
    view, headers, caption = latex_view(df, caption)
    if view.width < df.width:
        caption += f" (all columns: tables/{name}.csv)"
    safe_write_text(folder / f"{name}.tex", to_latex(view, caption, headers))
