"""The sandbox API: a local HTTPS server with the authentication surface of the PSA B2B API.

Like the real API it needs all three credentials at once, checked in this order:

1. mutual TLS with a client certificate issued by the sandbox authority (valid now, clientAuth
   when it has an EKU, CN = the MZP), else 495 ``Invalid or expired client certificate``;
2. the query parameter ``client_id``: the Client ID of a current credential of that MZP, else 403;
3. ``Authorization: Basic base64(<MZP>:<password>)`` with the MZP password kept in Vault, else 401.

Then ``GET <base path>/fleets`` answers 200. Every answer is JSON and closes the connection.

The TLS layer asks for a client certificate but accepts any (pyOpenSSL, verify callback always
true) so that a bad certificate gets an HTTP 495 instead of a handshake failure; the chain,
validity and EKU are checked here with ``cryptography``. The server's own certificate is issued
at start by the sandbox authority (serverAuth, the bind addresses and ``localhost``), its key kept
in memory only: clients verify the server with the sandbox CA, the same ``ca.crt`` partners get.

What it reads from Vault (Client IDs from the credential index, the MZP password) is cached per
MZP for at most CACHE_SECONDS, so a rotation or a new password is seen within seconds. The log
has one line per request (time, peer, MZP, method, path without query string, status, reason)
and never a secret.

Run it with ``scripts/inv sandbox.up`` (background); ``python -m partnercerts.sandbox.api --port N
--bind ADDR[,ADDR]`` runs it in the foreground, connected to Vault exactly like the tasks.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import hmac
import ipaddress
import json
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import parse_qsl

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from ..errors import Error, UserError
from ..profile import MZP_RE
from ..store import Store
from .authority import Authority

BASE_PATH = "/connectedcar/v3"
REALM = "PSA B2B sandbox"
CACHE_SECONDS = 2.0
MAX_HEAD_BYTES = 16 * 1024
TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 256
SERVER_CERT_DAYS = 90

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           495: "SSL Certificate Error", 500: "Internal Server Error", 503: "Service Unavailable"}
MESSAGES = {400: "Bad request", 401: "Invalid credentials", 403: "Unknown client_id", 404: "Not found",
            405: "Method not allowed", 408: "Request timeout", 431: "Request header fields too large",
            495: "Invalid or expired client certificate", 500: "Internal server error",
            503: "Credential store unavailable"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- the pieces of one request ------------------------------------------------------------
@dataclass
class Reply:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)
    reason: str = ""  # for the log only: why it was refused (never a secret)

    def to_bytes(self) -> bytes:
        payload = json.dumps(self.body, separators=(",", ":")).encode("utf-8")
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
                 "Content-Type: application/json",
                 f"Content-Length: {len(payload)}",
                 "Cache-Control: no-store",
                 "Connection: close"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def error(status: int, reason: str = "", headers: dict | None = None) -> Reply:
    return Reply(status, {"code": str(status), "message": MESSAGES[status]}, headers or {}, reason)


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, list[str]]  # lower-case name -> values


class BadRequest(Exception):
    pass


def parse_head(head: bytes) -> Request:
    """Request line and header fields (no body); only printable ASCII in the request line."""
    text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha() or not parts[0].isupper():
        raise BadRequest("malformed request line")
    method, target, _version = parts
    if not target.startswith("/") or any(not (0x21 <= ord(ch) <= 0x7e) for ch in target):
        raise BadRequest("malformed request target")
    path, _, query = target.partition("?")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(ord(ch) < 0x21 or ord(ch) > 0x7e for ch in name):
            raise BadRequest("malformed header field")
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    return Request(method, path, query, headers)


def basic_credentials(values: list[str]) -> tuple[str, str] | None:
    """(user, password) of exactly one `Authorization: Basic ...` header, else None."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def check_client_cert(cert: x509.Certificate | None, ca: x509.Certificate, now: dt.datetime) -> tuple[str | None, str]:
    """The MZP (the CN) of a client certificate the sandbox authority issued and that is usable now,
    else (None, why not)."""
    if cert is None:
        return None, "no client certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return None, "not issued by the sandbox CA"
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        return None, "the sandbox CA certificate is not valid now"
    if now < cert.not_valid_before_utc:
        return None, "not yet valid"
    if now > cert.not_valid_after_utc:
        return None, "expired"
    try:
        exts = cert.extensions
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value if _has(exts, x509.ExtendedKeyUsage) else None
        bc = exts.get_extension_for_class(x509.BasicConstraints).value if _has(exts, x509.BasicConstraints) else None
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except ValueError:
        return None, "unreadable certificate"
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return None, "EKU without clientAuth"
    if bc is not None and bc.ca:
        return None, "a CA certificate"
    if len(cns) != 1 or not isinstance(cns[0], str) or not MZP_RE.fullmatch(cns[0]):
        return None, "CN is not an MZP"
    return cns[0], ""


