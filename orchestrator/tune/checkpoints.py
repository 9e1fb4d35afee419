"""The checkpoint lifecycle of a sweep: Tune's trial checkpoints live only as long as they are useful.

While a trial runs, Tune keeps its latest checkpoints under <results>/<name>/tune/<run>/<trial>/
(checkpoint_000000, ...), so a failed attempt, a preempted node or `--resume` continues from the
last one. Once the trial has finished (completed, diverged, or stopped by a scheduler) they only
take space: at the paradox grid's size about 2.4 GB a trial. The sweep file's
`checkpoints: {keep: none | last | best}` says what is left of them (default none):

- none: every checkpoint of a finished trial is deleted;
- last: the latest one is kept (the state a few steps before the end);
- best: the one with the lowest `objective` (the val loss reported with it) is kept.

Final weights are a different thing: `train.save_final: true` writes weights/<trial_id>.pt for
every completed trial (trainer.loop), whatever `keep` says.
"""

from __future__ import annotations

import pyarrow.fs as pafs
from ray import tune

from .reports import OBJECTIVE

KEEP = ("none", "last", "best")


def checkpoint_config(keep: str):
    """Tune's CheckpointConfig while trials run: the two latest (a restore needs one whole), or,
    for keep=best, the best by objective (Tune also always keeps the latest)."""
    if keep == "best":
        return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=OBJECTIVE, checkpoint_score_order="min")
    return tune.CheckpointConfig(num_to_keep=2)


def kept_checkpoint(trial, keep: str) -> str | None:
    """The storage path of the checkpoint to keep (None: keep none)."""
    manager = trial.run_metadata.checkpoint_manager
    result = {"last": manager.latest_checkpoint_result, "best": manager.best_checkpoint_result}.get(keep)
    return result.checkpoint.path.rstrip("/") if result is not None else None


def prune_trial(trial, keep: str) -> int:
    """Delete a finished trial's checkpoint folders except the one `keep` names; returns how many
    were deleted. Works on any storage Tune writes to (a local folder, s3://, ...)."""
    fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    spare = kept_checkpoint(trial, keep)
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))
    removed = 0
    for info in infos:
        if (
            info.type == pafs.FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.path.rstrip("/") != spare
        ):
            fs.delete_dir(info.path)
            removed += 1
    return removed


class CheckpointPruner(tune.Callback):
    """Prunes each trial's checkpoints as soon as it finishes (a plain picklable callback, so a
    restored experiment (`--resume`) keeps doing it)."""

    def __init__(self, keep: str = "none"):
        self.keep = keep
        self.warned = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        try:
            prune_trial(trial, self.keep)
        except Exception as exc:  # never fail a sweep over housekeeping; say so once
            if not self.warned:
                self.warned = True
                print(f"  note: could not delete the checkpoints of finished trial {trial}: {exc}", flush=True)
