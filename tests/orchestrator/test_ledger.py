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


def ledger_with_attempts(folder) -> list[str]:
    """Two trials filed by the driver's ledger, each with one attempt; their trial_ids."""
    ledger = Ledger(ResultsDir(folder), corpus_hash="c0ffee")
    tids = []
    for seed in (0, 1):
        cfg = TrialConfig(**{**SMOKE, "seed": seed})
        tid = cfg.trial_id()
        done = trial_row(cfg, "c0ffee", "completed", steps_done=40, final_val_loss=2.75, wall_s=3.0)
        ledger.started(tid, cfg)
        ledger.reported(tid, cfg, f"tune_0000{seed}", last_report(done, attempt=f"a{seed}"))
        tids.append(tid)
    ledger.flush(force=True)
    return sorted(tids)


def test_attempts_join_trials_on_trial_id_without_a_cast(tmp_path):
    """attempts.parquet's trial_id has trials.parquet's (and the parts') Arrow type, so each library
    joins the two files as it reads them (issue 21): Polars (Categorical with Categorical), pandas,
    DuckDB."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    tids = ledger_with_attempts(tmp_path)
    attempts, trials = tmp_path / "attempts.parquet", tmp_path / "trials.parquet"
    assert pq.read_schema(attempts).field("trial_id").type == pq.read_schema(trials).field("trial_id").type

    lazy = pl.scan_parquet(attempts).join(pl.scan_parquet(trials), on="trial_id").collect()
    eager = pl.read_parquet(attempts).join(pl.read_parquet(trials), on="trial_id")
    merged = pd.read_parquet(attempts).merge(pd.read_parquet(trials), on="trial_id")
    joined = duckdb.sql(f"SELECT * FROM '{attempts}' JOIN '{trials}' USING (trial_id)").df()
    for df in (lazy.to_pandas(), eager.to_pandas(), merged, joined):
        assert sorted(df["trial_id"].astype(str)) == tids
        assert sorted(df["attempt"]) == ["a0", "a1"] and set(df["status"]) == {"completed"}


def test_an_attempts_file_with_plain_string_trial_ids_is_read_and_rewritten(tmp_path):
    """One written before trial_id was dictionary-encoded: the ledger keeps its rows."""
    import pyarrow.parquet as pq

    from trainer.schema import ATTEMPTS_SCHEMA

    tids = ledger_with_attempts(tmp_path)
    attempts = tmp_path / "attempts.parquet"
    pq.write_table(pq.read_table(attempts).cast(ATTEMPTS_SCHEMA), attempts)  # the old file
    ledger = Ledger(ResultsDir(tmp_path), corpus_hash="c0ffee")
    ledger.dirty = True
    ledger.flush(force=True)
    table = pq.read_table(attempts)
    assert sorted(table["trial_id"].to_pylist()) == tids
    assert table.schema.field("trial_id").type == pq.read_schema(tmp_path / "trials.parquet").field("trial_id").type


def test_an_attempts_file_from_before_the_torch_columns_is_kept_and_extended(tmp_path):
    """attempts.parquet written before torch_threads and torch_cpu_capability: its rows are kept,
    with those two null, and a new attempt's report fills them."""
    import pyarrow.parquet as pq

    tids = ledger_with_attempts(tmp_path)
    attempts = tmp_path / "attempts.parquet"
    old = pq.read_table(attempts).drop_columns(["torch_threads", "torch_cpu_capability"])
    pq.write_table(old, attempts)
    ledger = Ledger(ResultsDir(tmp_path), corpus_hash="c0ffee")
    cfg = TrialConfig(**{**SMOKE, "seed": 2})
    done = trial_row(cfg, "c0ffee", "completed", steps_done=40, final_val_loss=2.75, wall_s=3.0)
    ledger.started(cfg.trial_id(), cfg)
    report = last_report(done, attempt="a2", torch_threads=1.0, torch_cpu_capability="AVX2")  # Tune's float
    ledger.reported(cfg.trial_id(), cfg, "tune_00002", report)
    ledger.flush(force=True)
    rows = {r["trial_id"]: r for r in pq.read_table(attempts).to_pylist()}
    assert sorted(rows) == sorted([*tids, cfg.trial_id()])
    assert all(rows[t]["torch_threads"] is None and rows[t]["torch_cpu_capability"] is None for t in tids)
    assert rows[cfg.trial_id()]["torch_threads"] == 1 and rows[cfg.trial_id()]["torch_cpu_capability"] == "AVX2"