def _has(exts: x509.Extensions, cls) -> bool:
    try:
        exts.get_extension_for_class(cls)
        return True
    except x509.ExtensionNotFound:
        return False


# -- what Vault knows, cached ---------------------------------------------------------------
@dataclass(frozen=True)
class Partner:
    client_ids: frozenset[str]
    password: str | None


class Directory:
    """Client IDs (from the credential index) and the MZP password of one MZP, cached for `ttl` seconds.

    One lock around every Vault read: the hvac client is shared, and a burst of requests for
    one MZP reads Vault once."""

    def __init__(self, store: Store, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.store, self.ttl, self.clock = store, ttl, clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Partner]] = {}

    def partner(self, mzp: str) -> Partner:
        with self._lock:
            started = self.clock()
            hit = self._cache.get(mzp)
            if hit and started - hit[0] < self.ttl:
                return hit[1]
            value = self._read(mzp)
            self._cache = {k: v for k, v in self._cache.items() if started - v[0] < self.ttl}
            self._cache[mzp] = (started, value)  # aged from before the read: never older than ttl
            return value

    def _read(self, mzp: str) -> Partner:
        ids = set()
        for app in self.store.applications(mzp):
            got = self.store.read_index(mzp, app)
            if got and got[0].client_id and got[0].serial:
                ids.add(got[0].client_id)
        acct = self.store.account(mzp)
        return Partner(frozenset(ids), acct.record.password if acct and acct.record.password else None)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# -- the server -----------------------------------------------------------------------------
class _Timeout(Exception):
    pass


class _TooLarge(Exception):
    pass


class _Closed(Exception):
    pass


