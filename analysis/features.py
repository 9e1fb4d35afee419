"""Reading the part files: raw metric rows reduced to head-averaged curves and losses (`Features`).

Rows are reduced to one value per (trial, step, metric, tensor), the mean over layers and heads,
before anything else sees them: read, filtered and grouped by Polars; in a batch in the trainer's
order (each mean's rows one run) the means are sums over the runs in numpy (analysis.head_runs),
the bits Polars' group-by gives.

Each part file is read once: the trials are taken in batches of about BATCH_ROWS rows (all
parts of a trial in one batch), each batch is read into memory with only the rows the features
use (predicate and projection pushdown), and every feature is computed from that frame, while
the next batch is read in a second thread (`ReadAhead`). Memory is two batches, whatever the size
of the sweep (benchmarks.report prints the report's time against one streaming pass).

Duplicate keys (the same trial_id, step, name, layer, head, tensor twice, as a replay after a
restore can leave behind) are resolved "last written wins": parts are scanned oldest first and
the last row of a key is kept. Deduplicating ten million rows costs more than the rest of the
report, so it runs only where duplicates can be: trials with two parts whose step ranges overlap
(seen in the footers), and trials where the fast path finds more rows than layers x heads in a
head average or two val_loss rows at one step.

Trials whose part files are unchanged since the last report come from the per-trial summary
cache (analysis.summary_cache): their files are not opened at all.

The frames' string keys (trial_id, name, tensor) are Categorical: as String, a study's trial ids
alone took 0.65 GB of the features (13,680 trials, 120M metric rows); as Categorical the
features take 0.34 GB. Compare them with strings as usual (== "pr", is_in([...]), sort: lexical);
`as_strings` turns a (reduced) frame's keys back into String before a join with the trials.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np
import polars as pl

from trainer.host import cpus
from trainer.schema import (
    ACTIVATION_METRICS,
    ACTIVATION_TENSORS,
    CLIP_METRICS,
    METRICS_DIR,
    METRICS_KEY,
    SPECTRUM_METRICS,
    STAGE_METRICS,
    STAGES,
    TENSORS,
)

from .contract import METRICS_PL, Part, overlapping, scan
from .head_runs import run_means, run_rows
from .loading import Results
from .summary_cache import FRAMES, merge_trials

RANK_METRICS = SPECTRUM_METRICS  # pr, pr_cov, erank, stable_rank
# The q and k read per layer and for robustness: as attention uses them, and on the unit sphere (the
# primary rank metric, analysis.finals.PRIMARY_STAGE).
LAYER_TENSORS = ("q", "k", *STAGES["sphere"])


@dataclass
class Features:
    # trial_id, name and tensor are Categorical in every frame (the module's docstring; `as_strings`)
    curves: pl.DataFrame  # trial_id, step, name, tensor, value (mean over layers x heads), n
    # the same for pr_centred, pr_bias, pr_centred_bias and norm_cv (q/k stages), at the last step of
    # each (trial_id, name, tensor) only (`last_step`); may be empty
    activation: pl.DataFrame
    # trial_id, step, layer, tensor (LAYER_TENSORS), value: pr, mean over heads, at the last step of
    # each (trial_id, layer, tensor) only
    layers: pl.DataFrame
    val_loss: pl.DataFrame  # trial_id, step, value
    ends: pl.DataFrame  # trial_id, name (train_loss | tokens), step_first, first, step_last, last
    # trial_id, step, value: max_logit, the largest over layers and heads (regular probes): what QK-Clip's
    # tau and the soft-cap bound, head by head
    logits: pl.DataFrame
    clip: pl.DataFrame  # trial_id, step, name (CLIP_METRICS), layer, head, value: per head, qk_clip trials only
    duplicate_rows: int  # rows dropped as duplicate keys
    duplicate_rows_by_trial: dict[str, int]  # the same per trial (those with any)
    deduplicated_trials: list[str]  # trial folders read through the deduplicating path
    metric_rows: int  # rows in the part files read (from their footers)
    spectra_rows: int


# Polars' in-memory engine: its group-by means are the same to the last bit on every run; the
# streaming engine (what "auto" picks in Polars 2) sums a group in parts that vary run to run.
ENGINE = "in-memory"
# Rows read per batch (from the footers): a batch of a study takes about 0.2 GB while it is reduced;
# larger batches were no faster at 120M rows (2.5M: 21.9 s, 1M: 20.9 s) and held more memory.
BATCH_ROWS = 1_000_000
# Every metric a feature reads: the batch is read with only these rows.
FEATURE_METRICS = tuple(
    dict.fromkeys(
        (
            *RANK_METRICS,
            *ACTIVATION_METRICS,
            *STAGE_METRICS,
            *CLIP_METRICS,
            "val_loss",
            "train_loss",
            "tokens",
            "max_logit",
        )
    )
)


HEAD = pl.col("layer").cast(pl.Int32) * 65_536 + pl.col("head").cast(pl.Int32)  # (layer, head) as one number
GROUP = ("trial_id", "step", "name", "tensor")  # a head mean's group (the curves' and activation's)
RUN = "_run"  # Boolean column of a batch read in head order: the row starts a run of one group


def in_head_order(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its rows in (layer, head) order, rows of one (layer, head) in the order they
    were (a stable sort): what `head_means` needs. Eager, because Polars' optimiser drops a lazy
    sort before a group-by, and a sort inside a mean (order does not matter to a mean in exact
    arithmetic)."""
    return frame.sort(HEAD, maintain_order=True)


