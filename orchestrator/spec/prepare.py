"""Everything a command checks before it writes anything or starts Ray, in one place.

Each check raises a ConfigError naming the field and the value (the command prints one line and
exits 2): the spec (from a file, a bundled name or the Python API), the results folder and what an
earlier run left there, whether the trials find their device, and the corpus, which is read here
once and shared by every trial. Nothing here imports Ray.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.budget import check_device
from trainer.config import NOT_IDENTITY, ConfigError, TrialConfig, short_repr
from trainer.data import TokenData, corpus_key, load_tokens
from trainer.safeio import inside, read_record
from trainer.schema import SWEEP_JSON, TRIALS_FILE, TRIALS_SCHEMA
from trainer.storage import ResultsDir, check_writable
from trainer.trials import read_trials

from ..exits import StorageUnreachable, network_problem
from .overrides import apply_overrides
from .run_spec import RunSpec
from .sweep_file import SweepSpec, check_null_axes, load_spec
from .validation import parse_model

TUNE_DIR = "tune"  # <results>/<name>/tune: Tune's experiment state and trial checkpoints


def sweep_spec(config, overrides, given=None) -> tuple[SweepSpec, str]:
    """The sweep spec and where it came from: `given` (a SweepSpec or a sweep file's mapping, from
    the Python API) with the overrides applied, else the file or bundled name `config`."""
    if given is None:
        return load_spec(config, list(overrides))
    if isinstance(given, SweepSpec):
        given = given.model_dump(mode="json", exclude_none=True)  # an axis not swept is left out, not null
    if not isinstance(given, dict):
        raise ConfigError(
            f"run_sweep: expected a sweep file, a bundled sweep's name, a mapping or a SweepSpec, "
            f"got {type(given).__name__}"
        )
    data = check_null_axes(apply_overrides(given, list(overrides)), "run_sweep")
    return parse_model(SweepSpec, data, "run_sweep"), "<python>"


def check_results(location: str, name: str) -> ResultsDir:
    """The sweep's folder <location>/<name>, checked but not created.

    A local `location` may be missing as long as its parent folder exists (it is created on the
    first write); a missing parent is almost always a typo, so that is an error. URIs are opened
    (credentials, bucket) but not probed further. An empty location and a URI with no bucket are
    refused (trainer.storage.check_location).
    """
    return check_writable(location, "results", create_missing=False, child=name)


def check_placement(configs: list[TrialConfig], spec: RunSpec, *, local: bool) -> None:
    """Devices and memory: a cuda trial needs a GPU slot; on this machine (a private local Ray)
    every trial must find its device and fit in its memory (trainer.budget.check_device)."""
    if any(c.device == "cuda" and spec.resources.for_width(c.width)[1] == 0 for c in configs):
        raise ConfigError(
            "train.device: 'cuda' but resources.gpus_per_trial is 0, so a trial would see no GPU "
            "(got 'cuda'); set gpus_per_trial, or device: auto"
        )
    if local:
        check_device(configs)


def check_previous(results: ResultsDir, kind: str, *, resume: bool) -> dict | None:
    """What an earlier run left in the results folder: sweep.json and trials.parquet readable,
    written by the same kind of run ("sweep" or "lr_study"), and (for --resume) its Tune experiments
    inside <results>/<name>/tune (Tune unpickles what it restores). Returns sweep.json or None."""
    try:
        previous = read_record(results)
        read_trials(results)  # a corrupt trials.parquet is one line here, not a traceback later
        check_trials_schema(results)
    except OSError as exc:  # the first read of an object store: one line, not a traceback
        if results.is_local:
            raise
        problem = network_problem(exc)
        if problem is not None:
            raise StorageUnreachable(results.uri, problem) from None
        raise ConfigError(
            f"results: cannot read {results.uri}: {' '.join(str(exc).split())[:300]}; check the bucket and "
            "the credentials"
        ) from None
    if previous is None:
        return None
    config = previous.get("config") if isinstance(previous.get("config"), dict) else {}
    for key, value, ok in (
        ("trial_ids", previous.get("trial_ids"), lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v)),
        ("runs", previous.get("runs"), lambda v: isinstance(v, list)),
        ("config", previous.get("config"), lambda v: isinstance(v, dict)),
        # the sections a rerun compares with its own (check_same_sweep, check_same_train)
        *((f"config.{s}", config.get(s), lambda v: isinstance(v, dict)) for s in ("train", "grid")),
    ):
        if value is not None and not ok(value):
            raise ConfigError(
                f"{results.uri}/{SWEEP_JSON}: {key} is malformed ({short_repr(value, 60)}); fix it or move the file away"
            )
    if "corpus_hash" in previous and not isinstance(previous["corpus_hash"], str):  # else "another corpus" is unseen
        raise ConfigError(
            f"{results.uri}/{SWEEP_JSON}: corpus_hash is malformed ({short_repr(previous['corpus_hash'], 60)}, not "
            "the corpus's hash); fix it or move the file away"
        )
    found = previous.get("kind")
    if found is not None and found != kind:
        raise ConfigError(
            f"{results.uri}/{SWEEP_JSON}: this folder holds a {short_repr(found, 30)}, not a "
            f"{kind}; choose another results folder or name"
        )
    if resume:
        tune_root = f"{results.uri}/{TUNE_DIR}"
        for i, run in enumerate(previous.get("runs") or []):
            path = run.get("tune_experiment") if isinstance(run, dict) else None
            if path is not None and not (isinstance(path, str) and inside(path, tune_root)):
                raise ConfigError(
                    f"{results.uri}/{SWEEP_JSON}: runs[{i}].tune_experiment {short_repr(path, 80)} "
                    f"is outside {tune_root}; --resume restores (unpickles) only experiments there"
                )
    return previous


def check_trials_schema(results: ResultsDir) -> None:
    """trials.parquet's columns as trainer.schema.TRIALS_SCHEMA has them (trial_id plain or
    dictionary-encoded, strings plain or large; a column of nulls only takes any type): the ledger
    rewrites the file whole with that schema on the first trial's report, so a column of another
    type (width as text) is refused here in one line, before Ray starts, and the file is left as it is."""
    if not results.exists(TRIALS_FILE):
        return
    with results.fs.open_input_file(results.path(TRIALS_FILE)) as f:
        found = pq.read_schema(f)
    for field in found:
        if field.name not in TRIALS_SCHEMA.names:
            raise ConfigError(
                f"{results.uri}/{TRIALS_FILE}: column {field.name!r} is not in the trials table's schema "
                f"(trainer.schema.TRIALS_SCHEMA); {MOVE_AWAY}"
            )
        kind, expected = _plain(field.type), TRIALS_SCHEMA.field(field.name).type
        if kind != expected and not pa.types.is_null(kind):
            raise ConfigError(
                f"{results.uri}/{TRIALS_FILE}: column {field.name!r} has type {field.type}, the schema says "
                f"{expected} (trainer.schema.TRIALS_SCHEMA); {MOVE_AWAY}"
            )


MOVE_AWAY = "fix it or move it away to start afresh (finished trials would run again)"


def _plain(kind: pa.DataType) -> pa.DataType:
    """A column's type as the trials schema writes it: dictionary-encoded as its values, large strings as strings."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.string() if pa.types.is_large_string(kind) else kind


