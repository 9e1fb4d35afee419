"""Find a sweep folder, check its files against the contract, and scan them lazily
(`analysis.load(results_dir)` is `load` here; the module was analysis/load.py).

Nothing here collects the metrics: `Results.metrics` and `Results.spectra` are Polars lazy scans
over the part files that passed the checks, in the order they were written (file mtime, then
name), so that "last written wins" is the order of rows in the scan.

Checks, in the order they run (all before anything is written):
- the folder exists and holds `trials.parquet` (or holds exactly one sweep folder that does;
  local or a URI: analysis.paths); every path is read literally, never as a glob pattern;
- `trials.parquet` and every part's footer match `trainer.schema` (analysis.contract);
- a part whose footer cannot be read (truncated, not Parquet), that is a symlink, or whose
  trial_id disagrees with its folder `trial_id=<id>`, is skipped and reported by name.

Several folders of one study (the chunks of `orchestrator.sweep --chunk I/N`, copied back side by
side) are read as one dataset by `load_results([dir1, dir2, ...])` (`combine`): each folder is
checked as above, then they must be one study (the same `train:` settings and corpus hash in every
sweep.json) and hold disjoint trials (a trial_id in two folders, in trials.parquet or as a part
folder, is refused by name); anything else is a ResultsError naming the folder and the setting.

Every read of the parts' data goes through `Results.read` (or `Results.collect`): a part that fails
while the data is read (a corrupt page behind a good footer, a part removed by a compaction since
the listing) is skipped, named and counted in `Results.skipped`, and the read runs again without
it. Any skipped part makes the results partial (`Results.partial_reasons`).

The trials are then labelled for the analysis (analysis.arms.label_optimizers): a Muon trial with
per-head orthogonalisation (`muon_per_head` in config_json) has optimizer "muon_per_head", its own arm.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

import polars as pl

from trainer.errors import short_repr
from trainer.schema import METRICS_DIR, SPECTRA_DIR, SWEEP_JSON, TRIALS_FILE

from .arms import label_optimizers
from .contract import (
    METRICS_PL,
    SPECTRA_PL,
    Part,
    check_parts,
    find_unreadable,
    read_sweep_json,
    read_trials_frame,
    scan,
)
from .paths import Listed, ResultsError, UriPath, find_sweep_dir, list_part_files
from .summary_cache import CachedFeatures, SummaryCache, merge_trials
from .summary_cache import save as save_cache

__all__ = ["Folder", "Results", "ResultsError", "combine", "load", "load_results"]

SCHEMAS = {METRICS_DIR: METRICS_PL, SPECTRA_DIR: SPECTRA_PL}
# What a read of a part that fails raises: Polars' errors ("Invalid thrift" from a corrupt page, ...),
# the OS's (FileNotFoundError for a part removed since the listing) and a panic in the Parquet decoder.
READ_ERRORS = (pl.exceptions.PolarsError, OSError, pl.exceptions.PanicException)
T = TypeVar("T")
# A chunk's sweep name: <study>-chunk<I>of<N> (orchestrator.spec.chunks.Chunk.name)
# sweep.json keys about one folder's own trials and runs, not the study's (left out by `combine`)
FOLDER_KEYS = ("chunk", "trial_ids", "grid", "runs", "results")
CHUNK_NAME = re.compile(r"^(?P<study>.+)-chunk(?P<index>\d+)of(?P<count>\d+)$")


@dataclass(frozen=True)
class Folder:
    """One of several results folders read as one study (`combine`)."""

    path: Path | UriPath  # the sweep folder
    sweep: dict | None  # its sweep.json
    trials: int  # its trials (rows of its trials.parquet, one per trial_id)

    @property
    def name(self) -> str:
        return str((self.sweep or {}).get("name") or self.path.name)


@dataclass
class Results:
    sweep_dir: Path | UriPath  # a local folder, or a pyarrow filesystem URI (str() gives the URI)
    sweep: dict | None  # sweep.json, None when absent (a standalone trial)
    # one row per trial: the TRIALS_SCHEMA columns, optimizer labelled (analysis.arms), and muon_per_head
    trials: pl.DataFrame
    metric_parts: list[Part]  # oldest first: the scan order is the order written
    spectra_parts: list[Part]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicate_trial_rows: int = 0  # repeated trial_id rows in trials.parquet (last kept)
    # the folders read as one study (`combine`), first given first; empty for one folder
    folders: list[Folder] = field(default_factory=list)
    # per local folder read with the summary cache (`load_results(..., cache=True)`): the folder,
    # its cache as read, and its part files as listed
    caches: list[tuple[Path, SummaryCache, dict[str, list[Listed]]]] = field(default_factory=list)
    # (trial ids, their spectra rows): the one read of `spectra_of`
    _spectra_memo: tuple[set[str], pl.DataFrame] | None = field(default=None, repr=False)

    def cached_folders(self) -> set[str]:
        """The trial folders whose summaries come from the cache (their files are not read)."""
        return {f for _, c, _ in self.caches for f in c.folders}

    def cached_features(self) -> CachedFeatures | None:
        """The cached feature rows of `cached_folders`, every folder's together (each frame in trial
        order, as analysis.features.ORDER sorts it); None if none. Handed over once (the caches
        drop them: SummaryCache.features), for build_features."""
        found = [c.features() for _, c, _ in self.caches]
        found = [f for f in found if f is not None]
        if not found:
            return None
        return CachedFeatures(
            frames=[reduce(merge_trials, fs) for fs in zip(*(f.frames for f in found))],
            duplicate_rows={t: n for f in found for t, n in f.duplicate_rows.items()},
            deduplicated=set().union(*(f.deduplicated for f in found)),
        )

    def save_caches(self, features) -> list[str]:
        """Write each cached folder's summary cache (its parts as read or skipped now, and its
        trials' feature rows); returns the warnings of those that could not be written."""
        warnings = []
        parts = {METRICS_DIR: self.metric_parts, SPECTRA_DIR: self.spectra_parts}
        for sweep_dir, cache, listed in self.caches:
            if cache.folders == {e.path.parent.name for entries in listed.values() for e in entries}:
                continue  # every trial came from the cache: it is up to date
            mine = {d: [p for p in ps if _under(p.path, sweep_dir)] for d, ps in parts.items()}
            skipped = [(path, why) for path, why in self.skipped if _under(Path(path), sweep_dir)]
            problem = save_cache(sweep_dir, listed, mine, skipped, features)
            if problem:
                warnings.append(f"{sweep_dir}: {problem}")
        return warnings

    @property
    def metrics(self) -> pl.LazyFrame:
        """A lazy scan of the metrics parts (collect it with `collect("metrics", ...)` to skip a
        part that fails to read instead of raising)."""
        return self.scan(METRICS_DIR)

    @property
    def spectra(self) -> pl.LazyFrame:
        """A lazy scan of the spectra parts (see `metrics`)."""
        return self.scan(SPECTRA_DIR)

    def parts(self, dataset: str, trials: Iterable[str] | None = None) -> list[Part]:
        """The parts of "metrics" or "spectra" still read (skipped ones removed), oldest first; only
        those of `trials` (trial ids) when given."""
        if dataset not in SCHEMAS:
            raise ValueError(f"dataset must be one of {', '.join(SCHEMAS)}, not {dataset!r}")
        parts = self.metric_parts if dataset == METRICS_DIR else self.spectra_parts
        if trials is None:
            return parts
        folders = {f"trial_id={t}" for t in trials}
        return [p for p in parts if p.folder in folders]

    def scan(self, dataset: str, trials: Iterable[str] | None = None) -> pl.LazyFrame:
        """A lazy scan of a dataset's parts (of `trials` only, when given), trial_id a String, rows
        in the order written."""
        return scan(self.parts(dataset, trials), SCHEMAS[dataset])

    def read(self, dataset: str, read: Callable[[], T], trials: Iterable[str] | None = None) -> T:
        """`read()`, which collects scans over the dataset's parts (of `trials` only, when given) as
        they are when it runs; when it fails, each of those parts is read in full, the ones that
        fail are skipped (named in `skipped`, with the reason) and `read()` runs again without
        them. The one path every read of the report takes: a corrupt page behind a good footer, or
        a part removed between the listing and the read (a compaction), costs that part, never the
        report."""
        trials = None if trials is None else list(trials)
        while True:
            try:
                return read()
            except READ_ERRORS:
                bad = find_unreadable(self.parts(dataset, trials), SCHEMAS[dataset])
                if not bad:
                    raise
                for path, reason in bad:
                    self.skip(path, reason)

    def collect(
        self,
        dataset: str,
        query: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
        trials: Iterable[str] | None = None,
    ) -> pl.DataFrame:
        """`query(scan)` collected through `read`, over the parts of `trials` only when given (the
        other parts are then not even opened): a part that fails to read is skipped and named.

        >>> res.collect("spectra", lambda lf: lf.filter(pl.col("tensor") == "q"), trials=["adamw_none_w64_..."])
        """
        query = query or (lambda lf: lf)
        trials = None if trials is None else list(trials)
        return self.read(dataset, lambda: query(self.scan(dataset, trials)).collect(), trials)

    def spectra_of(self, trials: Iterable[str]) -> pl.DataFrame:
        """Every spectra row of `trials`, through `collect` (a part that fails is skipped and
        named), read once per Results: a later call for trials already read filters that read."""
        trials = list(dict.fromkeys(trials))
        memo = self._spectra_memo
        if memo is None or not set(trials) <= memo[0]:
            memo = self._spectra_memo = (set(trials), self.collect(SPECTRA_DIR, trials=trials))
        return memo[1].filter(pl.col("trial_id").is_in(trials))

    @property
    def name(self) -> str:
        return str((self.sweep or {}).get("name") or self.sweep_dir.name)

    @property
    def location(self) -> str:
        """Where the results are: the folder, or the folders read as one, joined by ', '."""
        return ", ".join(str(f.path) for f in self.folders) if self.folders else str(self.sweep_dir)

    def partial_reasons(self) -> list[str]:
        """Why the results are not a finished sweep (empty when they are). With several folders
        (`combine`) each folder's own reasons are named by the folder, and chunks of a study
        missing from the folders read are a reason."""
        reasons = []
        n_running = self.trials.filter(pl.col("status") == "running").height
        if n_running:
            reasons.append(f"{n_running} trial(s) still running")
        if self.folders:
            labels = _labels(self.folders)
            for f in self.folders:
                reasons += [f"{labels[f.path]}: {r}" for r in _sweep_reasons(f.sweep, f.trials)]
            reasons += _missing_chunks(self.folders)
        elif self.sweep is not None:
            reasons += _sweep_reasons(self.sweep, self.trials.height)
        if self.skipped:  # their rows are not in the tables (skipped_files names each, with why)
            reasons.append(
                f"{len(self.skipped)} part file(s) skipped (unreadable, a symlink, removed while being read, or in"
                " another trial's folder): see skipped_files"
            )
        return reasons

    def skip(self, path: Path, reason: str) -> None:
        """Drop a part found unreadable after the footer checks (named in `skipped`)."""
        if all(p != str(path) for p, _ in self.skipped):
            self.skipped.append((str(path), reason))
        self.metric_parts = [p for p in self.metric_parts if p.path != path]
        self.spectra_parts = [p for p in self.spectra_parts if p.path != path]


