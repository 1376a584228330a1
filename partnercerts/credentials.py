"""Operations on partner credentials: CSR, import, PKCS#12, account, status, rotation.

Every operation validates its inputs before the first write, so a user error changes
nothing; every write goes through store.Store with check-and-set.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import signal
from dataclasses import dataclass, field, fields

from .errors import Conflict, UserError
from .inventory import Application, Inventory, Partner
from .lifecycle import Action, Step, days_left, plan_one, state_of
from .settings import Settings
from .store import Index, Record, Store

# certs, csr, keys, profile.name_key and sandbox load `cryptography` (a tenth of a second): they are
# imported where used, so that `status`, `metrics` and a rotation with nothing due never load it.

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PENDING, CONSUMED = "pending", "consumed"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()


def check_client_id(value: str) -> str:
    if not CLIENT_ID_RE.fullmatch(value):
        raise UserError(f"--client-id {value!r}: not a Client ID; use the identifier from the authority's reply "
                        "(letters, digits, '.', '_' and '-', at most 128)")
    return value


@dataclass
class CsrResult:
    mzp: str
    app: str
    csr_pem: str
    openssl_config: str
    key_sha256: str
    created: bool
    warning: str = ""


@dataclass
class ImportResult:
    mzp: str
    app: str
    serial: str
    not_after: str
    fingerprint_sha256: str
    client_id: str
    already_current: bool = False
    warning: str = ""


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
    note: str = field(default="", compare=False)

    def as_json(self) -> dict:
        return {"mzp": self.mzp, "app": self.app, "client_id": self.client_id or None, "state": self.state,
                "serial": self.serial or None, "not_after": self.not_after or None, "days_left": self.days_left,
                "pending_since": self.pending_since or None, "hosts_in_sync": self.hosts_in_sync,
                "hosts_total": self.hosts_total, "pending_submitted_at": self.pending_submitted_at or None,
                "pending_age_days": self.pending_age_days, "turnaround_median_days": self.turnaround_median_days}


def median_days(turnarounds: str) -> float | None:
    """Median of the comma-separated turnaround seconds kept in the index, in days."""
    values = sorted(int(t) for t in turnarounds.split(",") if t.strip().lstrip("-").isdigit())
    if not values:
        return None
    mid = len(values) // 2
    seconds = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return round(seconds / 86400, 1)


def new_key_and_csr(key_spec: str, subject) -> tuple[str, str, str]:
    """A new private key and its CSR for `subject`, as PEM, and the public key's SHA-256."""
    from . import csr as csrmod, keys
    key = keys.generate(key_spec)
    return keys.to_pem(key), csrmod.to_pem(csrmod.build(subject, key)), keys.spki_sha256(key.public_key())