def check_resume(previous: dict | None, spec: SweepSpec, configs: list[TrialConfig], source: str, results) -> None:
    """--resume continues the interrupted sweep: its planned trials must be this spec's."""
    planned = set((previous or {}).get("trial_ids") or [])
    if planned and planned != {c.trial_id() for c in configs}:
        changed = changed_settings(previous.get("config") or {}, spec.model_dump(mode="json"))
        what = f" ({'; '.join(changed)})" if changed else ""
        raise ConfigError(
            f"--resume: the trials in {source} are not those of the interrupted sweep in "
            f"{results.uri}{what}; run without --resume (finished trials are kept and not run again)"
        )


def check_same_sweep(
    previous: dict | None, spec: SweepSpec, configs: list[TrialConfig], tokens: dict, results: ResultsDir
) -> None:
    """A results folder holds one configuration, so that its report never mixes two. A run into a
    folder whose sweep.json records other settings is refused: every `train:` setting (with its
    default filled in; save_final, an output switch, aside) and the corpus must be the folder's. The
    grid may grow (new points are new trials of the same settings: the study grows), but may not
    leave out a trial the folder planned (sweep.json then describes every trial there)."""
    before = (previous or {}).get("config")
    if not isinstance(before, dict):
        return
    after = spec.model_dump(mode="json")
    changed = []
    old_train, new_train = before.get("train") or {}, after.get("train") or {}
    for key in sorted(set(old_train) | set(new_train), key=str):
        field = TrialConfig.model_fields.get(key)
        default = field.default if field is not None else None
        old, new = old_train.get(key, default), new_train.get(key, default)
        if key not in NOT_IDENTITY and old != new:
            changed.append((f"train.{key}", old, new))
    old_hash, new_hash = previous.get("corpus_hash"), next(iter(tokens.values())).corpus_hash if tokens else None
    if isinstance(old_hash, str) and new_hash and old_hash != new_hash:
        changed.append(("corpus_hash", old_hash[:12], new_hash[:12]))
    kept = {c.trial_id() for c in configs}
    dropped = [t for t in previous.get("trial_ids") or [] if t not in kept]
    grid_only = dropped and not changed
    if grid_only:
        old_grid, new_grid = before.get("grid") or {}, after.get("grid") or {}
        changed = [(f"grid.{k}", old_grid.get(k), new_grid.get(k)) for k in sorted(set(old_grid) | set(new_grid))]
        changed = [c for c in changed if c[1] != c[2]]
        if not changed:  # the same grid resolves to other points (an LR from a study, a changed default)
            raise ConfigError(
                f"{results.uri} already holds sweep {short_repr(spec.name, 100)} with {len(dropped)} trial(s) "
                f"this run leaves out (such as {dropped[0]}): {NEW_NAME}"
            )
    if not changed:
        return
    shown = changed[:4]
    more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
    was = ", ".join(f"{k}={short_repr(old, 60)}" for k, old, _ in shown)
    now = ", ".join(f"{k}={short_repr(new, 60)}" for k, _, new in shown)
    why = " (a rerun may add grid points to a sweep, not leave its trials out)" if grid_only else ""
    raise ConfigError(
        f"{results.uri} already holds sweep {short_repr(spec.name, 100)} with {was}{more}; this run has "
        f"{now}{why}: {NEW_NAME}"
    )


