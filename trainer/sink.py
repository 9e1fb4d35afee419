"""Streams one trial's metrics and spectra to Parquet parts while it trains.

Rows are buffered in memory and written as whole files named by their step range,
`part-<first>-<last>.parquet`, under metrics/trial_id=<id>/ and spectra/trial_id=<id>/.
After a restore from a checkpoint at step S, `truncate_after(S)` drops every row past S from
the parts already written, so the replayed steps never appear twice.

The trial_id column is written dictionary-encoded, the type pyarrow infers for the folder key,
so `pandas.read_parquet("<sweep>/metrics")` and `pyarrow.parquet.read_table` read the folders as is.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import METRICS_DIR, METRICS_FILE_SCHEMA, SPECTRA_DIR, SPECTRA_FILE_SCHEMA
from .storage import ResultsDir

PART_RE = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def part_name(first: int, last: int) -> str:
    return f"part-{first:09d}-{last:09d}.parquet"


class TrialSink:
    def __init__(self, results: ResultsDir, trial_id: str):
        self.results, self.trial_id = results, trial_id
        self.folders = {
            METRICS_DIR: (METRICS_DIR, f"trial_id={trial_id}"),
            SPECTRA_DIR: (SPECTRA_DIR, f"trial_id={trial_id}"),
        }
        self._metrics: dict[str, list] = {k: [] for k in ("step", "name", "layer", "head", "tensor", "value")}
        self._spectra: dict[str, list] = {k: [] for k in ("step", "layer", "head", "tensor", "sigma")}

    # ---- buffering -------------------------------------------------------------------------
    def scalar(self, step: int, name: str, value: float, layer=None, head=None, tensor=None) -> None:
        m = self._metrics
        m["step"].append(step), m["name"].append(name), m["layer"].append(layer)
        m["head"].append(head), m["tensor"].append(tensor), m["value"].append(float(value))

    def spectrum(self, step: int, layer: int, tensor: str, sigma: np.ndarray) -> None:
        """sigma (H, r): one row per head."""
        for head, row in enumerate(sigma):
            s = self._spectra
            s["step"].append(step), s["layer"].append(layer), s["head"].append(head)
            s["tensor"].append(tensor), s["sigma"].append(row)

    # ---- writing ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered as one part per dataset (no-op when empty)."""
        if self._metrics["step"]:
            self._write(METRICS_DIR, self._metrics_table())
            self._metrics = {k: [] for k in self._metrics}
        if self._spectra["step"]:
            self._write(SPECTRA_DIR, self._spectra_table())
            self._spectra = {k: [] for k in self._spectra}

    def _write(self, dataset: str, table: pa.Table) -> None:
        steps = table.column("step")
        first, last = pc.min(steps).as_py(), pc.max(steps).as_py()
        self.results.write_table(table, *self.folders[dataset], part_name(first, last))

    def _trial_id_column(self, n: int) -> pa.DictionaryArray:
        """trial_id dictionary-encoded, the type pyarrow infers for the trial_id=<id> folder key
        (see trainer.schema.TRIAL_ID_FILE_TYPE): pandas and pyarrow then read the folder as is."""
        indices = pa.array(np.zeros(n, np.int32))
        return pa.DictionaryArray.from_arrays(indices, pa.array([self.trial_id], pa.string()))

    def _metrics_table(self) -> pa.Table:
        m = self._metrics
        n = len(m["step"])
        return pa.table(
            {
                "trial_id": self._trial_id_column(n),
                "step": pa.array(m["step"], pa.int64()),
                "name": pa.array(m["name"], pa.string()),
                "layer": pa.array(m["layer"], pa.int16()),
                "head": pa.array(m["head"], pa.int16()),
                "tensor": pa.array(m["tensor"], pa.string()),
                "value": pa.array(m["value"], pa.float64()),
            },
            schema=METRICS_FILE_SCHEMA,
        )

    def _spectra_table(self) -> pa.Table:
        s = self._spectra
        n = len(s["step"])
        sigma = [np.asarray(row, dtype=np.float32) for row in s["sigma"]]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in sigma])]).astype(np.int32)
        values = pa.array(np.concatenate(sigma) if sigma else np.empty(0, np.float32), pa.float32())
        return pa.table(
            {
                "trial_id": self._trial_id_column(n),
                "step": pa.array(s["step"], pa.int64()),
                "layer": pa.array(s["layer"], pa.int16()),
                "head": pa.array(s["head"], pa.int16()),
                "tensor": pa.array(s["tensor"], pa.string()),
                "sigma": pa.ListArray.from_arrays(pa.array(offsets), values),
            },
            schema=SPECTRA_FILE_SCHEMA,
        )

    # ---- restore ---------------------------------------------------------------------------
    def truncate_after(self, step: int) -> int:
        """Drop rows with step > `step` from written parts (and the buffer); returns rows dropped."""
        self._metrics = {k: [] for k in self._metrics}
        self._spectra = {k: [] for k in self._spectra}
        dropped = 0
        for folder in self.folders.values():
            for name in self.results.listdir(*folder):
                match = PART_RE.match(name)
                if not match:
                    continue
                first, last = int(match.group(1)), int(match.group(2))
                if last <= step:
                    continue
                table = self.results.read_table(*folder, name)
                kept = table.filter(pc.less_equal(table.column("step"), step))
                dropped += table.num_rows - kept.num_rows
                if first <= step and kept.num_rows:  # write the kept head first, then remove the old part
                    self.results.write_table(kept, *folder, part_name(first, step))
                self.results.delete(*folder, name)
        return dropped
