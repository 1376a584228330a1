"""A small HTTP forwarder on loopback in front of a real Vault/OpenBao, for placing faults exactly.

The code under test talks to the proxy (VAULT_ADDR); the proxy forwards every request unchanged
to the real server and keeps a log of them. A test arms one fault on the n-th request that matches
(method and a path pattern), `before` it is forwarded or `after` the server has answered it:

    cut     from then on the proxy drops every connection without an answer (Vault unreachable)
    seal    the real server is sealed (sys/seal with the operator token), then the request goes on
    hold    the request stops there: the test is told (`wait_held`) and can SIGKILL the client at
            exactly that point; `release()` then drops the connection. With `after`, the server has
            already done the write: the client dies without knowing it.
    call    any callable, e.g. to kill a cluster node

Nothing is faked: answers come from the real server, sealing is the real seal.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.conftest import free_port

HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "proxy-connection"}
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Fault:
    method: str            # "GET", "POST", ..., "WRITE" (any write) or "*"
    path: re.Pattern
    nth: int
    when: str              # "before" or "after"
    action: str            # "cut", "seal", "hold", "call"
    func: object = None
    seen: int = 0
    fired: bool = False

    def matches(self, method: str, path: str) -> bool:
        if self.method == "WRITE":
            ok = method in WRITES
        else:
            ok = self.method in ("*", method)
        return ok and bool(self.path.search(path))


class VaultProxy:
    def __init__(self, upstream: str, token: str | None = None):
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.log: list[tuple[str, str, int]] = []     # (method, path, status or 0 when dropped)
        self.down = False
        self.fault: Fault | None = None
        self.fired = threading.Event()
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._session = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_LIST = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- arming ------------------------------------------------------------------------
    def arm(self, method: str, path: str, *, nth: int = 1, when: str = "before", action: str = "cut",
            func=None) -> None:
        with self._lock:
            self.fault = Fault(method, re.compile(path), nth, when, action, func)
            self.fired.clear()
            self.held.clear()
            self._release.clear()

    def disarm(self) -> None:
        with self._lock:
            self.fault = None

    def release(self) -> None:
        """Let a held request go: its connection is dropped (the client is dead by now)."""
        self._release.set()

    def restore(self) -> None:
        """Undo a cut and release any held request (sealing is undone by the server fixture)."""
        self.disarm()
        self.down = False
        self.release()

    def wait_held(self, timeout: float) -> bool:
        return self.held.wait(timeout)

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.log if m in WRITES]

    # -- serving -----------------------------------------------------------------------
    def _fire(self, f: Fault, handler) -> bool:
        """Carry out the fault; True when the connection must be dropped without an answer."""
        self.fired.set()
        if f.action == "cut":
            self.down = True
            return True
        if f.action == "seal":
            requests.put(f"{self.upstream}/v1/sys/seal", headers={"X-Vault-Token": self.token}, timeout=30)
            return False
        if f.action == "call":
            f.func()
            return False
        if f.action == "hold":
            self.held.set()
            self._release.wait(120)
            return True
        raise ValueError(f.action)

    def _drop(self, handler) -> None:
        handler.close_connection = True
        try:
            handler.connection.shutdown(2)
        except OSError:
            pass

    def _serve(self, handler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if self.down:
            self.log.append((method, path, 0))
            return self._drop(handler)
        # "before" faults count matching requests as they arrive; "after" ones as they are answered
        f = self._match(method, path, "before")
        if f is not None and self._fire(f, handler):
            self.log.append((method, path, 0))
            return self._drop(handler)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP}
        try:
            resp = self._session.request(method, self.upstream + path, data=body, headers=headers,
                                         allow_redirects=False, timeout=60)
        except requests.RequestException:
            self.log.append((method, path, 0))
            return self._drop(handler)
        self.log.append((method, path, resp.status_code))
        f = self._match(method, path, "after")
        if f is not None and self._fire(f, handler):
            return self._drop(handler)
        data = resp.content
        handler.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in HOP and k.lower() != "content-encoding":
                handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    def _match(self, method: str, path: str, when: str) -> Fault | None:
        with self._lock:
            f = self.fault
            if f is None or f.fired or f.when != when or not f.matches(method, path):
                return None
            f.seen += 1
            if f.seen < f.nth:
                return None
            f.fired = True
            return f

    def close(self) -> None:
        self.restore()
        self.server.shutdown()
        self.server.server_close()
        self._session.close()
