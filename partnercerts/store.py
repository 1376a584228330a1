"""Vault custody: the one module that knows the KV v2 layout and the shape of its records.

Layout under the KV v2 mount (default `secret`) and prefix (default `partnercerts`):

    <prefix>/<mzp>/account                        Password: the MZP password
    <prefix>/<mzp>/apps/<app>/pending             Pending: key, CSR, created/submitted times (or a
                                                  `consumed` tombstone once imported)
    <prefix>/<mzp>/apps/<app>/current             Issued: key, certificate, chain, CA, Client ID,
                                                  serial, not_after, fingerprint, PKCS#12 password
    <prefix>/<mzp>/apps/<app>/history/<serial>    Issued: every imported certificate with its key,
                                                  written once, never overwritten
    <prefix>/<mzp>/apps/<app>/hosts               Hosts: per host, what it serves and whether that
                                                  is in sync with current (no secrets)
    <prefix>/<mzp>/smtp                           Password: the partner's SMTP submission account
    <prefix>/<mzp>/mailbox                        Password: the partner's reply mailbox (IMAP)
    <prefix>/<mzp>/mailbox-state                  MailboxState: per folder, UIDVALIDITY and the last UID
                                                  settled (no secrets)
    <prefix>/sandbox/authority                    AuthorityKey: the sandbox authority's CA
    <prefix>/notify/smtp                          Password: the notification e-mail account
    <prefix>/locks/rotate                         LockRecord: holder, token, expiry (no secrets)
    <prefix>/runs/rotate                          RunRecord: last run and last success (also in
                                                  its custom metadata, for the auditor)
    <prefix>/index/<mzp>.<app>                    Index (custom metadata only, no data): serial, not_after,
                                                  Client ID, pending_since, hosts in sync, ... (no secrets)
    <prefix>/layout                               custom metadata `index`: 2 once the index lives in
                                                  <prefix>/index/ (layout 1 kept it in the custom metadata
                                                  of each `current`; the first rotator run moves it, once)

`status` and the rotation plan read only the index, never secret data. The index entries sit side by
side in one folder so that OpenBao (2.2+) returns all of them in a few pages of one listing
(`LIST <mount>/detailed-metadata/<prefix>/index/`); on a server without that endpoint (HashiCorp
Vault) or a policy without it, each entry is read by itself, pipelined, with the same result. A write
of `current` first marks its index (`writing`: the version being written), so an index a crash left
behind that write is still found stale without reading `current` for every credential. Every
data write uses check-and-set; nothing here deletes or destroys. Records are dataclasses with an
explicit conversion to and from Vault data (`from_data`, `to_data`); fields a newer version
wrote and this one does not know are kept (`extra`) and written back unchanged.
"""
from __future__ import annotations

import collections
import datetime as dt
import enum
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

from . import _lazy
from .errors import Conflict, NotSetUp
from .keepalive import DELEGATE, KeepAliveReader
from .settings import Settings
from .vault import Asked, missing_mount, translated

if TYPE_CHECKING:
    import hvac
else:  # loaded on first use (_lazy)
    hvac = _lazy.module("hvac")

# KV v2 prunes versions past max_versions (mount default 10); keep far more so no key version is destroyed.
MAX_VERSIONS = 1000
INDEX_SCHEMA = "1"
INDEX_LAYOUT = 2     # 1: the index in the custom metadata of `current`; 2: in <prefix>/index/<mzp>.<app>
LIST_PAGE = 1000     # index entries per page of the detailed listing
FEW = 8              # fewer credentials than this are read one by one (pipelined), not listed


def iso(t: dt.datetime) -> str:
    """A time as the records keep it: UTC, whole seconds, ISO 8601."""
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()


def parse_time(value: str) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


