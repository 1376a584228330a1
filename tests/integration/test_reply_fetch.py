"""fetch() against real local HTTPS servers (stdlib http.server + ssl, certificates from a test CA)."""
import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from partnercerts import certs
from partnercerts.errors import Error, ServiceFailure, UserError
from partnercerts.reply import fetch
from tests.conftest import free_port
from tests.pki import CA, key, name

LIMIT = 64 * 1024
TOKEN = "t0k3n-0ne-T1me-s3cret"


def server_certificate(ca: CA, now: dt.datetime):
    """A serverAuth certificate for 127.0.0.1 (IP SAN) and localhost, signed by the test CA."""
    k = key()
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1", "Test download server"))
            .issuer_name(ca.name).public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return k, cert


class Handler(BaseHTTPRequestHandler):
    """Routes: /cert.pem, /status/N, /hop/N (N redirects, then the certificate), /to-http, /to-localhost,
    /big (Content-Length over the limit), /stream (no Content-Length, endless), /slow, /trickle, /html."""

    timeout = 10

    def setup(self):
        super().setup()
        self.request.do_handshake()

    def log_message(self, *args):
        pass

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str):
        self.send(302, headers={"Location": location})

    def do_GET(self):
        srv: Server = self.server
        srv.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        port = srv.server_address[1]
        if path == "/cert.pem":
            self.send(200, srv.cert_pem, {"Content-Type": "application/x-pem-file"})
        elif m := re.fullmatch(r"/status/(\d+)", path):
            self.send(int(m.group(1)), b"<html>no</html>", {"Content-Type": "text/html"})
        elif m := re.fullmatch(r"/hop/(\d+)", path):
            n = int(m.group(1))
            self.redirect(f"/hop/{n - 1}?token={TOKEN}") if n else self.send(200, srv.cert_pem)
        elif path == "/relative":
            self.redirect(f"cert.pem?token={TOKEN}")
        elif path == "/to-http":
            self.redirect(f"http://127.0.0.1:{port}/cert.pem?token={TOKEN}")
        elif path == "/to-localhost":
            self.redirect(f"https://localhost:{port}/cert.pem?token={TOKEN}")
        elif path == "/big":
            self.send(200, b"x" * (LIMIT + 1))
        elif path == "/stream":
            self.send_response(200)
            self.end_headers()
            while not srv.release.is_set():
                self.wfile.write(b"y" * 8192)
        elif path == "/slow":
            srv.release.wait(10)
            self.send(200, srv.cert_pem)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            while not srv.release.wait(0.05):
                self.wfile.write(b"z")
                self.wfile.flush()
        elif path == "/html":
            self.send(200, b"<html><body>Please log in</body></html>", {"Content-Type": "text/html"})
        else:
            self.send(404)


class Server(ThreadingHTTPServer):
    """An HTTPS server on 127.0.0.1 that counts TCP connections and records request paths."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, cert_pem: bytes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.context, self.cert_pem = context, cert_pem
        self.connections = 0
        self.requests: list[str] = []
        self.release = threading.Event()

    def get_request(self):
        sock, addr = self.socket.accept()
        self.connections += 1
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        pass  # clients that hang up (refused, timed out) are the point of these tests

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}{path}"


def start(ca: CA, tmp: Path, cert_pem: bytes):
    now = dt.datetime.now(dt.timezone.utc)
    k, cert = server_certificate(ca, now)
    (tmp / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    srv = Server(ctx, cert_pem)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return srv, thread


def stop(srv: Server, thread: threading.Thread):
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The download CA (as a cafile), a partner certificate to serve, and the server."""
    tmp = tmp_path_factory.mktemp("reply-fetch")
    now = dt.datetime.now(dt.timezone.utc)
    ca = CA("Test download CA", now=now)
    cafile = tmp / "download-ca.pem"
    cafile.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    leaf = CA("Test Stellantis CA", now=now).issue(key().public_key(), name("MZP123456", "Free2Move"), now=now)
    srv, thread = start(ca, tmp, leaf.public_bytes(serialization.Encoding.PEM))
    try:
        yield srv, str(cafile), leaf
    finally:
        stop(srv, thread)


@pytest.fixture(scope="module")
def impostor(tmp_path_factory):
    """A server whose certificate comes from another CA."""
    tmp = tmp_path_factory.mktemp("reply-impostor")
    srv, thread = start(CA("Impostor CA", now=dt.datetime.now(dt.timezone.utc)), tmp, b"nope")
    try:
        yield srv
    finally:
        stop(srv, thread)


def get(world, path: str, **kw) -> bytes:
    srv, cafile, _ = world
    kw = {"max_bytes": LIMIT, "allowed_hosts": ["127.0.0.1"], "cafile": cafile, "timeout": 10, **kw}
    return fetch(srv.url(path), **kw)


def refused(world, path: str, match: str, **kw) -> str:
    with pytest.raises(Error, match=match) as exc:  # bad input or a failing server
        get(world, path, **kw)
    message = str(exc.value)
    assert "\n" not in message and TOKEN not in message and "?" not in message, message
    return message


def test_downloads_the_certificate(world):
    srv, _, leaf = world
    data = get(world, f"/cert.pem?token={TOKEN}")
    assert certs.load_bundle(data, "download", LIMIT) == [leaf]
    assert srv.requests[-1] == f"/cert.pem?token={TOKEN}"  # the query is sent, only never printed


