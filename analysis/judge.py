"""Judging a paired table: the direction of each effect and the state of one comparison.

A metric's direction is "lower" / "higher" when its Holm-adjusted p (p_holm) is below alpha with
that sign of mean_diff (variant minus none), else "no_difference"; "not_enough_data" with fewer
than MIN_PAIRS pairs (no test). The verdict's flags (better_loss, worse_rank, paradox) and its
`state` combine the directions of the deciding metrics (`judge`): the val loss and the primary
rank metric, the sphere PR of q and k.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .paradox import ALPHA, DECIDE, MIN_PAIRS, SECONDARY


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


def state_of(loss: str, q: str, k: str) -> str:
    """What was found, in words, from the directions of the loss and the q and k rank:

    paradox                       lower loss and lower rank of both q and k
    better_loss_only              lower loss, no rank change
    worse_rank_only               lower rank of both q and k, no loss change
    no_effect                     nothing detected (not the same as evidence of no difference)
    <loss>_<rank> / <part>_only   any other combination, with loss better_loss | worse_loss and
                                  rank worse_rank (both lower) | higher_rank (a rise, no fall) |
                                  mixed_rank (one lower, one higher) | lower_rank_q_only |
                                  lower_rank_k_only
    """
    loss_part = {"lower": "better_loss", "higher": "worse_loss"}.get(loss)
    dirs = (q, k)
    if q == k == "lower":
        rank_part = "worse_rank"
    elif "lower" in dirs and "higher" in dirs:
        rank_part = "mixed_rank"
    elif "higher" in dirs:
        rank_part = "higher_rank"
    elif q == "lower":
        rank_part = "lower_rank_q"
    elif k == "lower":
        rank_part = "lower_rank_k"
    else:
        rank_part = None
    if loss_part == "better_loss" and rank_part == "worse_rank":
        return "paradox"
    if loss_part and rank_part:
        return f"{loss_part}_{rank_part}"
    if loss_part or rank_part:
        return f"{loss_part or rank_part}_only"
    return "no_effect"


def judge(
    table: pl.DataFrame, optimizer: str, variant: str, alpha: float = ALPHA, metrics=DECIDE, secondary=SECONDARY
) -> dict:
    """better_loss, worse_rank, paradox, state, directions and the effect sizes of one comparison.

    better_loss: metrics[0] (final_val_loss) mean_diff < 0 at p_holm < alpha.
    worse_rank: metrics[1] and metrics[2] (the sphere PR of q and k) both mean_diff < 0 at
    p_holm < alpha. A significant rank increase is direction "higher", never worse_rank.
    paradox: both. state: `state_of` the three directions, or not_enough_data (fewer than
    MIN_PAIRS pairs for any of them). directions: the deciding metrics and the `secondary` ones
    (the as-used and pre-norm PRs), each judged in its own Holm family.
    """
    rows = {
        r["metric"]: r
        for r in table.filter((pl.col("optimizer") == optimizer) & (pl.col("qk_norm") == variant)).iter_rows(named=True)
    }
    loss, q, k = (rows.get(m) for m in metrics)
    enough = all(r is not None and r["n_pairs"] >= MIN_PAIRS for r in (loss, q, k))
    better_loss = enough and _sig(loss, -1, alpha)
    worse_rank = enough and _sig(q, -1, alpha) and _sig(k, -1, alpha)
    state = state_of(*(direction(r, alpha) for r in (loss, q, k))) if enough else "not_enough_data"
    effects = {
        m: {
            k_: r.get(k_)
            for k_ in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "p_wilcoxon", "sd_diff", "dz")
        }
        for m, r in rows.items()
    }
    any_row = loss or q or k or {}
    shown = [*metrics, *(m for m in secondary if m in rows)]
    return dict(
        state=state,
        better_loss=bool(better_loss),
        worse_rank=bool(worse_rank),
        paradox=bool(better_loss and worse_rank),
        directions={m: direction(rows.get(m), alpha) for m in shown},
        n_pairs=int(loss["n_pairs"]) if loss else 0,
        n_excluded_diverged=int(any_row.get("n_excluded_diverged") or 0),
        n_excluded_other=int(any_row.get("n_excluded_other") or 0),
        effects=effects,
    )


def comparisons(table: pl.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table.get_column("optimizer").to_list(), table.get_column("qk_norm").to_list())))