def _sweep_reasons(sweep: dict | None, n_trials: int) -> list[str]:
    """Why one folder's sweep.json says its sweep has not finished."""
    if sweep is None:
        return []
    reasons = []
    if sweep.get("finished_at") in (None, ""):
        reasons.append("sweep.json has no finished_at (the sweep has not finished)")
    planned = sweep.get("n_trials")
    if isinstance(planned, int) and n_trials < planned:
        reasons.append(f"{n_trials} of {planned} planned trials exist")
    return reasons


def _labels(folders: list[Folder]) -> dict:
    """Each folder by its name (gpu_study-chunk3of54), or its full path when two share a name."""
    names = [f.path.name for f in folders]
    return {f.path: f.path.name if names.count(f.path.name) == 1 else str(f.path) for f in folders}


def study_name(sweep_name: str) -> str:
    """The study a sweep belongs to: its name without a chunk's -chunkIofN suffix."""
    m = CHUNK_NAME.match(sweep_name)
    return m.group("study") if m else sweep_name


def _missing_chunks(folders: list[Folder]) -> list[str]:
    """When every folder is a chunk of one study (-chunkIofN, the same N): the chunks not read."""
    found = [CHUNK_NAME.match(f.name) for f in folders]
    if not all(found) or len({(m.group("study"), int(m.group("count"))) for m in found}) != 1:
        return []
    study, count = found[0].group("study"), int(found[0].group("count"))
    missing = sorted(set(range(1, count + 1)) - {int(m.group("index")) for m in found})
    if not missing:
        return []
    shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
    return [f"{len(missing)} of {count} chunks of {study} are not among the folders read (chunk {shown})"]


