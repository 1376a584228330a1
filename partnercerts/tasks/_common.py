"""What every task shares: settings, the Vault connection, error reporting, the clock."""
from __future__ import annotations

import datetime as dt
import functools
import os
import sys
from typing import TYPE_CHECKING

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


def toolkit(light: bool = False) -> Toolkit:
    """The core for this command (`light`: a command that only reads, see vault.Deferred)."""
    # Imported here, not above: `--list`, `--help` and every task that fails on its input start without the
    # core (hvac, requests, cryptography), a good part of a short command's start-up.
    from ..toolkit import Toolkit
    return Toolkit.open(light=light)


def hinted(message: str, remedy: Remedy | None, **context: str) -> str:
    """A core line with its remedy in this command line's words."""
    return with_hint(message, remedy, HINTS, context)


def info(message: str) -> None:
    print(message, file=sys.stderr)


READER_GONE = 141  # 128 + SIGPIPE: the shell's status for a tool whose reader went away


def reader_gone() -> int:
    """The reader of standard output went away (`status | head`): stop quietly, as shell tools do, with their
    exit status. Standard output then points at /dev/null so that Python's own flush at exit does not fail
    again (the Python documentation's recipe, signal module, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file behind sys.stdout: nothing will flush into the pipe
        pass
    return READER_GONE


def last_word(exc: Exception, task: str) -> tuple[str, int]:
    """The one line and exit code of a task that failed: an Error with its remedy in this command line's words;
    anything else unexpected, without its text (it could quote data), unless debugging (then it is raised)."""
    if isinstance(exc, Error):
        return f"error: {exc.worded(HINTS)}", exc.exit_code
    if debugging():
        raise exc
    return (f"error: unexpected {type(exc).__name__} in {task}; rerun with PARTNERCERTS_DEBUG=1 for the traceback",
            1)


def reports_errors(fn):
    """Turn an Error into one line on stderr (its remedy in this command line's words) and the exit code of
    its kind; hide internals unless debugging."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # here, where a reader that went away is told apart, not at exit
            return result
        except KeyboardInterrupt:
            raise
        except BrokenPipeError:
            from invoke.exceptions import Exit
            raise Exit(code=reader_gone()) from None
        except Exception as exc:
            from invoke.exceptions import Exit  # already loaded: this runs under Invoke
            if isinstance(exc, Exit):
                raise
            message, code = last_word(exc, fn.__name__)
            raise Exit(message, code=code) from None
    return wrapper
