"""Judging a paired table: the direction of each effect and the state of one comparison.

A metric's direction is "lower" / "higher" when its Holm-adjusted p (p_holm) is below alpha with
that sign of mean_diff (variant minus none), else "no_difference"; "not_enough_data" with fewer
than MIN_PAIRS pairs (no test). The verdict's flags (better_loss, worse_rank, paradox) combine
the directions of the deciding metrics (`judge`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .paradox import ALPHA, DECIDE, MIN_PAIRS


def _sig(row: dict | None, sign: int, alpha: float) -> bool:
    return (
        row is not None
        and row["p_holm"] is not None
        and row["p_holm"] < alpha
        and row["mean_diff"] is not None
        and np.sign(row["mean_diff"]) == sign
    )


def direction(row: dict | None, alpha: float) -> str:
    """ "lower" / "higher" (significant at p_holm < alpha with that sign), "no_difference", or
    "not_enough_data" (fewer than MIN_PAIRS pairs: no test)."""
    if row is None or row["n_pairs"] < MIN_PAIRS:
        return "not_enough_data"
    if _sig(row, -1, alpha):
        return "lower"
    if _sig(row, 1, alpha):
        return "higher"
    return "no_difference"


def judge(table: pl.DataFrame, optimizer: str, variant: str, alpha: float = ALPHA, metrics=DECIDE) -> dict:
    """better_loss, worse_rank, paradox, directions and the effect sizes of one comparison.

    better_loss: metrics[0] (final_val_loss) mean_diff < 0 at p_holm < alpha.
    worse_rank: metrics[1] and metrics[2] (final_pr_q, final_pr_k) both mean_diff < 0 at
    p_holm < alpha. A significant rank increase is direction "higher", never worse_rank.
    paradox: both. state: paradox | better_loss_only | worse_rank_only | no_effect (no claim
    supported: not the same as evidence of no difference) | not_enough_data | other (no claim,
    but a significant effect in the other direction; see directions).
    """
    rows = {
        r["metric"]: r
        for r in table.filter((pl.col("optimizer") == optimizer) & (pl.col("qk_norm") == variant)).iter_rows(named=True)
    }
    loss, q, k = (rows.get(m) for m in metrics)
    enough = all(r is not None and r["n_pairs"] >= MIN_PAIRS for r in (loss, q, k))
    better_loss = enough and _sig(loss, -1, alpha)
    worse_rank = enough and _sig(q, -1, alpha) and _sig(k, -1, alpha)
    opposite = enough and (_sig(loss, 1, alpha) or _sig(q, 1, alpha) or _sig(k, 1, alpha))
    if not enough:
        state = "not_enough_data"
    elif better_loss and worse_rank:
        state = "paradox"
    elif better_loss:
        state = "better_loss_only"
    elif worse_rank:
        state = "worse_rank_only"
    elif opposite:
        state = "other"
    else:
        state = "no_effect"
    effects = {
        m: {
            k_: r.get(k_)
            for k_ in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "p_wilcoxon", "sd_diff", "dz")
        }
        for m, r in rows.items()
    }
    any_row = loss or q or k or {}
    return dict(
        state=state,
        better_loss=bool(better_loss),
        worse_rank=bool(worse_rank),
        paradox=bool(better_loss and worse_rank),
        directions={m: direction(rows.get(m), alpha) for m in metrics},
        n_pairs=int(loss["n_pairs"]) if loss else 0,
        n_excluded_diverged=int(any_row.get("n_excluded_diverged") or 0),
        n_excluded_other=int(any_row.get("n_excluded_other") or 0),
        effects=effects,
    )


def comparisons(table: pl.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table.get_column("optimizer").to_list(), table.get_column("qk_norm").to_list())))
