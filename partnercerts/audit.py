"""The audit trail of one credential, rebuilt from what Vault already holds.

Nothing is written for it: KV v2 keeps every version of `pending`, `current` and `hosts` (each version with
the time Vault stored it), `history/<serial>` holds every imported certificate, and `runs/rotate` every run
record. Reading those versions in order and comparing each with the one before says what happened:

    pending    key_made, rekey, csr_submitted, csr_resent, csr_send_unconfirmed, reminder, needs_attention
    current    imported (and csr_submitted, for a CSR the sandbox authority signed at once), rollback, withdrawn
    history    imported (an entry never made current), withdrawn (when `current` does not show it)
    hosts      deployed (a host serves another certificate than at its last report), hosts_checked
    runs       rotate_failed (a rotation run that did not succeed; its record names no credential)
    account    mzp_password (a new version of the MZP password; from metadata only, the password is not read)
    any path   version_deleted, version_destroyed

Events are ordered by the time Vault stored the version they come from (the server's clock, which
PARTNERCERTS_NOW and the control nodes' clocks do not move), newest first; each event's `at` is the time its
record states (the toolkit's clock), or Vault's when the record states none (a rollback). Only named,
non-secret fields go into an event: never a key, password, certificate or CSR.

`events()` and its helpers are pure functions of the versions; `read()` is the one reader. Reading the data
of older versions needs a token that may read `<mount>/data/<prefix>/*` (the rotator policy): the auditor's
policy reads metadata only, and is refused with a line saying so.
"""
from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field, replace

from .errors import Remedy, UserError, VaultDenied
from .inventory import Inventory
from .profile import APP_RE, MZP_RE
from .store import HostReport, Hosts, Issued, Pending, RunRecord, Store, iso

MAX_TEXT = 200  # a free-text field (a reason, a reply's subject) as one line shows it


class Kind(str, enum.Enum):
    KEY_MADE = "key_made"
    REKEY = "rekey"
    CSR_SUBMITTED = "csr_submitted"
    CSR_RESENT = "csr_resent"
    CSR_SEND_UNCONFIRMED = "csr_send_unconfirmed"
    REMINDER = "reminder"
    NEEDS_ATTENTION = "needs_attention"
    IMPORTED = "imported"
    ROLLBACK = "rollback"
    WITHDRAWN = "withdrawn"
    DEPLOYED = "deployed"
    HOSTS_CHECKED = "hosts_checked"
    ROTATE_FAILED = "rotate_failed"
    MZP_PASSWORD = "mzp_password"
    VERSION_DELETED = "version_deleted"
    VERSION_DESTROYED = "version_destroyed"


@dataclass(frozen=True)
class Version:
    """One stored version of a record: which, when Vault stored it, and its data (None: deleted, destroyed,
    or not read)."""

    path: str                 # relative to the credential: pending, current, hosts, history/<serial>; runs/rotate
    number: int
    stored_at: str            # Vault's created_time (RFC 3339, nanoseconds)
    data: dict | None = None
    deleted_at: str = ""
    destroyed: bool = False

    @property
    def source(self) -> str:
        return f"{self.path} v{self.number}"


@dataclass
class Trail:
    """Every version Vault keeps of one credential's records, oldest first, and what it does not keep."""

    mzp: str
    app: str
    pending: list[Version] = field(default_factory=list)
    current: list[Version] = field(default_factory=list)
    hosts: list[Version] = field(default_factory=list)
    history: dict[str, list[Version]] = field(default_factory=dict)
    runs: list[Version] = field(default_factory=list)
    account: list[Version] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # versions KV v2 pruned: events that cannot be shown
    in_inventory: bool = True

    def empty(self) -> bool:
        return not (self.pending or self.current or self.hosts or self.history)


@dataclass(frozen=True)
class Event:
    at: str              # when it happened, as its record says; Vault's time when the record says nothing
    kind: Kind
    summary: str         # the details in one line, for people
    details: dict        # the same for machines: strings, numbers, lists of strings; never a secret
    source: str          # the version it was read from, e.g. "pending v3"
    vault_time: str      # when Vault stored that version: the trail's order
    order: tuple = field(default=(0, 0), compare=False, repr=False)

    def as_json(self, mzp: str, app: str) -> dict:
        return {"at": self.at, "kind": self.kind.value, "mzp": mzp, "app": app, "summary": self.summary,
                "details": self.details, "source": self.source, "vault_time": self.vault_time}

    def line(self, width: int = 0) -> str:
        return f"{self.at}  {self.kind.value.ljust(width)}  {self.summary}"


