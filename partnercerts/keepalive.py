"""Vault GETs over one keep-alive HTTP/1.1 connection, pipelined: the read path of `status` and the plan.

The store hands reads here when the client allows it (`KeepAliveReader.for_client`); anything
unusual is handed back (`DELEGATE`) and repeated through hvac, so errors and failover stay hvac's.
The benchmark (`scripts/bench`, status-1k) shows why it exists: hvac costs about twice the round trip.
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import _lazy
from .settings import VaultSettings

if TYPE_CHECKING:
    import hvac
else:  # loaded on first use (_lazy)
    hvac = _lazy.module("hvac")

DELEGATE = object()
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9/_.~-]+(\?[A-Za-z0-9_.~=&%-]*)?$")  # a path, maybe with a plain query
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]*$")
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
    failing node, a redirect, a denial, a body it cannot frame or parse -- returns DELEGATE and
    the caller repeats the request through the client's own adapter, so that failover across the
    cluster's nodes with bounded backoff (vault.FailoverAdapter) and hvac's exceptions, hence
    every error message, stay exactly as they were. After a failover the next read follows the
    adapter to the node that answered.

    Not used (everything goes through hvac) when the adapter is not hvac's JSON adapter, presents
    a client certificate, when a proxy is configured, or when VAULT_ADDR names several nodes of a
    cluster: there the adapter sends every request to the node whose sys/health says active (a
    standby answers reads from a lagging copy), and that choice stays the adapter's alone.
    """

    def __init__(self, adapter, ca_bundle: str | None = None, keeps: bool = True):
        self.adapter = adapter
        self.keeps = keeps  # renews the adapter's token before it runs out (False: another reader does)
        self.ca_bundle = ca_bundle  # REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, used as requests uses them
        self.sock: socket.socket | None = None
        self.rfile: io.BufferedReader | None = None
        self.target: tuple = ()
        self.prefix = ""
        self.host = ""
        self.pid = 0
        self.pipelining = True
        self.window = 32

    @classmethod
    def for_client(cls, client, vault: VaultSettings) -> "KeepAliveReader | None":
        light = getattr(client, "light", None)  # a vault.Deferred client: not made yet, connect() checked the rest
        if light is not None:
            return cls(light, vault.ca_bundle)
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
        if vault.proxied:
            return None
        return cls(adapter, vault.ca_bundle)

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

    def _tls(self, verify):
        """The checks requests makes: VAULT_CACERT (a file or a directory); none with verify=False; else
        REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE; else certifi's bundle."""
        import ssl
        if verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if verify is True:
            verify = self.ca_bundle
            if not verify:
                import certifi
                verify = certifi.where()
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)

    def close(self) -> None:
        if self.sock is not None and self.pid == os.getpid():  # a forked child leaves its parent's socket alone
            assert self.rfile is not None  # _connect() sets sock and rfile together
            for f in (self.rfile, self.sock):
                try:
                    f.close()
                except OSError:
                    pass
        self.sock = self.rfile = None

    # -- one GET --------------------------------------------------------------------------------
    def _response(self) -> tuple[int, bytes, bool]:
        return read_response(self.rfile)

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
            return DELEGATE
        try:
            return json.loads(body)
        except ValueError:
            return DELEGATE

    def _lookup_self(self):
        """auth/token/lookup-self over this connection: its JSON, or None when Vault does not answer 200."""
        got = self.get("/v1/auth/token/lookup-self")
        return got if isinstance(got, dict) else None

    def get(self, url: str):
        """The JSON body (200), None (404), or DELEGATE: repeat the request through the adapter."""
        got = self._exchange([url])
        return got[0] if got else DELEGATE

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
        the prefix that was answered (an URL that needs the adapter gets DELEGATE)."""
        keep = getattr(self.adapter, "keep", None) if self.keeps else None
        if keep is not None:  # the token renewed (or a new login) before it runs out: vault.FailoverAdapter.keep
            keep(self._lookup_self)
        requests_ = [self._request(u) for u in urls]
        if None in requests_:
            if len(urls) > 1:
                return [DELEGATE if r is None else self.get(u) for u, r in zip(urls, requests_, strict=True)]
            return [DELEGATE]
        payload = b"".join(r for r in requests_ if r is not None)  # all of them: None was handled above
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: once more on a new one
            reused = self.sock is not None
            got: list = []
            try:
                if not self._connect():
                    return [DELEGATE] * len(urls)
                assert self.sock is not None  # _connect() returned True: connected
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
                    return [DELEGATE]
            return got
        return [DELEGATE] * len(urls)


def _line(rfile) -> bytes:
    line = rfile.readline(_MAX_LINE + 1)
    if not line.endswith(b"\r\n") or len(line) > _MAX_LINE:
        raise _Unexpected("truncated or overlong line")
    return line[:-2]


def read_response(rfile) -> tuple[int, bytes, bool]:
    """Status, body and whether the server closes the connection after it."""
    parts = _line(rfile).split(None, 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
        raise _Unexpected("not an HTTP/1.x status line")
    status = int(parts[1])
    length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
    for _ in range(_MAX_HEADERS + 1):
        line = _line(rfile)
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
            size = _line(rfile).split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise _Unexpected("bad chunk size") from None
            if n == 0:
                while _line(rfile):  # trailers
                    pass
                break
            chunk = rfile.read(n + 2)
            if len(chunk) != n + 2 or not chunk.endswith(b"\r\n"):
                raise _Unexpected("truncated chunk")
            body += chunk[:-2]
        return status, bytes(body), close
    if length is None:
        raise _Unexpected("body without a length")
    body = rfile.read(length)
    if len(body) != length:
        raise _Unexpected("truncated body")
    return status, body, close

