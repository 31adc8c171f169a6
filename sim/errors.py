"""`UserError`: the one base class of errors a user causes and can fix (a bad name, file or flag value).

The CLI prints such an error as one line naming the problem and exits 2; every other exception is a
bug and shows its traceback. Each subsystem's error classes derive from it (and keep their builtin
base, e.g. ValueError, so existing `except` clauses still hold).
"""
from __future__ import annotations


class UserError(Exception):
    """An input the user can fix; `str(e)` is the whole one-line message."""

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print their message with quotes around it
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


__all__ = ["UserError"]
