"""Vault errors that say what is wrong: a bad token, an address that is not Vault, https:// to a plain-HTTP
server, a policy missing one path. Each is one line on stderr naming the input and the fix, a non-zero
exit, and no change in Vault; against the real OpenBao dev server and a real plain HTTP server on loopback.
(A sealed server is tests/faults/test_vault_faults.py's; TLS verification, test_security.py's.)"""
import datetime as dt
import ipaddress
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from partnercerts import policies
from tests.conftest import free_port

P = "partnercerts"
BOOTSTRAP = "; to create it, run scripts/inv vault.bootstrap with an operator token"


class NotVault(BaseHTTPRequestHandler):
    """What a web server that is not Vault answers: 404 and an HTML page, to any request."""

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body><h1>Not Found</h1></body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_LIST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    """A plain HTTP server on loopback, not Vault: its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotVault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def untrusted_tls(tmp_path_factory):
    """The same web server over TLS with a self-signed certificate nobody trusts: its port."""
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotVault)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def seeded(bao, mount, raw):
    """Records under the prefix that must stay as they are (written raw: cheaper than a rotation). Returns
    raw's snapshot."""
    kv = bao.client().secrets.kv.v2
    kv.create_or_update_secret(f"{P}/MZP654321/account", secret={"password": "seeded"}, mount_point=mount)
    kv.update_metadata(f"{P}/MZP654321/apps/fleet/current", custom_metadata={"serial": "01"}, mount_point=mount)
    kv.create_or_update_secret(f"{P}/MZP654321/apps/fleet/current", secret={"serial": "01"}, mount_point=mount)
    before = raw.snapshot()
    assert len(before) == 2
    return before


def only_line(r, rc: int, line: str) -> None:
    assert (r.rc, r.err) == (rc, f"error: {line}\n"), r.text
    assert r.out == "", r.out


def token_for(bao, cli, name: str, hcl: str) -> str:
    root = bao.client()
    root.sys.create_or_update_acl_policy(name, hcl)
    token = root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    cli.secrets.append(token)
    return token


def held(policy: str) -> str:
    """The token's policies as Vault lists them (sorted)."""
    return ", ".join(sorted(["default", policy]))


def role_hcl(role: str, mount: str) -> str:
    return policies.rendered(mount, P)[policies.name(role)]


def test_a_revoked_or_expired_token_is_named_with_its_fix(cli, bao, raw, seeded, env):
    root = bao.client()
    revoked = root.auth.token.create(ttl="10m")["auth"]["client_token"]
    expired = root.auth.token.create(ttl="1s", explicit_max_ttl="1s")["auth"]["client_token"]
    born = time.monotonic()
    cli.secrets += [revoked, expired]
    root.auth.token.revoke(revoked)
    line = (f"Vault at {bao.addr} does not accept the token in VAULT_TOKEN: it is invalid, expired or revoked; "
            "set VAULT_TOKEN to a valid token, or unset it and set VAULT_ROLE_ID and VAULT_SECRET_ID to log in "
            "with the AppRole")
    for args in (("status",), ("rotate", "--no-deploy")):
        only_line(cli(*args, ok=False, env={"VAULT_TOKEN": revoked}), 4, line)
    time.sleep(max(0.0, born + 1.5 - time.monotonic()))  # past its 1 s TTL
    only_line(cli("status", ok=False, env={"VAULT_TOKEN": expired}), 4, line)
    # The same token from ~/.vault-token (no VAULT_TOKEN, no AppRole): the file is named.
    token_file = f"{env['HOME']}/.vault-token"
    with open(token_file, "w") as f:
        f.write(revoked + "\n")
    only_line(cli("status", ok=False, env={"VAULT_TOKEN": ""}), 4,
              f"Vault at {bao.addr} does not accept the token in {token_file}: it is invalid, expired or revoked; "
              "log in again (vault login writes that file), or set VAULT_TOKEN, or VAULT_ROLE_ID and "
              "VAULT_SECRET_ID to log in with the AppRole")
    assert raw.snapshot() == seeded


def test_an_address_that_is_not_vault_is_named(cli, raw, seeded, web):
    addr = f"http://127.0.0.1:{web}"
    line = (f"VAULT_ADDR={addr} does not point at a Vault or OpenBao server: /v1/sys/health answered HTTP 404, "
            "text/html, not Vault's health status; set VAULT_ADDR to the Vault server's address, "
            "e.g. https://vault.example.com:8200")
    for args in (("status",), ("rotate", "--no-deploy")):
        only_line(cli(*args, ok=False, env={"VAULT_ADDR": addr}), 2, line)
    # With an AppRole, the login is the first request: the same line.
    only_line(cli("status", ok=False, env={"VAULT_ADDR": addr, "VAULT_TOKEN": "", "VAULT_ROLE_ID": "r",
                                           "VAULT_SECRET_ID": "s"}), 2, line)
    assert raw.snapshot() == seeded


