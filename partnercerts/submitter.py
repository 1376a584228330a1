"""Submission: the pending CSR goes to the authority by the partner's transport, never twice unless resent."""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, replace

from .errors import Remedy, UserError
from .importer import Importer, ImportResult
from .indexer import Indexer
from .inventory import Inventory, Partner
from .passwords import Passwords
from .settings import Settings
from .store import Sent, Store, iso
from .transports import EmailTransport, OutboxTransport, Request, SandboxTransport, Transport


class Outcome(str, enum.Enum):
    NO_PENDING = "no_pending"                # nothing to send (already imported, e.g. by another run)
    ALREADY_SUBMITTED = "already_submitted"  # sent before; resend to send it again
    SENT = "sent"                            # e-mailed or written to the outbox
    IMPORTED = "imported"                    # the sandbox signed it at once and it was imported


@dataclass(frozen=True)
class SubmitResult:
    outcome: Outcome
    where: str = ""
    message_id: str = ""
    submitted_at: str = ""
    imported: ImportResult | None = None

    @property
    def remedy(self) -> Remedy | None:
        return Remedy.RESEND if self.outcome is Outcome.ALREADY_SUBMITTED else None

    def describe(self) -> str:
        """One line for the operator, in no edge's terms (the remedy, if any, is added by the edge)."""
        if self.outcome is Outcome.NO_PENDING:
            return "no pending CSR (already imported by another run)"
        if self.outcome is Outcome.ALREADY_SUBMITTED:
            return f"already submitted on {self.submitted_at} ({self.message_id})"
        if self.outcome is Outcome.IMPORTED and self.imported is not None:
            changed = (f"; the authority changed the subject: {'; '.join(self.imported.subject_notes)}"
                       if self.imported.subject_notes else "")
            return (f"{self.where} and imported: serial {self.imported.serial}, "
                    f"not after {self.imported.not_after}{changed}")
        return f"CSR {self.where} (Message-ID {self.message_id})"


class Submitter:
    def __init__(self, settings: Settings, inventory: Inventory, store: Store, index: Indexer, importer: Importer,
                 passwords: Passwords):
        self.inventory = inventory
        self.store = store
        self.index = index
        self.transports: dict[str, Transport] = {
            "sandbox": SandboxTransport(settings, store, importer, passwords),
            "email": EmailTransport(store),
            "outbox": OutboxTransport(),
        }

    def transport(self, partner: Partner) -> Transport:
        method = partner.submission.method
        if method not in self.transports:
            raise UserError(f"{partner.source}: partner {partner.mzp}: submission method {method!r} is unknown; "
                            f"use one of {', '.join(sorted(self.transports))}")
        return self.transports[method]

    def submit(self, partner: Partner, app: str, now: dt.datetime, resend: bool = False) -> SubmitResult:
        """Send the pending CSR by the partner's transport; never twice unless `resend`."""
        from . import submission
        mzp = partner.mzp
        pend = self.store.live_pending(mzp, app)
        if pend is None:
            return SubmitResult(Outcome.NO_PENDING)
        transport = self.transport(partner)
        if not transport.sends_message:
            delivery = transport.deliver(Request(partner, app, pend.record, now))
            return SubmitResult(Outcome.IMPORTED, delivery.where, imported=delivery.imported)
        rec = pend.record
        if rec.submitted_at and not resend:
            return SubmitResult(Outcome.ALREADY_SUBMITTED, message_id=rec.message_id, submitted_at=rec.submitted_at)
        transport.check(partner)
        # Record the Message-ID before sending: a run that dies after sending resends the same
        # message (same Message-ID) rather than an unrecorded second one.
        message_id = rec.message_id if rec.message_id and not resend else submission.new_message_id(partner)
        version = pend.version
        if rec.message_id != message_id:
            rec = replace(rec, message_id=message_id, submitting_at=iso(now), attention={},
                          reminded_at="", times_reminded=None)
            version = self.store.put_pending(mzp, app, rec, cas=version)
        msg = submission.build(partner, app, csr_pem=rec.csr_pem, key_sha256=rec.key_sha256, key_spec=rec.key_spec,
                               message_id=message_id, now=now, rekey=rec.rekey or None)
        delivery = transport.deliver(Request(partner, app, rec, now, message_id, msg))
        rec = replace(rec, submitted_at=rec.submitted_at or iso(now), submission=transport.method,
                      sent=[*rec.sent, Sent(at=iso(now), message_id=message_id, method=transport.method)])
        self.store.put_pending(mzp, app, rec, cas=version)
        self.index.reindex(mzp, app, now)
        return SubmitResult(Outcome.SENT, delivery.where, message_id, rec.submitted_at)

    def submit_all(self, now: dt.datetime, mzp: str | None = None, app: str | None = None,
                   resend: bool = False) -> list[tuple[str, SubmitResult]]:
        """submit() of every pending CSR of the inventory (or of one partner or application), by "MZP/app"."""
        out = []
        for partner, application in self.inventory.credentials(mzp, app):
            if self.store.read_index(partner.mzp, application.name) is None:
                continue  # never touched: nothing pending
            result = self.submit(partner, application.name, now, resend=resend)
            if result.outcome is not Outcome.NO_PENDING:
                out.append((f"{partner.mzp}/{application.name}", result))
        return out