def with_runs(frame: pl.DataFrame) -> pl.DataFrame | None:
    """`frame` with a RUN column when every run of rows (consecutive rows of one GROUP key) is in
    strictly rising (layer, head) order, else None. The trainer writes each group's heads as one
    run in that order, so a batch is usually in head order already and `in_head_order`'s sort (a
    fifth of the features' time) is not needed, and each head mean is a sum over one run
    (`_run_frames`, which checks that every group is one run: a group split over two runs could
    interleave its heads)."""
    start = pl.any_horizontal(pl.col(c).ne_missing(pl.col(c).shift(1)) for c in GROUP)
    rising = (HEAD > HEAD.shift(1)).fill_null(False)  # a row with no (layer, head) in a run: sort
    frame = frame.with_columns(start.fill_null(True).alias(RUN))
    return frame if frame.select((pl.col(RUN) | rising).all()).item() else None


def head_means(lf: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """The mean of `value` over the layers and heads of each group of `keys` (nulls left out, as
    mean() does; `n` the rows of the group), by Polars, over a frame `in_head_order`. A float sum
    depends on its order, and the parts can reach a group in an order that varies run to run (the
    same report once gave pr_centred means that differed in the last bit); in head order, and with
    the in-memory engine (a group's values summed in the frame's order), every group sums alike.
    A batch in the trainer's order takes `_run_frames` instead: the same sums, run by run."""
    return lf.group_by(keys).agg(pl.col("value").mean(), pl.len().alias("n"))


def last_step(lf: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """The rows of `lf` at the last step of each group of `keys`: all the report reads of the
    activation statistics and the per-layer PR (analysis.finals: each at its last step), kept
    instead of every step (a study's per-step activation frame was a third of the features'
    memory: 114 of 341 MB at 13,680 trials)."""
    return lf.filter(at_last_step(keys))


def at_last_step(keys: list[str]) -> pl.Expr:
    """True on the rows at the last step of their group of `keys` (what `last_step` keeps)."""
    return pl.col("step") == pl.col("step").max().over(keys)


PER_HEAD = pl.col("layer").is_not_null() & pl.col("head").is_not_null()
MODEL = pl.col("layer").is_null() & pl.col("head").is_null() & pl.col("tensor").is_null()
# Which rows each head mean averages (per row; with PER_HEAD): the curves, the activation
# statistics, the per-layer PR
CURVES = pl.col("name").is_in(RANK_METRICS) & pl.col("tensor").is_in(TENSORS)
ACTIVATION = pl.col("name").is_in(ACTIVATION_METRICS + STAGE_METRICS) & pl.col("tensor").is_in(ACTIVATION_TENSORS)
LAYERS = (pl.col("name") == "pr") & pl.col("tensor").is_in(LAYER_TENSORS)
LAYER_KEYS = ["trial_id", "step", "layer", "tensor"]
# the groups whose last step `last_step` keeps: the activation statistics, the per-layer PR
ACTIVATION_LAST = ["trial_id", "name", "tensor"]
LAYERS_LAST = ["trial_id", "layer", "tensor"]
# The rows `_scalar_queries` can read: every run of them has one of these names and no tensor
SCALARS = (
    pl.col("name").is_in(["val_loss", "train_loss", "tokens", "max_logit", *CLIP_METRICS]) & pl.col("tensor").is_null()
)
HEAD_FRAMES = ("curves", "activation", "layers")


def _queries(lf: pl.LazyFrame) -> list[pl.LazyFrame]:
    """The seven feature frames of `lf` (in head order: `in_head_order`), in FRAMES order."""
    curves = head_means(lf.filter(CURVES & PER_HEAD), list(GROUP))
    activation = last_step(head_means(lf.filter(ACTIVATION & PER_HEAD), list(GROUP)), ACTIVATION_LAST)
    layers = last_step(head_means(lf.filter(LAYERS & PER_HEAD), LAYER_KEYS).drop("n"), LAYERS_LAST)
    val, ends, logits, clip = _scalar_queries(lf)
    return [curves, val, ends, activation, layers, logits, clip]


def _scalar_queries(lf: pl.LazyFrame) -> list[pl.LazyFrame]:
    """The feature frames that are not head means: val_loss, ends, logits, clip."""
    val = (
        lf.filter((pl.col("name") == "val_loss") & MODEL)
        .group_by("trial_id", "step")
        .agg(pl.col("value").last(), pl.len().alias("n"))
    )
    ends = (
        lf.filter(pl.col("name").is_in(["train_loss", "tokens"]) & MODEL)
        .group_by("trial_id", "name")
        .agg(
            pl.col("step").min().alias("step_first"),
            pl.col("value").sort_by("step").first().alias("first"),
            pl.col("step").max().alias("step_last"),
            pl.col("value").sort_by("step").last().alias("last"),
            pl.col("step").n_unique().alias("n_steps"),  # completeness: a lost middle part shows here
        )
    )
    logits = (
        lf.filter((pl.col("name") == "max_logit") & pl.col("tensor").is_null() & PER_HEAD)
        .group_by("trial_id", "step")
        .agg(pl.col("value").max())
    )
    clip = lf.filter(pl.col("name").is_in(CLIP_METRICS) & pl.col("tensor").is_null() & PER_HEAD).select(
        "trial_id", "step", "name", "layer", "head", "value"
    )
    return [val, ends, logits, clip]


def _run_frames(frame: pl.DataFrame) -> list[pl.DataFrame] | None:
    """The seven feature frames of a batch `with_runs`, the head means summed run by run
    (analysis.head_runs: the bits Polars' group-by gives, without hashing four keys per row); None
    when a head mean's group is not one run of the batch (two runs of one key, or a run whose first
    row has no layer or head), and the batch is then sorted (`in_head_order`)."""
    starts = np.flatnonzero(frame.get_column(RUN).to_numpy())
    lengths = np.diff(starts, append=frame.height)
    first = frame.select(*GROUP, "layer", "head").gather(starts)  # each run's first row
    chosen = first.select(
        CURVES.alias("curves"),
        ACTIVATION.alias("activation"),
        LAYERS.alias("layers"),
        (CURVES | ACTIVATION | LAYERS).alias("any"),
        SCALARS.alias("scalars"),
    )
    averaged = first.filter(chosen.get_column("any"))
    if not averaged.select(PER_HEAD.all()).item() or averaged.select(GROUP).is_duplicated().any():
        return None
    picks = {name: np.flatnonzero(chosen.get_column(name).to_numpy()) for name in (*HEAD_FRAMES, "scalars")}

    def polars_means(keys):
        return lambda rows: head_means(rows.lazy(), keys).collect(engine=ENGINE)

    curves = run_means(frame, starts[picks["curves"]], lengths[picks["curves"]], list(GROUP), polars_means(list(GROUP)))
    # the activation statistics: only the runs `last_step` keeps are summed (a run is one head mean's
    # group, so the last step of each (trial, name, tensor) is known from the runs' first rows)
    at_last = picks["activation"][_last_runs(first[picks["activation"]], ACTIVATION_LAST)]
    activation = run_means(frame, starts[at_last], lengths[at_last], list(GROUP), polars_means(list(GROUP)))
    # the per-layer PR: within each chosen run (layers rise in it), each layer's heads are a run
    parent_starts, parent_lengths = starts[picks["layers"]], lengths[picks["layers"]]
    rows = run_rows(parent_starts, parent_lengths)
    layer = frame.get_column("layer").gather(rows).to_numpy()
    begins = np.ones(rows.size, dtype=bool)
    begins[1:] = layer[1:] != layer[:-1]
    begins[np.cumsum(parent_lengths) - parent_lengths] = True  # a run's first row begins a layer too
    at = np.flatnonzero(begins)
    layer_starts, layer_lengths = rows[at], np.diff(at, append=rows.size)
    layers = run_means(frame, layer_starts, layer_lengths, LAYER_KEYS, polars_means(LAYER_KEYS)).drop("n")
    # the other frames from the rows of the runs they can read (a run's rows share its name and tensor)
    scalars = frame[run_rows(starts[picks["scalars"]], lengths[picks["scalars"]])]
    val, ends, logits, clip = pl.collect_all(_scalar_queries(scalars.lazy()), engine=ENGINE)
    return [
        curves,
        val,
        ends,
        activation,
        last_step(layers.lazy(), LAYERS_LAST).collect(engine=ENGINE),
        logits,
        clip,
    ]


def _last_runs(first: pl.DataFrame, keys: list[str]) -> np.ndarray:
    """The positions in `first` (one row per run: its group's keys) of the runs at the last step of
    their `keys` group: the runs whose head means `last_step` would keep, in their order."""
    return np.flatnonzero(first.select(at_last_step(keys)).to_series().to_numpy())


def _dedupe(lf: pl.LazyFrame) -> pl.LazyFrame:
    # Within a group Polars keeps the input order, and the scan is oldest part first. The groups
    # come out in an order that varies run to run, so sort them: the head means downstream then
    # sum in one order and the report is the same to the last digit every time.
    return lf.group_by(list(METRICS_KEY)).agg(pl.col("value").last()).sort(list(METRICS_KEY))


def _overfull(curves: pl.DataFrame, val: pl.DataFrame, trials: pl.DataFrame) -> set[str]:
    """Trials whose fast-path groups hold more rows than one per layer and head."""
    expected = trials.select(
        pl.col("trial_id").cast(pl.Categorical), (pl.col("depth") * pl.col("n_heads")).alias("expected")
    )
    over = (
        curves.join(expected, on="trial_id", how="left")
        .filter(pl.col("expected").is_not_null() & (pl.col("n") > pl.col("expected")))
        .get_column("trial_id")
        .unique()
        .to_list()
    )
    over += val.filter(pl.col("n") > 1).get_column("trial_id").unique().to_list()
    return set(over)


KEYS = ("trial_id", "name", "tensor")  # the string columns the features group by
# Each feature frame's row order, by its name (summary_cache.FRAMES: the names in `_queries` order):
# trial first, so frames of trials taken in trial-id order, each sorted, concatenate into one sorted
# frame (no sort of the whole study).
ORDER = {
    "curves": ("trial_id", "name", "tensor", "step"),
    "val_loss": ("trial_id", "step"),
    "ends": ("trial_id", "name"),
    "activation": ("trial_id", "name", "tensor", "step"),
    "layers": ("trial_id", "layer", "tensor", "step"),
    "logits": ("trial_id", "step"),
    "clip": ("trial_id", "name", "layer", "head", "step"),
}


def _categorical(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its string KEYS as Categorical: grouping by them costs about half as much, and a
    study's features hold a third of the memory (the module's docstring)."""
    return frame.with_columns(pl.col(c).cast(pl.Categorical) for c in KEYS if c in frame.columns)


def as_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """A feature frame (or one reduced from it) with its Categorical keys back as String, the type
    trials.parquet and every report table has: before a join with the trials or the finals."""
    return frame.with_columns(pl.col(c).cast(pl.String) for c in KEYS if c in frame.columns)


def _read_batch(parts: list[Part]) -> pl.DataFrame:
    """The rows of `parts` the features use, read into memory once, the string keys Categorical,
    in one chunk (a batch read in a chunk per file groups a third slower; the name and tensor kept
    String, as read, and in a chunk per file, made the reductions slower by more than the cast).

    The trial_id column is not read when every part's footer names the one trial its rows hold
    (`Part.trial_id`, what the trainer writes): each row's trial is its part's, the parts read one
    after the other, each whole (`Part.rows` rows; the metrics the features use are kept after
    that, on the Categorical name: as fast as a filter inside the scan, 121 batches of a study
    17-19 CPU-s either way). Reading the column and casting it to Categorical took a quarter of
    the features' time (120M rows: 40-byte strings, row by row); this is a gather of one
    Categorical value per part. A part holding other than its footer's count of rows (replaced
    since its footer was read) has its trials read from the column, never shifted onto a
    neighbour's rows."""
    keep = pl.col("name").is_in(FEATURE_METRICS)
    if all(p.trial_id is not None or not p.rows for p in parts):
        others = [c for c in METRICS_PL.names() if c != "trial_id"]
        frame = scan(parts, METRICS_PL, use_statistics=False).select(others).collect(engine=ENGINE)
        rows = np.array([p.rows for p in parts], dtype=np.int64)
        if int(rows.sum()) == frame.height:
            ids = pl.Series("trial_id", [p.trial_id for p in parts], dtype=pl.Categorical).gather(
                np.repeat(np.arange(len(parts)), rows)
            )
            return _categorical(frame).insert_column(0, ids).filter(keep).rechunk()
    # a part whose footer names no trial, or one that holds other than its footer's row count
    frame = scan(parts, METRICS_PL, use_statistics=False).collect(engine=ENGINE)
    return _categorical(frame).filter(keep).rechunk()


def _reduce(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """The feature frames of a batch (`_read_batch`), every head mean summed in (layer, head) order:
    run by run when each group is one run in that order (`with_runs`, `_run_frames`), else by
    Polars after `in_head_order` (both sum a group's values in the same order, the same way: the
    same bits)."""
    ordered = with_runs(frame)
    if ordered is not None:
        found = _run_frames(ordered)
        if found is not None:
            return found
    return pl.collect_all(_queries(in_head_order(frame).lazy()), engine=ENGINE)


class ReadAhead:
    """Reads the next batch (`_read_batch`) in a second thread while the report reduces the one
    before it: Polars releases the GIL, and the reductions leave a CPU idle about a third of the
    time (the features took 26.7 CPU-seconds over 16.1 s at 120M rows). A read is used only for
    the very parts it was started on; anything else (a batch read again after a part was skipped)
    is read where it is asked for, so the frames are the ones a plain read gives, and an error of
    a read ahead is raised where that batch is read (inside `Results.read`, which skips the part)."""

    def __init__(self, pool: ThreadPoolExecutor | None) -> None:
        self.pool = pool  # None: no thread, every read where it is asked for
        self.ahead: tuple[tuple, Future] | None = None  # (the parts' paths, their read)

    def start(self, parts: list[Part]) -> None:
        if self.pool is not None:
            self.ahead = (tuple(p.path for p in parts), self.pool.submit(_read_batch, parts))

    def read(self, parts: list[Part]) -> pl.DataFrame:
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead[0] == tuple(p.path for p in parts):
            return ahead[1].result()
        if ahead is not None:  # started on other parts: let it end, unused (its error too)
            wait([ahead[1]])
        return _read_batch(parts)


def _clean_parts(res: Results, folders: set[str], suspects: set[str]) -> list[Part]:
    """The parts of the trial `folders` (as `res` lists them now) that the fast path reads: those
    of trials that are not `suspects`."""
    return [p for p in res.metric_parts if p.folder in folders and p.folder not in suspects]


def _collect(
    parts: list[Part], trials: pl.DataFrame, suspects: set[str], read=_read_batch
) -> tuple[list[pl.DataFrame], dict, set[str]]:
    """The feature frames of `parts` (whole trials), the duplicate rows dropped per trial, and the
    trial folders read through the deduplicating path (`read`: the fast path's reader of the clean
    parts, `_read_batch` or a `ReadAhead`'s)."""
    clean = [p for p in parts if p.folder not in suspects]
    fast = _reduce(read(clean))
    over = _overfull(fast[0], fast[1], trials)
    if over:
        suspects = suspects | {f"trial_id={t}" for t in over}
        fast = [f.filter(~pl.col("trial_id").is_in(list(over))) for f in fast]
    slow_parts = [p for p in parts if p.folder in suspects]
    if not slow_parts:
        return _sorted(fast), {}, suspects
    raw = scan(slow_parts, METRICS_PL)
    dd = in_head_order(_categorical(_dedupe(raw).collect(engine=ENGINE))).lazy()
    *slow, n_raw, n_dd = pl.collect_all(
        _queries(dd) + [raw.group_by("trial_id").len(), dd.group_by("trial_id").len()], engine=ENGINE
    )
    slow_ids = set()
    for f in slow:
        slow_ids |= set(f.get_column("trial_id").unique().to_list())
    frames = [
        pl.concat([f.filter(~pl.col("trial_id").is_in(list(slow_ids))), s], how="vertical") for f, s in zip(fast, slow)
    ]
    kept = dict(as_strings(n_dd).iter_rows())
    dup = {t: n - kept.get(t, 0) for t, n in n_raw.iter_rows() if n > kept.get(t, 0)}
    return _sorted(frames), dup, suspects


def _sorted(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    return [sort_rows(f, ORDER[name]) for f, name in zip(frames, FRAMES, strict=True)]


def sort_rows(frame: pl.DataFrame, keys: tuple[str, ...]) -> pl.DataFrame:
    """`frame.sort(*keys)`, Categorical keys in lexical order as Polars sorts them, by one numpy
    lexsort of each key's rank: Polars compares a Categorical's strings row by row, and sorting a
    batch's curves that way took 2.2 CPU-s of 2.6 for all seven frames (120M rows); ranking the
    batch's few distinct values and sorting integers, 0.6. Stable, so rows with equal keys keep
    their order. Keys with nulls, or of other types, are sorted by Polars."""
    columns = [frame.get_column(k) for k in keys]
    if frame.height < 2 or any(
        c.null_count() or not (c.dtype == pl.Categorical or c.dtype.is_numeric()) for c in columns
    ):
        return frame.sort(*keys)
    return frame[np.lexsort([_lexical_ranks(c) for c in reversed(columns)])]


def _lexical_ranks(column: pl.Series) -> np.ndarray:
    """Each value's rank among the column's distinct values (a Categorical by its string, as Polars
    sorts one); a numeric column as it is."""
    if column.dtype != pl.Categorical:
        return column.to_numpy()
    codes = column.to_physical().to_numpy()
    distinct = column.unique()
    distinct_codes = distinct.to_physical().to_numpy()
    by_code = np.argsort(distinct_codes)
    rank = np.empty(len(distinct), dtype=np.int64)
    rank[np.argsort(np.array(distinct.cast(pl.String).to_list(), dtype=object), kind="stable")] = np.arange(
        len(distinct)
    )
    return rank[by_code][np.searchsorted(distinct_codes[by_code], codes)]


def batches(parts: list[Part], rows: int = BATCH_ROWS) -> list[list[Part]]:
    """`parts` in batches of whole trials (every part of a trial folder in one batch, in the order
    given), each of about `rows` rows or one trial."""
    by_folder: dict[str, list[Part]] = {}
    for p in parts:
        by_folder.setdefault(p.folder, []).append(p)
    out, batch, n = [], [], 0
    for ps in by_folder.values():
        size = sum(p.rows for p in ps)
        if batch and n + size > rows:
            out.append(batch)
            batch, n = [], 0
        batch += ps
        n += size
    if batch:
        out.append(batch)
    return out


def _read_all(res: Results, parts: list[Part]) -> tuple[list[pl.DataFrame], dict, set[str]]:
    """`_collect` over `parts` batch by batch, each batch through `Results.read` (a part that fails
    to read is skipped and named, and its batch read again without it), the next batch read ahead
    while one is reduced (`ReadAhead`, with two CPUs or more)."""
    suspects = overlapping(parts)
    found, dup, slow = [[] for _ in range(7)], {}, set()
    parts = sorted(parts, key=lambda p: unquote(p.folder.removeprefix("trial_id=")))  # stable: oldest first kept
    plan = [{p.folder for p in batch} for batch in batches(parts, BATCH_ROWS)]
    with ThreadPoolExecutor(1) if len(plan) > 1 and cpus() > 1 else nullcontext() as pool:
        ahead = ReadAhead(pool)

        def read(clean: list[Part], following: set[str] | None) -> pl.DataFrame:
            frame = ahead.read(clean)
            if following is not None:
                ahead.start(_clean_parts(res, following, suspects & following))
            return frame

        for i, folders in enumerate(plan):
            following = plan[i + 1] if i + 1 < len(plan) else None
            frames, d, s = res.read(
                METRICS_DIR,
                lambda folders=folders, following=following: _collect(
                    [p for p in res.metric_parts if p.folder in folders],
                    res.trials,
                    suspects & folders,
                    lambda clean: read(clean, following),
                ),
                trials=[unquote(f.removeprefix("trial_id=")) for f in folders],
            )
            for acc, f in zip(found, frames):
                acc.append(f)
            dup, slow = dup | d, slow | s
    empty = pl.collect_all(_queries(_categorical(pl.DataFrame(schema=METRICS_PL)).lazy()), engine=ENGINE)
    return [pl.concat([e, *acc], how="vertical", rechunk=False) for e, acc in zip(empty, found)], dup, slow


def build_features(res: Results) -> Features:
    """Collect curves and losses through `Results.read`: a part that fails to read (a corrupt page,
    a part removed since the listing) is skipped, named and counted, and the rest kept. Trials the
    summary cache holds unchanged (`Results.cached_folders`) are taken from it, their files not
    opened."""
    known = res.cached_folders()
    fresh = [p for p in res.metric_parts if p.folder not in known]
    frames, dup, suspects = _read_all(res, fresh)  # each sorted (ORDER)
    frames[1] = frames[1].select("trial_id", "step", "value")  # val_loss, as Features holds it
    cached = res.cached_features()  # the same frames, sorted alike (analysis.summary_cache)
    if cached is not None:
        frames = [merge_trials(f, c) for f, c in zip(frames, cached.frames)]
        dup |= cached.duplicate_rows
        suspects |= cached.deduplicated
    curves, val, ends, activation, layers, logits, clip = frames
    return Features(
        curves=curves,
        activation=activation,
        layers=layers,
        val_loss=val,
        ends=ends,
        logits=logits,
        clip=clip,
        duplicate_rows=sum(dup.values()),
        duplicate_rows_by_trial=dup,
        deduplicated_trials=sorted(suspects),
        metric_rows=sum(p.rows for p in res.metric_parts),
        spectra_rows=sum(p.rows for p in res.spectra_parts),
    )


def check_drawn_spectra(res: Results, finals: pl.DataFrame, best: pl.DataFrame) -> int:
    """Read, through `Results.read`, the spectra parts of the trials the spectra figure draws (each
    arm's lowest completed seed at its best LR: analysis.figures.spectra) before the verdict is
    built: a part that fails to read (a corrupt page, a part removed by a compaction since the
    listing) is skipped and named here, so the report says partial, and the figure reads the parts
    that are left. Returns the rows read."""
    if not res.spectra_parts or best.height == 0:
        return 0
    keys = [k for k in ("optimizer", "qk_norm", "width", "init_key") if k in best.columns and k in finals.columns]
    chosen = (
        finals.filter(pl.col("status") == "completed")
        .join(best.select(*keys, pl.col("best_lr").alias("lr")), on=[*keys, "lr"], how="semi", nulls_equal=True)
        .sort("seed")
        .group_by(keys, maintain_order=True)
        .first()
    )
    ids = chosen.get_column("trial_id").to_list()
    if not ids:
        return 0
    return res.spectra_of(ids).height  # kept: the spectra figure filters this read, not a second one
