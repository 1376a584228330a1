"""Vault custody: the one module that knows the KV v2 layout.

Layout under the KV v2 mount (default `secret`) and prefix (default `partnercerts`):

    <prefix>/<mzp>/account                        MZP password
    <prefix>/<mzp>/apps/<app>/pending             key, CSR, created/submitted times (or a
                                                  `consumed` tombstone once imported)
    <prefix>/<mzp>/apps/<app>/current             key, certificate, chain, CA, Client ID,
                                                  serial, not_after, fingerprint, PKCS#12 password
    <prefix>/<mzp>/apps/<app>/history/<serial>    every imported certificate with its key,
                                                  written once, never overwritten
    <prefix>/<mzp>/apps/<app>/hosts               per host: what it serves and whether that is
                                                  in sync with current (no secrets)
    <prefix>/<mzp>/smtp                           password of the partner's SMTP submission account
    <prefix>/sandbox/authority                    the sandbox authority's CA key and certificate
    <prefix>/notify/smtp                          password of the notification e-mail account
    <prefix>/locks/rotate                         the rotation lock: holder, token, expiry (no secrets)
    <prefix>/runs/rotate                          last run and last success times (also in its custom metadata)

The custom metadata of `current` is the credential's index (state, serial, not_after,
Client ID, pending_since, ...): `status` and the rotation plan read only that, never
secret data. Every data write uses check-and-set; nothing here deletes or destroys.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, fields

import hvac
import hvac.exceptions
import requests

from .errors import Conflict, UserError
from .settings import Settings
from .vault import unreachable

# KV v2 prunes versions past max_versions (mount default 10); keep far more so no key version is destroyed.
MAX_VERSIONS = 1000
INDEX_SCHEMA = "1"


@dataclass
class Record:
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
    current_version: str = "0"
    turnarounds: str = ""  # seconds from submission to import of the last imports, comma-separated, newest last
    hosts_total: str = ""
    hosts_in_sync: str = ""
    hosts_checked_at: str = ""
    updated_at: str = ""

    @classmethod
    def from_custom(cls, custom: dict | None) -> "Index":
        custom = custom or {}
        return cls(**{f.name: str(custom.get(f.name, f.default)) for f in fields(cls)})

    def to_custom(self) -> dict:
        # Vault refuses empty custom-metadata values: an absent key means "".
        return {"schema": INDEX_SCHEMA, **{k: v for k, v in asdict(self).items() if v}}

    def not_after_dt(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.not_after) if self.not_after else None

    def not_before_dt(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.not_before) if self.not_before else None

    def pending_since_dt(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.pending_since) if self.pending_since else None


class Store:
    def __init__(self, client: hvac.Client, settings: Settings):
        self.client = client
        self.mount = settings.kv_mount
        self.prefix = settings.prefix
        self.addr = client.adapter.base_uri

    # -- layout ---------------------------------------------------------------------
    def account_path(self, mzp: str) -> str:
        return f"{self.prefix}/{mzp}/account"

    def credential_path(self, mzp: str, app: str) -> str:
        return f"{self.prefix}/{mzp}/apps/{app}"

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

    def lock_path(self, name: str = "rotate") -> str:
        return f"{self.prefix}/locks/{name}"

    def runs_path(self, name: str = "rotate") -> str:
        return f"{self.prefix}/runs/{name}"

    def sandbox_path(self) -> str:
        return f"{self.prefix}/sandbox/authority"

    # -- raw KV v2 ------------------------------------------------------------------
    def _call(self, method: str, url: str, **kw):
        try:
            return getattr(self.client.adapter, method)(url, **kw)
        except hvac.exceptions.InvalidPath:
            return None
        except hvac.exceptions.Forbidden:
            raise UserError(f"Vault at {self.addr} denied {method.upper()} {url.removeprefix('/v1/')}; "
                            "use a token or AppRole whose policy allows it") from None
        except hvac.exceptions.VaultDown:
            raise UserError(f"Vault at {self.addr} is sealed or down; unseal it (or run scripts/inv vault.up)") from None
        except requests.exceptions.RequestException as exc:
            raise UserError(unreachable(self.addr, exc)) from None

    def check_mount(self) -> None:
        """Fail early, with the fix, when the KV v2 mount is missing or is not version 2."""
        try:
            resp = self.client.adapter.get(f"/v1/sys/internal/ui/mounts/{self.mount}")
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
            resp = None  # Vault answers 403 for a mount that does not exist, even to root
        except hvac.exceptions.VaultDown:
            raise UserError(f"Vault at {self.addr} is sealed or down; unseal it (or run scripts/inv vault.up)") from None
        except requests.exceptions.RequestException as exc:
            raise UserError(unreachable(self.addr, exc)) from None
        data = (resp or {}).get("data") if isinstance(resp, dict) else None
        if not data or data.get("type") not in ("kv", "generic") or data.get("path", "").strip("/") != self.mount:
            raise UserError(f"KV v2 mount '{self.mount}' does not exist at {self.addr} (or this token may not use it); "
                            "create it with "
                            "scripts/inv vault.bootstrap, or set PARTNERCERTS_KV_MOUNT to an existing one")
        if str((data.get("options") or {}).get("version")) != "2":
            raise UserError(f"mount '{self.mount}' at {self.addr} is KV version 1; partnercerts needs KV v2 "
                            "(set PARTNERCERTS_KV_MOUNT to a KV v2 mount)")

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
        try:
            resp = self.client.adapter.post(f"/v1/{self.mount}/data/{path}", json={"data": data, "options": {"cas": cas}})
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                raise Conflict(f"{path} was changed by another run while this one worked; run the command again") from None
            raise
        except hvac.exceptions.InvalidPath:
            raise UserError(f"cannot write {self.mount}/data/{path} at {self.addr}: the KV v2 mount '{self.mount}' "
                            "is missing; create it with scripts/inv vault.bootstrap") from None
        except hvac.exceptions.Forbidden:
            raise UserError(f"Vault at {self.addr} denied writing {self.mount}/data/{path}; "
                            "use a token or AppRole whose policy allows it") from None
        except hvac.exceptions.VaultDown:
            raise UserError(f"Vault at {self.addr} is sealed or down; unseal it (or run scripts/inv vault.up)") from None
        except requests.exceptions.RequestException as exc:
            raise UserError(unreachable(self.addr, exc)) from None
        return int(resp["data"]["version"])

    def list(self, path: str) -> list[str]:
        resp = self._call("list", f"/v1/{self.mount}/metadata/{path}")
        return list((resp or {}).get("data", {}).get("keys", []))

    def set_max_versions(self, path: str) -> None:
        self._call("post", f"/v1/{self.mount}/metadata/{path}", json={"max_versions": MAX_VERSIONS})

    # -- the credential index (custom metadata of `current`) -------------------------
    def read_index(self, mzp: str, app: str) -> tuple[Index, int] | None:
        """The index and the real version of `current`; None when the credential was never touched."""
        resp = self._call("get", f"/v1/{self.mount}/metadata/{self.current_path(mzp, app)}")
        if not resp or not resp.get("data"):
            return None
        meta = resp["data"]
        return Index.from_custom(meta.get("custom_metadata")), int(meta.get("current_version") or 0)

    def read_custom(self, path: str) -> dict:
        """Custom metadata of any path ({} when absent): the auditor-readable side of a record."""
        resp = self._call("get", f"/v1/{self.mount}/metadata/{path}")
        return dict(((resp or {}).get("data") or {}).get("custom_metadata") or {})

    def write_custom(self, path: str, custom: dict) -> None:
        self._call("post", f"/v1/{self.mount}/metadata/{path}",
                   json={"custom_metadata": {k: str(v) for k, v in custom.items() if v not in (None, "")}})

    def write_index(self, mzp: str, app: str, index: Index) -> None:
        self._call("post", f"/v1/{self.mount}/metadata/{self.current_path(mzp, app)}",
                   json={"custom_metadata": index.to_custom(), "max_versions": MAX_VERSIONS})