@dataclass
class History:
    mzp: str
    app: str
    events: list[Event]
    notes: list[str]
    in_inventory: bool

    def as_json(self) -> list[dict]:
        return [e.as_json(self.mzp, self.app) for e in self.events]

    def lines(self) -> list[str]:
        width = max((len(e.kind.value) for e in self.events), default=0)
        return [e.line(width) for e in self.events]


# -- Vault's times ---------------------------------------------------------------------------------
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def vault_ns(value: str) -> int:
    """Vault's RFC 3339 time (up to nanoseconds; Go trims trailing zeros, so the strings do not sort) as
    nanoseconds since the epoch; 0 when absent or unreadable."""
    m = _RFC3339.fullmatch(value or "")
    if not m:
        return 0
    base = dt.datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return int(base.timestamp()) * 1_000_000_000 + int((m[2] or "0").ljust(9, "0"))


def vault_iso(value: str) -> str:
    """Vault's time as the records keep theirs (UTC, whole seconds), for `at`."""
    m = _RFC3339.fullmatch(value or "")
    if not m:
        return value or ""
    return iso(dt.datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3])))


# -- what may be shown -------------------------------------------------------------------------------
def text(value: object, limit: int = MAX_TEXT) -> str:
    """A recorded value as one line of plain text: control characters and runs of blanks collapsed, bounded,
    and anything that looks like key or certificate material withheld."""
    s = " ".join("".join(c if c.isprintable() else " " for c in str(value or "")).split())
    if "-----BEGIN" in s or "PRIVATE KEY" in s:
        return "(withheld: looks like key material)"
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _days(seconds: int | None) -> float | None:
    return None if seconds is None else round(seconds / 86400, 1)


