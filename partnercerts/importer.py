"""Import: a certificate passes the strict gate, then is written in a crash-safe order; and rollback."""
from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass, field

from .errors import Conflict, GateRefusal, Remedy, UserError
from .indexer import Indexer
from .inventory import Inventory
from .pending import PendingKeys, settle_if_imported
from .settings import Settings
from .store import Issued, Pending, Store, Versioned, iso

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_client_id(value: str) -> str:
    if not CLIENT_ID_RE.fullmatch(value):
        raise UserError(f"--client-id {value!r}: not a Client ID; use the identifier from the authority's reply "
                        "(letters, digits, '.', '_' and '-', at most 128)")
    return value


@dataclass
class ImportResult:
    mzp: str
    app: str
    serial: str
    not_after: str
    fingerprint_sha256: str
    client_id: str
    already_current: bool = False
    warnings: list[str] = field(default_factory=list)   # each one line: a chain not verified, a changed subject
    subject_notes: list[str] = field(default_factory=list)
    subject_change: dict = field(default_factory=dict)

    @classmethod
    def of(cls, mzp: str, app: str, rec: Issued, already_current: bool = False,
           warnings: list[str] | None = None) -> "ImportResult":
        return cls(mzp, app, rec.serial, rec.not_after, rec.fingerprint_sha256, rec.client_id, already_current,
                   list(warnings or []), list(rec.subject_notes), dict(rec.subject_change))


@dataclass(frozen=True)
class Source:
    """Certificate bytes and where they came from (a file name, a link, an e-mail part), for messages."""

    data: bytes
    name: str


