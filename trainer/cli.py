"""The argparse parser every command uses: one-line errors that suggest the flag meant, and `--help`
that shows each option's default.

A leaf module (argparse and difflib only), so that `trainer.train`, the orchestrator's commands
(`orchestrator.cli`) and `analysis.report` can share it without importing each other.

    $ python -m orchestrator.sweep --dry-rn
    error: unrecognized argument --dry-rn (did you mean --dry-run?)
    $ python -m orchestrator.sweep smoke
    error: unrecognized argument smoke (did you mean --config smoke?)

(exit status 2): one line starting "error: ", as every command refuses bad input. Python 3.14's
`suggest_on_error` suggests only mistyped choices; 3.11's argparse suggests nothing.
"""

from __future__ import annotations

import argparse
import difflib


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and " (default: X)" after an option's help unless its help already
    says what the default is, or the default is nothing (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is argparse.SUPPRESS
            or default is None
            or default is False
            or default == []
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (`error: ...`, exit 2, no usage block: `--help` has it), and
    an unrecognized flag answered with the closest known one (`--dry-rn (did you mean --dry-run?)`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized(extras, self.known_flags()))
        return namespace

    def known_flags(self) -> list[str]:
        """The long option strings `--help` shows (hidden options are not suggested)."""
        return [
            flag
            for flag, action in self._option_string_actions.items()
            if flag.startswith("--") and action.help is not argparse.SUPPRESS
        ]

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(message.split())}\n")


def suggestion(arg: str, flags: list[str]) -> str:
    """ " (did you mean --dry-run?)" for a mistyped flag (`--dry-rn`, `--dry-rn=1`, `-dry-run`), or ""."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return ""
    name = arg.split("=", 1)[0]
    close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
    if not close and not name.startswith("--"):
        close = difflib.get_close_matches("--" + name.lstrip("-"), flags, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def named(arg: str, before: str | None, flags: list[str]) -> str:
    """ " (did you mean --config smoke?)" for a bare word where a command takes its spec by --config
    (`python -m orchestrator.sweep smoke`), unless the word follows a flag (the value of a mistyped
    one: `--trails 3`); else ""."""
    if arg.startswith("-") or "--config" not in flags or (before is not None and before.startswith("-")):
        return ""
    return f" (did you mean --config {arg}?)"


def unrecognized(extras: list[str], flags: list[str]) -> str:
    """argparse's "unrecognized arguments: ..." with the closest known flag after each mistyped one,
    and --config before a bare word."""
    words = [
        f"{arg}{suggestion(arg, flags) or named(arg, extras[i - 1] if i else None, flags)}"
        for i, arg in enumerate(extras)
    ]
    if len(words) == 1:
        return f"unrecognized argument {words[0]}"
    return f"unrecognized arguments: {' '.join(words)}"
