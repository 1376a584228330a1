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

from .hostreports import HostReports
from .importer import Importer
from .indexer import Indexer
from .inventory import Inventory
from .passwords import Passwords
from .pending import PendingKeys
from .planner import Planner
from .replies import Replies
from .settings import Settings
from .store import Store
from .submitter import Submitter


class Toolkit:
    def __init__(self, settings: Settings, inventory: Inventory, store: Store):
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self.index = Indexer(store)
        self.pending = PendingKeys(inventory, store, self.index)
        self.importer = Importer(settings, inventory, store, self.pending, self.index)
        self.passwords = Passwords(inventory, store)
        self.submitter = Submitter(settings, inventory, store, self.index, self.importer, self.passwords)
        self.planner = Planner(inventory, store, self.index, self.pending)
        self.hosts = HostReports(store, self.index)
        self.replies = Replies(settings, inventory, store, self.importer, self.passwords)

    @classmethod
    def open(cls, settings: Settings | None = None, env: dict | None = None) -> "Toolkit":
        """Settings from the environment, the inventory they name, and a Vault connection."""
        from . import inventory
        from .vault import connect
        settings = settings or Settings.from_env(env)
        return cls(settings, inventory.load(settings.inventory), Store(connect(settings, env), settings))
