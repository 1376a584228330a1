"""What every task shares: settings, the Vault connection, error reporting, the clock."""
from __future__ import annotations

import datetime as dt
import functools
import sys
from typing import TYPE_CHECKING

from invoke.exceptions import Exit

from ..errors import Error, Remedy, UserError, with_hint
from ..settings import Settings
from ._hints import HINTS

if TYPE_CHECKING:
    from ..toolkit import Toolkit


def now() -> dt.datetime:
    """The current time, or PARTNERCERTS_NOW (ISO 8601) to ask 'what if' at another date."""
    return Settings.from_env().now or dt.datetime.now(dt.timezone.utc)


def debugging() -> bool:
    """PARTNERCERTS_DEBUG is set: let an unexpected exception show its traceback."""
    try:
        return Settings.from_env().debug
    except UserError:
        return False


def toolkit() -> Toolkit:
    # Imported here, not above: `--list`, `--help` and every task that fails on its input start without the
    # core (hvac, requests, cryptography), a good part of a short command's start-up.
    from ..toolkit import Toolkit
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
            if debugging():
                raise
            raise Exit(f"error: unexpected {type(exc).__name__} in {fn.__name__}; "
                       "rerun with PARTNERCERTS_DEBUG=1 for the traceback", code=1) from None
    return wrapper