def _worker_init() -> None:
    # Ctrl-C is the parent's to handle: a worker stops when the parent's pool shuts down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class KeyMaker:
    """Makes the keys and CSRs a rotation run needs ahead of time, in worker processes, in plan order.

    An RSA key costs tens of milliseconds of one core (RSA-2048) and is most of the work of a due
    credential; its Vault writes mostly wait on the network. So a run with several due credentials
    hands key generation to a process pool with one worker per usable core, and the main process
    writes one credential to Vault while the workers make the next keys. At most `ahead` keys are
    made in advance, so an interrupted run discards few. A key made ahead is written with the same
    check-and-set as before, against the version read just before the write: a credential that
    turns out to have a pending key already (from another run) keeps it and the fresh key is
    dropped, never a second pending key. Keys travel from the workers over a pipe, in memory,
    never through a file. With one due credential, or when the pool fails, keys are made in this
    process as before.
    """

    def __init__(self, wanted: list[tuple]):
        self.wanted = wanted                      # (mzp, app, key_spec, subject), in plan order
        self.position = {(w[0], w[1]): i for i, w in enumerate(wanted)}
        self.submitted = 0
        self.futures: dict = {}
        self.pool = None
        self.workers = min(usable_cores(), 8)
        self.ahead = 2 * self.workers
        self.broken = len(wanted) < 2

    def take(self, mzp: str, app: str, key_spec: str, subject) -> tuple[str, str, str]:
        i = self.position.get((mzp, app))
        if self.broken or i is None or self.wanted[i][2:] != (key_spec, subject):
            return new_key_and_csr(key_spec, subject)
        try:
            if self.pool is None:
                import concurrent.futures
                import multiprocessing

                from . import csr, keys  # noqa: F401 - imported once here, not by each forked worker
                ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else None)
                self.pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx,
                                                                   initializer=_worker_init)
            while self.submitted < len(self.wanted) and self.submitted <= i + self.ahead:
                w = self.wanted[self.submitted]
                self.futures[self.submitted] = self.pool.submit(new_key_and_csr, w[2], w[3])
                self.submitted += 1
            for j in [j for j in self.futures if j < i]:  # planned credentials that needed no key after all
                self.futures.pop(j).cancel()
            made = self.futures.pop(i).result()
        except Exception:  # a broken pool (a worker killed, no /dev/shm): carry on in this process
            self.close()
            self.broken = True
            return new_key_and_csr(key_spec, subject)
        if i == len(self.wanted) - 1:
            self.close()
        return made

    def close(self) -> None:
        if self.pool is not None:
            for f in self.futures.values():
                f.cancel()
            self.futures.clear()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class Credentials:
    def __init__(self, settings: Settings, inventory: Inventory, store: Store):
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self._authority = None
        self.last_indexes: dict = {}
        self._keys: KeyMaker | None = None
        self._indexed: set[tuple[str, str]] = set()  # credentials whose index this object wrote

    @property
    def authority(self):
        if self._authority is None:
            from .sandbox import Authority
            self._authority = Authority(self.store, self.settings.sandbox_validity_days)
        return self._authority

    # -- helpers ------------------------------------------------------------------------
    def _live_pending(self, mzp: str, app: str) -> Record | None:
        rec = self.store.read(self.store.pending_path(mzp, app))
        return rec if rec and rec.data.get("state") == PENDING else None

    def reindex(self, mzp: str, app: str, pending_from_index: bool = False) -> Index:
        """Derive the index from the records themselves and write it (repairs a stale index).

        pending_from_index: for the deployer, whose policy may not read pending keys: the pending
        fields are carried over from the existing index, and only custom metadata is written
        (its policy may not change max_versions).
        """
        from . import certs
        cur = self.store.read(self.store.current_path(mzp, app))
        if pending_from_index:
            found = self.store.read_index(mzp, app)
            carried = found[0] if found else Index()
            pend = None
        else:
            pend = self._live_pending(mzp, app)
            if pend and cur and cur.data.get("key_sha256") == pend.data.get("key_sha256"):
                # An import that died after writing `current` but before its tombstone: settle it,
                # or the credential would wait for the authority forever and never be renewed.
                self._tombstone(mzp, app, pend, cur.data["serial"])
                pend = None
        hosts = self.store.read(self.store.hosts_path(mzp, app))
        index = Index()
        if cur:
            d = cur.data
            anchors = certs.from_pem(d.get("ca_pem", ""))
            index = Index(serial=d["serial"], not_before=d["not_before"], not_after=d["not_after"],
                          client_id=d["client_id"], fingerprint_sha256=d["fingerprint_sha256"],
                          key_sha256=d.get("key_sha256", ""),
                          ca_fingerprint_sha256=certs.fingerprint(anchors[0]) if anchors else "",
                          key_spec=d.get("key_spec", ""), current_version=str(cur.version),
                          turnarounds=",".join(str(t) for t in d.get("turnarounds", [])))
        if pend:
            index.pending_since = pend.data["created_at"]
            index.pending_submitted_at = pend.data.get("submitted_at", "")
            index.pending_submission = pend.data.get("submission", "")
            index.key_spec = index.key_spec or pend.data.get("key_spec", "")
        elif pending_from_index:
            for f in fields(Index):
                if f.name.startswith("pending_"):
                    setattr(index, f.name, getattr(carried, f.name))
            index.key_spec = index.key_spec or carried.key_spec
        if hosts:
            seen = hosts.data.get("hosts", {})
            index.hosts_total = str(len(seen))
            index.hosts_in_sync = str(sum(1 for h in seen.values()
                                          if h.get("in_sync") and h.get("fingerprint_sha256") == index.fingerprint_sha256))
            index.hosts_checked_at = hosts.data.get("checked_at", "")
        index.updated_at = iso(dt.datetime.now(dt.timezone.utc))
        if pending_from_index:
            self.store.write_custom(self.store.current_path(mzp, app), index.to_custom())
        else:
            self.store.write_index(mzp, app, index)
        self._indexed.add((mzp, app))
        return index

    def record_hosts(self, mzp: str, app: str, reports: dict[str, dict], all_hosts: set[str], now: dt.datetime) -> Index:
        """Remember what each host serves (from a deploy or verify run) and refresh the index's counts.

        `reports` maps host to {"in_sync", "fingerprint_sha256", "serial", "drift"} for the hosts
        checked in this run; hosts not checked keep their last report; hosts no longer in the
        inventory (`all_hosts`) are forgotten.
        """
        path = self.store.hosts_path(mzp, app)
        for _ in range(5):
            rec = self.store.read(path)
            seen = dict(rec.data.get("hosts", {})) if rec else {}
            seen = {h: v for h, v in seen.items() if h in all_hosts}
            for host in all_hosts - set(seen) - set(reports):
                seen[host] = {"in_sync": False, "drift": ["missing: never checked"], "checked_at": ""}
            for host, report in reports.items():
                seen[host] = {**report, "checked_at": iso(now)}
            try:
                self.store.write(path, {"hosts": seen, "checked_at": iso(now)}, cas=rec.version if rec else 0)
                break
            except Conflict:
                continue  # another run reported at the same time: merge again
        return self.reindex(mzp, app, pending_from_index=True)

    def _settle_crashed_import(self, mzp: str, app: str, pend: Record) -> Record | None:
        """A pending record whose key is already current was imported by a run that died before the tombstone."""
        cur = self.store.read(self.store.current_path(mzp, app))
        if cur and cur.data.get("key_sha256") == pend.data.get("key_sha256"):
            self._tombstone(mzp, app, pend, cur.data["serial"])
            return None
        return pend

    def _tombstone(self, mzp: str, app: str, pend: Record, serial: str) -> None:
        self.store.write(self.store.pending_path(mzp, app),
                         {"state": CONSUMED, "serial": serial, "key_sha256": pend.data.get("key_sha256", ""),
                          "consumed_at": iso(dt.datetime.now(dt.timezone.utc))}, cas=pend.version)

    # -- CSR --------------------------------------------------------------------------
    def make_csr(self, mzp: str, app: str, now: dt.datetime, force: bool = False, index: bool = True) -> CsrResult:
        """Return the pending CSR, or make a key (straight into Vault, read back) and a new one.

        index=False leaves the index to the caller (apply: the submission that follows rewrites it)."""
        partner = self.inventory.partner(mzp)
        application = partner.app(app)
        self.store.check_mount()
        path = self.store.pending_path(mzp, app)
        rec = self.store.read(path)
        if rec and rec.data.get("state") == PENDING:
            if self._settle_crashed_import(mzp, app, rec) is not None and not force:
                return self._existing(partner, application, rec)
            rec = self.store.read(path)  # the tombstone moved the version
        # The version seen by the same read: re-asking Vault for it here would let a run that
        # lost the race overwrite the winner's pending key.
        cas = rec.version if rec else 0
        if self._keys is not None:
            key_pem, csr_pem, key_sha = self._keys.take(mzp, app, application.key_spec, partner.subject)
        else:
            key_pem, csr_pem, key_sha = new_key_and_csr(application.key_spec, partner.subject)
        data = {"state": PENDING, "key_pem": key_pem, "csr_pem": csr_pem, "key_sha256": key_sha,
                "key_spec": application.key_spec, "created_at": iso(now), "submitted_at": "", "submission": ""}
        try:
            version = self.store.write(path, data, cas=cas)
        except Conflict:
            # Another run created a pending key first: that one stands, never a second one.
            other = self._live_pending(mzp, app)
            if other is None or force:
                raise
            return self._existing(partner, application, other)
        back = self.store.read(path)
        if back is None or back.version != version or back.data.get("key_pem") != key_pem:
            raise UserError(f"{mzp}/{app}: the key read back from Vault differs from the key written; "
                            "the CSR was not released; check Vault's health and run again")
        if version == 1:
            self.store.set_max_versions(path)
        if index:
            self.reindex(mzp, app)
        return CsrResult(mzp, app, data["csr_pem"], partner.subject.openssl_config(application.key_spec), key_sha, True)

    def _existing(self, partner: Partner, application: Application, rec: Record) -> CsrResult:
        from . import csr as csrmod
        from .profile import name_key
        request = csrmod.from_pem(rec.data["csr_pem"])
        warning = ""
        if name_key(request.subject) != name_key(partner.subject.to_name()):
            warning = (f"{partner.mzp}/{application.name}: the pending CSR's subject differs from the inventory's "
                       "(the inventory changed since); use --force to make a new key and CSR")
        return CsrResult(partner.mzp, application.name, rec.data["csr_pem"],
                         partner.subject.openssl_config(rec.data.get("key_spec") or application.key_spec),
                         rec.data["key_sha256"], False, warning)

    # -- import -----------------------------------------------------------------------
    def import_cert(self, mzp: str, app: str, cert_data: bytes, cert_source: str, now: dt.datetime,
                    ca_data: bytes | None = None, ca_source: str = "", client_id: str | None = None,
                    submission: str = "", submitted_at: str = "") -> ImportResult:
        """Pass a certificate through the strict gate and make it current; on any refusal nothing changes."""
        from . import certs, csr as csrmod
        from .certs import GateError
        self.inventory.partner(mzp).app(app)
        if client_id is not None:
            check_client_id(client_id)
        limit = self.settings.max_input_bytes
        bundle = certs.load_bundle(cert_data, cert_source, limit)
        anchors: list = []
        if ca_data is not None:
            anchors = certs.load_anchors(ca_data, ca_source, limit)
        elif self.settings.ca_file is not None:
            anchors = certs.load_anchors(certs.read_file(str(self.settings.ca_file), limit),
                                         f"PARTNERCERTS_CA_FILE={self.settings.ca_file}", limit)
        self.store.check_mount()
        cur = self.store.read(self.store.current_path(mzp, app))
        pend = self.store.read(self.store.pending_path(mzp, app))
        if cur and any(certs.fingerprint(c) == cur.data["fingerprint_sha256"] for c in bundle):
            if pend and pend.data.get("state") == PENDING and self._settle_crashed_import(mzp, app, pend) is None:
                self.reindex(mzp, app)  # the import that made it current died before its tombstone
            return ImportResult(mzp, app, cur.data["serial"], cur.data["not_after"], cur.data["fingerprint_sha256"],
                                cur.data["client_id"], already_current=True)
        if not pend or pend.data.get("state") != PENDING:
            raise UserError(f"{mzp}/{app}: no pending CSR to import a certificate for; "
                            f"make one with scripts/inv csr --mzp {mzp} --app {app}")
        if not anchors and cur and cur.data.get("ca_pem"):
            anchors = certs.from_pem(cur.data["ca_pem"])
        if client_id is None:
            client_id = cur.data["client_id"] if cur else None
        if not client_id:
            raise UserError(f"{mzp}/{app}: the first certificate needs its Client ID; add --client-id ID "
                            "(from the authority's reply)")
        expected = csrmod.from_pem(pend.data["csr_pem"]).subject
        accepted = certs.gate(bundle, pending_key_sha256=pend.data["key_sha256"], expected_subject=expected,
                              anchors=anchors, now=now, min_validity_days=self.settings.min_validity_days,
                              source=cert_source)
        leaf = accepted.leaf
        serial = certs.serial_hex(leaf)
        record = {
            "key_pem": pend.data["key_pem"], "key_sha256": pend.data["key_sha256"],
            "key_spec": pend.data.get("key_spec", ""),
            "cert_pem": certs.to_pem([leaf]), "chain_pem": certs.to_pem(accepted.chain),
            "ca_pem": certs.to_pem(accepted.anchors), "client_id": client_id, "serial": serial,
            "not_before": iso(leaf.not_valid_before_utc), "not_after": iso(leaf.not_valid_after_utc),
            "fingerprint_sha256": certs.fingerprint(leaf), "p12_password": secrets.token_urlsafe(24),
            "imported_at": iso(now), "pending_created_at": pend.data["created_at"],
            "submitted_at": submitted_at or pend.data.get("submitted_at", ""),
            "submission": submission or pend.data.get("submission", ""),
        }
        submitted = record["submitted_at"]
        if submitted:
            took = int((now - dt.datetime.fromisoformat(submitted)).total_seconds())
            record["turnaround_seconds"] = took
            record["turnarounds"] = ((cur.data.get("turnarounds", []) if cur else []) + [took])[-5:]
        # Order matters for crash safety: history (write-once), then current (one atomic
        # write: readers see old or new, never half), then the pending tombstone, then the index.
        hist = self.store.history_path(mzp, app, serial)
        try:
            self.store.write(hist, record, cas=0)
        except Conflict:
            old = self.store.read(hist)
            if not old or old.data.get("fingerprint_sha256") != record["fingerprint_sha256"]:
                raise GateError(f"{cert_source}: serial {serial} is already in the history with another certificate; "
                                "the authority reused a serial, ask it for a new certificate") from None
            record = old.data
        self.store.write(self.store.current_path(mzp, app), record, cas=cur.version if cur else 0)
        self._tombstone(mzp, app, pend, serial)
        self.reindex(mzp, app)
        warning = "" if accepted.anchors else (
            f"{mzp}/{app}: imported without a CA certificate, so the chain was not verified; "
            "give --ca FILE (the Stellantis CA from the reply) or set PARTNERCERTS_CA_FILE")
        return ImportResult(mzp, app, serial, record["not_after"], record["fingerprint_sha256"], client_id,
                            warning=warning)

    def rollback(self, mzp: str, app: str, now: dt.datetime, to: str | None = None) -> ImportResult:
        """Make an earlier certificate of the history current again (default: the one before current)."""
        self.inventory.partner(mzp).app(app)
        self.store.check_mount()
        cur = self.store.read(self.store.current_path(mzp, app))
        if cur is None:
            raise UserError(f"{mzp}/{app}: no current certificate, so nothing to roll back from")
        serials = self.store.list(f"{self.store.credential_path(mzp, app)}/history")
        if to is None:
            older = []
            for serial in serials:
                rec = self.store.read(self.store.history_path(mzp, app, serial))
                if rec and serial != cur.data["serial"]:
                    older.append((rec.data.get("imported_at", ""), serial, rec))
            older = [o for o in older if o[0] <= cur.data.get("imported_at", "")] or older
            if not older:
                raise UserError(f"{mzp}/{app}: the history holds no other certificate to roll back to")
            _, to, target = max(older)
        else:
            target = self.store.read(self.store.history_path(mzp, app, to)) if to in serials else None
            if target is None:
                raise UserError(f"--to {to}: no such serial in the history of {mzp}/{app} "
                                f"(it has: {', '.join(serials) or 'none'})")
        if to == cur.data["serial"]:
            raise UserError(f"--to {to}: that certificate is already current")
        not_after = dt.datetime.fromisoformat(target.data["not_after"])
        if not_after <= now:
            raise UserError(f"--to {to}: that certificate expired on {target.data['not_after']}; pick a valid one")
        self.store.write(self.store.current_path(mzp, app), target.data, cas=cur.version)
        self.reindex(mzp, app)
        d = target.data
        return ImportResult(mzp, app, d["serial"], d["not_after"], d["fingerprint_sha256"], d["client_id"])

    # -- PKCS#12 and account ------------------------------------------------------------
    def current(self, mzp: str, app: str) -> dict:
        self.inventory.partner(mzp).app(app)
        self.store.check_mount()
        cur = self.store.read(self.store.current_path(mzp, app))
        if cur is None:
            raise UserError(f"{mzp}/{app}: no current certificate yet; run scripts/inv rotate --mzp {mzp} --app {app}")
        return cur.data

    def p12(self, mzp: str, app: str, legacy: bool = False) -> tuple[bytes, str]:
        from . import certs, keys
        data = self.current(mzp, app)
        key = keys.from_pem(data["key_pem"])
        leaf = certs.from_pem(data["cert_pem"])[0]
        chain = certs.from_pem(data["chain_pem"]) + certs.from_pem(data["ca_pem"])
        blob = certs.pkcs12_bundle(key, leaf, chain, data["p12_password"], f"{mzp}-{app}", legacy=legacy)
        return blob, data["p12_password"]

    def set_account_password(self, mzp: str, password: str, now: dt.datetime) -> bool:
        """Store the MZP password; returns False when Vault already had exactly that password."""
        self.inventory.partner(mzp)
        if not password or len(password) > 512 or any(c in password for c in "\r\n\0"):
            raise UserError(f"{mzp}: the password must be one non-empty line of at most 512 characters")
        self.store.check_mount()
        path = self.store.account_path(mzp)
        rec = self.store.read(path)
        if rec and secrets.compare_digest(rec.data.get("password", "").encode(), password.encode()):
            return False
        self.store.write(path, {"password": password, "updated_at": iso(now)}, cas=rec.version if rec else 0)
        return True

    def set_smtp_password(self, mzp: str | None, password: str, now: dt.datetime) -> bool:
        """Store the SMTP password of a partner's submission account (or, without mzp, of notifications)."""
        if mzp:
            self.inventory.partner(mzp)
        if not password or len(password) > 512 or any(c in password for c in "\r\n\0"):
            raise UserError("the password must be one non-empty line of at most 512 characters")
        self.store.check_mount()
        path = self.store.smtp_path(mzp)
        rec = self.store.read(path)
        if rec and secrets.compare_digest(rec.data.get("password", "").encode(), password.encode()):
            return False
        self.store.write(path, {"password": password, "updated_at": iso(now)}, cas=rec.version if rec else 0)
        return True

    # -- status and rotation ---------------------------------------------------------------
    def indexes(self, pairs, cached: dict | None = None) -> dict[str, tuple[Index | None, bool]]:
        """Index of each (partner, application), and whether it is stale; `cached` entries are reused."""
        out = {}
        todo = []
        for partner, application in pairs:
            key = f"{partner.mzp}/{application.name}"
            if cached is not None and key in cached:
                out[key] = cached[key]
            else:
                out[key] = None  # keeps the inventory's order
                todo.append((partner.mzp, application.name))
        for (mzp, app), found in zip(todo, self.store.read_indexes(todo)):
            out[f"{mzp}/{app}"] = (found[0], found[0].current_version != str(found[1])) if found else (None, False)
        return out

    def rows(self, now: dt.datetime, mzp: str | None = None, app: str | None = None,
             cached: dict | None = None) -> list[Row]:
        """One row per credential from the index in custom metadata only; never reads secret data."""
        creds = self.inventory.credentials(mzp, app)
        self.store.check_mount()
        found = self.indexes(creds, cached)
        rows = []
        for partner, application in creds:
            index, stale = found[f"{partner.mzp}/{application.name}"]
            note = "index is stale; scripts/inv rotate repairs it" if stale else ""
            state = state_of(index, now, partner.renew_before_days)
            na = index.not_after_dt() if index else None
            synced = index is not None and bool(index.hosts_total)
            since = index.pending_since_dt() if index else None
            age = (now - since).days if since else None
            turnaround = median_days(index.turnarounds) if index else None
            notes = [note] if note else []
            if turnaround is not None and turnaround + partner.deploy_window_days > partner.renew_before_days:
                notes.append(f"the authority's median turnaround ({turnaround} days) plus the deploy window "
                             f"({partner.deploy_window_days} days) no longer fits in renew_before_days "
                             f"({partner.renew_before_days}); raise renew_before_days in {partner.source}")
            if age is not None and age >= partner.pending_reminder_days:
                notes.append(f"CSR pending for {age} days (reminder after {partner.pending_reminder_days}); "
                             "chase the authority, then import the reply with scripts/inv import-cert")
            rows.append(Row(partner.mzp, application.name, index.client_id if index else "", state.value,
                            index.serial if index else "", index.not_after if index else "", days_left(now, na),
                            index.pending_since if index else "",
                            int(index.hosts_in_sync or 0) if synced else None,
                            int(index.hosts_total) if synced else None,
                            index.pending_submitted_at if index else "", age, turnaround, "; ".join(notes)))
        return rows

    def plan(self, now: dt.datetime, mzp: str | None = None, app: str | None = None) -> list[Step]:
        """One step per credential, from the index alone; a stale index is repaired first.
        The indexes read are kept in `self.last_indexes` for `rows(cached=...)`."""
        creds = self.inventory.credentials(mzp, app)
        self.store.check_mount()
        found = self.indexes(creds)
        steps = []
        for partner, application in creds:
            key = f"{partner.mzp}/{application.name}"
            index, stale = found[key]
            if stale:
                index = self.reindex(partner.mzp, application.name)
                found[key] = (index, False)
            steps.append(plan_one(partner.mzp, application.name, index, now, partner.renew_before_days))
        self.last_indexes = found
        # The keys this plan will make, made ahead in parallel processes once the first is asked for
        # (never in a dry run, which asks for none).
        specs = {(p.mzp, a.name): (a.key_spec, p.subject) for p, a in creds}
        self._keys = KeyMaker([(s.mzp, s.app, *specs[(s.mzp, s.app)]) for s in steps
                               if s.action in (Action.ISSUE, Action.RENEW)])
        return steps

    def apply(self, step: Step, now: dt.datetime) -> str:
        """Carry out one planned step; returns a one-line outcome."""
        partner = self.inventory.partner(step.mzp)
        if step.action in (Action.NOTHING, Action.WAIT):
            return "nothing to do"
        if step.action not in (Action.ISSUE, Action.RENEW):
            return "pending CSR; " + self.submit(partner, step.app, now)
        # The index is written once per credential, by the submission (it records both the new
        # pending key and its submission). Whenever the submission did not write it -- it failed, or
        # it found nothing to send -- it is written here, so it never misses the pending key.
        made = self.make_csr(step.mzp, step.app, now, index=False)
        key = (step.mzp, step.app)
        self._indexed.discard(key)
        try:
            line = self.submit(partner, step.app, now)
        except BaseException:
            if key not in self._indexed:
                try:
                    self.reindex(step.mzp, step.app)
                except Exception:  # noqa: BLE001 - the submission's failure is the one to report
                    pass
            raise
        if key not in self._indexed:
            self.reindex(step.mzp, step.app)
        return ("new key and CSR; " if made.created else "existing pending CSR; ") + line

    def submit(self, partner: Partner, app: str, now: dt.datetime, resend: bool = False) -> str:
        """Send the pending CSR by the partner's submission method; never twice unless `resend`."""
        pend = self._live_pending(partner.mzp, app)
        if pend is None:
            return "no pending CSR (already imported by another run)"
        method = partner.submission.method
        if method == "sandbox":
            if self.store.read(self.store.account_path(partner.mzp)) is None:
                # Like PSA handing out the MZP password: the sandbox makes one up once.
                self.set_account_password(partner.mzp, secrets.token_urlsafe(18), now)
            cur = self.store.read(self.store.current_path(partner.mzp, app))
            from . import csr as csrmod
            client_id = cur.data["client_id"] if cur else self.authority.new_client_id()
            cert_pem = self.authority.sign(csrmod.from_pem(pend.data["csr_pem"]), now)
            result = self.import_cert(partner.mzp, app, cert_pem.encode(), "sandbox authority", now,
                                      ca_data=self.authority.ca_pem(now).encode(), ca_source="sandbox CA",
                                      client_id=client_id, submission="sandbox", submitted_at=iso(now))
            return f"signed by the sandbox authority and imported: serial {result.serial}, not after {result.not_after}"
        if pend.data.get("submitted_at") and not resend:
            return (f"already submitted on {pend.data['submitted_at']} ({pend.data.get('message_id', '')}); "
                    "scripts/inv submit --resend sends it again")
        from . import submission
        password = None
        if method == "email":
            rec = self.store.read(self.store.smtp_path(partner.mzp))
            if partner.submission.smtp.user and not (rec and rec.data.get("password")):
                raise UserError(f"{partner.mzp}: no SMTP password in Vault for {partner.submission.smtp.user}; "
                                f"store it with scripts/inv smtp-password --mzp {partner.mzp}")
            password = rec.data["password"] if rec else None
        # Record the Message-ID before sending: a run that dies after sending resends the same
        # message (same Message-ID) rather than an unrecorded second one.
        message_id = pend.data.get("message_id") if pend.data.get("message_id") and not resend else \
            submission.new_message_id(partner)
        if pend.data.get("message_id") != message_id:
            data = dict(pend.data, message_id=message_id, submitting_at=iso(now))
            pend = Record(data, self.store.write(self.store.pending_path(partner.mzp, app), data, cas=pend.version))
        msg = submission.build(partner, app, csr_pem=pend.data["csr_pem"], key_sha256=pend.data["key_sha256"],
                               key_spec=pend.data.get("key_spec", ""), message_id=message_id, now=now)
        if method == "email":
            from .mail import send
            send(partner.submission.smtp, msg, password)
            where = f"e-mailed to {partner.submission.to}"
        else:
            conf = partner.subject.openssl_config(pend.data.get("key_spec") or "rsa2048")
            folder = submission.write_outbox(partner.submission.outbox_dir, partner, app, msg, pend.data["csr_pem"],
                                             conf, now)
            where = f"written to the outbox {folder} for a human to send to {partner.submission.to}"
        sent = list(pend.data.get("sent", [])) + [{"at": iso(now), "message_id": message_id, "method": method}]
        data = dict(pend.data, submitted_at=pend.data.get("submitted_at") or iso(now), submission=method, sent=sent)
        self.store.write(self.store.pending_path(partner.mzp, app), data, cas=pend.version)
        self.reindex(partner.mzp, app)
        return f"CSR {where} (Message-ID {message_id})"
