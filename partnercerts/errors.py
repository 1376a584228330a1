"""Errors a user can cause and fix; their message is one line naming the input and the fix."""


class UserError(Exception):
    """Bad input or environment: print the message, exit non-zero, change nothing."""

    exit_code = 2


def shown(value: object, limit: int = 80) -> str:
    """A value as a one-line message may quote it: its repr (control characters escaped), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def names(keys) -> str:
    """Field names as a one-line message lists them: plain when short printable words, else quoted; at most 8."""
    out = sorted(k if isinstance(k, str) and 0 < len(k) <= 40 and k.isprintable() and " " not in k else shown(k, 40)
                 for k in keys)
    return ", ".join(out[:8]) + (f" and {len(out) - 8} more" if len(out) > 8 else "")


class Conflict(UserError):
    """Another run changed the same record first (check-and-set lost)."""

    exit_code = 3
