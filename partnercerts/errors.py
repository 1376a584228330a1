"""Errors a user can cause and fix; their message is one line naming the input and the fix."""


class UserError(Exception):
    """Bad input or environment: print the message, exit non-zero, change nothing."""

    exit_code = 2


class Conflict(UserError):
    """Another run changed the same record first (check-and-set lost)."""

    exit_code = 3
