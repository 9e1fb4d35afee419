"""The driver's ledger files a trial's last report: the row the trial built, unchanged."""

import json

from orchestrator.tune.ledger import Ledger
from trainer.config import SMOKE, TrialConfig
from trainer.storage import ResultsDir
from trainer.trials import read_trials, trial_row, write_trials


def last_report(row: dict, **extra) -> dict:
    return {
        "attempt": "a1",
        "step": row["steps_done"] - 1,
        "final": True,
        "row_json": json.dumps(row),
        **extra,
    }


def test_the_row_a_trial_reports_last_is_the_row_filed(tmp_path):
    cfg = TrialConfig(**SMOKE)
    tid = cfg.trial_id()
    done = trial_row(cfg, "c0ffee", "completed", steps_done=40, final_train_loss=2.5, final_val_loss=2.75, wall_s=3.0)
    report = last_report(done)

    ledger = Ledger(ResultsDir(tmp_path), corpus_hash="c0ffee")
    ledger.started(tid, cfg)
    ledger.reported(tid, cfg, "tune_00000", report)
    ledger.flush(force=True)
    assert read_trials(ResultsDir(tmp_path)) == [done]


def test_a_trial_skipped_as_finished_files_its_stored_row_unchanged(tmp_path):
    """Tune starts it again (a restored experiment), the trainable finds it finished in
    trials.parquet and reports that row's outcome: the row ends as it was."""
    cfg = TrialConfig(**SMOKE)
    tid = cfg.trial_id()
    stored = trial_row(cfg, "c0ffee", "completed", steps_done=40, final_val_loss=2.75, wall_s=3.0)
    stored["error"] = None
    write_trials(ResultsDir(tmp_path), [stored])

    ledger = Ledger(ResultsDir(tmp_path), corpus_hash="c0ffee")
    ledger.started(tid, cfg)
    assert ledger.status(tid) == "running"
    ledger.reported(tid, cfg, "tune_00000", last_report(stored, skipped=True))
    ledger.flush(force=True)
    assert read_trials(ResultsDir(tmp_path)) == [stored]