def _train_settings(sweep: dict) -> dict:
    """sweep.json's `train:` settings (config.train), {} when it records none."""
    config = sweep.get("config")
    train = config.get("train") if isinstance(config, dict) else None
    return train if isinstance(train, dict) else {}


def _check_one_study(results: list[Results]) -> None:
    """ResultsError unless every folder records the first one's train settings and corpus hash."""
    first = results[0]
    for r in results:
        if r.sweep is None:
            raise ResultsError(
                f"{r.sweep_dir}: no sweep.json, so nothing says which study it belongs to; several folders"
                " are read as one study only when each has its sweep.json"
            )
    base = _train_settings(first.sweep)
    for r in results[1:]:
        train = _train_settings(r.sweep)
        for key in sorted(set(base) | set(train), key=str):
            if base.get(key, "(not set)") != train.get(key, "(not set)"):
                raise ResultsError(
                    f"{r.sweep_dir}: train.{key} is {short_repr(train.get(key, '(not set)'), 60)}, but"
                    f" {first.sweep_dir} has {short_repr(base.get(key, '(not set)'), 60)}: not one study"
                    " (its trials were trained differently); report it on its own"
                )
        if r.sweep.get("corpus_hash") != first.sweep.get("corpus_hash"):
            raise ResultsError(
                f"{r.sweep_dir}: corpus_hash is {short_repr(r.sweep.get('corpus_hash'), 40)}, but"
                f" {first.sweep_dir} has {short_repr(first.sweep.get('corpus_hash'), 40)}: not one study"
                " (its trials read other data); report it on its own"
            )


