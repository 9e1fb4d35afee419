"""Exit statuses of the commands, and the one line each refusal prints.

0 done   1 some trials failed   2 bad input (nothing written)   3 the machine failed (a full disk)
130 interrupted (Ctrl-C or SIGTERM; --resume continues)
"""

from __future__ import annotations

import re
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


class StorageUnreachable(Exception):
    """The results' object store does not answer (a closed port, no network, a wrong endpoint): exit 3."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem

    def exit(self, hint: str = "check the endpoint (AWS_ENDPOINT_URL), the network and the credentials") -> int:
        return environment_failure(self.problem, f"cannot reach {self.where}", hint)


_NETWORK = re.compile(
    r"NETWORK_CONNECTION|Could not connect|Couldn't connect|Connection refused|Could not resolve|"
    r"Timeout was reached|timed out|Connection reset|Network is unreachable",
    re.IGNORECASE,
)


def network_problem(exc: BaseException) -> str | None:
    """The object store's connection error in one line, when `exc` (or what it wraps) is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        if isinstance(exc, OSError) and _NETWORK.search(text):
            return text[:300]
        exc = exc.__cause__ or exc.__context__
    return None
