"""What every task shares: settings, the Vault connection, error reporting, the clock."""
from __future__ import annotations

import datetime as dt
import functools
import os
import sys

from invoke.exceptions import Exit

from .. import inventory as inventory_mod
from ..credentials import Credentials
from ..errors import UserError
from ..settings import Settings
from ..store import Store
from ..vault import connect


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


def credentials() -> Credentials:
    settings = Settings.from_env()
    inv = inventory_mod.load(settings.inventory)
    return Credentials(settings, inv, Store(connect(settings), settings))


def info(message: str) -> None:
    print(message, file=sys.stderr)


def reports_errors(fn):
    """Turn a UserError into one line on stderr and a non-zero exit; hide internals unless debugging."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as exc:  # an unexpected failure: no traceback by default, it could quote data
            if os.environ.get("PARTNERCERTS_DEBUG"):
                raise
            raise Exit(f"error: unexpected {type(exc).__name__} in {fn.__name__}; "
                       "rerun with PARTNERCERTS_DEBUG=1 for the traceback", code=1) from None
    return wrapper