def test_an_html_page_is_returned_for_the_parser_to_refuse(world):
    assert get(world, "/html").startswith(b"<html>")


@pytest.mark.parametrize("status", [410, 404, 403])
def test_expired_or_used_link(world, status):
    message = refused(world, f"/status/{status}?token={TOKEN}", "the download link has expired or was already used")
    assert message.startswith(f"https://127.0.0.1:{world[0].server_address[1]}/status/{status}: HTTP {status}")
    assert "ask the authority for a new link" in message


def test_other_http_errors_name_the_status(world):
    refused(world, f"/status/500?token={TOKEN}", r"answered HTTP 500 Internal Server Error")
    refused(world, "/status/401", r"answered HTTP 401 Unauthorized")


def test_redirects_are_followed_up_to_three(world):
    srv, _, leaf = world
    before = len(srv.requests)
    assert certs.load_bundle(get(world, f"/hop/3?token={TOKEN}"), "d", LIMIT) == [leaf]
    assert len(srv.requests) - before == 4
    assert certs.load_bundle(get(world, "/relative"), "d", LIMIT) == [leaf]


def test_a_fourth_redirect_is_refused(world):
    refused(world, f"/hop/4?token={TOKEN}", r"/hop/4: more than 3 redirects")


def test_a_redirect_to_http_is_refused_without_following_it(world):
    srv = world[0]
    before = len(srv.requests)
    message = refused(world, "/to-http", r"redirected to http://127\.0\.0\.1:\d+/cert\.pem: not an https:// link")
    assert len(srv.requests) - before == 1, message


def test_a_redirect_off_the_allowed_hosts_is_refused_before_connecting(world):
    srv = world[0]
    before = (srv.connections, len(srv.requests))
    refused(world, "/to-localhost", r"redirected to https://localhost:\d+/cert\.pem: host localhost is not one of")
    assert (srv.connections, len(srv.requests)) == (before[0] + 1, before[1] + 1)
    assert get(world, "/to-localhost", allowed_hosts=["127.0.0.1", "localhost"]) == srv.cert_pem


def test_allowed_hosts_refusal_makes_no_connection(world):
    srv = world[0]
    before = srv.connections
    port = srv.server_address[1]
    for url, allowed in ((f"https://localhost:{port}/cert.pem?token={TOKEN}", ["127.0.0.1"]),
                         (srv.url("/cert.pem"), ["*.stellantis.example"]),
                         (srv.url("/cert.pem"), [])):
        with pytest.raises(UserError, match="is not one of the allowed download hosts") as exc:
            fetch(url, max_bytes=LIMIT, allowed_hosts=allowed, cafile=world[1])
        assert TOKEN not in str(exc.value)
    time.sleep(0.2)
    assert srv.connections == before


def test_http_is_refused_without_connecting(world):
    srv = world[0]
    before = srv.connections
    url = f"http://127.0.0.1:{srv.server_address[1]}/cert.pem?token={TOKEN}"
    with pytest.raises(UserError, match=r"^http://127\.0\.0\.1:\d+/cert\.pem: not an https:// link") as exc:
        fetch(url, max_bytes=LIMIT, allowed_hosts=None)
    assert "--cert" in str(exc.value) and TOKEN not in str(exc.value)
    assert srv.connections == before


@pytest.mark.parametrize("path", ["/big", "/stream"])
def test_oversized_downloads_are_refused(world, path):
    refused(world, path, f"the download is over the limit of {LIMIT} bytes")


def test_a_slow_server_times_out(world):
    start_time = time.monotonic()
    refused(world, f"/slow?token={TOKEN}", r"no complete answer within 0\.5 s", timeout=0.5)
    assert time.monotonic() - start_time < 5


def test_a_trickling_download_is_bounded_by_the_overall_timeout(world):
    start_time = time.monotonic()
    refused(world, "/trickle", r"no complete answer within 1 s", timeout=1)
    assert time.monotonic() - start_time < 5


def test_a_server_from_another_ca_is_refused(world, impostor):
    with pytest.raises(ServiceFailure,
                       match=r"TLS certificate does not verify against the CA file .*download-ca\.pem") as exc:
        fetch(impostor.url(f"/cert.pem?token={TOKEN}"), max_bytes=LIMIT, allowed_hosts=None, cafile=world[1])
    assert TOKEN not in str(exc.value) and impostor.requests == []


def test_without_cafile_the_system_cas_do_not_trust_the_test_ca(world):
    refused(world, "/cert.pem", "does not verify against this machine's CA certificates", cafile=None)


def test_unreachable_host(world):
    port = free_port()
    with pytest.raises(ServiceFailure, match=rf"connection refused by 127\.0\.0\.1:{port}; check the link"):
        fetch(f"https://127.0.0.1:{port}/cert.pem?token={TOKEN}", max_bytes=LIMIT, allowed_hosts=None,
              cafile=world[1])


def test_unknown_host_name(world, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(ServiceFailure, match=r"cannot resolve host pki\.stellantis\.example; check the link and this"):
        fetch(f"https://pki.stellantis.example/d/1?token={TOKEN}", max_bytes=LIMIT, allowed_hosts=None)


def test_a_missing_cafile_is_named(world, tmp_path):
    with pytest.raises(UserError, match=r"nope\.pem: cannot load as a CA file"):
        get(world, "/cert.pem", cafile=str(tmp_path / "nope.pem"))