def test_https_to_a_plain_http_server_says_so(cli, bao, raw, seeded, web):
    for port in (web, bao.port):  # a web server, and Vault itself listening without TLS
        addr = f"https://127.0.0.1:{port}"
        line = (f"VAULT_ADDR={addr}: the server speaks plain HTTP, not TLS; enable TLS on its listener, "
                f"or for a loopback or development server only, set VAULT_ADDR=http://127.0.0.1:{port}")
        only_line(cli("status", ok=False, env={"VAULT_ADDR": addr}), 4, line)
    only_line(cli("rotate", "--no-deploy", ok=False, env={"VAULT_ADDR": f"https://127.0.0.1:{bao.port}"}), 4,
              line)
    assert raw.snapshot() == seeded


def test_a_policy_missing_one_path_names_the_path_and_the_policy_that_grants_it(cli, bao, mount, raw, seeded):
    tag = uuid.uuid4().hex[:8]
    # The rotator's policy, but the rotation lock denied: rotate stops at the lock, before any change.
    no_lock = f"no-lock-{tag}"
    token = token_for(bao, cli, no_lock, role_hcl("rotator", mount)
                      + f'\npath "{mount}/data/{P}/locks/*" {{\n  capabilities = ["deny"]\n}}\n')
    only_line(cli("rotate", "--no-deploy", ok=False, env={"VAULT_TOKEN": token}), 4,
              f"Vault at {bao.addr} denied GET {mount}/data/{P}/locks/rotate to this token (policies: "
              f"{held(no_lock)}); the partnercerts-rotator policy grants read on it: give it to the token or its "
              "AppRole")
    # The auditor's mount check alone: status cannot read the index (metadata).
    check_only = f"check-only-{tag}"
    token = token_for(bao, cli, check_only, f'path "sys/internal/ui/mounts/{mount}" {{\n  capabilities = ["read"]\n}}\n'
                      f'path "{mount}/metadata/{P}/other/*" {{\n  capabilities = ["read"]\n}}\n')
    only_line(cli("status", ok=False, env={"VAULT_TOKEN": token}), 4,
              f"Vault at {bao.addr} denied GET {mount}/metadata/{P}/layout to this token "
              f"(policies: {held(check_only)}); the partnercerts-auditor, partnercerts-deployer and "
              "partnercerts-rotator policies grant read on it: give the one for this job to the token or its AppRole")
    # Nothing under this mount at all (a policy for another mount): Vault hides the mount from the token.
    elsewhere = f"elsewhere-{tag}"
    token = token_for(bao, cli, elsewhere, role_hcl("auditor", "another"))
    only_line(cli("status", ok=False, env={"VAULT_TOKEN": token}), 4,
              f"Vault at {bao.addr} denied the mount check (GET sys/internal/ui/mounts/{mount}) to this token "
              f"(policies: {held(elsewhere)}): its policies allow nothing under {mount}/{P}/; the "
              f"partnercerts-auditor, partnercerts-deployer and partnercerts-rotator policies grant read on "
              f"{mount}/metadata/{P}/*: give the one for this job to the token or its AppRole")
    assert raw.snapshot() == seeded


def test_the_good_messages_stay(cli, bao, raw, seeded, untrusted_tls):
    # A valid token, a mount that does not exist: the fix is to create it.
    only_line(cli("status", ok=False, env={"PARTNERCERTS_KV_MOUNT": "nosuch"}), 4,
              f"KV v2 mount 'nosuch' does not exist at {bao.addr}; create it, or set PARTNERCERTS_KV_MOUNT to an "
              "existing one" + BOOTSTRAP)
    down = f"http://127.0.0.1:{free_port()}"
    only_line(cli("status", ok=False, env={"VAULT_ADDR": down, "PARTNERCERTS_VAULT_RETRY_SECONDS": "1"}), 4,
              f"Vault at {down} is unreachable (ConnectionError); check VAULT_ADDR and that the server is up")
    tls = f"https://127.0.0.1:{untrusted_tls}"
    only_line(cli("status", ok=False, env={"VAULT_ADDR": tls, "REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""}), 4,
              f"Vault at {tls}: TLS verification failed; set VAULT_CACERT to the CA that signed its certificate")
    assert raw.snapshot() == seeded
