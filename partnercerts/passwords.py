"""Passwords kept in Vault: the MZP account's, the SMTP accounts' (a partner's submission, notifications) and
the reply mailboxes'."""
from __future__ import annotations

import datetime as dt
import secrets

from .errors import UserError
from .inventory import Inventory
from .store import Password, Store, Versioned, iso


def check_password(password: str, who: str = "") -> str:
    if not password or len(password) > 512 or any(c in password for c in "\r\n\0"):
        raise UserError(f"{who + ': ' if who else ''}the password must be one non-empty line of at most 512 characters")
    return password


class Passwords:
    def __init__(self, inventory: Inventory, store: Store):
        self.inventory = inventory
        self.store = store

    def set_account(self, mzp: str, password: str, now: dt.datetime) -> bool:
        """Store the MZP password; returns False when Vault already had exactly that password."""
        self.inventory.partner(mzp)
        check_password(password, mzp)
        self.store.check_mount()
        return self._set(self.store.account(mzp), password, now,
                         lambda rec, cas: self.store.put_account(mzp, rec, cas))

    def set_smtp(self, mzp: str | None, password: str, now: dt.datetime) -> bool:
        """Store the SMTP password of a partner's submission account (or, without mzp, of notifications)."""
        if mzp:
            self.inventory.partner(mzp)
        check_password(password)
        self.store.check_mount()
        return self._set(self.store.smtp(mzp), password, now, lambda rec, cas: self.store.put_smtp(mzp, rec, cas))

    @staticmethod
    def _set(found: Versioned[Password] | None, password: str, now: dt.datetime, put) -> bool:
        if found and secrets.compare_digest(found.record.password.encode(), password.encode()):
            return False
        put(Password(password=password, updated_at=iso(now)), found.version if found else 0)
        return True

    def set_mailbox(self, mzp: str, password: str, now: dt.datetime) -> bool:
        """Store the password of a partner's reply mailbox (IMAP)."""
        self.inventory.partner(mzp)
        check_password(password, mzp)
        self.store.check_mount()
        return self._set(self.store.mailbox(mzp), password, now,
                         lambda rec, cas: self.store.put_mailbox(mzp, rec, cas))

    def mailbox(self, mzp: str) -> str | None:
        found = self.store.mailbox(mzp)
        return found.record.password if found and found.record.password else None

    def smtp(self, mzp: str | None) -> str | None:
        found = self.store.smtp(mzp)
        return found.record.password if found and found.record.password else None

    def account(self, mzp: str) -> str | None:
        found = self.store.account(mzp)
        return found.record.password if found and found.record.password else None
