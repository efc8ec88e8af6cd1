"""One exception type for everything a user can get wrong or fix, carrying the exit code."""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can act on: the message says what failed and what to do.

    The command line prints the message (no traceback) and exits with ``exit_code``.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
