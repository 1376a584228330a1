"""What every task shares: settings, the Vault connection, error reporting, the clock."""
from __future__ import annotations

import datetime as dt
import functools
import os
import sys

from invoke.exceptions import Exit

from ..errors import Error, Remedy, UserError, with_hint
from ..toolkit import Toolkit
from ._hints import HINTS


def now() -> dt.datetime:
    """The current time, or PARTNERCERTS_NOW (ISO 8601) to ask 'what if' at another date."""
    raw = os.environ.get("PARTNERCERTS_NOW")
    if not raw:
        return dt.datetime.now(dt.timezone.utc)
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UserError(f"PARTNERCERTS_NOW={raw!r} is not an ISO 8601 time; use e.g. 2027-01-31T00:00:00+00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def toolkit() -> Toolkit:
    return Toolkit.open()


def hinted(message: str, remedy: Remedy | None, **context: str) -> str:
    """A core line with its remedy in this command line's words."""
    return with_hint(message, remedy, HINTS, context)


def info(message: str) -> None:
    print(message, file=sys.stderr)


def reports_errors(fn):
    """Turn an Error into one line on stderr (its remedy in this command line's words) and the exit code of
    its kind; hide internals unless debugging."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Error as exc:
            raise Exit(f"error: {exc.worded(HINTS)}", code=exc.exit_code) from None
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as exc:  # an unexpected failure: no traceback by default, it could quote data
            if os.environ.get("PARTNERCERTS_DEBUG"):
                raise
            raise Exit(f"error: unexpected {type(exc).__name__} in {fn.__name__}; "
                       "rerun with PARTNERCERTS_DEBUG=1 for the traceback", code=1) from None
    return wrapper
