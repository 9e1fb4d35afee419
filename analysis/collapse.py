"""Collapse tables: the decay fit (analysis.decay) of every trial's rank trajectories, and the
fits summarised per arm and LR.

- Per trial (`collapse_per_trial`): one row per (trial, rank metric, tensor); rate, floor, r2
  and the rate interval only for `fitted` rows, `rate_lower_bound_per_1k` for censored ones.
- Per arm and LR (`collapse_per_arm`): seeds are the replicates; LRs and inits are never pooled.
  Every fit status is counted, none dropped. The rate is the geometric mean over fitted seeds,

      rate = exp(mean(log r_i)),  95% t interval exp(mean +- t_{n-1} sd(log r) / sqrt(n)),

  biased low when falls were censored (the fastest ones): `rate_note` says so, and
  rate_median_censored_per_1k ranks censored falls instead of dropping them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .decay import CENSORED, FIT_FIELDS, FIT_STATUSES, N_PARAMS, fit_decay
from .features import as_strings
from .stats import CI_LEVEL, t_quantile

_KEYS = ("trial_id", "name", "tensor")


def _pad(curves: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Group curves by (trial_id, name, tensor) into NaN-padded (N, T) step and value arrays,
    the groups in sorted key order and each row's points by step.

    Curves usually arrive sorted already (features builds them that way): that is checked, and
    the sort is skipped, when every key changes upwards and the steps rise within a key."""
    cols = (*_KEYS, "step")
    c = curves.select(*cols, "value")
    if not c.height or c.select(pl.any_horizontal(pl.col(*cols).is_null().any())).item():
        return _pad_grouped(curves)
    new = _new_keys(c)
    step = c.get_column("step").to_numpy()
    keys = c.select(*_KEYS).filter(pl.Series(new))
    if not (((step[1:] > step[:-1]) | new[1:]).all() and _strictly_rising(keys)):
        c = c.sort(*cols)
        new = _new_keys(c)
        step = c.get_column("step").to_numpy()
        keys = c.select(*_KEYS).filter(pl.Series(new))
    # each point's place in the padded arrays, row * T + column (its index less its curve's start),
    # built in place: a study's 5.7M points held 0.3 GB of temporaries as row and column arrays
    starts = np.flatnonzero(new)
    del step, new  # read again below, one column at a time
    lengths = np.diff(np.r_[starts, c.height])
    T = int(lengths.max())
    flat = np.repeat(np.arange(starts.size) * T - starts, lengths)
    flat += np.arange(c.height)
    steps = np.full((starts.size, T), np.nan)
    vals = np.full((starts.size, T), np.nan)
    steps.ravel()[flat] = c.get_column("step").to_numpy()  # cast to float as assigned
    vals.ravel()[flat] = c.get_column("value").to_numpy()
    return keys, steps, vals


def _new_keys(c: pl.DataFrame) -> np.ndarray:
    """Per row, whether its (trial_id, name, tensor) differs from the previous row's."""
    changed = pl.any_horizontal(*(pl.col(k) != pl.col(k).shift(1) for k in _KEYS)).fill_null(True)
    return c.select(changed).to_series().to_numpy()


def _strictly_rising(keys: pl.DataFrame) -> bool:
    """Whether each row's (trial_id, name, tensor) sorts after the previous row's."""
    later = pl.lit(False)
    for k in reversed(_KEYS):
        prev = pl.col(k).shift(1)
        later = (pl.col(k) > prev) | ((pl.col(k) == prev) & later)
    return bool(keys.select(later.fill_null(True).all()).item())


