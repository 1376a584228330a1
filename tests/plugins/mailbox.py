"""pytest plugin: a real IMAP server (Debian's dovecot, devtools/devservers.py DevDovecot) as fixtures.

Fixtures (all function-scoped: a server starts in about half a second, so every test gets its own
server, its own Maildirs and its own test CA, and no state leaks from one test to the next):
    dovecot_factory  make(users=None, allow_plaintext=False) -> a running DevDovecot; all stopped afterwards
    dovecot          a running DevDovecot without users (LOGIN only after TLS: IMAPS or STARTTLS)
    mailbox_user     make(name=None) -> (user, password): a fresh user of `dovecot`, added with add_user

The server listens on DevDovecot.host (127.0.0.2, see its docstring); trust `dovecot.ca_file`.
Without dovecot the fixtures fail (never skip), so that a machine without it cannot pass silently.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.devservers import DevDovecot

INSTALL_HINT = "dovecot (dovecot-imapd) is not installed: run scripts/install-system-deps (as root)"


def require_dovecot() -> None:
    """Fail the test (not skip) when the dovecot binary is missing."""
    if not (shutil.which("dovecot") or os.path.exists("/usr/sbin/dovecot")):
        pytest.fail(INSTALL_HINT)


@pytest.fixture
def dovecot_factory(tmp_path_factory) -> Iterator[Callable[..., DevDovecot]]:
    """Return make(users=None, allow_plaintext=False) that starts a DevDovecot; all are stopped afterwards."""
    require_dovecot()
    started: list[DevDovecot] = []

    def make(users: dict[str, str] | None = None, allow_plaintext: bool = False) -> DevDovecot:
        """Start a fresh server in a new temporary directory."""
        home: Path = tmp_path_factory.mktemp("dovecot")
        server = DevDovecot(home, users=users, allow_plaintext=allow_plaintext)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def dovecot(dovecot_factory) -> DevDovecot:
    """A running dovecot of this test alone: no users yet (add_user, or the mailbox_user fixture)."""
    return dovecot_factory()


@pytest.fixture
def mailbox_user(dovecot) -> Callable[..., tuple[str, str]]:
    """Return make(name=None) -> (user, password): a new user of `dovecot` with a random password."""

    def make(name: str | None = None) -> tuple[str, str]:
        """Add a user (a fresh name unless given) and return its credentials."""
        user = name or f"user-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        dovecot.add_user(user, password)
        return user, password

    return make
