"""The sandbox API: all three credentials at once (client certificate, client_id, Basic auth), called with real curl."""
import base64
import datetime as dt
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from partnercerts.sandbox import Authority
from partnercerts.settings import Settings
from partnercerts.store import Store
from tests import pki
from tests.conftest import free_port
from tests.integration.test_core_csr import CRED

MZP = "MZP654321"
PASSWORD = "s4ndbox-Pässwort-7f3e"
BAD_CERT = b'{"code":"495","message":"Invalid or expired client certificate"}'
UNKNOWN_ID = b'{"code":"403","message":"Unknown client_id"}'
BAD_CREDS = b'{"code":"401","message":"Invalid credentials"}'
REALM = 'Basic realm="PSA B2B sandbox"'


@dataclass
class Answer:
    rc: int
    status: int
    headers: dict
    body: bytes
    err: str

    def json(self):
        return json.loads(self.body)


def curl(url: str, *opts: str) -> Answer:
    p = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", *opts, url], capture_output=True, timeout=60)
    if p.returncode != 0:
        return Answer(p.returncode, 0, {}, b"", p.stderr.decode(errors="replace"))
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(0, int(lines[0].split()[1]), headers, body, p.stderr.decode(errors="replace"))


def write(path: Path, text: str, mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return str(path)


def key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def partner_csr(key) -> x509.CertificateSigningRequest:
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Free2Move, SAS"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Programs Partners"),
                         x509.NameAttribute(NameOID.COMMON_NAME, MZP)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


@dataclass
class Sandbox:
    port: int
    files: Path
    cert: str
    key: str
    ca: str
    client_id: str
    other_client_id: str
    log: Path

    def url(self, client_id: str | None = None, path: str = "/connectedcar/v3/fleets", host: str = "127.0.0.1",
            no_client_id: bool = False) -> str:
        cid = None if no_client_id else self.client_id if client_id is None else client_id
        return f"https://{host}:{self.port}{path}" + (f"?client_id={cid}" if cid is not None else "")

    def call(self, url: str | None = None, *opts: str, cert: tuple[str, str] | None = (), user: str | None = "",
             cacert: bool = True) -> Answer:
        args = list(opts)
        if cert == ():
            cert = (self.cert, self.key)
        if cert:
            args += ["--cert", cert[0], "--key", cert[1]]
        if cacert:
            args += ["--cacert", self.ca]
        if user == "":
            user = f"{MZP}:{PASSWORD}"
        if user is not None:
            args += ["-u", user]
        return curl(url or self.url(), *args)


def no_server(port: int) -> bool:
    return subprocess.run(["pgrep", "-f", f"partnercerts.sandbox.api --port {port}"],
                          capture_output=True).returncode == 1


@pytest.fixture
def sandbox(cli, raw, env, tmp_path):
    cli("rotate")
    cli.secrets.append(PASSWORD)
    assert "stored" in cli("account", "--mzp", MZP, input=PASSWORD + "\n").out
    cur = raw.read(f"{CRED}/current")["data"]
    other = raw.read(f"{MZP}/apps/big/current")["data"]
    cli.secrets += [cur["key_pem"], cur["p12_password"]]
    port = free_port()
    files = tmp_path / "creds"
    files.mkdir(mode=0o700)
    try:
        up = cli("sandbox.up", "--port", str(port))
        assert f"https://127.0.0.1:{port}/connectedcar/v3" in up.out
        yield Sandbox(port, files, write(files / "fleet.crt", cur["cert_pem"]),
                      write(files / "fleet.key", cur["key_pem"], 0o600), write(files / "ca.crt", cur["ca_pem"]),
                      cur["client_id"], other["client_id"],
                      Path(env["PARTNERCERTS_STATE_DIR"]) / "sandbox-api" / "server.log")
    finally:
        shutil.rmtree(files, ignore_errors=True)
        cli("sandbox.down")
        assert no_server(port), "a sandbox API process was left running"


