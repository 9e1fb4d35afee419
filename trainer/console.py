"""Small helpers for console output, shared by the trainer and orchestrator CLIs."""

from __future__ import annotations

import shlex


def format_duration(seconds: float) -> str:
    """'1:02:03' for 3723.4 s; negative durations (clock skew) show as 0:00:00."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def report_command(results: str) -> str:
    """The report command for a results folder, ready to paste into a POSIX shell: the path is
    quoted (shlex.quote) when it holds spaces, `$`, quotes, backticks or other shell syntax."""
    return f"python -m analysis.report {shlex.quote(str(results))}"
