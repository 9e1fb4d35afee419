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
