"""Errors a user can act on.

The CLI prints a `UserError`'s message (no traceback) and exits 1. Anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: bad input, bad config, unreachable storage.

    The message must say what is wrong and what to do about it.
    """