class TlsStream:
    """One non-blocking TLS connection with deadlines: the handshake, the request head, the reply, the close."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket, stop: threading.Event):
        self.conn, self.sock, self.stop = conn, sock, stop

    @staticmethod
    def wait(sock: socket.socket, events: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout()
        poller = select.poll()
        poller.register(sock, events)
        if not poller.poll(left * 1000):
            raise _Timeout()

    def io(self, fn, deadline: float, *args):
        while True:
            if self.stop.is_set():
                raise _Closed()
            try:
                return fn(*args)
            except SSL.WantReadError:
                self.wait(self.sock, select.POLLIN, deadline)
            except SSL.WantWriteError:
                self.wait(self.sock, select.POLLOUT, deadline)

    def read_head(self, deadline: float) -> bytes:
        buf = bytearray()
        while True:
            ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
            if ends:
                end = min(ends)
                if end > MAX_HEAD_BYTES:
                    raise _TooLarge()
                return bytes(buf[:end])
            if len(buf) > MAX_HEAD_BYTES:
                raise _TooLarge()
            chunk = self.io(self.conn.recv, deadline, 4096)
            if not chunk:
                raise _Closed()
            buf += chunk

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            sent = self.io(self.conn.send, deadline, view)
            view = view[sent:]

    def finish(self) -> None:
        """close_notify, then drain what the client still sends (briefly), so closing does not reset
        the connection before the client has read the answer."""
        try:
            self.conn.shutdown()
        except (SSL.Error, OSError):
            pass
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            drained = 0
            while drained < 65536:
                self.wait(self.sock, select.POLLIN, deadline)
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)
        except (_Timeout, OSError):
            pass


class SandboxAPI:
    """The sandbox API on one port of one or more addresses; `start()` returns once it accepts connections."""

    def __init__(self, store: Store, authority: Authority, bind: list[str], port: int, *,
                 base_path: str = BASE_PATH, timeout: float = TIMEOUT_SECONDS, max_connections: int = MAX_CONNECTIONS,
                 cache_seconds: float = CACHE_SECONDS, log: TextIO | None = None,
                 clock: Callable[[], dt.datetime] = utcnow):
        if not bind:
            raise UserError("the sandbox API needs at least one address to listen on")
        self.bind = [str(parse_address(a)) for a in bind]
        self.port = port
        self.store, self.authority = store, authority
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.timeout = timeout
        self.clock = clock
        self.directory = Directory(store, cache_seconds)
        self._log_to = log or sys.stderr
        self._log_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.ca: x509.Certificate | None = None
        self.server_cert: x509.Certificate | None = None
        self._ctx: SSL.Context | None = None

    # -- set-up ---------------------------------------------------------------------------
    def cert_names(self) -> list[str]:
        """The names the server certificate is issued for: each bind address and localhost (for a
        wildcard bind, the loopback addresses and this host's name and addresses)."""
        names: list[str] = []
        for addr in self.bind:
            ip = ipaddress.ip_address(addr)
            if ip.is_unspecified:
                names.append("127.0.0.1" if ip.version == 4 else "::1")
                host = socket.gethostname()
                names.append(host)
                try:
                    names += [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
                except OSError:
                    pass
            else:
                names.append(addr)
        names.append("localhost")
        return list(dict.fromkeys(names))

    def _context(self, key, cert, ca) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_privatekey(key)
        ctx.use_certificate(cert)
        ctx.check_privatekey()
        # Ask for a client certificate, accept any: the application answers 495 for a bad one.
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, c, errnum, depth, ok: True)
        ctx.add_client_ca(ca)  # the CertificateRequest names the sandbox CA, so clients pick the right certificate
        ctx.set_session_id(b"partnercerts-sandbox-api")
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # every connection shows its certificate again
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        return ctx

    def start(self) -> None:
        now = self.clock()
        self.ca = self.authority.ca_cert(now)
        names = self.cert_names()
        key, self.server_cert = self.authority.issue_server_cert(names, now, SERVER_CERT_DAYS)
        self._ctx = self._context(key, self.server_cert, self.ca)
        del key  # only the TLS context holds it now
        try:
            for addr in self.bind:
                ip = ipaddress.ip_address(addr)
                family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
                lsock = socket.create_server((addr, self.port), family=family, backlog=128)
                lsock.settimeout(0.5)
                self._listeners.append(lsock)
                if self.port == 0:
                    self.port = lsock.getsockname()[1]
        except OSError as exc:
            self.close()
            raise UserError(f"cannot listen on {fmt_host(addr)}:{self.port} ({exc.strerror or exc}); choose another "
                            "port (--port or PARTNERCERTS_SANDBOX_API_PORT) or address (--bind)") from None
        for lsock in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(lsock,), name="sandbox-api-accept", daemon=True)
            t.start()
            self._threads.append(t)
        self._log(f"listening on {', '.join(self.urls())} (server certificate serial "
                  f"{format(self.server_cert.serial_number, 'X')}, for {', '.join(names)}, "
                  f"valid until {self.server_cert.not_valid_after_utc.isoformat(timespec='seconds')}; "
                  f"clients verify it with the sandbox CA)")

    def urls(self) -> list[str]:
        return [f"https://{fmt_host(a)}:{self.port}{self.base_path}" for a in self.bind]

    def close(self) -> None:
        self._stop.set()
        for lsock in self._listeners:
            try:
                lsock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._listeners, self._threads = [], []

    # -- connections ----------------------------------------------------------------------
    def _accept_loop(self, lsock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                sock, addr = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)  # e.g. out of file descriptors: wait, do not spin
                continue
            if not self._slots.acquire(blocking=False):
                sock.close()
                self._log_line(peer_of(addr), "-", "-", "-", "-", "refused: too many connections")
                continue
            threading.Thread(target=self._connection, args=(sock, addr), name="sandbox-api-conn", daemon=True).start()

    def _connection(self, sock: socket.socket, addr) -> None:
        peer = peer_of(addr)
        try:
            sock.setblocking(False)
            assert self._ctx is not None  # set by start() before connections are accepted
            conn = SSL.Connection(self._ctx, sock)
            conn.set_accept_state()
            deadline = time.monotonic() + self.timeout
            stream = TlsStream(conn, sock, self._stop)
            try:
                stream.io(conn.do_handshake, deadline)
            except (SSL.SysCallError, SSL.ZeroReturnError, _Closed):
                return  # closed before or during the handshake (e.g. a port probe): nothing to log
            except (_Timeout, SSL.Error, OSError) as exc:
                self._log_line(peer, "-", "-", "-", "-", f"TLS handshake failed: {_tls_reason(exc)}")
                return
            cert = conn.get_peer_certificate(as_cryptography=True)
            method, path, mzp = "-", "-", "-"
            try:
                head = stream.read_head(deadline)
                req = parse_head(head)
                method, path = req.method, req.path
                reply, mzp = self.answer(req, cert)
            except _TooLarge:
                reply = error(431, "request head over the size limit")
            except _Timeout:
                reply = error(408, "request not received in time")
            except BadRequest as exc:
                reply = error(400, str(exc))
            except (_Closed, SSL.ZeroReturnError, SSL.SysCallError):
                return  # the client went away without a request
            except Exception as exc:  # never a traceback: it could quote data
                reply = error(500, f"unexpected {type(exc).__name__}")
            self._log_line(peer, mzp, method, path, str(reply.status), reply.reason)
            try:
                stream.send(reply.to_bytes(), time.monotonic() + self.timeout)
            except (_Timeout, _Closed, SSL.Error, OSError):
                return
            stream.finish()
        except Exception as exc:
            self._log_line(peer, "-", "-", "-", "-", f"connection error: {type(exc).__name__}")
        finally:
            try:
                sock.close()
            except OSError:
                pass
            self._slots.release()

    # -- the application --------------------------------------------------------------------
    def answer(self, req: Request, cert: x509.Certificate | None) -> tuple[Reply, str]:
        """The reply to one parsed request from a client with this certificate, and the MZP to log."""
        assert self.ca is not None  # set by start()
        mzp, why = check_client_cert(cert, self.ca, self.clock())
        if mzp is None:
            return error(495, why), "-"
        client_ids = [v for k, v in parse_qsl(req.query, keep_blank_values=True) if k == "client_id"]
        try:
            partner = self.directory.partner(mzp)
        except Error as exc:  # Vault denied, sealed or unreachable
            return error(503, f"credential store: {exc}"), mzp
        if len(client_ids) != 1 or client_ids[0] not in partner.client_ids:
            return error(403, "no client_id" if not client_ids else "client_id unknown for this MZP"), mzp
        creds = basic_credentials(req.headers.get("authorization", []))
        unauthorized = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
        if creds is None:
            return error(401, "no Basic credentials", unauthorized), mzp
        if partner.password is None:
            return error(401, "no MZP password in Vault", unauthorized), mzp
        user_ok = _same(creds[0], mzp)
        password_ok = _same(creds[1], partner.password)
        if not (user_ok and password_ok):
            return error(401, "user is not the certificate's MZP" if not user_ok else "wrong password",
                         unauthorized), mzp
        if req.method != "GET":
            return error(405, "", {"Allow": "GET"}), mzp
        if req.path != f"{self.base_path}/fleets":
            return error(404), mzp
        return Reply(200, {"fleets": [], "mzp": mzp, "client_id": client_ids[0]}), mzp

    # -- the log --------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        with self._log_lock:
            self._log_to.write(f"{utcnow().isoformat(timespec='seconds')} {message}\n")
            self._log_to.flush()

    def _log_line(self, peer: str, mzp: str, method: str, path: str, status: str, reason: str = "") -> None:
        path = path if len(path) <= 200 else path[:200] + "..."
        self._log(" ".join([peer, mzp, method, path, status]) + (f" ({reason})" if reason else ""))


