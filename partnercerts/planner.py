"""Status rows and the rotation plan, from the index in custom metadata alone: never secret data."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import Remedy
from .indexer import Found, Indexer, notes_of
from .inventory import Application, Inventory, Partner
from .keymaker import KeyMaker
from .lifecycle import Action, Step, days_left, last_sent, plan_one, stage_of, state_of
from .store import Index, Store

if TYPE_CHECKING:
    from collections.abc import Callable

    from .pending import PendingKeys


@dataclass(frozen=True)
class Note:
    """Something the operator should know about a credential, and what would act on it (worded by the edge)."""

    text: str
    remedy: Remedy | None = None
    mzp: str = ""
    app: str = ""


@dataclass
class Row:
    mzp: str
    app: str
    client_id: str
    state: str
    serial: str
    not_after: str
    days_left: int | None
    pending_since: str
    hosts_in_sync: int | None = None
    hosts_total: int | None = None
    pending_submitted_at: str = ""
    pending_age_days: int | None = None
    turnaround_median_days: float | None = None
    subject_notes: list[str] = field(default_factory=list)  # what the authority changed in the current subject
    subject_accepted_by: str = ""    # who accepted an identity change in it
    pending_attention: str = ""      # the authority answered the pending CSR without a certificate
    pending_message_id: str = ""
    pending_times_sent: int | None = None
    pending_stage: str = ""          # lifecycle.Stage: created, submitted, waiting, reminded, needs_attention, issued
    pending_submission: str = ""     # how it was sent: email, outbox
    pending_last_sent_at: str = ""
    pending_waiting_days: int | None = None  # days since it was last sent
    pending_reminded_at: str = ""
    pending_times_reminded: int | None = None
    withdrawn_at: str = ""           # rekey --withdraw: the current certificate is removed from its hosts
    withdrawn_by: str = ""
    notes: list[Note] = field(default_factory=list, compare=False)

    @property
    def key(self) -> str:
        return f"{self.mzp}/{self.app}"

    def csr_stage(self) -> str:
        """The CSR's stage in one short cell: `waiting(12d)`, `reminded(3x)`, `submitted`, `issued`, `-`."""
        if self.pending_stage == "waiting" and self.pending_waiting_days is not None:
            return f"waiting({self.pending_waiting_days}d)"
        if self.pending_stage == "reminded" and self.pending_times_reminded:
            return f"reminded({self.pending_times_reminded}x)"
        return self.pending_stage or "-"

    def as_json(self) -> dict:
        return {"mzp": self.mzp, "app": self.app, "client_id": self.client_id or None, "state": self.state,
                "serial": self.serial or None, "not_after": self.not_after or None, "days_left": self.days_left,
                "pending_since": self.pending_since or None, "hosts_in_sync": self.hosts_in_sync,
                "hosts_total": self.hosts_total, "pending_submitted_at": self.pending_submitted_at or None,
                "pending_age_days": self.pending_age_days, "turnaround_median_days": self.turnaround_median_days,
                "subject_notes": list(self.subject_notes),
                "subject_change_accepted_by": self.subject_accepted_by or None,
                "pending_attention": self.pending_attention or None,
                "pending_message_id": self.pending_message_id or None, "pending_times_sent": self.pending_times_sent,
                "pending_stage": self.pending_stage or None, "pending_submission": self.pending_submission or None,
                "pending_last_sent_at": self.pending_last_sent_at or None,
                "pending_waiting_days": self.pending_waiting_days,
                "pending_reminded_at": self.pending_reminded_at or None,
                "pending_times_reminded": self.pending_times_reminded,
                "withdrawn_at": self.withdrawn_at or None, "withdrawn_by": self.withdrawn_by or None}


def median_days(turnarounds: str) -> float | None:
    """Median of the comma-separated turnaround seconds kept in the index, in days."""
    values = sorted(int(t) for t in turnarounds.split(",") if t.strip().lstrip("-").isdigit())
    if not values:
        return None
    mid = len(values) // 2
    seconds = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return round(seconds / 86400, 1)