def test_all_three_credentials_are_needed_in_order(sandbox, raw, bao, env):
    # Everything right: 200, JSON, the server verified with the partner's ca.crt (no -k).
    ok = sandbox.call()
    assert ok.rc == 0 and ok.status == 200, ok.err
    assert ok.headers["content-type"] == "application/json"
    assert ok.json() == {"fleets": [], "mzp": MZP, "client_id": sandbox.client_id}
    assert sandbox.call(sandbox.url(host="localhost")).status == 200
    # The Client ID of the partner's other application is a Client ID of this MZP too.
    assert sandbox.call(sandbox.url(sandbox.other_client_id)).status == 200
    # Without the sandbox CA the client refuses the server (curl exit 60: peer certificate not verified).
    assert sandbox.call(cacert=False).rc == 60

    # 1. The client certificate: none, another CA's, expired, not yet valid, no clientAuth -> 495 exactly.
    none = sandbox.call(cert=None)
    assert (none.status, none.body, none.headers["content-type"]) == (495, BAD_CERT, "application/json")
    now = dt.datetime.now(dt.timezone.utc)
    key = pki.key()
    kpath = write(sandbox.files / "own.key", key_pem(key), 0o600)
    subject = partner_csr(key).subject
    foreign = pki.CA("Not The Sandbox CA").issue(key.public_key(), subject, now=now)
    foreign_path = write(sandbox.files / "foreign.crt", pem(foreign))
    authority = Authority(Store(bao.client(), Settings.from_env(env)), 365)
    expired = authority.sign(partner_csr(key), now=now - dt.timedelta(days=400), validity_days=30)
    future = authority.sign(partner_csr(key), now=now + dt.timedelta(days=10), validity_days=30)
    # Signed with the sandbox CA's own key, but with serverAuth only, or as a CA certificate.
    ca_rec = raw.c.secrets.kv.v2.read_secret_version("partnercerts/sandbox/authority", mount_point=raw.mount,
                                                     raise_on_deleted_version=True)["data"]["data"]
    sandbox_ca = pki.CA.__new__(pki.CA)
    sandbox_ca.key = serialization.load_pem_private_key(ca_rec["key_pem"].encode(), None)
    sandbox_ca.cert = x509.load_pem_x509_certificate(ca_rec["cert_pem"].encode())
    sandbox_ca.name = sandbox_ca.cert.subject
    server_only = sandbox_ca.issue(key.public_key(), subject, now=now, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    as_ca = sandbox_ca.issue(key.public_key(), subject, now=now, ca=True)
    no_eku = sandbox_ca.issue(key.public_key(), subject, now=now, eku=None)
    cases = {"foreign": foreign_path,
             "expired": write(sandbox.files / "expired.crt", expired),
             "future": write(sandbox.files / "future.crt", future),
             "serverAuth only": write(sandbox.files / "server-only.crt", pem(server_only)),
             "CA certificate": write(sandbox.files / "as-ca.crt", pem(as_ca))}
    for name, cpath in cases.items():
        r = sandbox.call(cert=(cpath, kpath))
        assert (r.status, r.body) == (495, BAD_CERT), name
    # Without any EKU the certificate is fine (the rule is: clientAuth when it has an EKU).
    assert sandbox.call(cert=(write(sandbox.files / "no-eku.crt", pem(no_eku)), kpath)).status == 200
    # The same key, freshly signed by the sandbox authority: accepted (a valid certificate, not the current one).
    fresh = write(sandbox.files / "fresh.crt", authority.sign(partner_csr(key), now=now))
    assert sandbox.call(cert=(fresh, kpath)).status == 200
    # The certificate is checked before anything else.
    r = sandbox.call(sandbox.url("nope"), cert=(cases["expired"], kpath), user="MZP000000:x")
    assert (r.status, r.body) == (495, BAD_CERT)

    # 2. client_id: missing, unknown -> 403, before the password is looked at.
    for url in (sandbox.url(no_client_id=True), sandbox.url("not-a-client-id"), sandbox.url("")):
        r = sandbox.call(url, user="MZP654321:wrong")
        assert (r.status, r.body) == (403, UNKNOWN_ID), url
    assert sandbox.call(sandbox.url() + f"&client_id={sandbox.other_client_id}").status == 403  # two client_ids

    # 3. Basic auth: missing, wrong password, another user -> 401 with the challenge.
    for user in (None, f"{MZP}:wrong", f"{MZP}:{PASSWORD}x", f"MZP000001:{PASSWORD}", f"{MZP.lower()}:{PASSWORD}"):
        r = sandbox.call(user=user)
        assert (r.status, r.body, r.headers.get("www-authenticate")) == (401, BAD_CREDS, REALM), user
    r = sandbox.call(None, "-H", "Authorization: Bearer abc", user=None)
    assert r.status == 401

    # 4. Routing after authentication: unknown path 404, other methods 405, all JSON.
    r = sandbox.call(sandbox.url(path="/connectedcar/v3/vehicles"))
    assert (r.status, r.json()) == (404, {"code": "404", "message": "Not found"})
    r = sandbox.call(None, "-X", "POST", "--data", "x=1")
    assert (r.status, r.headers.get("allow"), r.json()["code"]) == (405, "GET", "405")


def test_a_new_password_is_seen_within_seconds(sandbox, cli):
    assert sandbox.call().status == 200
    new = PASSWORD + "-rotated"
    cli.secrets.append(new)
    assert "stored" in cli("account", "--mzp", MZP, input=new + "\n").out
    deadline = time.monotonic() + 10
    while sandbox.call(user=f"{MZP}:{new}").status != 200:
        assert time.monotonic() < deadline, "the new password was not seen within 10 s"
        time.sleep(0.3)
    assert sandbox.call().status == 401


def test_slow_and_oversized_clients_do_not_hang_it(sandbox):
    idle = [socket.create_connection(("127.0.0.1", sandbox.port)) for _ in range(5)]
    try:
        # A TLS client that finishes the handshake and then says nothing.
        ctx = ssl.create_default_context(cafile=sandbox.ca)
        ctx.load_cert_chain(sandbox.cert, sandbox.key)
        silent = ctx.wrap_socket(socket.create_connection(("127.0.0.1", sandbox.port)), server_hostname="127.0.0.1")
        idle.append(silent)
        started = time.monotonic()
        assert sandbox.call().status == 200
        assert time.monotonic() - started < 5
        r = sandbox.call(None, "-H", "X-Big: " + "a" * 20000)
        assert (r.status, r.json()["code"]) == (431, "431")
        # The silent client is answered 408 and closed after the server's timeout.
        silent.settimeout(20)
        data = b""
        while chunk := silent.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408 ")
    finally:
        for s in idle:
            s.close()


def test_up_status_down_and_a_log_without_secrets(sandbox, cli, raw, bao):
    st = json.loads(cli("sandbox.status", "--json").out)
    assert st["running"] and st["urls"] == [f"https://127.0.0.1:{sandbox.port}/connectedcar/v3"]
    assert "running: True" in cli("sandbox.status").out
    again = cli("sandbox.up", "--port", str(sandbox.port))
    assert "already running" in again.out and str(st["pid"]) in again.out
    r = cli("sandbox.up", "--port", str(free_port()), ok=False)
    assert r.rc == 2 and "already running" in r.err and "sandbox.down" in r.err
    assert sandbox.call().status == 200
    assert sandbox.call(user=f"{MZP}:wrong-password-in-the-log?").status == 401
    assert sandbox.call(cert=None).status == 495
    log = sandbox.log.read_text()
    assert re.search(rf"^\S+ 127\.0\.0\.1:\d+ {MZP} GET /connectedcar/v3/fleets 200$", log, re.M), log
    assert re.search(r"^\S+ 127\.0\.0\.1:\d+ - GET /connectedcar/v3/fleets 495 \(no client certificate\)$", log, re.M)
    basic = base64.b64encode(f"{MZP}:{PASSWORD}".encode()).decode()
    cur = raw.read(f"{CRED}/current")["data"]
    for secret in (PASSWORD, "wrong-password-in-the-log", basic, "PRIVATE KEY", bao.token, cur["p12_password"],
                   "client_id=", sandbox.client_id):
        assert secret not in log, f"{secret[:12]!r}... is in the log"
    assert oct(sandbox.log.stat().st_mode & 0o777) == "0o600"
    pid = st["pid"]
    assert "stopped" in cli("sandbox.down").out
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    assert json.loads(cli("sandbox.status", "--json").out)["running"] is False
    assert "not running" in cli("sandbox.down").out
    assert no_server(sandbox.port)


def test_several_addresses_and_a_busy_port(cli, raw, tmp_path):
    cli("rotate", "--mzp", MZP, "--app", "fleet")
    cli.secrets.append(PASSWORD)
    cli("account", "--mzp", MZP, input=PASSWORD + "\n")
    cur = raw.read(f"{CRED}/current")["data"]
    files = tmp_path / "creds2"
    files.mkdir(mode=0o700)
    port = free_port()
    try:
        r = cli("sandbox.up", "--port", str(port), "--bind", "nowhere", ok=False)
        assert r.rc == 2 and "--bind 'nowhere': not an IP address" in r.err
        with socket.create_server(("127.0.0.1", port)):
            r = cli("sandbox.up", "--port", str(port), ok=False)
            assert r.rc == 2 and f"cannot listen on 127.0.0.1:{port}" in r.err
        r = cli("sandbox.up", "--port", "0", ok=False)
        assert r.rc == 2 and "not a port number" in r.err
        cli("sandbox.up", "--port", str(port), "--bind", "127.0.0.1,127.0.0.2")
        sb = Sandbox(port, files, write(files / "c.crt", cur["cert_pem"]),
                     write(files / "c.key", cur["key_pem"], 0o600),
                     write(files / "ca.crt", cur["ca_pem"]), cur["client_id"], "", Path())
        for host in ("127.0.0.1", "127.0.0.2", "localhost"):
            r = sb.call(sb.url(host=host))
            assert r.status == 200, (host, r.err)
    finally:
        shutil.rmtree(files, ignore_errors=True)
        cli("sandbox.down")
        assert no_server(port)