# -- records ------------------------------------------------------------------------------
@dataclass
class _Record:
    """A record's fields are its Vault keys; `extra` keeps the keys this version does not know."""

    extra: dict = field(default_factory=dict, repr=False, compare=False)
    _lists: ClassVar[tuple[str, ...]] = ()
    _ints: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_data(cls, data: dict):
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if name in cls._lists:
                kwargs[name] = list(value or [])
            elif name in cls._ints:
                kwargs[name] = int(value) if value not in (None, "") else None
            elif isinstance(known[name].default, bool):
                kwargs[name] = bool(value)
            else:
                kwargs[name] = "" if value is None else str(value) if not isinstance(value, (dict, list)) else value
        record = cls(**kwargs)
        record.extra = {k: v for k, v in data.items() if k not in known}
        return record

    def to_data(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        for name in self._ints:
            if out.get(name) is None:
                out.pop(name, None)
        return {**self.extra, **out}


class PendingState(str, enum.Enum):
    PENDING = "pending"
    CONSUMED = "consumed"


@dataclass
class Sent(_Record):
    at: str = ""
    message_id: str = ""
    method: str = ""


@dataclass
class Pending(_Record):
    """A pending key and its CSR until the authority's certificate is imported, then a tombstone."""

    state: str = PendingState.PENDING.value
    key_pem: str = ""
    csr_pem: str = ""
    key_sha256: str = ""
    key_spec: str = ""
    created_at: str = ""
    submitted_at: str = ""
    submission: str = ""
    message_id: str = ""
    submitting_at: str = ""
    sent: list = field(default_factory=list)      # [Sent], oldest first
    serial: str = ""                              # tombstone: the certificate it became
    consumed_at: str = ""
    # The authority answered our CSR e-mail without a certificate (a question, a refusal): the subject,
    # date and Message-ID of its reply, and when it was seen. Cleared by a resend; a human acts on it.
    attention: dict = field(default_factory=dict)
    # An emergency re-key: {"reason", "by", "at", "revoke_serial"}; the CSR goes out marked urgent, asking the
    # authority to revoke the certificate of the old key.
    rekey: dict = field(default_factory=dict)
    # Reminders raised while it waits (every rotate past pending_reminder_days): the last one, and how many
    # since it was last sent. Cleared by a resend.
    reminded_at: str = ""
    times_reminded: int | None = None
    _lists: ClassVar[tuple[str, ...]] = ("sent",)
    _ints: ClassVar[tuple[str, ...]] = ("times_reminded",)

    @property
    def live(self) -> bool:
        return self.state == PendingState.PENDING.value

    @classmethod
    def from_data(cls, data: dict) -> "Pending":
        rec = super().from_data(data)
        rec.sent = [s if isinstance(s, Sent) else Sent.from_data(s) for s in rec.sent if isinstance(s, (dict, Sent))]
        return rec

    def to_data(self) -> dict:
        data = super().to_data()
        data["sent"] = [s.to_data() for s in self.sent]
        if not self.live:  # a tombstone keeps no key
            return {k: data[k] for k in ("state", "serial", "key_sha256", "consumed_at")}
        for name in ("serial", "consumed_at", "message_id", "submitting_at", "attention", "rekey"):
            if not data.get(name):
                data.pop(name, None)
        if not data["sent"]:
            data.pop("sent")
        return data

    def tombstone(self, serial: str, now: dt.datetime) -> "Pending":
        return Pending(state=PendingState.CONSUMED.value, serial=serial, key_sha256=self.key_sha256,
                       consumed_at=iso(now))


@dataclass
class Issued(_Record):
    """An imported certificate with its key: the `current` record, and each `history/<serial>`."""

    key_pem: str = ""
    key_sha256: str = ""
    key_spec: str = ""
    cert_pem: str = ""
    chain_pem: str = ""
    ca_pem: str = ""
    client_id: str = ""
    serial: str = ""
    not_before: str = ""
    not_after: str = ""
    fingerprint_sha256: str = ""
    p12_password: str = ""
    imported_at: str = ""
    pending_created_at: str = ""
    submitted_at: str = ""
    submission: str = ""
    turnaround_seconds: int | None = None
    turnarounds: list = field(default_factory=list)   # seconds, the last five imports, newest last
    # What the authority changed in the subject the CSR asked for, that the gate accepted (subjects.compare).
    subject_notes: list = field(default_factory=list)
    # Identity changes (OU, O, C) a human accepted: {"accepted_by", "accepted_at", "changes": [...]}.
    subject_change: dict = field(default_factory=dict)
    reply_message_id: str = ""   # the reply mailbox's message it was imported from (links may work only once)
    # Withdrawn by `rekey --withdraw` (its key is suspected exposed): {"reason", "by", "at"}. Deploys remove it
    # from the hosts instead of serving it; rollbacks refuse it; the next imported certificate replaces it.
    withdrawn: dict = field(default_factory=dict)
    # Taken back from a host by `recover --from-host` (Vault had lost it): {"host", "by", "at"}.
    recovered_from: dict = field(default_factory=dict)
    # Every serial Vault held for the credential when this became current (its history and itself), set by
    # put_current: a host serving a newer certificate that is not among them holds a key Vault lost (Vault
    # restored from a backup older than an import), and a deploy leaves it alone (deploy.ahead).
    known_serials: list = field(default_factory=list)
    _lists: ClassVar[tuple[str, ...]] = ("turnarounds", "subject_notes", "known_serials")
    _ints: ClassVar[tuple[str, ...]] = ("turnaround_seconds",)

    def to_data(self) -> dict:
        data = super().to_data()
        for name in ("turnarounds", "subject_notes", "subject_change", "reply_message_id", "withdrawn"):
            if not data[name]:
                data.pop(name)
        return data


@dataclass
class MailboxState(_Record):
    """What the reply mailbox's last run settled: per folder {"uidvalidity": n, "last_uid": n}. A changed
    UIDVALIDITY means the folder was rebuilt: it is read again from the start, never skipped."""

    folders: dict = field(default_factory=dict)
    checked_at: str = ""
    left: dict = field(default_factory=dict)   # messages left in place by the last read, by reason (for a metric)


@dataclass
class HostReport(_Record):
    in_sync: bool = False
    fingerprint_sha256: str = ""
    serial: str = ""
    drift: list = field(default_factory=list)
    checked_at: str = ""
    _lists: ClassVar[tuple[str, ...]] = ("drift",)


@dataclass
class Hosts(_Record):
    """What each host of a credential serves, from the last deploy or verify that checked it."""

    hosts: dict = field(default_factory=dict)   # host -> HostReport
    checked_at: str = ""

    @classmethod
    def from_data(cls, data: dict) -> "Hosts":
        rec = super().from_data(data)
        rec.hosts = {str(h): r if isinstance(r, HostReport) else HostReport.from_data(r or {})
                     for h, r in (data.get("hosts") or {}).items()}
        return rec

    def to_data(self) -> dict:
        data = super().to_data()
        data["hosts"] = {h: r.to_data() for h, r in self.hosts.items()}
        return data


@dataclass
class Password(_Record):
    """A password kept in Vault: the MZP account, an SMTP account."""

    password: str = ""
    updated_at: str = ""


@dataclass
class AuthorityKey(_Record):
    key_pem: str = ""
    cert_pem: str = ""


@dataclass
class LockRecord(_Record):
    state: str = ""            # held | released
    holder: str = ""
    token: str = ""
    acquired_at: str = ""
    expires_at: str = ""
    released_at: str = ""
    host: str = ""
    boot_id: str = ""
    pid: str = ""
    pid_started: str = ""

    def to_data(self) -> dict:
        return {k: v for k, v in super().to_data().items() if v != ""}


@dataclass
class RunRecord(_Record):
    last_run: str = ""
    last_success: str = ""

    def to_data(self) -> dict:
        return {k: v for k, v in super().to_data().items() if v != ""}


R = TypeVar("R", bound=_Record)


@dataclass
class Versioned(Generic[R]):
    """A record as read, with the version a check-and-set write must name."""

    record: R
    version: int


@dataclass
class Record:
    """Raw KV v2 data and its version (the store's own reads, tests and the benchmark's seeding)."""

    data: dict
    version: int


@dataclass
class Index:
    """What `status` needs of one credential, kept in KV v2 custom metadata (strings only)."""

    serial: str = ""
    not_before: str = ""
    not_after: str = ""
    client_id: str = ""
    fingerprint_sha256: str = ""
    key_sha256: str = ""
    ca_fingerprint_sha256: str = ""
    key_spec: str = ""
    pending_since: str = ""
    pending_submitted_at: str = ""
    pending_submission: str = ""
    pending_attention: str = ""       # the authority's answer without a certificate: date and subject, bounded
    pending_message_id: str = ""      # the Message-ID the CSR was last sent with
    pending_times_sent: str = ""      # how many times it was sent (1, then each --resend)
    pending_sent_at: str = ""         # when it was last sent (its submission, or the last --resend)
    pending_reminded_at: str = ""     # the last reminder raised while it waits
    pending_times_reminded: str = ""  # how many reminders since it was last sent
    current_version: str = "0"
    turnarounds: str = ""  # seconds from submission to import of the last imports, comma-separated, newest last
    hosts_total: str = ""
    hosts_in_sync: str = ""
    hosts_checked_at: str = ""
    hosts_ahead: str = ""             # hosts serving a newer certificate unknown to Vault (deploy.ahead): how many
    subject_notes: str = ""           # what the authority changed in the subject: a JSON list, bounded
    subject_accepted_by: str = ""     # who accepted an identity change (OU, O, C), when one was accepted
    withdrawn_at: str = ""            # rekey --withdraw: the current certificate is removed from its hosts
    withdrawn_by: str = ""
    known_serials: str = ""           # the current record's known_serials, comma-separated, bounded (deploy.ahead)
    updated_at: str = ""
    writing: str = ""                 # a write of `current` to this version began after the index was derived

    def marked(self) -> bool:
        """Whether a write of `current` began after this index was derived (it may be stale)."""
        return bool(self.writing)

    @classmethod
    def from_custom(cls, custom: dict | None) -> "Index":
        custom = custom or {}
        return cls(**{name: str(custom.get(name, default)) for name, default in _INDEX_FIELDS})

    def to_custom(self) -> dict:
        # Vault refuses empty custom-metadata values: an absent key means "".
        return {"schema": INDEX_SCHEMA, **{k: v for k, v in asdict(self).items() if v}}

    def not_after_dt(self) -> dt.datetime | None:
        return parse_time(self.not_after)

    def not_before_dt(self) -> dt.datetime | None:
        return parse_time(self.not_before)

    def pending_since_dt(self) -> dt.datetime | None:
        return parse_time(self.pending_since)

    def carry_pending(self, other: "Index") -> None:
        """Take the pending fields (and key spec) of another index: what the deployer may not read itself."""
        for f in fields(self):
            if f.name.startswith("pending_"):
                setattr(self, f.name, getattr(other, f.name))
        self.key_spec = self.key_spec or other.key_spec


# Index's field names and defaults, worked out once: status makes an Index per credential.
_INDEX_FIELDS = tuple((f.name, f.default) for f in fields(Index))


class KV:
    """Raw KV v2 under one mount: reads (pipelined where possible), check-and-set writes, listings, custom metadata."""

    def __init__(self, client: hvac.Client, settings: Settings):
        self.client = client
        self.mount = settings.kv_mount
        self.prefix = settings.prefix
        light = getattr(client, "light", None)  # a vault.Deferred client, not made yet
        self.addr = light.base_uri if light is not None else client.adapter.base_uri
        self._reader = KeepAliveReader.for_client(client, settings.vault)
        self._mount_checked = False
        self._layout: int | None = None
        self._detailed: bool | None = None  # whether the detailed listing answers (None: not tried yet)

    # -- raw KV v2 ------------------------------------------------------------------
    def _call(self, method: str, url: str, **kw):
        if method == "get" and not kw:
            found = self._lean(url)
            if found is not DELEGATE:
                return found
        return self._adapter_call(method, url, **kw)

    def _lean(self, url: str):
        """A GET over the pipelined reader: its JSON (200), None (404), or DELEGATE: ask the adapter (through
        translated(), with the request's own handling of a refusal)."""
        return self._reader.get(url) if self._reader is not None else DELEGATE

    def _adapter_call(self, method: str, url: str, **kw):
        with translated(self.addr, f"{method.upper()} {url.removeprefix('/v1/')}", client=self.client,
                        asked=self._asked(method, url, kw.get("json"))):
            try:
                return getattr(self.client.adapter, method)(url, **kw)
            except hvac.exceptions.InvalidPath:
                return None

    def _asked(self, method: str, url: str, params=None, cas: int | None = None) -> Asked:
        """What a request needs of the token's policy (`params`: the body's keys), for the message should Vault
        refuse it."""
        capability = {"get": "read", "list": "list"}.get(method) or ("create" if cas == 0 else "update")
        return Asked(capability, url.removeprefix("/v1/"), self.mount, self.prefix, tuple(params or ()))

    def who(self) -> str:
        """Who is acting, for records a human's decision goes into: the control node's user and host, and the
        Vault token's display name when the token may look itself up."""
        from .lock import person
        try:
            resp = self.client.adapter.get("/v1/auth/token/lookup-self")
            name = ((resp or {}).get("data") or {}).get("display_name") if isinstance(resp, dict) else None
        except Exception:  # noqa: BLE001 - the name is a courtesy; the user and host are recorded anyway
            name = None
        return f"{person()} (Vault token {name})" if name else person()

    def check_mount(self) -> None:
        """Fail early, with the fix, when the KV v2 mount is missing or is not version 2 (checked once per Store)."""
        if self._mount_checked:
            return
        url = f"/v1/sys/internal/ui/mounts/{self.mount}"
        resp = self._lean(url)
        if resp is DELEGATE:
            with translated(self.addr, "the mount check", client=self.client, mount=self.mount):
                try:
                    resp = self.client.adapter.get(url)
                except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
                    resp = None  # Vault answers 403 for a mount that does not exist, even to root
        data = (resp or {}).get("data") if isinstance(resp, dict) else None
        if not data or data.get("type") not in ("kv", "generic") or data.get("path", "").strip("/") != self.mount:
            # Why (only now, after the failure): not a Vault server, a bad token, a policy, or no such mount.
            raise missing_mount(self.client, self.addr, self.mount, self.prefix)
        if str((data.get("options") or {}).get("version")) != "2":
            raise NotSetUp(f"mount '{self.mount}' at {self.addr} is KV version 1; partnercerts needs KV v2 "
                           "(set PARTNERCERTS_KV_MOUNT to a KV v2 mount)")
        self._mount_checked = True

    def read(self, path: str) -> Record | None:
        resp = self._call("get", f"/v1/{self.mount}/data/{path}")
        if not resp or not resp.get("data") or resp["data"].get("data") is None:
            return None
        return Record(data=resp["data"]["data"], version=int(resp["data"]["metadata"]["version"]))

    def version(self, path: str) -> int:
        """The path's current version number, 0 when it was never written."""
        resp = self._call("get", f"/v1/{self.mount}/metadata/{path}")
        return int(resp["data"]["current_version"]) if resp and resp.get("data") else 0

    def write(self, path: str, data: dict, cas: int) -> int:
        """Write a new version only if the path is still at version `cas` (0: must not exist)."""
        url = f"/v1/{self.mount}/data/{path}"
        with translated(self.addr, f"writing {self.mount}/data/{path}", client=self.client, mount=self.mount,
                        path=path, asked=self._asked("post", url, ("data", "options"), cas)):
            resp = self.client.adapter.post(url, json={"data": data, "options": {"cas": cas}})
        return int(resp["data"]["version"])

    def list(self, path: str) -> list[str]:
        resp = self._call("list", f"/v1/{self.mount}/metadata/{path}")
        return list((resp or {}).get("data", {}).get("keys", []))

    def read_custom(self, path: str) -> dict:
        """Custom metadata of any path ({} when absent): the auditor-readable side of a record."""
        resp = self._call("get", f"/v1/{self.mount}/metadata/{path}")
        return dict(((resp or {}).get("data") or {}).get("custom_metadata") or {})

    def write_custom(self, path: str, custom: dict, max_versions: int | None = None) -> None:
        body: dict = {"custom_metadata": {k: str(v) for k, v in custom.items() if v not in (None, "")}}
        if max_versions is not None:
            body["max_versions"] = max_versions
        self._call("post", f"/v1/{self.mount}/metadata/{path}", json=body)


class Store(KV):
    """The layout: where each record lives, its typed reads and writes, and the index."""

    # -- layout ---------------------------------------------------------------------
    def account_path(self, mzp: str) -> str:
        return f"{self.prefix}/{mzp}/account"

    def apps_path(self, mzp: str) -> str:
        return f"{self.prefix}/{mzp}/apps"

    def credential_path(self, mzp: str, app: str) -> str:
        return f"{self.apps_path(mzp)}/{app}"

    def pending_path(self, mzp: str, app: str) -> str:
        return f"{self.credential_path(mzp, app)}/pending"

    def current_path(self, mzp: str, app: str) -> str:
        return f"{self.credential_path(mzp, app)}/current"

    def history_path(self, mzp: str, app: str, serial: str) -> str:
        return f"{self.credential_path(mzp, app)}/history/{serial}"

    def hosts_path(self, mzp: str, app: str) -> str:
        return f"{self.credential_path(mzp, app)}/hosts"

    def smtp_path(self, mzp: str | None = None) -> str:
        return f"{self.prefix}/{mzp}/smtp" if mzp else f"{self.prefix}/notify/smtp"

    def mailbox_path(self, mzp: str) -> str:
        return f"{self.prefix}/{mzp}/mailbox"

    def mailbox_state_path(self, mzp: str) -> str:
        return f"{self.prefix}/{mzp}/mailbox-state"

    def lock_path(self, name: str = "rotate") -> str:
        return f"{self.prefix}/locks/{name}"

    def runs_path(self, name: str = "rotate") -> str:
        return f"{self.prefix}/runs/{name}"

    def index_path(self, mzp: str, app: str) -> str:
        return f"{self.index_folder()}/{mzp}.{app}"

    def index_folder(self) -> str:
        return f"{self.prefix}/index"

    def layout_path(self) -> str:
        return f"{self.prefix}/layout"

    def sandbox_path(self) -> str:
        return f"{self.prefix}/sandbox/authority"

    # -- typed records --------------------------------------------------------------
    def _get(self, path: str, kind: type[R]) -> Versioned[R] | None:
        rec = self.read(path)
        return Versioned(kind.from_data(rec.data), rec.version) if rec else None

    def _put(self, path: str, record: _Record, cas: int) -> int:
        return self.write(path, record.to_data(), cas)

    def pending(self, mzp: str, app: str) -> Versioned[Pending] | None:
        return self._get(self.pending_path(mzp, app), Pending)

    def live_pending(self, mzp: str, app: str) -> Versioned[Pending] | None:
        found = self.pending(mzp, app)
        return found if found and found.record.live else None

    def put_pending(self, mzp: str, app: str, record: Pending, cas: int) -> int:
        version = self._put(self.pending_path(mzp, app), record, cas)
        if version == 1:  # keep every pending key version (KV v2 would prune past the mount's max_versions)
            self._call("post", f"/v1/{self.mount}/metadata/{self.pending_path(mzp, app)}",
                       json={"max_versions": MAX_VERSIONS})
        return version

    def current(self, mzp: str, app: str) -> Versioned[Issued] | None:
        return self._get(self.current_path(mzp, app), Issued)

    def put_current(self, mzp: str, app: str, record: Issued, cas: int) -> int:
        """Write `current`; its index is marked first (the version being written), so that a crash before the
        index is derived again leaves an index that is checked against `current` and repaired."""
        if self.index_layout() >= INDEX_LAYOUT:
            path = self.index_path(mzp, app)
            custom = self.read_custom(path)
            self.write_custom(path, {"schema": INDEX_SCHEMA, **custom, "writing": str(cas + 1)})
        record = replace(record, known_serials=sorted(set(self.history_serials(mzp, app)) | {record.serial}))
        version = self._put(self.current_path(mzp, app), record, cas)
        if version == 1 and self.index_layout() >= INDEX_LAYOUT:  # layout 1 raised it with every index write
            self._call("post", f"/v1/{self.mount}/metadata/{self.current_path(mzp, app)}",
                       json={"max_versions": MAX_VERSIONS})
        return version

    def history(self, mzp: str, app: str, serial: str) -> Versioned[Issued] | None:
        return self._get(self.history_path(mzp, app, serial), Issued)

    def history_serials(self, mzp: str, app: str) -> list[str]:
        return self.list(f"{self.credential_path(mzp, app)}/history")

    def put_history(self, mzp: str, app: str, record: Issued, cas: int = 0) -> int:
        """Write-once by default: raises Conflict when the serial is already in the history (a new version
        of an entry, e.g. marked withdrawn, needs the version it replaces as `cas`)."""
        return self._put(self.history_path(mzp, app, record.serial), record, cas=cas)

    def hosts(self, mzp: str, app: str) -> Versioned[Hosts] | None:
        return self._get(self.hosts_path(mzp, app), Hosts)

    def put_hosts(self, mzp: str, app: str, record: Hosts, cas: int) -> int:
        return self._put(self.hosts_path(mzp, app), record, cas)

    def applications(self, mzp: str) -> list[str]:
        """The applications of a partner that Vault holds records for."""
        return [entry.rstrip("/") for entry in self.list(self.apps_path(mzp)) if entry.endswith("/")]

    def account(self, mzp: str) -> Versioned[Password] | None:
        return self._get(self.account_path(mzp), Password)

    def put_account(self, mzp: str, record: Password, cas: int) -> int:
        return self._put(self.account_path(mzp), record, cas)

    def smtp(self, mzp: str | None) -> Versioned[Password] | None:
        return self._get(self.smtp_path(mzp), Password)

    def put_smtp(self, mzp: str | None, record: Password, cas: int) -> int:
        return self._put(self.smtp_path(mzp), record, cas)

    def mailbox(self, mzp: str) -> Versioned[Password] | None:
        return self._get(self.mailbox_path(mzp), Password)

    def put_mailbox(self, mzp: str, record: Password, cas: int) -> int:
        return self._put(self.mailbox_path(mzp), record, cas)

    def mailbox_state(self, mzp: str) -> Versioned[MailboxState] | None:
        return self._get(self.mailbox_state_path(mzp), MailboxState)

    def put_mailbox_state(self, mzp: str, record: MailboxState, cas: int) -> int:
        return self._put(self.mailbox_state_path(mzp), record, cas)

    def authority(self) -> Versioned[AuthorityKey] | None:
        return self._get(self.sandbox_path(), AuthorityKey)

    def put_authority(self, record: AuthorityKey) -> int:
        return self._put(self.sandbox_path(), record, cas=0)

    def lock(self, name: str) -> Versioned[LockRecord] | None:
        return self._get(self.lock_path(name), LockRecord)

    def put_lock(self, name: str, record: LockRecord, cas: int) -> int:
        return self._put(self.lock_path(name), record, cas)

    def run_record(self, name: str = "rotate") -> RunRecord:
        """The last run and success times, from custom metadata (readable by the auditor)."""
        return RunRecord.from_data(self.read_custom(self.runs_path(name)))

    def put_run_record(self, record: RunRecord, name: str = "rotate") -> None:
        """Record a run in the data (check-and-set) and in custom metadata; a concurrent run's record wins."""
        path = self.runs_path(name)
        rec = self.read(path)
        try:
            self.write(path, record.to_data(), cas=rec.version if rec else self.version(path))
        except Conflict:
            pass  # another run recorded itself at the same moment
        self.write_custom(path, record.to_data(), max_versions=None if rec else MAX_VERSIONS)

    # -- the credential index (<prefix>/index/<mzp>.<app>; layout 1: custom metadata of `current`) --------
    def index_layout(self) -> int:
        """Where the index lives (read once per Store): INDEX_LAYOUT, or 1 until a rotator run moved it."""
        if self._layout is None:
            value = self.read_custom(self.layout_path()).get("index", "1")
            try:
                self._layout = int(value)
            except ValueError:
                self._layout = 0
            if self._layout > INDEX_LAYOUT or self._layout < 1:
                raise NotSetUp(f"{self.mount}/{self.layout_path()} at {self.addr} says the index layout is "
                               f"{value!r}, which this partnercerts does not know (it knows 1 and {INDEX_LAYOUT}); "
                               "run the partnercerts that wrote it, or upgrade this one")
        return self._layout

    def upgrade_index(self, now: dt.datetime) -> int:
        """Move every credential's index out of the custom metadata of its `current` into <prefix>/index/, once
        (layout 1 to 2), and record the layout; returns how many were moved (0 when already done). Safe to
        repeat after a crash: an entry is copied again and the layout is recorded last. An index that was
        stale stays marked as such (`writing`), so the next plan derives it again. The old copies are left
        where they were (nothing here deletes) and are no longer read."""
        if self.index_layout() >= INDEX_LAYOUT:
            return 0
        from .profile import MZP_RE
        pairs = [(mzp, app) for mzp in (e.rstrip("/") for e in self.list(self.prefix) if e.endswith("/"))
                 if MZP_RE.fullmatch(mzp) for app in self.applications(mzp)]
        moved = 0
        for (mzp, app), found in zip(pairs, self._legacy_indexes(pairs), strict=True):
            if found is None or not found[0].updated_at:
                continue  # never indexed
            index, version = found
            if index.current_version != str(version):
                index.writing = str(version)
            self.write_custom(self.index_path(mzp, app), index.to_custom())
            moved += 1
        self.write_custom(self.layout_path(), {"index": str(INDEX_LAYOUT), "since": iso(now), "moved": str(moved)})
        self._layout = INDEX_LAYOUT
        return moved

    def read_index(self, mzp: str, app: str) -> tuple[Index, int] | None:
        """The index and the real version of `current`; None when the credential was never touched."""
        return self.read_indexes([(mzp, app)])[0]

    def read_indexes(self, pairs: list[tuple[str, str]]) -> list[tuple[Index, int] | None]:
        """read_index() of many credentials (mzp, app), in order, in as few round trips as the server allows:
        a few pages of the detailed listing where OpenBao offers it, else one pipelined read per credential.
        The version is that of `current` when the index is marked (read then), else the one it was derived
        from."""
        if self.index_layout() < INDEX_LAYOUT:
            return self._legacy_indexes(pairs)
        keys = [f"{mzp}.{app}" for mzp, app in pairs]
        listed = self._listed_indexes(keys) if len(keys) >= FEW else None
        if listed is not None:
            customs = [listed.get(k) for k in keys]
        else:
            got = self._get_many([f"/v1/{self.mount}/metadata/{self.index_path(m, a)}" for m, a in pairs])
            customs = [((r or {}).get("data") or {}).get("custom_metadata") if r else None for r in got]
        found: list[tuple[Index, int] | None] = [None] * len(pairs)
        marked = []
        for i, custom in enumerate(customs):
            if not custom:
                continue
            index = Index.from_custom(custom)
            found[i] = (index, int(index.current_version or 0) if index.current_version.isdigit() else -1)
            if index.marked():
                marked.append(i)
        if marked:
            versions = self._get_many([f"/v1/{self.mount}/metadata/{self.current_path(*pairs[i])}" for i in marked])
            for i, resp in zip(marked, versions, strict=True):
                index = found[i][0]  # type: ignore[index]  # marked entries were found
                found[i] = (index, int(((resp or {}).get("data") or {}).get("current_version") or 0))
        return found

    def _get_many(self, urls: list[str]) -> list:
        """GETs of `urls` in order, pipelined where the reader allows it."""
        if self._reader is None or len(urls) < 2:
            return [self._call("get", url) for url in urls]
        return [self._adapter_call("get", url) if resp is DELEGATE else resp
                for url, resp in zip(urls, self._reader.get_many(urls), strict=True)]

    def _legacy_indexes(self, pairs: list[tuple[str, str]]) -> list[tuple[Index, int] | None]:
        """Layout 1: the index in the custom metadata of `current`, beside current's real version."""
        return [self._index(r) for r in
                self._get_many([f"/v1/{self.mount}/metadata/{self.current_path(m, a)}" for m, a in pairs])]

    def _listed_indexes(self, keys: list[str]) -> dict[str, dict] | None:
        """The custom metadata of the index entries from the first to the last of `keys` (in Vault's order),
        from pages of `LIST <mount>/detailed-metadata/<prefix>/index/`; None when the server or the policy
        does not offer that listing (then, for the rest of this Store, the entries are read one by one).

        The names are known, so is where each page of LIST_PAGE of them starts: the first page is asked here
        (it tells whether the server lists at all), and the others are shared between this connection and a
        second one (`_Alongside`, a thread), so that OpenBao works on two pages at once. A page the second
        connection cannot read plainly (a denial, a broken connection, a lapsing token) is read again here,
        through the client, so errors and failover stay the client's."""
        if self._detailed is False:
            return None
        ordered = sorted(keys)
        spans = collections.deque((ordered[i], ordered[min(i + LIST_PAGE, len(ordered)) - 1])
                                  for i in range(0, len(ordered), LIST_PAGE))
        first = spans.popleft()
        alongside = _Alongside(self, spans) if spans and self._reader is not None else None
        try:
            out = self._listed_span(*first)
            if out is None:
                return None
            while spans:
                try:
                    span = spans.popleft()
                except IndexError:  # the other connection took the last one
                    break
                out.update(self._listed_span(*span) or {})
        finally:
            if alongside is not None:
                alongside.stop()
        for span in alongside.returned if alongside is not None else ():
            out.update(self._listed_span(*span) or {})
        if alongside is not None:
            out.update(alongside.got)
        return out

    def _read_span(self, first: str, last: str, get) -> tuple[dict[str, dict], bool]:
        """The entries from `first` to `last` (and the rest of the page that reaches `last`), page after page
        through `get` (a URL to its answer); and whether the span ended on a page with entries (False: an empty
        page, or an answer that was not a listing)."""
        # The listing starts after a name: the one just before `first` (index names are [A-Za-z0-9._-]).
        after = first[:-1] + chr(ord(first[-1]) - 1) + "~"
        out: dict[str, dict] = {}
        while True:
            names = _page_into(out, get(f"/v1/{self.mount}/detailed-metadata/{self.index_folder()}/?list=true"
                                        f"&limit={LIST_PAGE}&after={quote(after, safe='')}"))
            if names is None:
                return out, False
            if len(names) < LIST_PAGE or names[-1] >= last:
                return out, True
            after = names[-1]

    def _listed_span(self, first: str, last: str) -> dict[str, dict] | None:
        """_read_span() over this Store's connection; None when the first page ever asked says the listing is
        not offered."""
        out, _ = self._read_span(first, last, self._list_page)
        if out:
            self._detailed = True
        elif self._detailed is None:
            self._detailed = False
            return None
        return out

    def _list_page(self, url: str):
        """One page of the index listing: over the pipelined reader, else through the client; None when the
        server or the policy does not offer it (or nothing is listed)."""
        resp = self._lean(url)
        if resp is not DELEGATE:
            return resp
        base = f"/v1/{self.mount}/detailed-metadata/{self.index_folder()}/"
        with translated(self.addr, f"LIST {self.mount}/detailed-metadata/{self.index_folder()}/",
                        client=self.client, asked=self._asked("list", base)):
            try:
                return self.client.adapter.get(url)
            except (hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest,
                    hvac.exceptions.UnsupportedOperation):
                # 404 (no such endpoint, or nothing listed) or 403/400/405: on the first page this
                # may be a server or policy without the listing: read one by one (the same answer).
                return None

    @staticmethod
    def _index(resp) -> tuple[Index, int] | None:
        if not resp or not resp.get("data"):
            return None
        meta = resp["data"]
        return Index.from_custom(meta.get("custom_metadata")), int(meta.get("current_version") or 0)

    def write_index(self, mzp: str, app: str, index: Index, custom_only: bool = False) -> None:
        """Write the index (clears a `writing` mark); custom_only for the deployer, whose policy may not change
        max_versions (which layout 1 raised on `current` with the index)."""
        if self.index_layout() >= INDEX_LAYOUT:
            index.writing = ""
            self._call("post", f"/v1/{self.mount}/metadata/{self.index_path(mzp, app)}",
                       json={"custom_metadata": index.to_custom()})
            return
        body: dict[str, Any] = {"custom_metadata": index.to_custom()}
        if not custom_only:
            body["max_versions"] = MAX_VERSIONS
        self._call("post", f"/v1/{self.mount}/metadata/{self.current_path(mzp, app)}", json=body)

    # -- every version of a record, read-only (the audit trail, partnercerts/audit.py) ----------
    def metadata(self, path: str) -> dict:
        """A path's KV v2 metadata ({} when never written): current_version, max_versions, custom_metadata and
        `versions` (per version number, as a string: created_time, deletion_time, destroyed). Versions that
        KV v2 pruned past max_versions are absent."""
        resp = self._call("get", f"/v1/{self.mount}/metadata/{path}")
        return dict((resp or {}).get("data") or {})

    def read_version(self, path: str, version: int) -> Record | None:
        """One version of a path's data; None when that version is deleted, destroyed, pruned or never written."""
        resp = self._call("get", f"/v1/{self.mount}/data/{path}?version={int(version)}")
        if not resp or not resp.get("data") or resp["data"].get("data") is None:
            return None
        return Record(data=resp["data"]["data"], version=int(resp["data"]["metadata"]["version"]))


def _page_into(out: dict[str, dict], resp) -> list[str] | None:
    """Add the custom metadata of a listing page's entries to `out`; its names, or None for an empty page."""
    data = resp.get("data") if isinstance(resp, dict) else None
    names = list((data or {}).get("keys") or [])
    if not names:
        return None
    info = data.get("key_info") or {}  # type: ignore[union-attr]  # names came from data
    for name in names:
        out[name] = dict((info.get(name) or {}).get("custom_metadata") or {})
    return names


class _Alongside:
    """A second connection that takes spans of the index listing from the same queue as the Store, in a
    thread, while the Store reads its own. Only plain answers are taken (200 with entries): a span whose
    page is anything else (absent, denied, a broken connection) is handed back (`returned`) for the Store to
    read through the client. It never renews the token (the Store's requests do) and never touches the
    Store's state."""

    def __init__(self, store: Store, spans: collections.deque):
        self.store, self.spans = store, spans
        self.got: dict[str, dict] = {}
        self.returned: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        main = store._reader
        assert main is not None  # only made beside a pipelined reader
        self.reader = KeepAliveReader(main.adapter, main.ca_bundle, keeps=False)
        self.thread = threading.Thread(target=self._run, name="partnercerts-listing", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        span = None
        try:
            while not self.stopping.is_set():
                try:
                    span = self.spans.popleft()
                except IndexError:
                    return
                if not self._span(*span):
                    self.returned.append(span)  # and the rest is the Store's: this server may not list at all
                    return
                span = None
        except BaseException:  # pylint: disable=broad-exception-caught  # the Store reads it again itself
            if span is not None:
                self.returned.append(span)
        finally:
            self.reader.close()

    def _span(self, first: str, last: str) -> bool:
        got, whole = self.store._read_span(first, last, self.reader.get)
        if whole:
            self.got.update(got)
        return whole

    def stop(self) -> None:
        """Wait for the span under way; the queue's remaining spans are the Store's."""
        self.stopping.set()
        self.thread.join()
