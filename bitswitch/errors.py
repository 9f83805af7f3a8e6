"""Errors that mean "the user's input or situation is wrong", not "bitswitch is broken".

The CLI prints these (and ``ValueError``/``OSError``) as one line with exit code 2; ``--debug`` shows
the traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (a busy run folder, a bad input); shown without a traceback."""


class RunLockedError(UserError):
    """Another process holds the run folder's lock."""


__all__ = ["RunLockedError", "UserError"]
