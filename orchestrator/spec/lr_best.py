"""lr_best.parquet: the table an LR study writes and a sweep's `lr: {from_study: ...}` reads.

Writer and reader in one place, so that the arm names and columns cannot drift apart (the rows
themselves are summed up from each arm's Optuna study by orchestrator.tune.study_storage.summarize).
"""

from __future__ import annotations

import pyarrow as pa

from trainer.config import ConfigError
from trainer.schema import LR_BEST_FILE, LR_BEST_SCHEMA
from trainer.storage import ResultsDir


def arm_name(optimizer: str, qk_norm: str, width: int) -> str:
    """An arm of the study: optimizer x qk_norm x width (readable, like the trial_id prefix)."""
    return f"{optimizer}_{qk_norm}_w{width}"


def read_lr_best(folder: str) -> dict[str, float]:
    """{arm: best_lr} from an lr_study folder, or a ConfigError naming what is missing."""
    try:
        study = ResultsDir(folder)
        if not study.exists(LR_BEST_FILE):
            raise ConfigError(
                f"grid.lr.from_study: no {LR_BEST_FILE} in {folder!r}; run python -m orchestrator.lr_study first"
            )
        rows = study.read_table(LR_BEST_FILE).to_pylist()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"grid.lr.from_study: cannot read {folder!r}: {exc}") from None
    return {row["arm"]: row["best_lr"] for row in rows if row.get("best_lr") is not None}


def write_lr_best(results: ResultsDir, rows: list[dict]) -> None:
    """The rows as <results>/lr_best.parquet (LR_BEST_SCHEMA)."""
    columns = {name: [r.get(name) for r in rows] for name in LR_BEST_SCHEMA.names}
    results.write_table(pa.table(columns, schema=LR_BEST_SCHEMA), LR_BEST_FILE)


def format_table(rows: list[dict]) -> str:
    header = ("arm", "best_lr", "best_loss", "n_trials", "pruned", "diverged")
    body = [
        (
            r["arm"],
            "n/a" if r["best_lr"] is None else f"{r['best_lr']:.3e}",
            "n/a" if r["best_loss"] is None else f"{r['best_loss']:.4f}",
            str(r["n_trials"]),
            str(r["n_pruned"]),
            str(r["n_diverged"]),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]

    def line(cells) -> str:  # the arm left-aligned, the numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])
