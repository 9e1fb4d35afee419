"""Small helpers for console output, shared by the trainer and orchestrator CLIs."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """'1:02:03' for 3723.4 s; negative durations (clock skew) show as 0:00:00."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
