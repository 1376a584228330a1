"""What every task shares: settings, the Vault connection, error reporting, the clock."""
from __future__ import annotations

import datetime as dt
import functools
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
    return Settings.from_env().now or dt.datetime.now(dt.timezone.utc)


def debugging() -> bool:
    """PARTNERCERTS_DEBUG is set: let an unexpected exception show its traceback."""
    try:
        return Settings.from_env().debug
    except UserError:
        return False


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
            if debugging():
                raise
            raise Exit(f"error: unexpected {type(exc).__name__} in {fn.__name__}; "
                       "rerun with PARTNERCERTS_DEBUG=1 for the traceback", code=1) from None
    return wrapper
