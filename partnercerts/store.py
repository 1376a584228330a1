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
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, fields
from urllib.parse import urlsplit

import hvac
import hvac.adapters
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


_DELEGATE = object()
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9/_.~-]+$")
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]*$")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")
_MAX_LINE = 65536
_MAX_HEADERS = 100


class _Unexpected(Exception):
    """A response this reader does not handle itself: the request goes to the adapter instead."""


class KeepAliveReader:
    """Vault GETs over one keep-alive HTTP/1.1 connection: the read path of `status` and the plan.

    A read through hvac costs about twice the round trip itself (requests merges its settings and
    re-reads the proxy environment on every call; http.client parses headers with the e-mail
    parser), and `status` and the rotation plan make one read per credential. So GETs go through
    this small client: one request written in one send, the status line, the few headers that
    frame the body (Content-Length or chunked), the JSON body. Only the plain outcomes are
    handled here: 200 (the parsed body) and 404 (absent: None, as Store treats hvac's
    InvalidPath). Anything else -- a refused, reset or timed-out connection, a sealed, standby or
    failing node, a redirect, a denial, a body it cannot frame or parse -- returns _DELEGATE and
    the caller repeats the request through the client's own adapter, so that failover across the
    cluster's nodes with bounded backoff (vault.FailoverAdapter) and hvac's exceptions, hence
    every error message, stay exactly as they were. After a failover the next read follows the
    adapter to the node that answered.

    Not used (everything goes through hvac) when the adapter is not hvac's JSON adapter, presents
    a client certificate, when a proxy is configured, or when VAULT_ADDR names several nodes of a
    cluster: there the adapter sends every request to the node whose sys/health says active (a
    standby answers reads from a lagging copy), and that choice stays the adapter's alone.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        self.sock = None
        self.rfile = None
        self.target: tuple = ()
        self.prefix = ""
        self.host = ""
        self.pid = 0
        self.pipelining = True
        self.window = 32

    @classmethod
    def for_client(cls, client) -> "KeepAliveReader | None":
        adapter = getattr(client, "adapter", None)
        if not isinstance(adapter, hvac.adapters.JSONAdapter) or getattr(adapter, "ignore_exceptions", False):
            return None
        if len(getattr(adapter, "base_uris", None) or [adapter.base_uri]) > 1:
            return None
        kwargs = getattr(adapter, "_kwargs", {})
        session = getattr(adapter, "session", None)
        if kwargs.get("cert") or kwargs.get("proxies") or getattr(session, "cert", None) \
                or getattr(session, "proxies", None):
            return None
        if any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS):
            return None
        return cls(adapter)

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> bool:
        uri = urlsplit(self.adapter.base_uri)
        verify = self.adapter._kwargs.get("verify", True)
        timeout = self.adapter._kwargs.get("timeout") or 30
        target = (self.adapter.base_uri, verify, timeout)
        if self.sock is not None and target == self.target and self.pid == os.getpid():
            return True
        self.close()
        if uri.scheme not in ("http", "https") or not uri.hostname:
            return False
        sock = socket.create_connection((uri.hostname, uri.port or (443 if uri.scheme == "https" else 80)), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if uri.scheme == "https":
            sock = self._tls(verify).wrap_socket(sock, server_hostname=uri.hostname)
        self.sock, self.rfile, self.target, self.pid = sock, sock.makefile("rb"), target, os.getpid()
        self.prefix = uri.path.rstrip("/")
        self.host = uri.netloc.rpartition("@")[2]
        return True

    @staticmethod
    def _tls(verify):
        """The checks requests makes: VAULT_CACERT (a file or a directory); none with verify=False; else
        REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE; else certifi's bundle."""
        import ssl
        if verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if not verify:
                import certifi
                verify = certifi.where()
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)

    def close(self) -> None:
        if self.sock is not None and self.pid == os.getpid():  # a forked child leaves its parent's socket alone
            for f in (self.rfile, self.sock):
                try:
                    f.close()
                except OSError:
                    pass
        self.sock = self.rfile = None

    # -- one GET --------------------------------------------------------------------------------
    def _line(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if not line.endswith(b"\r\n") or len(line) > _MAX_LINE:
            raise _Unexpected("truncated or overlong line")
        return line[:-2]

    def _response(self) -> tuple[int, bytes, bool]:
        """Status, body and whether the server closes the connection after it."""
        parts = self._line().split(None, 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
            raise _Unexpected("not an HTTP/1.x status line")
        status = int(parts[1])
        length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if not line:
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise _Unexpected("malformed header")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _Unexpected("bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
                if not chunked:
                    raise _Unexpected("unsupported Transfer-Encoding")
            elif name == b"connection":
                close = close or b"close" in value
        else:
            raise _Unexpected("too many headers")
        if status < 200 or status in (204, 304):
            raise _Unexpected("informational or bodiless response")
        if chunked:
            body = bytearray()
            while True:
                size = self._line().split(b";", 1)[0].strip()
                try:
                    n = int(size, 16)
                except ValueError:
                    raise _Unexpected("bad chunk size") from None
                if n == 0:
                    while self._line():  # trailers
                        pass
                    break
                chunk = self.rfile.read(n + 2)
                if len(chunk) != n + 2 or not chunk.endswith(b"\r\n"):
                    raise _Unexpected("truncated chunk")
                body += chunk[:-2]
            return status, bytes(body), close
        if length is None:
            raise _Unexpected("body without a length")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _Unexpected("truncated body")
        return status, body, close

    def _request(self, url: str) -> bytes | None:
        """The bytes of one GET, or None when it must go through the adapter (unusual path or token)."""
        token = self.adapter.token or ""
        namespace = self.adapter.namespace or ""
        if not _PLAIN_PATH.match(url) or not _TOKEN_CHARS.match(token) or not _TOKEN_CHARS.match(namespace):
            return None
        head = [f"GET {self.prefix}/{url.strip('/')} HTTP/1.1", f"Host: {self.host}",
                "Accept: application/json", "X-Vault-Request: true"]
        if token:
            head.append(f"X-Vault-Token: {token}")
        if namespace:
            head.append(f"X-Vault-Namespace: {namespace}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("ascii")

    @staticmethod
    def _result(status: int, body: bytes):
        if status == 404:
            return None
        if status != 200:
            return _DELEGATE
        try:
            return json.loads(body)
        except ValueError:
            return _DELEGATE

    def get(self, url: str):
        """The JSON body (200), None (404), or _DELEGATE: repeat the request through the adapter."""
        got = self._exchange([url])
        return got[0] if got else _DELEGATE

    def get_many(self, urls: list[str]):
        """get() of every URL, in order (a generator), pipelined (HTTP/1.1, RFC 9112 section 9.3.2): a
        window of requests is written at once and the responses read in order, so a window costs one
        round trip instead of one per read. Whatever a window leaves unanswered (the connection closed,
        an unexpected response) is asked again one by one; a connection that breaks off a window turns
        pipelining off for the rest of this reader."""
        done = 0
        while done < len(urls):
            if not self.pipelining:
                for u in urls[done:]:
                    yield self.get(u)
                return
            window = urls[done:done + self.window]
            got = self._exchange(window)
            if len(got) < len(window):
                self.pipelining = False
                got.append(self.get(window[len(got)]))
            done += len(got)
            yield from got

    def _exchange(self, urls: list[str]) -> list:
        """Send the requests of `urls` at once and read their responses in order; returns the results of
        the prefix that was answered (an URL that needs the adapter gets _DELEGATE)."""
        requests_ = [self._request(u) for u in urls]
        if None in requests_:
            return [_DELEGATE if r is None else self.get(u) for u, r in zip(urls, requests_)] if len(urls) > 1 \
                else [_DELEGATE]
        payload = b"".join(requests_)
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: once more on a new one
            reused = self.sock is not None
            got: list = []
            try:
                if not self._connect():
                    return [_DELEGATE] * len(urls)
                self.sock.sendall(payload)
                for _ in urls:
                    status, body, close = self._response()
                    got.append(self._result(status, body))
                    if close:
                        self.close()
                        break
            except (OSError, _Unexpected) as exc:
                self.close()
                if not got and attempt == 0 and reused and isinstance(exc, OSError):
                    continue
                if not got and len(urls) == 1:
                    return [_DELEGATE]
            return got
        return [_DELEGATE] * len(urls)


class Store:
    def __init__(self, client: hvac.Client, settings: Settings):
        self.client = client
        self.mount = settings.kv_mount
        self.prefix = settings.prefix
        self.addr = client.adapter.base_uri
        self._reader = KeepAliveReader.for_client(client)
        self._mount_checked = False

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
        if method == "get" and self._reader is not None and not kw:
            found = self._reader.get(url)
            if found is not _DELEGATE:
                return found
        return self._adapter_call(method, url, **kw)

    def _adapter_call(self, method: str, url: str, **kw):
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
        """Fail early, with the fix, when the KV v2 mount is missing or is not version 2 (checked once per Store)."""
        if self._mount_checked:
            return
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
        return self._index(self._call("get", f"/v1/{self.mount}/metadata/{self.current_path(mzp, app)}"))

    def read_indexes(self, pairs: list[tuple[str, str]]) -> list[tuple[Index, int] | None]:
        """read_index() of many credentials (mzp, app), in order, in as few round trips as the server allows."""
        urls = [f"/v1/{self.mount}/metadata/{self.current_path(mzp, app)}" for mzp, app in pairs]
        if self._reader is None or len(urls) < 2:
            return [self._index(self._call("get", url)) for url in urls]
        got = self._reader.get_many(urls)
        return [self._index(self._adapter_call("get", url) if resp is _DELEGATE else resp)
                for url, resp in zip(urls, got)]

    @staticmethod
    def _index(resp) -> tuple[Index, int] | None:
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
