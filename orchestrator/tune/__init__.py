"""The Ray Tune layer: runs what orchestrator.spec decided.

sweep_run.py      sweep(options): validate, then run the unfinished grid under the driver lock
study_run.py      lr_study(options): one Optuna study per arm, all arms in one Tuner; lr_best.parquet
session.py        where Ray runs (start or join), the driver lock around writes, SIGTERM as Ctrl-C
runtime.py        starting a private loopback-only Ray, or joining a cluster
tuner.py          the Tuner settings both commands share: trainable, resources, names, loggers; the
                  searcher that hands Tune the grid points as flat configs
trainable.py      the Tune trainable: one thin function around trainer.loop.run_trial
reports.py        what a trial reports to Tune (typed once)
monitor.py        the driver's Tune callback: files events with the ledger, shows them with progress
ledger.py         the only writer of trials.parquet and attempts.parquet
progress.py       the console: one line per trial event, a progress line, an ETA
checkpoints.py    what is left of a finished trial's Tune checkpoints
lock.py           one driver per results folder
storage_probe.py  every node of a cluster must see the results folder
study_search.py   a searcher and a scheduler that keep the arms of an LR study apart
study_storage.py  the Optuna storage of an LR study, and each arm's lr_best row
"""

import os

# Quiet Ray before it is imported: no dedup banner, no per-trial boxes, no deprecation nags. Here, in
# the package, because Ray reads some of these once, when it is imported (ray_constants.RAY_DEDUP_LOGS),
# and the modules of this package import Ray at their top: set in runtime.py, they came after
# sweep_run's `from ray import tune` and the driver's log dedup stayed on. A user's own setting wins.
RAY_ENVIRONMENT = {
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the legacy reporter is silent at verbose=0; the new one still prints boxes
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # tune_core.logger_callbacks adds result.json, CSV, TensorBoard
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "60",
    "TUNE_WARN_SLOW_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "60",
}
for _key, _value in RAY_ENVIRONMENT.items():
    os.environ.setdefault(_key, _value)
