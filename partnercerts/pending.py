"""Pending keys and CSRs: at most one pending key per credential, made straight into Vault and read back."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import Conflict, IntegrityError, Remedy, UserError
from .inventory import Application, Inventory, Partner
from .keymaker import KeyMaker, new_key_and_csr
from .store import Issued, Pending, Store, Versioned, iso

if TYPE_CHECKING:
    from .indexer import Indexer

# csr, keys and profile.name_key load `cryptography` (a tenth of a second): they are imported where
# used, so that `status`, `metrics` and a rotation with nothing due never load it.


@dataclass
class CsrResult:
    mzp: str
    app: str
    csr_pem: str
    openssl_config: str
    key_sha256: str
    created: bool
    warning: str = ""


def settle_if_imported(store: Store, mzp: str, app: str, pend: Versioned[Pending],
                       cur: Versioned[Issued] | None, now: dt.datetime) -> bool:
    """Tombstone a pending record whose key is already current: an import that died after writing
    `current` but before its tombstone. Returns whether it did (the credential waits no longer)."""
    if cur is None or cur.record.key_sha256 != pend.record.key_sha256:
        return False
    store.put_pending(mzp, app, pend.record.tombstone(cur.record.serial, now), cas=pend.version)
    return True


class PendingKeys:
    def __init__(self, inventory: Inventory, store: Store, index: "Indexer"):
        self.inventory = inventory
        self.store = store
        self.index = index
        self.keys: KeyMaker | None = None  # set by the planner: the keys of its plan, made ahead

    def make_csr(self, mzp: str, app: str, now: dt.datetime, force: bool = False, index: bool = True) -> CsrResult:
        """Return the pending CSR, or make a key (straight into Vault, read back) and a new one.

        index=False leaves the index to the caller (a rotation: the submission that follows rewrites it)."""
        partner = self.inventory.partner(mzp)
        application = partner.app(app)
        self.store.check_mount()
        found = self.store.pending(mzp, app)
        if found and found.record.live:
            settled = settle_if_imported(self.store, mzp, app, found, self.store.current(mzp, app), now)
            if not settled and not force:
                return self._existing(partner, application, found.record)
            found = self.store.pending(mzp, app)  # the tombstone moved the version
        # The version seen by the same read: re-asking Vault for it here would let a run that
        # lost the race overwrite the winner's pending key.
        cas = found.version if found else 0
        if self.keys is not None:
            key_pem, csr_pem, key_sha = self.keys.take(mzp, app, application.key_spec, partner.subject)
        else:
            key_pem, csr_pem, key_sha = new_key_and_csr(application.key_spec, partner.subject)
        record = Pending(key_pem=key_pem, csr_pem=csr_pem, key_sha256=key_sha, key_spec=application.key_spec,
                         created_at=iso(now))
        try:
            version = self.store.put_pending(mzp, app, record, cas=cas)
        except Conflict:
            # Another run created a pending key first: that one stands, never a second one.
            other = self.store.live_pending(mzp, app)
            if other is None or force:
                raise
            return self._existing(partner, application, other.record)
        back = self.store.pending(mzp, app)
        if back is None or back.version != version or back.record.key_pem != key_pem:
            raise IntegrityError(f"{mzp}/{app}: the key read back from Vault differs from the key written; "
                                 "the CSR was not released; check Vault's health and run again")
        if index:
            self.index.reindex(mzp, app, now)
        return CsrResult(mzp, app, csr_pem, partner.subject.openssl_config(application.key_spec), key_sha, True)

    def _existing(self, partner: Partner, application: Application, rec: Pending) -> CsrResult:
        from . import csr as csrmod
        from .profile import name_key
        request = csrmod.from_pem(rec.csr_pem)
        warning = ""
        if name_key(request.subject) != name_key(partner.subject.to_name()):
            warning = (f"{partner.mzp}/{application.name}: the pending CSR's subject differs from the inventory's "
                       "(the inventory changed since); use --force to make a new key and CSR")
        return CsrResult(partner.mzp, application.name, rec.csr_pem,
                         partner.subject.openssl_config(rec.key_spec or application.key_spec),
                         rec.key_sha256, False, warning)

    def reminded(self, mzp: str, app: str, now: dt.datetime) -> None:
        """Record a reminder raised for the pending CSR (status shows it as `reminded`, when, how many)."""
        for _ in range(3):
            found = self.store.live_pending(mzp, app)
            if found is None:
                return
            rec = found.record
            try:
                self.store.put_pending(mzp, app, replace(rec, reminded_at=iso(now),
                                                         times_reminded=(rec.times_reminded or 0) + 1),
                                       cas=found.version)
            except Conflict:
                continue  # another run changed it at the same time: read it again
            self.index.reindex(mzp, app, now)
            return

    def require(self, mzp: str, app: str) -> Versioned[Pending]:
        """The live pending record, or a UserError saying there is none."""
        found = self.store.live_pending(mzp, app)
        if found is None:
            raise UserError(f"{mzp}/{app}: no pending CSR to import a certificate for; make one first",
                            remedy=Remedy.MAKE_CSR, mzp=mzp, app=app)
        return found
