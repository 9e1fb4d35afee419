"""The error every command turns into one line and exit status 2, and a repr safe to put in it.

No imports beyond the standard library, so that `analysis` (which depends on trainer.schema and
these small modules only) can use them. `trainer.config` re-exports both names.
"""

from __future__ import annotations

import reprlib
from typing import Any


class ConfigError(ValueError):
    """Bad user input; the CLIs print the message and exit with status 2."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 80, 80, 8, 8, 3


def short_repr(value: Any, limit: int = 120) -> str:
    """repr() capped in depth, items and length: a message never expands a huge or aliased value."""
    text = _REPR.repr(value)
    text = " ".join(text.split())  # one line, whatever the value holds (newlines in a string are escaped)
    return text if len(text) <= limit else text[: limit - 3] + "..."
