"""Downloads (`reply.fetch`, `import-cert --url`) and the webhook through a real forward proxy: Debian's
tinyproxy on loopback (devtools/devservers.py DevTinyproxy), HTTPS servers with a test CA.

The proxy comes from the environment (HTTPS_PROXY, NO_PROXY) and is never used for a loopback host,
so the servers are reached by this machine's own host name: the system resolver maps it to a
loopback address (/etc/hosts), yet it is neither `localhost` nor an address literal, so it goes to
the proxy, which resolves it and CONNECTs to it. Everything stays on loopback.
"""
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from devtools.devservers import DevTinyproxy
from partnercerts import certs
from partnercerts.errors import ServiceFailure, UserError
from partnercerts.mail import is_loopback
from partnercerts.notify import Notifier
from partnercerts.reply import fetch
from tests.conftest import free_port
from tests.integration.test_core_csr import CRED, csr_pem
from tests.integration.test_notify import Log, config, events
from tests.integration.test_reply_fetch import Handler, Server, stop
from tests.pki import CA, key, name

LIMIT = 64 * 1024
TOKEN = "pr0xy-t0k3n-" + "5e" * 8
PROXY_USER, PROXY_PASSWORD = "alice", "Pr0xy-S3cret-77"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy")


# -- the host, the servers, the proxies --------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str  # this machine's host name: proxied
    address: str  # the address of this machine it resolves to: where the servers listen


@pytest.fixture(scope="module")
def host() -> Host:
    """This machine's host name: not a loopback name, so the toolkit sends it through the proxy, and the proxy
    resolves it to an address of this machine (Debian's /etc/hosts maps it to 127.0.x.1; a container's, to its
    own address), where the servers listen. Never a skip: a machine without such a name fails here."""
    hostname = socket.gethostname().rstrip(".")
    if is_loopback(hostname):
        pytest.fail(f"this machine's host name is {hostname!r}, a loopback name the toolkit never proxies; "
                    "the proxy tests need a host name of its own")
    try:
        address = socket.getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.fail(f"this machine's host name {hostname!r} does not resolve; add it to /etc/hosts")
    with socket.socket() as probe:  # an address of this machine: the test traffic never leaves it
        try:
            probe.bind((address, 0))
        except OSError:
            pytest.fail(f"this machine's host name {hostname!r} resolves to {address}, not an address of this "
                        "machine; map it to 127.0.1.1 in /etc/hosts")
    return Host(hostname, address)