def row_of(partner: Partner, application: Application, index: Index | None, stale: bool, now: dt.datetime) -> Row:
    """One status row from one index (no Vault access)."""
    mzp, app = partner.mzp, application.name
    notes = [Note("index is stale", Remedy.ROTATE, mzp, app)] if stale else []
    if index is None:
        return Row(mzp, app, "", state_of(None, now, partner.renew_before_days).value, "", "", None, "", notes=notes)
    since = index.pending_since_dt()
    age = (now - since).days if since else None
    turnaround = median_days(index.turnarounds)
    if turnaround is not None and turnaround + partner.deploy_window_days > partner.renew_before_days:
        notes.append(Note(f"the authority's median turnaround ({turnaround} days) plus the deploy window "
                          f"({partner.deploy_window_days} days) no longer fits in renew_before_days "
                          f"({partner.renew_before_days}); raise renew_before_days in {partner.source}"))
    if age is not None and age >= partner.pending_reminder_days:
        notes.append(Note(f"CSR pending for {age} days (reminder after {partner.pending_reminder_days}); "
                          "chase the authority, then import the reply", Remedy.IMPORT_REPLY, mzp, app))
    if index.pending_since and index.pending_attention:
        notes.append(Note(f"the authority answered the CSR without a certificate ({index.pending_attention}); "
                          "read its reply, then import the certificate, resend the CSR or make a new one",
                          Remedy.IMPORT_REPLY, mzp, app))
    if index.withdrawn_at:
        notes.append(Note(f"serial {index.serial} was withdrawn by {index.withdrawn_by} on {index.withdrawn_at} "
                          "(rekey --withdraw): its hosts must serve no certificate until the new one is imported"))
    if index.hosts_ahead:
        notes.append(Note(f"{index.hosts_ahead} host(s) serve a certificate newer than Vault's current "
                          f"({index.serial}) and unknown to Vault: its key is on those hosts only (Vault restored "
                          "from a backup older than an import?); deploys leave them alone; verify names them; "
                          "take it back into Vault (README: Disaster recovery)"))
    if index.subject_accepted_by:
        notes.append(Note(f"serial {index.serial}: an identity change in its subject was accepted by "
                          f"{index.subject_accepted_by}"))
    subject_notes = notes_of(index.subject_notes)
    if subject_notes:
        notes.append(Note(f"serial {index.serial}: the authority changed the subject: {'; '.join(subject_notes)}"))
    synced = bool(index.hosts_total)
    stage = stage_of(index, now)
    pending = bool(index.pending_since)
    sent = last_sent(index) if pending else None
    return Row(mzp, app, index.client_id, state_of(index, now, partner.renew_before_days).value, index.serial,
               index.not_after, days_left(now, index.not_after_dt()), index.pending_since,
               int(index.hosts_in_sync or 0) if synced else None, int(index.hosts_total) if synced else None,
               index.pending_submitted_at, age, turnaround, subject_notes, index.subject_accepted_by,
               index.pending_attention if index.pending_since else "",
               index.pending_message_id if index.pending_since else "",
               int(index.pending_times_sent) if pending and index.pending_times_sent.isdigit() else None,
               stage.value if stage else "", index.pending_submission if pending else "",
               (index.pending_sent_at or index.pending_submitted_at) if pending else "",
               (now - sent).days if sent else None, index.pending_reminded_at if pending else "",
               int(index.pending_times_reminded) if pending and index.pending_times_reminded.isdigit() else None,
               index.withdrawn_at, index.withdrawn_by, notes)


class Planner:
    def __init__(self, inventory: Inventory, store: Store, index: Indexer, pending: Callable[[], PendingKeys]):
        """pending: gives the PendingKeys the plan hands its key maker to (made when a plan needs it)."""
        self.inventory = inventory
        self.store = store
        self.index = index
        self.pending = pending
        self.last_indexes: Found = {}  # what the last plan read, for rows(cached=...)

    def rows(self, now: dt.datetime, mzp: str | None = None, app: str | None = None,
             cached: Found | None = None) -> list[Row]:
        """One row per credential from the index in custom metadata only; never reads secret data."""
        creds = self.inventory.credentials(mzp, app)
        self.store.check_mount()
        found = self.index.indexes(creds, cached)
        return [row_of(p, a, *found[f"{p.mzp}/{a.name}"], now) for p, a in creds]

    def plan(self, now: dt.datetime, mzp: str | None = None, app: str | None = None) -> list[Step]:
        """One step per credential, from the index alone; a stale index is repaired first.
        The indexes read are kept in `last_indexes` for `rows(cached=...)`."""
        creds = self.inventory.credentials(mzp, app)
        self.store.check_mount()
        found = self.index.indexes(creds)
        steps = []
        for partner, application in creds:
            key = f"{partner.mzp}/{application.name}"
            index, stale = found[key]
            if stale or (index is not None and index.marked()):  # marked: a write of current began after it
                index = self.index.reindex(partner.mzp, application.name, now)
                found[key] = (index, False)
            steps.append(plan_one(partner.mzp, application.name, index, now, partner.renew_before_days))
        self.last_indexes = found
        # The keys this plan will make, made ahead in parallel processes once the first is asked for
        # (never in a dry run, which asks for none).
        specs = {(p.mzp, a.name): (a.key_spec, p.subject) for p, a in creds}
        self.pending().keys = KeyMaker([(s.mzp, s.app, *specs[(s.mzp, s.app)]) for s in steps
                                      if s.action in (Action.ISSUE, Action.RENEW)])
        return steps