class _Builder:
    """Collects events in derivation order: within one version, later events sort as newer."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, at_version: Version, kind: Kind, at: str, summary: str, seq: int = 0, **details) -> None:
        clean = {k: (text(v) if isinstance(v, str) else [text(x) for x in v] if isinstance(v, list) else v)
                 for k, v in details.items() if v not in (None, "", [], {})}
        v = at_version
        self.events.append(Event(at or vault_iso(v.stored_at), kind, text(summary, 2000), clean,
                                 v.source, vault_iso(v.stored_at), (vault_ns(v.stored_at), v.number, seq,
                                                                    len(self.events))))


# -- pending ---------------------------------------------------------------------------------------
def pending_events(versions: list[Version]) -> list[Event]:
    """Keys made, re-keys, CSRs sent and resent, reminders and answers without a certificate."""
    out = _Builder()
    records = [(v, Pending.from_data(v.data)) for v in versions if v.data is not None]
    sent_ids: dict[str, set[str]] = {}  # per key: every Message-ID a send was recorded for
    for _, rec in records:
        if rec.live:
            sent_ids.setdefault(rec.key_sha256, set()).update(s.message_id for s in rec.sent)
    prev: Pending | None = None
    for v, rec in records:
        if not rec.live:
            prev = rec  # the tombstone of an import: the import itself is read from `current`
            continue
        new_key = prev is None or not prev.live or prev.key_sha256 != rec.key_sha256
        base = Pending() if new_key or prev is None else prev
        if new_key:
            replaced = prev.key_sha256 if prev is not None and prev.live else ""
            out.add(v, Kind.KEY_MADE, rec.created_at,
                    f"new key ({rec.key_spec or 'key'}), public key SHA-256 {rec.key_sha256}"
                    + (f"; it replaces the pending key {replaced[:16]}…, which was never imported" if replaced else ""),
                    seq=0, key_sha256=rec.key_sha256, key_spec=rec.key_spec, replaces_pending_key=replaced)
        if rec.rekey and rec.rekey != base.rekey:
            r = rec.rekey
            out.add(v, Kind.REKEY, str(r.get("at") or ""),
                    f"emergency re-key by {text(r.get('by')) or '(not recorded)'}: {text(r.get('reason'))}; the "
                    f"authority is asked to revoke serial {text(r.get('revoke_serial')) or '?'}",
                    seq=1, reason=str(r.get("reason") or ""), by=str(r.get("by") or ""),
                    revoke_serial=str(r.get("revoke_serial") or ""), key_sha256=rec.key_sha256)
        if rec.message_id and rec.message_id != base.message_id \
                and rec.message_id not in sent_ids.get(rec.key_sha256, set()):
            out.add(v, Kind.CSR_SEND_UNCONFIRMED, rec.submitting_at,
                    f"Message-ID {text(rec.message_id)} recorded before sending, but no send was ever recorded "
                    "with it (the run stopped, or the transport failed)", seq=2, message_id=rec.message_id)
        before = {(s.at, s.message_id) for s in base.sent}
        for i, s in enumerate(rec.sent):
            if (s.at, s.message_id) in before:
                continue
            how = text(s.method) or "?"
            if i == 0:
                out.add(v, Kind.CSR_SUBMITTED, s.at, f"CSR sent by {how}, Message-ID {text(s.message_id)}",
                        seq=3 + i, method=s.method, message_id=s.message_id, key_sha256=rec.key_sha256)
            else:
                out.add(v, Kind.CSR_RESENT, s.at,
                        f"CSR sent again by {how} (sent {i + 1} times), Message-ID {text(s.message_id)}",
                        seq=3 + i, method=s.method, message_id=s.message_id, times_sent=i + 1,
                        key_sha256=rec.key_sha256)
        if not rec.sent and rec.submitted_at and not base.submitted_at:  # written before `sent` was recorded
            out.add(v, Kind.CSR_SUBMITTED, rec.submitted_at,
                    f"CSR sent by {text(rec.submission) or '?'}"
                    + (f", Message-ID {text(rec.message_id)}" if rec.message_id else ""),
                    seq=3, method=rec.submission, message_id=rec.message_id, key_sha256=rec.key_sha256)
        if rec.reminded_at and (rec.reminded_at, rec.times_reminded) != (base.reminded_at, base.times_reminded):
            since = rec.sent[-1].at if rec.sent else rec.submitted_at
            out.add(v, Kind.REMINDER, rec.reminded_at,
                    f"reminder {rec.times_reminded or 1} raised: no certificate yet for the CSR sent on "
                    f"{since or '?'}", seq=100, times_reminded=rec.times_reminded, waiting_since=since)
        if rec.attention and rec.attention != base.attention:
            a = rec.attention
            out.add(v, Kind.NEEDS_ATTENTION, str(a.get("seen_at") or ""),
                    f"the authority answered without a certificate: {text(a.get('date')) or '(no date)'}, "
                    f"subject {text(a.get('subject')) or '(none)'!r}, Message-ID {text(a.get('message_id')) or '?'}",
                    seq=101, reply_date=str(a.get("date") or ""), reply_subject=str(a.get("subject") or ""),
                    reply_message_id=str(a.get("message_id") or ""))
        prev = rec
    return out.events


def submitted_keys(versions: list[Version]) -> set[str]:
    """The keys whose pending record recorded a submission (so `current` need not say it was submitted)."""
    out = set()
    for v in versions:
        if v.data is not None:
            rec = Pending.from_data(v.data)
            if rec.live and (rec.sent or rec.submitted_at):
                out.add(rec.key_sha256)
    return out


# -- current and history ---------------------------------------------------------------------------
def _imported(out: _Builder, v: Version, rec: Issued, seq: int, note: str = "") -> None:
    change = rec.subject_change or {}
    by = str(change.get("accepted_by") or "")
    parts = [f"serial {rec.serial}, valid {rec.not_before or '?'} to {rec.not_after or '?'}",
             f"Client ID {text(rec.client_id) or '?'}"]
    if rec.submitted_at:
        took = _days(rec.turnaround_seconds)
        parts.append(f"CSR sent by {text(rec.submission) or '?'} on {rec.submitted_at}"
                     + (f", answered after {took} days" if took is not None else ""))
    if by:
        parts.append(f"imported by {text(by)} (who accepted the subject change)")
    if rec.reply_message_id:
        parts.append(f"from the reply mailbox, Message-ID {text(rec.reply_message_id)}")
    recovered = rec.recovered_from or {}
    if recovered:
        parts.append(f"recovered from host {text(recovered.get('host')) or '?'} by {text(recovered.get('by')) or '?'} "
                     "(Vault had lost it: restored from an older backup)")
    if rec.subject_notes:
        parts.append(f"subject notes: {'; '.join(text(n) for n in rec.subject_notes)}")
    if change.get("changes"):
        parts.append(f"identity change accepted: {'; '.join(text(c) for c in change.get('changes') or [])}")
    if note:
        parts.append(note)
    out.add(v, Kind.IMPORTED, rec.imported_at, "; ".join(parts), seq=seq,
            serial=rec.serial, not_before=rec.not_before, not_after=rec.not_after, client_id=rec.client_id,
            fingerprint_sha256=rec.fingerprint_sha256, key_sha256=rec.key_sha256, submission=rec.submission,
            submitted_at=rec.submitted_at, turnaround_days=_days(rec.turnaround_seconds), by=by,
            subject_change=[str(c) for c in change.get("changes") or []], subject_notes=list(rec.subject_notes),
            reply_message_id=rec.reply_message_id, recovered_from=str(recovered.get("host") or ""), note=note)


def _withdrawn(out: _Builder, v: Version, rec: Issued, seq: int) -> None:
    w = rec.withdrawn
    out.add(v, Kind.WITHDRAWN, str(w.get("at") or ""),
            f"serial {rec.serial} withdrawn by {text(w.get('by')) or '(not recorded)'}: {text(w.get('reason'))}; "
            "deploys remove it from the hosts and rollbacks refuse it",
            seq=seq, serial=rec.serial, reason=str(w.get("reason") or ""), by=str(w.get("by") or ""))


def current_events(versions: list[Version], history: dict[str, list[Version]],
                   submitted: set[str] | frozenset[str] = frozenset()) -> list[Event]:
    """Imports, rollbacks and withdrawals from the versions of `current`, completed by `history/<serial>`."""
    out = _Builder()
    prev: Issued | None = None
    seen: set[str] = set()
    withdrawn: set[str] = set()
    for v in versions:
        if v.data is None:
            continue
        rec = Issued.from_data(v.data)
        if prev is None or rec.serial != prev.serial:
            older = (prev is not None and bool(rec.imported_at and prev.imported_at)
                     and rec.imported_at < prev.imported_at)
            if rec.serial in seen or older:
                out.add(v, Kind.ROLLBACK, "",
                        f"serial {rec.serial} (valid to {rec.not_after or '?'}) made current again"
                        + (f", replacing serial {prev.serial}" if prev is not None else ""),
                        seq=1, serial=rec.serial, from_serial=prev.serial if prev is not None else "",
                        not_after=rec.not_after)
            else:
                if rec.submitted_at and rec.key_sha256 not in submitted:  # the sandbox authority signs at once
                    out.add(v, Kind.CSR_SUBMITTED, rec.submitted_at,
                            f"CSR sent to {text(rec.submission) or '?'}, which answered at once", seq=0,
                            method=rec.submission, key_sha256=rec.key_sha256)
                _imported(out, v, rec, seq=1)
            seen.add(rec.serial)
        if rec.withdrawn and (prev is None or prev.serial != rec.serial or not prev.withdrawn) \
                and rec.serial not in withdrawn:
            _withdrawn(out, v, rec, seq=2)
            withdrawn.add(rec.serial)
        prev = rec
    for serial, entries in sorted(history.items()):
        recs = [(v, Issued.from_data(v.data)) for v in entries if v.data is not None]
        if not recs:
            continue
        if serial not in seen:
            v, rec = recs[0]
            _imported(out, v, rec, seq=1, note="in the history only: never made current (an import that stopped "
                                               "before writing current)")
        for v, rec in recs:
            if rec.withdrawn and serial not in withdrawn:
                _withdrawn(out, v, rec, seq=2)
                withdrawn.add(serial)
    return out.events


# -- hosts -----------------------------------------------------------------------------------------
def _served(host: str, r: HostReport) -> str:
    what = f"serial {r.serial}" if r.serial else "nothing"
    if r.in_sync:
        state = "in sync"
    else:
        state = "drift: " + "; ".join(text(d, 80) for d in r.drift) if r.drift else "not in sync"
    return f"{host}: {what} ({state})"


def hosts_events(versions: list[Version]) -> list[Event]:
    """Per report of a deploy or verify: the hosts it checked, what each serves; `deployed` when a host serves
    another certificate than at its last report, else `hosts_checked` (a verify, or a deploy with nothing to do)."""
    out = _Builder()
    prev: dict[str, HostReport] = {}
    for v in versions:
        if v.data is None:
            continue
        rec = Hosts.from_data(v.data)
        checked = {h: r for h, r in sorted(rec.hosts.items())
                   if r.checked_at and (h not in prev or prev[h].checked_at != r.checked_at)}
        forgotten = sorted(set(prev) - set(rec.hosts))
        if checked or forgotten:
            changed = any(h not in prev or (prev[h].serial, prev[h].fingerprint_sha256)
                          != (r.serial, r.fingerprint_sha256) for h, r in checked.items())
            served = [_served(h, r) for h, r in checked.items()]
            in_sync = sum(r.in_sync for r in rec.hosts.values())
            summary = "; ".join(served) or "no host checked"
            summary += f"; {in_sync}/{len(rec.hosts)} hosts in sync"
            if forgotten:
                summary += f"; no longer in the inventory: {', '.join(forgotten)}"
            out.add(v, Kind.DEPLOYED if changed else Kind.HOSTS_CHECKED, rec.checked_at, summary,
                    hosts=served, serials=sorted({r.serial for r in checked.values() if r.serial}),
                    hosts_in_sync=in_sync, hosts_total=len(rec.hosts), forgotten=forgotten)
        prev = rec.hosts
    return out.events


# -- runs, passwords, deletions ---------------------------------------------------------------------
def run_events(versions: list[Version], since_ns: int = 0) -> list[Event]:
    """Rotation runs that did not succeed (from `since_ns`, Vault's time): the run record names no credential."""
    out = _Builder()
    for v in versions:
        if v.data is None or vault_ns(v.stored_at) < since_ns:
            continue
        rec = RunRecord.from_data(v.data)
        if rec.last_run and rec.last_run != rec.last_success:
            out.add(v, Kind.ROTATE_FAILED, rec.last_run,
                    "a rotation run did not succeed (a credential, a mailbox or a deploy failed; the run record "
                    f"does not say which); last success {rec.last_success or 'never'}",
                    last_success=rec.last_success)
    return out.events


def password_events(versions: list[Version]) -> list[Event]:
    out = _Builder()
    for v in versions:
        out.add(v, Kind.MZP_PASSWORD, "", f"MZP password stored in Vault ({v.source}; the password is not read)")
    return out.events


def deletion_events(versions: list[Version]) -> list[Event]:
    out = _Builder()
    for v in versions:
        if v.destroyed:
            out.add(v, Kind.VERSION_DESTROYED, "", f"{v.source} was destroyed: its data is gone (time not kept)",
                    seq=900, path=v.path, version=v.number)
        elif v.deleted_at:
            out.add(v, Kind.VERSION_DELETED, vault_iso(v.deleted_at),
                    f"{v.source} was deleted on {vault_iso(v.deleted_at)} (soft delete: undelete can restore it)",
                    seq=900, path=v.path, version=v.number)
    return out.events


def _with_hosts(events: list[Event]) -> list[Event]:
    """Each rollback with the hosts of the first report after it (the deploy that follows a rollback)."""
    reports = sorted((e for e in events if e.kind in (Kind.DEPLOYED, Kind.HOSTS_CHECKED)), key=lambda e: e.order)
    out = []
    for e in events:
        if e.kind is Kind.ROLLBACK:
            after = next((r for r in reports if r.order > e.order), None)
            if after is not None:
                hosts = list(after.details.get("hosts", []))
                e = replace(e, summary=f"{e.summary}; then on the hosts: {'; '.join(hosts) or 'none'}",
                            details={**e.details, "hosts": hosts})
        out.append(e)
    return out


def events(trail: Trail) -> list[Event]:
    """Every event of the trail, newest first (by the time Vault stored the version each comes from)."""
    found: list[Event] = []
    found += pending_events(trail.pending)
    found += current_events(trail.current, trail.history, submitted_keys(trail.pending))
    found += hosts_events(trail.hosts)
    own = [v for vs in (trail.pending, trail.current, trail.hosts, *trail.history.values()) for v in vs]
    found += run_events(trail.runs, since_ns=min((vault_ns(v.stored_at) for v in own), default=0))
    found += password_events(trail.account)
    found += deletion_events(own)
    return sorted(_with_hosts(found), key=lambda e: e.order, reverse=True)


# -- the reader ------------------------------------------------------------------------------------
def denied_message(store: Store, mzp: str, app: str) -> str:
    return (f"{mzp}/{app}: history reads the data of every version of pending, current, hosts and history "
            f"(under {store.mount}/data/{store.prefix}/), which this token's policy does not allow; the auditor "
            "policy reads metadata only: run it with the rotator's AppRole (scripts/inv vault.secret-id --role "
            "rotator) or a token that may read those paths")


def _versions(store: Store, path: str, label: str, data: bool = True) -> tuple[list[Version], str]:
    """Every version Vault keeps of a path, oldest first, and a note when KV v2 pruned older ones."""
    meta = store.metadata(path)
    kept = meta.get("versions") or {}
    out = []
    for number in sorted(int(n) for n in kept):
        info = kept.get(str(number)) or {}
        destroyed = bool(info.get("destroyed"))
        rec = store.read_version(path, number) if data and not destroyed else None
        out.append(Version(label, number, str(info.get("created_time") or ""), rec.data if rec else None,
                           str(info.get("deletion_time") or ""), destroyed))
    note = ""
    if out and out[0].number > 1:
        note = (f"{label}: versions 1 to {out[0].number - 1} were pruned by KV v2 (max_versions "
                f"{meta.get('max_versions') or 'of the mount'}): what they recorded is not shown")
    return out, note


def read(store: Store, mzp: str, app: str) -> Trail:
    """Every version of the credential's records (and of the run record and the MZP password's metadata)."""
    trail = Trail(mzp, app)
    try:
        for name, path in (("pending", store.pending_path(mzp, app)), ("current", store.current_path(mzp, app)),
                           ("hosts", store.hosts_path(mzp, app))):
            versions, note = _versions(store, path, name)
            setattr(trail, name, versions)
            trail.notes += [note] if note else []
        for serial in store.history_serials(mzp, app):
            serial = serial.rstrip("/")
            versions, note = _versions(store, store.history_path(mzp, app, serial), f"history/{serial}")
            trail.history[serial] = versions
            trail.notes += [note] if note else []
        trail.runs, note = _versions(store, store.runs_path(), "runs/rotate")
        if note:
            trail.notes.append(note + " (older failed runs)")
        trail.account, _ = _versions(store, store.account_path(mzp), "account", data=False)
    except VaultDenied:
        raise VaultDenied(denied_message(store, mzp, app)) from None
    return trail


def history(inventory: Inventory, store: Store, mzp: str, app: str) -> History:
    """The audit trail of one credential, newest first. A credential no longer in the inventory is still shown
    when Vault holds records of it; one that is in neither is a UserError."""
    store.check_mount()
    in_inventory = True
    try:
        inventory.partner(mzp).app(app)
    except UserError:
        in_inventory = False
        if not (MZP_RE.fullmatch(mzp) and APP_RE.fullmatch(app)) or not (
                store.metadata(store.pending_path(mzp, app)) or store.metadata(store.current_path(mzp, app))):
            raise UserError(f"--mzp {mzp} --app {app}: no such credential, neither in {inventory.path} nor in Vault",
                            remedy=Remedy.STATUS) from None
    trail = read(store, mzp, app)
    trail.in_inventory = in_inventory
    return History(mzp, app, events(trail) if not trail.empty() else [], trail.notes, in_inventory)
