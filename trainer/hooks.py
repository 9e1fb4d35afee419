"""What the training loop (trainer.loop) hands its caller, kept apart from it so that a caller can
name them without loading torch: the callbacks a trial calls (`TrialHooks`) and the error of a
checkpoint that cannot be loaded safely (`CheckpointError`). `python -m trainer.train` answers a
bad trial file before torch is imported."""

from __future__ import annotations

from pathlib import Path


class TrialHooks:
    """Callbacks from the loop; every method is optional (no-op by default)."""

    def on_start(self, row: dict, resumed_step: int | None) -> None: ...

    def on_step(self, step: int, info: dict) -> None: ...

    def on_report(self, step: int, metrics: dict, checkpoint_dir: Path | None) -> None:
        """After each eval and each checkpoint; `checkpoint_dir` holds a checkpoint just saved."""

    def on_end(self, row: dict) -> None: ...


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded safely: tampered with, corrupt, or not written by this trainer."""