def _trial_ids(r: Results) -> set[str]:
    """Every trial a folder holds: its trials.parquet rows and its part folders trial_id=<id>."""
    ids = set(r.trials.get_column("trial_id").to_list())
    for p in r.metric_parts + r.spectra_parts:
        ids.add(unquote(p.folder.removeprefix("trial_id=")))
    return ids


def _check_disjoint(results: list[Results]) -> None:
    """ResultsError naming the first trial found in two folders (and both folders)."""
    seen: dict[str, Results] = {}
    for r in results:
        ids = _trial_ids(r)
        both = sorted(ids & seen.keys())
        if both:
            raise ResultsError(
                f"trial {both[0]!r} is in two results folders, {seen[both[0]].sweep_dir} and {r.sweep_dir}"
                f"{f' (and {len(both) - 1} more trial(s))' if len(both) > 1 else ''}: a trial may be read"
                " from one folder only (remove it from one of them)"
            )
        seen.update(dict.fromkeys(ids, r))


def _check_given_once(sweep_dirs: list) -> None:
    """ResultsError naming a sweep folder given twice, also through a symlink or ../ (resolved)."""
    seen = {}
    for d in sweep_dirs:
        key = d.resolve() if isinstance(d, Path) else d
        if key in seen:
            also = "" if seen[key] == d else f" (as {seen[key]})"
            raise ResultsError(f"{d}: the same results folder is given twice{also}")
        seen[key] = d


def combine(results: list[Results]) -> Results:
    """Several folders of one study as one Results: trials, parts and skipped parts concatenated
    (each part keeps its path), `folders` recording each folder's sweep.json, and `sweep` the first
    folder's sweep.json named for the study (the chunks' common name without -chunkIofN, or the
    names joined by '+'), with `n_trials` the sum of the folders' and `finished_at` the last
    (null while one is); the keys about one folder's own trials (FOLDER_KEYS) are left out, each
    folder's sweep.json is in `folders`. Raises ResultsError when a folder is given twice, when the
    folders are not one study (train settings, corpus hash) or when a trial is in two of them."""
    if len(results) == 1:
        return results[0]
    _check_given_once([r.sweep_dir for r in results])
    _check_one_study(results)
    _check_disjoint(results)
    folders = [Folder(r.sweep_dir, r.sweep, r.trials.height) for r in results]
    studies = list(dict.fromkeys(study_name(f.name) for f in folders))
    planned = [f.sweep.get("n_trials") for f in folders]
    finished = [f.sweep.get("finished_at") for f in folders]
    sweep = {
        **results[0].sweep,
        "name": "+".join(studies),
        "n_trials": sum(planned) if all(isinstance(n, int) for n in planned) else None,
        "finished_at": None if any(t in (None, "") for t in finished) else max(map(str, finished)),
        "folders": [str(f.path) for f in folders],
    }
    for key in FOLDER_KEYS:
        sweep.pop(key, None)
    return Results(
        sweep_dir=results[0].sweep_dir,
        sweep=sweep,
        trials=pl.concat([r.trials for r in results], how="vertical_relaxed"),
        metric_parts=[p for r in results for p in r.metric_parts],
        spectra_parts=[p for r in results for p in r.spectra_parts],
        skipped=[s for r in results for s in r.skipped],
        duplicate_trial_rows=sum(r.duplicate_trial_rows for r in results),
        folders=folders,
        caches=[c for r in results for c in r.caches],
    )