def _pad_grouped(curves: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """`_pad` by sorting and grouping: also for null keys or steps."""
    g = (
        curves.sort("trial_id", "name", "tensor", "step")
        .group_by("trial_id", "name", "tensor", maintain_order=True)
        .agg(pl.col("step"), pl.col("value"))
    )
    lens = g.get_column("step").list.len().to_numpy().astype(np.int64)
    T = int(lens.max()) if lens.size else 0
    steps = np.full((g.height, T), np.nan)
    vals = np.full((g.height, T), np.nan)
    if g.height:
        flat_s = g.get_column("step").explode().to_numpy().astype(float)
        flat_v = g.get_column("value").explode().to_numpy().astype(float)
        row = np.repeat(np.arange(g.height), lens)
        col = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        steps[row, col], vals[row, col] = flat_s, flat_v
    return g.select("trial_id", "name", "tensor"), steps, vals


TRIAL_COLUMNS = (
    "trial_id",
    "optimizer",
    "qk_norm",
    "width",
    "lr",
    "seed",
    "status",
    "data_complete",
    "d_head",
    "metric",
    "tensor",
    "initial",
    "floor",
    "rate_per_1k_steps",
    "rate_per_m_tokens",
    "min_step",
    "min_value",
    "final",
    "min_norm",
    "final_norm",
    "recovery",
    "r2",
    "n_fall",
    "fit_status",
    "censored",
    "rate_ci_low_per_1k",
    "rate_ci_high_per_1k",
    "rate_lower_bound_per_1k",
    "n_params",
    "resid_dof",
    "rmse",
    "probe_dt1",
)


def min_steps(curves: pl.DataFrame, ids: list[str], tensors) -> dict[tuple[str, str], float]:
    """{(trial_id, tensor): the step of its PR minimum} for the trials `ids`: collapse_per_trial's
    min_step (the same padding and `fit_decay`), from their curves alone, so that the spectra figure
    can be drawn before the study's fits."""
    chosen = curves.filter(
        (pl.col("name") == "pr") & pl.col("trial_id").is_in(ids) & pl.col("tensor").is_in(list(tensors))
    )
    if not chosen.height:
        return {}
    keys, steps, vals = _pad(chosen)
    found = fit_decay(steps, vals)["min_step"]
    return {(str(tid), str(t)): float(m) for (tid, _, t), m in zip(keys.iter_rows(), found, strict=True)}


def collapse_per_trial(curves: pl.DataFrame, finals: pl.DataFrame) -> pl.DataFrame:
    """One row per (trial, rank metric, tensor) with the fit and the trajectory's landmarks.

    rate, floor, r2 and the rate interval are given for `fitted` rows only;
    rate_lower_bound_per_1k for censored rows (censored_fast, too_few_points)."""
    keys, steps, vals = _pad(curves)
    keys = as_strings(keys)  # Categorical in the features: String, as the finals it joins
    fit = fit_decay(steps, vals)
    del steps, vals  # 90 MB at 437,760 curves: not kept while the table is built
    extra = [c for c in ("init_key",) if c in finals.columns]  # an init axis: never pooled
    meta = finals.select(
        "trial_id",
        "optimizer",
        "qk_norm",
        "width",
        "lr",
        "seed",
        "d_head",
        "status",
        "data_complete",
        "tokens_per_step",
        *extra,
    )
    # The table's row order, found on the keys alone and given to the fits before the table is
    # built: sorting the finished table held two copies of it at once, the report's
    # memory peak at 13,680 trials. trial_id last: rows that tie on arm, LR and seed (trials of two
    # initialisations) keep one order on every machine (Polars' sort leaves ties in any order).
    order = (
        keys.with_row_index("_row")
        .join(meta.select(*ORDER_KEYS, "trial_id"), on="trial_id", how="inner")
        .sort(*ORDER_KEYS, "name", "tensor", "trial_id")
        .get_column("_row")
        .to_numpy()
    )
    keys = keys[order]
    df = keys.with_columns(pl.Series(k, fit[k][order], pl.Float64) for k in FIT_FIELDS).with_columns(
        pl.Series("n_fall", fit["n_fall"][order], pl.Int64),
        pl.Series("resid_dof", fit["resid_dof"][order], pl.Int64),
        pl.Series("fit_status", fit["status"][order], pl.String),
    )
    del fit, keys
    df = df.lazy().join(meta.lazy(), on="trial_id", how="inner", maintain_order="left")  # in `order`
    ok = pl.col("fit_status") == "fitted"
    per_1k = lambda c: pl.when(ok).then(pl.col(c) * 1000)  # noqa: E731
    return (
        df.with_columns(
            per_1k("rate").alias("rate_per_1k_steps"),
            pl.when(ok).then(pl.col("rate") / pl.col("tokens_per_step") * 1e6).alias("rate_per_m_tokens"),
            per_1k("rate_ci_low").alias("rate_ci_low_per_1k"),
            per_1k("rate_ci_high").alias("rate_ci_high_per_1k"),
            (pl.col("rate_lower_bound") * 1000).alias("rate_lower_bound_per_1k"),
            pl.when(ok).then(pl.col("floor")).alias("floor"),
            pl.when(ok).then(pl.col("r2")).alias("r2"),
            pl.when(ok).then(pl.col("rmse")).alias("rmse"),
            (pl.col("min_value") / pl.col("d_head")).alias("min_norm"),
            (pl.col("final") / pl.col("d_head")).alias("final_norm"),
            pl.col("fit_status").is_in(CENSORED).alias("censored"),
            pl.lit(N_PARAMS, pl.Int64).alias("n_params"),
            pl.col("dt1").alias("probe_dt1"),
        )
        .select(
            *TRIAL_COLUMNS[:9],  # trial_id .. d_head
            pl.col("name").alias("metric"),
            *TRIAL_COLUMNS[10:],
            *extra,
        )
        .fill_nan(None)
        .collect(engine="in-memory")
    )


ORDER_KEYS = ("optimizer", "qk_norm", "width", "lr", "seed")  # collapse_per_trial's rows: then metric, tensor, trial


CELL = ("optimizer", "qk_norm", "width", "lr")  # an arm at one LR: seeds are the replicates


def init_axis(df: pl.DataFrame) -> tuple[str, ...]:
    """("init_key",) when the frame carries an initialisation key (inits are never pooled)."""
    return ("init_key",) if "init_key" in df.columns else ()


ARM_QUANTITIES = ("min_step", "min_norm", "final_norm", "recovery")


def t_interval(x: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval over the entries of x (n - 1 dof); NaN interval
    below 2 entries, NaN everything when x is empty."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan
    half = t_quantile((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def censored_median(rates: np.ndarray, n_fast: int, n_slow: int) -> float:
    """Median over all falling trials, with too-fast falls ranked above every fitted rate and
    too-slow ones below; NaN when the median lands on a censored trial."""
    v = np.r_[np.full(n_slow, -np.inf), np.sort(np.asarray(rates, float)), np.full(n_fast, np.inf)]
    if v.size == 0:
        return np.nan
    med = float(np.median(v)) if np.isfinite(v[(v.size - 1) // 2]) and np.isfinite(v[v.size // 2]) else np.nan
    return med


def collapse_per_arm(
    per_trial: pl.DataFrame, n_boot: int | None = None, seed: int | None = None, level: float = CI_LEVEL
) -> pl.DataFrame:
    """One row per (optimizer, qk_norm, width, lr, metric, tensor) over the completed trials
    whose data is complete (seeds are the replicates; LRs are never pooled).

    - counts of every fit status; `n_fit_ok` = fitted, `n_censored` = censored_fast +
      too_few_points (falls too fast to fit, never dropped silently);
    - rate_per_1k_steps / rate_per_m_tokens: geometric mean over fitted trials with a t interval
      on log(rate) (n_fit_ok - 1 dof), back-transformed; biased low when n_censored > 0 (the
      fastest falls are the censored ones: see `rate_note`);
    - rate_median_censored_per_1k: median over all falling trials with censored ones ranked
      (null when the median is a censored trial); rate_lower_bound_per_1k: the smallest lower
      bound among the censored trials;
    - min_step, min_norm, final_norm, recovery: mean over trials with a t interval.
    n_boot and seed are unused: every interval is a t interval (no resampling)."""
    keys = (*CELL, *init_axis(per_trial), "metric", "tensor")
    # One pass over the groups on numpy arrays of the whole table, each group's rows found by one
    # group-by (its row numbers in the table's order), not a Polars filter per group (4,608 groups of
    # a study took 7.7 s that way) nor a sorted copy of the rows (the report's memory peak at 13,680
    # trials: 0.1 GB more than this). The groups in key order, each group's rows in table order: what
    # a stable sort on the keys gives.
    groups = (
        per_trial.lazy()
        .with_row_index("_row")
        .filter((pl.col("status") == "completed") & pl.col("data_complete"))
        .group_by(*keys)
        .agg(pl.col("_row"), pl.col("rate_lower_bound_per_1k").drop_nulls().min())
        .sort(*keys)
        .collect(engine="in-memory")
    )
    if groups.height == 0:
        return pl.DataFrame()
    status = (  # each row's fit status as its place in FIT_STATUSES (-1: none of them)
        per_trial.get_column("fit_status")
        .replace_strict({s: i for i, s in enumerate(FIT_STATUSES)}, default=-1, return_dtype=pl.Int8)
        .fill_null(-1)
        .to_numpy()
    )
    cols = {
        c: per_trial.get_column(c).cast(pl.Float64).to_numpy()
        for c in ("rate_per_1k_steps", "rate_per_m_tokens", *ARM_QUANTITIES)
    }
    members = [np.sort(r) for r in groups.get_column("_row").to_numpy()]
    lower = groups.get_column("rate_lower_bound_per_1k").to_list()
    key_rows = groups.select(*keys).rows()
    fitted_code = FIT_STATUSES.index("fitted")
    rows = []
    for i, idx in enumerate(members):
        row = dict(zip(keys, key_rows[i]))
        st = status[idx]
        count = dict(zip(FIT_STATUSES, np.bincount(st[st >= 0], minlength=len(FIT_STATUSES)).tolist()))
        row["n_trials"] = int(idx.size)
        row["n_fit_ok"] = count["fitted"]
        row["n_censored"] = count["censored_fast"] + count["too_few_points"]
        for s in FIT_STATUSES[1:-1]:
            row[f"n_{s}"] = count[s]
        fitted = st == fitted_code
        for q in ("rate_per_1k_steps", "rate_per_m_tokens"):
            x = cols[q][idx][fitted]
            x = x[np.isfinite(x) & (x > 0)]
            m, lo, hi = t_interval(np.log(x), level)
            row[q], row[f"{q}_ci_low"], row[f"{q}_ci_high"] = np.exp(m), np.exp(lo), np.exp(hi)
        rates = cols["rate_per_1k_steps"][idx][fitted]  # null is NaN here (per_trial holds no NaN)
        row["rate_median_censored_per_1k"] = censored_median(
            rates[~np.isnan(rates)], row["n_censored"], count["censored_slow"]
        )
        row["rate_lower_bound_per_1k"] = lower[i]
        falling = row["n_fit_ok"] + row["n_censored"] + count["censored_slow"]
        row["rate_note"] = (
            ""
            if not row["n_censored"]
            else f"{row['n_censored']}/{falling} falls too fast to fit (censored): the fitted mean is biased low"
            if row["n_fit_ok"]
            else f"no fit: {row['n_censored']}/{falling} falls too fast to fit (censored)"
        )
        for q in ARM_QUANTITIES:
            m, lo, hi = t_interval(cols[q][idx], level)
            row[q], row[f"{q}_ci_low"], row[f"{q}_ci_high"] = m, lo, hi
        row["interval"] = f"t {int(level * 100)}% over seeds (rate: on log scale)"
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None).sort(*keys).fill_nan(None)