NEW_NAME = "give the sweep a new name (name: in its file) or another --results"


def check_same_train(previous: dict | None, spec: RunSpec, results: ResultsDir) -> None:
    """An LR study run again adds trials to the same studies: its `train:` block must be theirs."""
    changed = changed_settings((previous or {}).get("config") or {}, spec.model_dump(mode="json"))
    if previous is not None and changed:
        raise ConfigError(
            f"{results.uri} holds studies run with other train: settings ({'; '.join(changed)}); "
            "adding trials would mix them: restore the settings, or give the study a new name"
        )


def changed_settings(before: dict, after: dict, limit: int = 4) -> list[str]:
    """'train.steps: 400 -> 500' for each grid axis or train setting that differs between two specs."""
    changes = []
    for section in ("grid", "train"):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{section}.{key}: {short_repr(old.get(key), 60)} -> {short_repr(new.get(key), 60)}")
    return changes[:limit] + ([f"and {len(changes) - limit} more"] if len(changes) > limit else [])


def load_corpora(configs: list[TrialConfig]) -> dict[tuple, TokenData]:
    """Each distinct corpus once (usually one), keyed like trainer.data.corpus_key."""
    tokens: dict[tuple, TokenData] = {}
    for cfg in configs:
        key = corpus_key(cfg)
        if key not in tokens:
            tokens[key] = load_tokens(cfg)
    return tokens
