"""The core services of one run, wired once to one settings, inventory and Vault store.

Edges (Invoke tasks, Ansible plugins) build a `Toolkit` and call its services:

    pending     PendingKeys  keys and CSRs (pending.py)
    importer    Importer     the gate and the write order of an import, rollback (importer.py)
    submitter   Submitter    the CSR to the authority by the partner's transport (submitter.py, transports.py)
    planner     Planner      status rows and the rotation plan (planner.py)
    hosts       HostReports  what each host serves (hostreports.py)
    index       Indexer      the index in custom metadata (indexer.py)
    passwords   Passwords    MZP, SMTP and mailbox passwords (passwords.py)
    replies     Replies      the authority's replies from the reply mailboxes (replies.py, imap.py)

A rotation run (`rotation.start`/`finish`) composes them.
"""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from .indexer import Indexer
from .inventory import Inventory
from .planner import Planner
from .settings import Settings
from .store import Store

if TYPE_CHECKING:
    from .hostreports import HostReports
    from .importer import Importer
    from .passwords import Passwords
    from .pending import PendingKeys
    from .replies import Replies
    from .submitter import Submitter


class Toolkit:
    """The services are made, and their modules imported, when first used: `status` needs the planner and the
    index only, so it starts without the importer, the transports and the mailbox (e-mail, IMAP, TLS)."""

    def __init__(self, settings: Settings, inventory: Inventory, store: Store):
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self.index = Indexer(store)

    @cached_property
    def pending(self) -> PendingKeys:
        from .pending import PendingKeys
        return PendingKeys(self.inventory, self.store, self.index)

    @cached_property
    def importer(self) -> Importer:
        from .importer import Importer
        return Importer(self.settings, self.inventory, self.store, self.pending, self.index)

    @cached_property
    def passwords(self) -> Passwords:
        from .passwords import Passwords
        return Passwords(self.inventory, self.store)

    @cached_property
    def submitter(self) -> Submitter:
        from .submitter import Submitter
        return Submitter(self.settings, self.inventory, self.store, self.index, self.importer, self.passwords)

    @cached_property
    def planner(self) -> Planner:
        return Planner(self.inventory, self.store, self.index, lambda: self.pending)

    @cached_property
    def hosts(self) -> HostReports:
        from .hostreports import HostReports
        return HostReports(self.store, self.index)

    @cached_property
    def replies(self) -> Replies:
        from .replies import Replies
        return Replies(self.settings, self.inventory, self.store, self.importer, self.passwords)

    @classmethod
    def open(cls, settings: Settings | None = None, env: dict | None = None, light: bool = False) -> "Toolkit":
        """Settings from the environment, the inventory they name, and a Vault connection (`light`: made only
        when the pipelined reader cannot serve a request, for commands that only read: vault.Deferred)."""
        from . import inventory
        from .vault import connect
        settings = settings or Settings.from_env(env)
        return cls(settings, inventory.load(settings.inventory), Store(connect(settings, env, light), settings))