class Importer:
    def __init__(self, settings: Settings, inventory: Inventory, store: Store, pending: PendingKeys, index: Indexer):
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self.pending = pending
        self.index = index

    def _anchors(self, ca: Source | None) -> list:
        from . import certs
        limit = self.settings.max_input_bytes
        if ca is not None:
            return certs.load_anchors(ca.data, ca.name, limit)
        if self.settings.ca_file is not None:
            return certs.load_anchors(certs.read_file(str(self.settings.ca_file), limit),
                                      f"PARTNERCERTS_CA_FILE={self.settings.ca_file}", limit)
        return []

    def import_cert(self, mzp: str, app: str, cert: Source, now: dt.datetime, ca: Source | None = None,
                    client_id: str | None = None, submission: str = "", submitted_at: str = "",
                    accept_subject_change: bool = False, dry_run: bool = False,
                    reply_message_id: str = "") -> ImportResult:
        """Pass a certificate through the strict gate and make it current; on any refusal nothing changes.

        accept_subject_change: a human checked with the authority that its change of OU, O or C is
        right; the acceptance (who, when, the changes) is recorded with the certificate.
        dry_run: everything up to and including the gate, nothing written.
        reply_message_id: the reply mailbox's message it comes from, kept with the certificate."""
        from . import certs
        from . import csr as csrmod
        self.inventory.partner(mzp).app(app)
        if client_id is not None:
            check_client_id(client_id)
        bundle = certs.load_bundle(cert.data, cert.name, self.settings.max_input_bytes)
        anchors = self._anchors(ca)
        self.store.check_mount()
        cur = self.store.current(mzp, app)
        if cur and any(certs.fingerprint(c) == cur.record.fingerprint_sha256 for c in bundle):
            pend = self.store.live_pending(mzp, app)
            if pend and settle_if_imported(self.store, mzp, app, pend, cur, now):
                self.index.reindex(mzp, app, now)  # the import that made it current died before its tombstone
            return ImportResult.of(mzp, app, cur.record, already_current=True)
        pend = self.pending.require(mzp, app)
        if not anchors and cur and cur.record.ca_pem:
            anchors = certs.from_pem(cur.record.ca_pem)
        if client_id is None:
            client_id = cur.record.client_id if cur else None
        if not client_id:
            raise UserError(f"{mzp}/{app}: the first certificate needs its Client ID; add --client-id ID "
                            "(from the authority's reply)")
        request = csrmod.from_pem(pend.record.csr_pem)
        accepted = certs.gate(bundle, pending_key_sha256=pend.record.key_sha256, expected_subject=request.subject,
                              requested_san=csrmod.requested_san(request), anchors=anchors, now=now,
                              min_validity_days=self.settings.min_validity_days, source=cert.name,
                              accept_subject_change=accept_subject_change)
        record = self._issued(accepted, pend.record, cur, client_id, now, submission, submitted_at)
        record.reply_message_id = reply_message_id
        if accepted.accepted_changes:
            record.subject_change = {"accepted_by": self.store.who(), "accepted_at": iso(now),
                                     "changes": list(accepted.accepted_changes)}
        if not dry_run:
            record = self._write(mzp, app, record, cur, pend, cert.name, now)
        warnings = []
        if not accepted.anchors:
            warnings.append(f"{mzp}/{app}: imported without a CA certificate, so the chain was not verified; "
                            "give --ca FILE (the Stellantis CA from the reply) or set PARTNERCERTS_CA_FILE")
        if record.subject_change:
            warnings.append(f"{mzp}/{app}: identity change accepted by {record.subject_change['accepted_by']} and "
                            f"recorded in Vault: {'; '.join(record.subject_change['changes'])}")
        if record.subject_notes:
            warnings.append(f"{mzp}/{app}: the authority changed the subject the CSR asked for, accepted as it "
                            f"does not change who the certificate identifies: {'; '.join(record.subject_notes)}")
        return ImportResult.of(mzp, app, record, warnings=warnings)

    @staticmethod
    def _certificate(accepted, now: dt.datetime, **fields) -> Issued:
        """The record of a certificate the gate accepted (the key and the rest in `fields`)."""
        from . import certs
        leaf = accepted.leaf
        return Issued(cert_pem=certs.to_pem([leaf]), chain_pem=certs.to_pem(accepted.chain),
                      ca_pem=certs.to_pem(accepted.anchors), serial=certs.serial_hex(leaf),
                      not_before=iso(leaf.not_valid_before_utc), not_after=iso(leaf.not_valid_after_utc),
                      fingerprint_sha256=certs.fingerprint(leaf), imported_at=iso(now),
                      subject_notes=list(accepted.differences), **fields)

    @classmethod
    def _issued(cls, accepted, pend: Pending, cur: Versioned[Issued] | None, client_id: str, now: dt.datetime,
                submission: str, submitted_at: str) -> Issued:
        record = cls._certificate(
            accepted, now, key_pem=pend.key_pem, key_sha256=pend.key_sha256, key_spec=pend.key_spec,
            client_id=client_id, p12_password=secrets.token_urlsafe(24), pending_created_at=pend.created_at,
            submitted_at=submitted_at or pend.submitted_at, submission=submission or pend.submission)
        if record.submitted_at:
            took = int((now - dt.datetime.fromisoformat(record.submitted_at)).total_seconds())
            record.turnaround_seconds = took
            record.turnarounds = ((cur.record.turnarounds if cur else []) + [took])[-5:]
        return record

    def _write(self, mzp: str, app: str, record: Issued, cur: Versioned[Issued] | None,
               pend: Versioned[Pending] | None, source: str, now: dt.datetime) -> Issued:
        """Order matters for crash safety: history (write-once), then current (one atomic write: readers see
        old or new, never half), then the pending tombstone (when the key was pending), then the index."""
        try:
            self.store.put_history(mzp, app, record)
        except Conflict:
            old = self.store.history(mzp, app, record.serial)
            if not old or old.record.fingerprint_sha256 != record.fingerprint_sha256:
                raise GateRefusal(f"{source}: serial {record.serial} is already in the history with another "
                                  "certificate; the authority reused a serial, ask it for a new certificate") from None
            record = old.record
        self.store.put_current(mzp, app, record, cas=cur.version if cur else 0)
        if pend is not None:
            self.store.put_pending(mzp, app, pend.record.tombstone(record.serial, now), cas=pend.version)
        self.index.reindex(mzp, app, now)
        return record

    def recover(self, mzp: str, app: str, host: str, files: dict[str, bytes], now: dt.datetime,
                ca: Source | None = None) -> ImportResult:
        """Make the release a host serves Vault's current again, after Vault lost it (restored from a backup older
        than its import): `files` are that release's client.crt (certificate and chain), client.key, ca.crt and
        client.env, read on the host. Only a certificate newer than Vault's current and unknown to it is taken,
        and only through the import gate: its key must be the one in client.key, its subject the partner's,
        valid now, its chain verified to the CA (`ca`, else PARTNERCERTS_CA_FILE, else Vault's current CA, else
        the host's ca.crt). A pending key that is this key is settled. Nothing changes on any refusal."""
        from . import certs, deploy, keys
        from .profile import KEY_SPECS
        partner = self.inventory.partner(mzp)
        partner.app(app)
        where = f"{host}: {mzp}/{app}"
        missing = [n for n in ("client.crt", "client.key", "ca.crt", "client.env") if not files.get(n)]
        if missing:
            raise UserError(f"{where}: the release current serves lacks {', '.join(missing)}; nothing to recover "
                            "from this host, try another")
        limit = self.settings.max_input_bytes
        bundle = certs.load_bundle(files["client.crt"], f"{where} client.crt", limit)
        try:
            key = keys.from_pem(files["client.key"].decode("ascii"))
        except (ValueError, TypeError, UnicodeDecodeError):
            raise GateRefusal(f"{where}: client.key is not a readable private key; nothing to recover from this "
                              "host, try another") from None
        spec = next((name for name, size in KEY_SPECS.items() if getattr(key, "key_size", None) == size), "")
        env = deploy.read_env(files["client.env"].decode("utf-8", "replace"))
        client_id, p12_password = env.get("PSA_CLIENT_ID", ""), env.get("PSA_P12_PASSWORD", "")
        check_client_id(client_id)
        self.store.check_mount()
        cur = self.store.current(mzp, app)
        anchors = self._anchors(ca)
        if not anchors and cur and cur.record.ca_pem:
            anchors = certs.from_pem(cur.record.ca_pem)
        if not anchors:
            anchors = certs.load_anchors(files["ca.crt"], f"{where} ca.crt", limit)
        accepted = certs.gate(bundle, pending_key_sha256=keys.spki_sha256(key.public_key()),
                              expected_subject=partner.subject.to_name(), anchors=anchors, now=now,
                              min_validity_days=0, source=f"{where} client.crt")
        leaf = accepted.leaf
        serial = certs.serial_hex(leaf)
        if cur is not None:
            known = set(self.store.history_serials(mzp, app)) | {cur.record.serial}
            if serial in known:
                raise UserError(f"{where}: serves serial {serial}, which Vault holds already; nothing to recover "
                                f"(deploy puts Vault's current on the host: scripts/inv deploy --only {mzp}/{app})")
            if cur.record.not_before and leaf.not_valid_before_utc <= dt.datetime.fromisoformat(cur.record.not_before):
                raise UserError(f"{where}: serves serial {serial}, issued before Vault's current {cur.record.serial}; "
                                "only a newer certificate is taken back (deploy replaces this one)")
        record = self._certificate(
            accepted, now, key_pem=files["client.key"].decode("ascii"), key_sha256=keys.spki_sha256(key.public_key()),
            key_spec=spec, client_id=client_id, p12_password=p12_password or secrets.token_urlsafe(24),
            recovered_from={"host": host, "by": self.store.who(), "at": iso(now)})
        pend = self.store.live_pending(mzp, app)
        mine = pend if pend and pend.record.key_sha256 == record.key_sha256 else None  # the lost import's own key
        return ImportResult.of(mzp, app, self._write(mzp, app, record, cur, mine, f"{where} client.crt", now))

    def rollback(self, mzp: str, app: str, now: dt.datetime, to: str | None = None) -> ImportResult:
        """Make an earlier certificate of the history current again (default: the one before current)."""
        self.inventory.partner(mzp).app(app)
        self.store.check_mount()
        cur = self.store.current(mzp, app)
        if cur is None:
            raise UserError(f"{mzp}/{app}: no current certificate, so nothing to roll back from")
        target = self._rollback_target(mzp, app, cur.record, to)
        if target.withdrawn:
            raise UserError(f"--to {target.serial}: that certificate was withdrawn by {target.withdrawn.get('by')} "
                            f"on {target.withdrawn.get('at')} ({target.withdrawn.get('reason')}): its key may be "
                            "exposed and is never served again; pick another serial or import the new certificate")
        if target.serial == cur.record.serial:
            raise UserError(f"--to {to}: that certificate is already current")
        if dt.datetime.fromisoformat(target.not_after) <= now:
            raise UserError(f"--to {target.serial}: that certificate expired on {target.not_after}; pick a valid one")
        self.store.put_current(mzp, app, target, cas=cur.version)
        self.index.reindex(mzp, app, now)
        return ImportResult.of(mzp, app, target)

    def _rollback_target(self, mzp: str, app: str, cur: Issued, to: str | None) -> Issued:
        serials = self.store.history_serials(mzp, app)
        if to is not None:
            found = self.store.history(mzp, app, to) if to in serials else None
            if found is None:
                raise UserError(f"--to {to}: no such serial in the history of {mzp}/{app} "
                                f"(it has: {', '.join(serials) or 'none'})")
            return found.record
        older = []
        for serial in serials:
            rec = self.store.history(mzp, app, serial)
            if rec and serial != cur.serial and not rec.record.withdrawn:
                older.append((rec.record.imported_at, serial, rec.record))
        older = [o for o in older if o[0] <= cur.imported_at] or older
        if not older:
            raise UserError(f"{mzp}/{app}: the history holds no other certificate to roll back to")
        return max(older, key=lambda o: (o[0], o[1]))[2]


def require_current(inventory: Inventory, store: Store, mzp: str, app: str) -> Issued:
    """The current record of a credential, or a UserError saying there is none yet."""
    inventory.partner(mzp).app(app)
    store.check_mount()
    cur = store.current(mzp, app)
    if cur is None:
        raise UserError(f"{mzp}/{app}: no current certificate yet", remedy=Remedy.ROTATE, mzp=mzp, app=app)
    return cur.record