def tls_files(ca: CA, tmp: Path, host: Host) -> ssl.SSLContext:
    """A server context with a serverAuth certificate of the test CA for the host name and its address."""
    now = dt.datetime.now(dt.timezone.utc)
    k = key()
    cert = (x509.CertificateBuilder().subject_name(name(host.name, "Test proxied server"))
            .issuer_name(ca.name).public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host.name),
                                                        x509.IPAddress(ipaddress.ip_address(host.address))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    (tmp / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    return ctx


class ProxiedHandler(Handler):
    """test_reply_fetch's routes, plus /to-elsewhere: a redirect to a host that is not allowed."""

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/to-elsewhere":
            self.server.requests.append(self.path)
            self.redirect(f"https://pki.elsewhere.example:{self.server.server_address[1]}/cert.pem?token={TOKEN}")
        else:
            super().do_GET()


class HostServer(Server):
    """test_reply_fetch's HTTPS file server, listening on the host's address, its URLs naming the host."""

    def __init__(self, context: ssl.SSLContext, cert_pem: bytes, host: Host):
        self.host = host
        super().__init__(context, cert_pem)
        self.RequestHandlerClass = ProxiedHandler

    def server_bind(self):
        self.server_address = (self.host.address, 0)  # not Server's 127.0.0.1
        super().server_bind()

    def url(self, path: str) -> str:
        return f"https://{self.host.name}:{self.server_address[1]}{path}"


@contextlib.contextmanager
def file_server(ca: CA, tmp: Path, host: Host, cert_pem: bytes):
    srv = HostServer(tls_files(ca, tmp, host), cert_pem, host)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        stop(srv, thread)


@dataclass
class World:
    host: Host
    cafile: str
    leaf: x509.Certificate
    files: HostServer
    hook_url: str
    hooks: list
    proxy: DevTinyproxy  # CONNECT allowed to both servers
    refusing: DevTinyproxy  # every CONNECT to them answered 403

    @property
    def port(self) -> int:
        return self.files.server_address[1]

    @property
    def where(self) -> str:
        return f"{self.host.name}:{self.port}"


def require_tinyproxy() -> None:
    """Fail (not skip) when tinyproxy is missing, so that a machine without it cannot pass silently."""
    if not shutil.which("tinyproxy"):
        pytest.fail("tinyproxy is not installed: run scripts/install-system-deps (as root)")


@pytest.fixture(scope="module")
def world(tmp_path_factory, host) -> World:
    """The download CA (as a cafile), a certificate to serve, the file server, a webhook receiver, two proxies."""
    require_tinyproxy()
    tmp = tmp_path_factory.mktemp("proxy")
    now = dt.datetime.now(dt.timezone.utc)
    ca = CA("Test proxied servers CA", now=now)
    cafile = tmp / "servers-ca.pem"
    cafile.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    leaf = CA("Test Stellantis CA", now=now).issue(key().public_key(), name("MZP123456", "Free2Move"), now=now)
    hooks: list = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            hooks.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    with contextlib.ExitStack() as stack:
        files = stack.enter_context(file_server(ca, tmp, host, leaf.public_bytes(serialization.Encoding.PEM)))
        (tmp / "hook").mkdir()
        receiver = ThreadingHTTPServer((host.address, 0), Hook)
        receiver.socket = tls_files(ca, tmp / "hook", host).wrap_socket(receiver.socket, server_side=True)
        thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(receiver.server_close)
        stack.callback(receiver.shutdown)
        ports = (files.server_address[1], receiver.server_address[1])
        proxy = DevTinyproxy(tmp / "tinyproxy", connect_ports=ports)
        stack.callback(proxy.stop)
        refusing = DevTinyproxy(tmp / "tinyproxy-refusing", connect_ports=ports, refuse_connect=True)
        stack.callback(refusing.stop)
        yield World(host, str(cafile), leaf, files, f"https://{host.name}:{receiver.server_address[1]}", hooks,
                    proxy, refusing)


@pytest.fixture
def proxy_env(monkeypatch):
    """set(https_proxy, no_proxy=""): the proxy variables of this process, upper and lower case alike
    (urllib, so requests, prefers the lower-case ones; an empty one cancels the other)."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)

    def set_(https_proxy: str | None, no_proxy: str = "") -> None:
        for var, value in (("HTTPS_PROXY", https_proxy), ("NO_PROXY", no_proxy)):
            for v in (var, var.lower()):
                if value is None:
                    monkeypatch.delenv(v, raising=False)
                else:
                    monkeypatch.setenv(v, value)
    return set_


def get(world: World, path: str, **kw) -> bytes:
    kw = {"max_bytes": LIMIT, "allowed_hosts": [world.host.name], "cafile": world.cafile, "timeout": 10, **kw}
    return fetch(world.files.url(path), **kw)


def one_line(message: str) -> str:
    assert "\n" not in message and TOKEN not in message and "?" not in message, message
    assert PROXY_PASSWORD not in message and PROXY_USER not in message, message
    return message


# -- reply.fetch -------------------------------------------------------------------------------


def test_download_through_the_proxy_then_directly(world, proxy_env):
    proxy_env(world.proxy.url)
    before = len(world.proxy.connects())
    data = get(world, f"/cert.pem?token={TOKEN}")
    assert certs.load_bundle(data, "download", LIMIT) == [world.leaf]
    assert world.proxy.connects()[before:] == [world.where]  # the proxy carried it: one CONNECT, to the host
    assert world.files.requests[-1] == f"/cert.pem?token={TOKEN}"
    assert TOKEN not in world.proxy.log_text()  # inside the tunnel: the proxy never sees the path

    assert certs.load_bundle(get(world, f"/hop/2?token={TOKEN}"), "d", LIMIT) == [world.leaf]
    assert len(world.proxy.connects()) > before + 1  # redirects followed through the proxy too

    proxy_env(None)
    before = len(world.proxy.connects())
    assert get(world, f"/cert.pem?token={TOKEN}") == data
    assert len(world.proxy.connects()) == before


def test_no_proxy_naming_the_host_goes_direct(world, proxy_env):
    before = len(world.proxy.connects())
    for no_proxy in (world.host.name, f"example.com,{world.host.name}", "*"):
        proxy_env(world.proxy.url, no_proxy=no_proxy)
        assert certs.load_bundle(get(world, "/cert.pem"), "d", LIMIT) == [world.leaf]
    assert len(world.proxy.connects()) == before


def test_a_loopback_address_never_goes_to_the_proxy(world, proxy_env):
    """NO_PROXY empty, HTTPS_PROXY set to the refusing proxy: the loopback address is fetched directly."""
    proxy_env(world.refusing.url)
    before = world.refusing.log_text()
    url = f"https://{world.host.address}:{world.port}/cert.pem?token={TOKEN}"
    data = fetch(url, max_bytes=LIMIT, allowed_hosts=[world.host.address], cafile=world.cafile, timeout=10)
    assert certs.load_bundle(data, "d", LIMIT) == [world.leaf]
    assert world.refusing.log_text() == before


def test_a_proxy_refusing_the_connect_is_one_line_naming_the_proxy_and_the_fix(world, proxy_env):
    port = world.refusing.port
    before = len(world.refusing.connects())
    for proxy_url in (world.refusing.url, f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}"):
        proxy_env(proxy_url)
        with pytest.raises(ServiceFailure) as exc:
            get(world, f"/cert.pem?token={TOKEN}")
        assert one_line(str(exc.value)) == (
            f"{world.files.url('/cert.pem')}: the proxy 127.0.0.1:{port} refused to connect to {world.where} "
            "(it answered the CONNECT with 403 Access violation); check HTTPS_PROXY / NO_PROXY, or have the proxy "
            f"allow {world.where}")
    assert world.refusing.connects()[before:] == [world.where] * 2
    assert "Refused CONNECT method on port" in world.refusing.log_text()


def test_an_unreachable_proxy_is_one_line_naming_it(world, proxy_env):
    port = free_port()  # nothing listens there
    proxy_env(f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}")
    with pytest.raises(ServiceFailure) as exc:
        get(world, f"/cert.pem?token={TOKEN}")
    assert one_line(str(exc.value)) == (f"{world.files.url('/cert.pem')}: cannot reach the proxy 127.0.0.1:{port} "
                                        "(connection refused); check HTTPS_PROXY / NO_PROXY")


def test_a_redirect_off_the_allowed_hosts_is_refused_before_any_connection(world, proxy_env):
    proxy_env(world.proxy.url)
    before = len(world.proxy.connects())
    with pytest.raises(UserError, match=r"redirected to https://pki\.elsewhere\.example:\d+/cert\.pem: host "
                                        r"pki\.elsewhere\.example is not one of the allowed download hosts") as exc:
        get(world, f"/to-elsewhere?token={TOKEN}")
    one_line(str(exc.value))
    assert world.proxy.connects()[before:] == [world.where]  # the first hop only
    assert "elsewhere" not in world.proxy.log_text()


def test_the_server_is_still_verified_through_the_proxy(world, proxy_env, tmp_path):
    proxy_env(world.proxy.url)
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CA("Another CA").cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ServiceFailure, match=r"TLS certificate does not verify against the CA file .*other-ca\.pem"):
        get(world, f"/cert.pem?token={TOKEN}", cafile=str(other))


# -- import-cert --url through the CLI ---------------------------------------------------------


def test_import_cert_url_through_the_proxy(cli, raw, world, tmp_path):
    pem = csr_pem(cli("csr", "--mzp", "MZP654321", "--app", "fleet").out)
    req = x509.load_pem_x509_csr(pem.encode())
    now = dt.datetime.now(dt.timezone.utc)
    stellantis = CA("Test Stellantis CA", now=now)
    leaf = stellantis.issue(req.public_key(), req.subject, now=now)
    (tmp_path / "ca.pem").write_bytes(stellantis.cert.public_bytes(serialization.Encoding.PEM))
    cli.secrets += [TOKEN, PROXY_PASSWORD]
    env = {"PARTNERCERTS_DOWNLOAD_HOSTS": world.host.name, "PARTNERCERTS_DOWNLOAD_CAFILE": world.cafile,
           "NO_PROXY": "", "no_proxy": ""}
    args = ("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--url",
            world.files.url(f"/cert.pem?token={TOKEN}"), "--ca", str(tmp_path / "ca.pem"), "--client-id", "cid-proxy")
    world.files.cert_pem = leaf.public_bytes(serialization.Encoding.PEM)  # the file server serves it for now
    try:
        before = raw.snapshot()
        refused = cli(*args, ok=False, env={**env, "HTTPS_PROXY": world.refusing.url,
                                            "https_proxy": world.refusing.url})
        assert refused.rc == 4 and refused.err.count("\n") == 1, refused.err
        assert f"the proxy 127.0.0.1:{world.refusing.port} refused to connect" in refused.err
        assert "check HTTPS_PROXY / NO_PROXY" in refused.err
        assert raw.snapshot() == before

        connects = len(world.proxy.connects())
        r = cli(*args, env={**env, "HTTPS_PROXY": world.proxy.url, "https_proxy": world.proxy.url})
    finally:
        world.files.cert_pem = world.leaf.public_bytes(serialization.Encoding.PEM)
    assert "imported serial" in r.out
    assert raw.read(f"{CRED}/current")["data"]["fingerprint_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()
    assert world.proxy.connects()[connects:] == [world.where]


# -- the webhook ---------------------------------------------------------------------------------


def test_the_webhook_goes_through_the_proxy(world, proxy_env):
    cfg = config(webhook={"url": world.hook_url + "/hooks/T0KEN-in-path", "cafile": world.cafile, "timeout": 10})
    hook_where = world.hook_url.removeprefix("https://")

    proxy_env(world.proxy.url)
    before, received = len(world.proxy.connects()), len(world.hooks)
    log = Log()
    assert Notifier(cfg, None, log).send(events()) == []
    assert world.proxy.connects()[before:] == [hook_where]
    ((path, body),) = world.hooks[received:]
    assert path == "/hooks/T0KEN-in-path" and len(json.loads(body)["events"]) == 3
    assert "T0KEN" not in world.proxy.log_text() and "T0KEN" not in " ".join(log)

    proxy_env(world.refusing.url)
    received = len(world.hooks)
    (failure,) = Notifier(cfg, None, Log()).send(events())
    assert failure == (f"notification webhook failed: webhook {world.hook_url}/...: the proxy "
                       f"127.0.0.1:{world.refusing.port} refused to connect to {hook_where} (it answered the "
                       "CONNECT with 403 Access violation); check HTTPS_PROXY / NO_PROXY, or have the proxy allow "
                       f"{hook_where}")
    assert len(world.hooks) == received

    proxy_env(world.refusing.url, no_proxy=world.host.name)
    assert Notifier(cfg, None, Log()).send(events()) == []
    assert len(world.hooks) == received + 1


def running(conf: Path) -> list[int]:
    """The live processes started with this configuration file."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(conf).encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_stop_leaves_nothing_running_and_is_idempotent(world):
    assert running(world.proxy.conf_path) == [world.proxy.proc.pid]
    world.refusing.stop()
    world.refusing.stop()
    assert running(world.refusing.conf_path) == []