def load_results(path: str | os.PathLike | Sequence[str | os.PathLike], cache: bool = False) -> Results:
    """Everything the report needs to start, checked; raises ResultsError on bad input. A list of
    folders is read as one study (`combine`). `cache`: take the trials whose part files are
    unchanged from each local folder's summary cache (analysis.summary_cache; the report's
    default), their footers and data not read again."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise ResultsError("no results folder given")
        found = [find_sweep_dir(p) for p in path]
        _check_given_once(found)  # before any folder is read
        return combine([_load_one(d, cache) for d in found])
    return _load_one(path, cache)


def _load_one(path: str | os.PathLike, cache: bool = False) -> Results:
    sweep_dir = find_sweep_dir(path)
    sweep = read_sweep_json(sweep_dir / SWEEP_JSON)
    trials, dup = read_trials_frame(sweep_dir / TRIALS_FILE)
    trials = label_optimizers(trials)  # the one place: per-head Muon is its own optimizer arm
    listed = {d: list_part_files(sweep_dir / d) for d in SCHEMAS}
    store = SummaryCache(sweep_dir) if cache and isinstance(sweep_dir, Path) else None
    known, skipped = store.take(listed) if store is not None else ({d: [] for d in SCHEMAS}, [])
    parts = {}
    for dataset, entries in listed.items():
        fresh = [e.path for e in entries if store is None or e.path.parent.name not in store.folders]
        checked, bad = check_parts(fresh, SCHEMAS[dataset])
        skipped += bad
        by_path = {str(p.path): p for p in checked + known[dataset]}
        parts[dataset] = [by_path[str(e.path)] for e in entries if str(e.path) in by_path]  # as listed: oldest first
    order = {str(e.path): i for i, e in enumerate(e for entries in listed.values() for e in entries)}
    skipped.sort(key=lambda s: order.get(s[0], len(order)))  # as listed, cached or not
    return Results(
        sweep_dir=sweep_dir,
        sweep=sweep,
        trials=trials,
        metric_parts=parts[METRICS_DIR],
        spectra_parts=parts[SPECTRA_DIR],
        skipped=skipped,
        duplicate_trial_rows=dup,
        caches=[(sweep_dir, store, listed)] if store is not None else [],
    )


def _under(path, folder) -> bool:
    """Whether a part's path lies in a sweep folder (<folder>/<dataset>/trial_id=<id>/<file>)."""
    return path.parent.parent.parent == folder


# ---- the Python API: analysis.load(results_dir) ----------------------------------------------
def load(results_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> Results:
    """A sweep folder (or a folder holding one, or a URI), checked against the results contract;
    a list of them is read as one study (the chunks of a sweep run with --chunk I/N: `combine`).

    Returns `Results`: `.trials` (a Polars DataFrame, one row per trial), `.metrics` and `.spectra`
    (Polars LazyFrames over the part files: filter, then `.collect()`), `.collect(dataset, query)`
    (the same, skipping and naming a part that fails to read, as the report does), `.sweep`
    (sweep.json as a dict) and `.partial_reasons()`. Raises ResultsError on input the report could
    not use.

        >>> import analysis
        >>> res = analysis.load("results/smoke")
        >>> res.metrics.filter(pl.col("name") == "pr").collect()
        >>> res.collect("metrics", lambda lf: lf.filter(pl.col("name") == "pr"))
    """
    return load_results(results_dir)