def _tls_reason(exc: Exception) -> str:
    if isinstance(exc, _Timeout):
        return "timed out"
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        return str(exc.args[0][-1][-1])[:100]
    return type(exc).__name__


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise UserError(f"--bind {text!r}: not an IP address; "
                        "use e.g. 127.0.0.1, or 0.0.0.0 for every interface") from None


def fmt_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def peer_of(addr) -> str:
    return f"{fmt_host(addr[0])}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


# -- foreground entry point (what sandbox.up runs in the background) ----------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m partnercerts.sandbox.api",
                                     description="Run the sandbox API in the foreground (scripts/inv sandbox.up "
                                                 "runs it in the background).")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--bind", default="127.0.0.1", help="comma-separated IP addresses to listen on")
    parser.add_argument("--base-path", default=BASE_PATH, help=f"path prefix of the API (default {BASE_PATH})")
    args = parser.parse_args(argv)
    from ..settings import Settings
    from ..vault import connect
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        store = Store(connect(settings), settings)
        store.check_mount()
        server = SandboxAPI(store, Authority(store, settings.sandbox_validity_days),
                            [a for a in args.bind.split(",") if a.strip()], args.port, base_path=args.base_path)
        server.start()
    except Error as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except Exception as exc:
        if settings is not None and settings.debug:
            raise
        print(f"error: unexpected {type(exc).__name__} while starting the sandbox API; "
              "rerun with PARTNERCERTS_DEBUG=1 for the traceback", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.close()
    server._log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
