"""The error every command turns into one line and exit status 2, and a repr safe to put in it.

No imports beyond the standard library, so that `analysis` (which depends on trainer.schema and
these small modules only) can use them. `trainer.config` re-exports both names.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any


class ConfigError(ValueError):
    """Bad user input; the CLIs print the message and exit with status 2."""


class _CappedRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        """An integer of more than 40 digits by its length: Python refuses str() of one of more
        than 4,300 digits (a ValueError in the middle of an error message)."""
        if x.bit_length() <= 132:  # at most 40 digits: as reprlib shows it
            return super().repr_int(x, level)
        return f"<an integer of {_digits(abs(x))} digits>"


def _digits(n: int) -> int:
    """The decimal digits of n > 0, without str(): from its bits (log10(2) = 0.30103 digits a bit), then
    corrected by comparing with powers of ten."""
    d = max(1, int(n.bit_length() * math.log10(2)))
    while 10**d <= n:
        d += 1
    while d > 1 and 10 ** (d - 1) > n:
        d -= 1
    return d


_REPR = _CappedRepr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 80, 80, 8, 8, 3


def short_repr(value: Any, limit: int = 120) -> str:
    """repr() capped in depth, items and length: a message never expands a huge or aliased value."""
    text = _REPR.repr(value)
    text = " ".join(text.split())  # one line, whatever the value holds (newlines in a string are escaped)
    return text if len(text) <= limit else text[: limit - 3] + "..."
