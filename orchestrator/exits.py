"""Exit statuses of the commands, and the one line each refusal prints.

0 done   1 some trials failed   2 bad input (nothing written)   3 the machine failed (a full disk)
130 interrupted (Ctrl-C or SIGTERM; --resume continues)
"""

from __future__ import annotations

import sys

from trainer.config import ConfigError
from trainer.safeio import EXIT_ENVIRONMENT  # noqa: F401 - exit statuses read from one module

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def bad_input(err: ConfigError) -> int:
    """One line on stderr and exit status 2: how every command refuses bad input."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def environment_failure(problem: str, where: str, hint: str) -> int:
    """One line on stderr and exit status 3: the machine, not the input, failed (a full disk)."""
    print(f"error: {where}: {problem}; {hint}", file=sys.stderr, flush=True)
    return EXIT_ENVIRONMENT
