"""`UserError`: the one base class of errors a user causes and can fix (a bad name, file or flag value);
`RunError`: a run that could not complete (an LLM or backend unavailable).

The CLI prints a `UserError` as one line naming the problem and exits 2, a `RunError` likewise with exit 3;
every other exception is a bug and shows its traceback. Each subsystem's error classes derive from one of
them (and keep their builtin base, e.g. ValueError, so existing `except` clauses still hold).
"""
from __future__ import annotations


class UserError(Exception):
    """An input the user can fix; `str(e)` is the whole one-line message."""

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print their message with quotes around it
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class RunError(Exception):
    """A run that could not complete through no fault of its input (an LLM server or a physics backend
    unavailable, a request that failed): the CLI prints it as one line and exits 3."""


__all__ = ["UserError", "RunError"]
