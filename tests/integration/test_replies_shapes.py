"""The reply mailbox against the shapes the authority's replies really take: download links (French, English,
HTML only), a certificate pasted in the body, a forwarded reply, a reply quoting our CSR e-mail, the same reply
twice, forged links, an oversized message, a server that goes away, a run killed between import and move.

Every test delivers to a real dovecot (the `dovecot` fixture), runs `scripts/inv replies` through `cli`, and
checks what Vault holds (a separate client), what the folders hold, the line printed for each message, and
that no secret (key markers, the links' one-time tokens) was printed."""
from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from devtools.devservers import DevDovecot
from tests.conftest import ROOT, Result
from tests.fixtures import make_replies
from tests.integration import test_replies
from tests.integration.test_core_csr import CRED
from tests.integration.test_replies import MZP, NOW, PROCESSED, mailbox_setting, pending_request, serial_of, unlocked
from tests.integration.test_reply_fetch import server_certificate
from tests.integration.test_rotation_prod import set_partner
from tests.pki import CA

KEYWORDS = {"$PartnercertsUnmatched", "$PartnercertsRefused", "$PartnercertsUnreadable"}
# test_replies' fixtures: the reply mailbox of MZP654321 on a fresh dovecot (server, user), the test authority.
box = test_replies.box
authority = test_replies.authority


# ---------------------------------------------------------------- a download server with a test CA


class Files(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1, reached as https://localhost:PORT: `routes` maps a path (no query) to the bytes to
    serve, to ("redirect", location), or to a callable run before answering with what it returns."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), FileHandler)
        self.context = context
        self.routes: dict[str, object] = {}
        self.requests: list[str] = []  # request lines' targets, query included
        self.connections = 0
        self.one_time = False  # as the authority's links: a second GET of the same link is HTTP 410

    def get_request(self):
        sock, addr = self.socket.accept()
        self.connections += 1
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        pass

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


class FileHandler(BaseHTTPRequestHandler):
    timeout = 10

    def setup(self):
        super().setup()
        self.request.do_handshake()

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv: Files = self.server
        used = self.path in srv.requests
        srv.requests.append(self.path)
        if used and srv.one_time:
            self.send_response(410)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        route = srv.routes.get(self.path.split("?", 1)[0])
        if callable(route):
            route = route()
        if isinstance(route, tuple) and route[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", route[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = route if isinstance(route, bytes) else b"not here"
        self.send_response(200 if isinstance(route, bytes) else 404)
        self.send_header("Content-Type", "application/x-pem-file")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def download_pki(tmp_path_factory):
    """The download server's test CA (a cafile) and its certificate for localhost / 127.0.0.1, made once."""
    tmp = tmp_path_factory.mktemp("download-pki")
    now = dt.datetime.now(dt.timezone.utc)
    ca = CA("Shapes download CA", now=now)
    k, cert = server_certificate(ca, now)
    (tmp / "dl-ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "dl.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "dl.key").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return tmp


@pytest.fixture
def files(cli, download_pki):
    """The authority's download server: its CA trusted for downloads, `localhost` the only allowed host."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(download_pki / "dl.crt", download_pki / "dl.key")
    srv = Files(ctx)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    cli.env.update(PARTNERCERTS_DOWNLOAD_HOSTS="localhost",
                   PARTNERCERTS_DOWNLOAD_CAFILE=str(download_pki / "dl-ca.pem"))
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def token(cli) -> str:
    """A one-time token for a link: a secret the cli fixture checks no output ever holds."""
    value = "T0k" + secrets.token_hex(10)
    cli.secrets.append(value)
    return value


def serve(cli, files: Files, leaf: x509.Certificate, ca: x509.Certificate, *, query: str = "token={}",
          on_cert=None) -> tuple[str, str, list[str]]:
    """Put the certificate and the CA behind two links with tokens (one-time if files.one_time): (certificate URL,
    CA URL, their tokens). `on_cert` runs once, when the certificate is first asked for, before it is sent."""
    tokens = [token(cli), token(cli)]
    cert_path, ca_path = f"/d/{secrets.token_hex(4)}", f"/d/{secrets.token_hex(4)}"
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    fired = []

    def once():
        if not fired:
            fired.append(on_cert())
        return leaf_pem
    files.routes[cert_path] = once if on_cert else leaf_pem
    files.routes[ca_path] = ca.public_bytes(serialization.Encoding.PEM)
    return (files.url(f"{cert_path}?{query.format(tokens[0])}"), files.url(f"{ca_path}?{query.format(tokens[1])}"),
            tokens)


def path_of(url: str) -> str:
    """What the server sees on the request line: the path and the query (its token included)."""
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


# ---------------------------------------------------------------- messages, folders, lines


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def deliver(server: DevDovecot, user: str, data: bytes, folder: str = "INBOX") -> bytes:
    """APPEND with CRLF line ends, as a mail server stores it; returns the bytes stored."""
    stored = crlf(data)
    server.deliver(user, stored, folder)
    return stored


def shaped(monkeypatch, build, *args, **names):
    """A make_replies shape with its module-level links, Client ID and MZP replaced by this test's."""
    for name, value in {"MZP": MZP, **names}.items():
        monkeypatch.setattr(make_replies, name, value)
    return build(*args)


def uid_lines(r: Result) -> list[str]:
    return [ln.strip() for ln in r.out.splitlines() if " UID " in ln]


def server_name(server: DevDovecot, user: str, port: int | None = None) -> str:
    return f"imap {user}@{server.host}:{port or server.imaps_port}"


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue(authority: CA, request: x509.CertificateSigningRequest) -> x509.Certificate:
    return authority.issue(request.public_key(), request.subject, now=NOW)


def changed(before: dict, after: dict) -> set[str]:
    """The Vault paths (under the prefix, lock left out) that were written between two snapshots."""
    before, after = unlocked(before), unlocked(after)
    return {p.removeprefix("partnercerts/") for p in set(before) | set(after) if before.get(p) != after.get(p)}


def assert_imported(raw, leaf: x509.Certificate, ca: x509.Certificate, client_id: str, before: dict) -> None:
    """Vault holds exactly the import: current (version 1) with the CA and the Client ID, its history record, the
    pending consumed, the mailbox state; nothing else was written (the other application is untouched)."""
    current = raw.read(f"{CRED}/current")
    assert current["metadata"]["version"] == 1
    data = current["data"]
    assert data["serial"] == serial_of(leaf) and data["client_id"] == client_id
    assert data["fingerprint_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()
    assert data["ca_pem"] == pem(ca) and data["submission"] == "email reply"
    assert raw.read(f"{CRED}/pending")["data"]["state"] == "consumed"
    assert raw.read(f"{CRED}/history/{serial_of(leaf)}")["data"]["serial"] == serial_of(leaf)
    assert not any(raw.read(f"{MZP}/mailbox-state")["data"]["left"].values())
    written = changed(before, raw.snapshot())
    assert written == {f"{CRED}/current", f"{CRED}/pending", f"{CRED}/history/{serial_of(leaf)}",
                       f"{MZP}/mailbox-state", f"index/{MZP}.fleet"}, written


def assert_moved(server: DevDovecot, user: str, stored: list[bytes]) -> None:
    """INBOX empty; the processed folder holds exactly these messages, unflagged by us, in order."""
    assert server.folder_uids(user, "INBOX") == []
    assert server.fetch_all(user, PROCESSED) == stored
    assert all(not (flags & KEYWORDS) for flags in server.flags(user, PROCESSED).values())


def assert_state(raw, server: DevDovecot, user: str, last_uid: int) -> None:
    state = raw.read(f"{MZP}/mailbox-state")["data"]
    assert state["folders"]["INBOX"] == {"uidvalidity": server.uidvalidity(user, "INBOX"), "last_uid": last_uid}


def french_plain(cert_url: str, ca_url: str, client_id: str) -> bytes:
    """The French text/plain reply: the certificate link under its label, the CA link on its label's line."""
    return make_replies.message(
        f"Votre certificat {MZP}",
        f"Bonjour,\n\nVotre demande de certificat pour {MZP} (application fleet) a été traitée.\n\n"
        f"Téléchargez votre certificat :\n{cert_url}\n\n"
        f"Certificat de l'autorité de certification (AC) : {ca_url}\n\n"
        f"Identifiant client : {client_id}\n\n"
        "Chaque lien n'est utilisable qu'une fois et expire sous 7 jours.\n" + make_replies.SIGNATURE_FR).as_bytes()


def attached_reply(leaf: x509.Certificate, ca: x509.Certificate, client_id: str, *, text: str = "") -> bytes:
    """The French reply with the certificate and the CA attached as PEM files."""
    msg = make_replies.message(f"Votre certificat {MZP} / fleet",
                               f"Bonjour,\n\nVoici votre certificat pour {MZP}.\nClient ID : {client_id}\n" + text)
    msg.add_attachment(pem(leaf).encode(), "application", "x-pem-file", filename=f"{MZP}.crt")
    msg.add_attachment(pem(ca).encode(), "application", "x-pem-file", filename="stellantis-ca.crt")
    return msg.as_bytes()


# ---------------------------------------------------------------- 1, 3: links, plain text and HTML only


@pytest.mark.parametrize("shape", ["english_plain", "french_plain", "french_html"])
def test_links_to_the_certificate_and_the_ca_are_downloaded_and_imported(cli, raw, box, authority, files,
                                                                         monkeypatch, shape):
    server, user = box
    request = pending_request(cli)
    leaf = issue(authority, request)
    client_id = f"cid-{shape.replace('_', '-')}-{secrets.token_hex(3)}"
    if shape == "english_plain":
        cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert)
        data = shaped(monkeypatch, make_replies.english_plain, EN_CERT_URL=cert_url, EN_CA_URL=ca_url,
                      EN_CLIENT_ID=client_id)
    elif shape == "french_plain":
        cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert, query="id=88a1&jeton={}")
        data = french_plain(cert_url, ca_url, client_id)
    else:  # HTML only, base64, the links behind "Télécharger" / "ici", '&' written '&amp;' in the hrefs
        cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert, query="id=88a1&jeton={}")
        data = shaped(monkeypatch, make_replies.french_html, FR_CERT_URL=cert_url, FR_CA_URL=ca_url,
                      FR_CLIENT_ID=client_id)
        assert b"Content-Type: text/html" in data and b"text/plain" not in data and tokens[0].encode() not in data
    stored = deliver(server, user, data)
    before = raw.snapshot()

    r = cli("replies")
    (line,) = uid_lines(r)
    assert line.startswith(f"{server_name(server, user)} UID 1 (Fri, 20 Nov 2026 09:30:00 +0000, "), line
    assert f"'Your certificate for {MZP}'" in line or f"'Votre certificat {MZP}'" in line, line
    assert f": imported for {MZP}/fleet: serial {serial_of(leaf)}, valid until " in line, r.out
    assert f"Client ID {client_id}" in line and "warning" not in line, line
    assert "[its certificate is for the pending key (SHA-256 " in line and f"names {MZP}" in line, line
    assert not any(t in r.text for t in tokens) and "token=" not in r.text and "jeton" not in r.text
    # Each link fetched once, with its token (sent to the server, never printed), the certificate first.
    assert files.requests == [path_of(cert_url), path_of(ca_url)]
    assert_imported(raw, leaf, authority.cert, client_id, before)
    assert_moved(server, user, [stored])
    assert_state(raw, server, user, 1)


# ---------------------------------------------------------------- 2: the certificate pasted in the body


def test_a_certificate_pasted_as_pem_in_the_body_is_imported(cli, raw, box, authority, monkeypatch):
    server, user = box
    request = pending_request(cli)
    leaf = issue(authority, request)
    data = shaped(monkeypatch, make_replies.body_pem, leaf, authority.cert, EN_CLIENT_ID="cid-pasted-7")
    assert b"Content-Disposition: attachment" not in data and b"-----BEGIN CERTIFICATE-----" in data
    stored = deliver(server, user, data)
    before = raw.snapshot()
    r = cli("replies")
    (line,) = uid_lines(r)
    assert f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in line and "Client ID cid-pasted-7" in line, line
    assert "BEGIN CERTIFICATE" not in r.text
    assert_imported(raw, leaf, authority.cert, "cid-pasted-7", before)
    assert_moved(server, user, [stored])


# ---------------------------------------------------------------- 4: forwarded by a colleague


def inline_forward(original: bytes) -> bytes:
    """The colleague's client quoted the reply inline under a 'Forwarded message' banner."""
    inner = message_from_bytes(original, policy=policy.default)
    body = inner.get_body(("plain",)).get_content()
    msg = EmailMessage()
    msg["From"] = "Alice Colleague <alice@free2move.example>"
    msg["To"] = make_replies.PARTNER
    msg["Subject"] = f"Fwd: {inner['Subject']}"
    msg["Date"] = format_datetime(NOW)
    msg["Message-ID"] = make_msgid(domain="free2move.example")
    msg.set_content("Hi, see below: the PKI team answered on my address.\n\n"
                    "---------- Forwarded message ---------\n"
                    f"From: {inner['From']}\nDate: {inner['Date']}\nSubject: {inner['Subject']}\n"
                    f"To: <alice@free2move.example>\n\n{body}")
    return msg.as_bytes()


@pytest.mark.parametrize("how", ["attached", "inline"])
def test_a_reply_forwarded_by_a_colleague_is_imported(cli, raw, box, authority, files, monkeypatch, how):
    server, user = box
    request = pending_request(cli)
    leaf = issue(authority, request)
    cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert)
    names = dict(EN_CERT_URL=cert_url, EN_CA_URL=ca_url, EN_CLIENT_ID="cid-fwd-1")
    if how == "attached":  # message/rfc822
        data = shaped(monkeypatch, make_replies.forwarded, **names)
        assert b"message/rfc822" in data
    else:
        data = inline_forward(shaped(monkeypatch, make_replies.english_plain, **names))
    stored = deliver(server, user, data)
    before = raw.snapshot()
    r = cli("replies")
    (line,) = uid_lines(r)
    assert f"'Fwd: Your certificate for {MZP}'" in line, line
    assert f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in line and "Client ID cid-fwd-1" in line, line
    assert not any(t in r.text for t in tokens)
    assert files.requests == [path_of(cert_url), path_of(ca_url)]
    assert_imported(raw, leaf, authority.cert, "cid-fwd-1", before)
    assert_moved(server, user, [stored])


# ---------------------------------------------------------------- 5: a reply quoting our CSR e-mail


def test_a_reply_quoting_our_csr_email_is_imported_and_hinted_by_in_reply_to(cli, raw, box, authority, files,
                                                                              inventory, tmp_path):
    server, user = box
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "pki@mpsa.example"},
                applications=[{"name": "fleet"}], reply_mailbox=mailbox_setting(inventory))
    cli("rotate", "--no-deploy")
    pend = raw.read(f"{CRED}/pending")["data"]
    assert pend["message_id"]
    (ours,) = (tmp_path / "outbox").glob("*/*.eml")
    sent = message_from_bytes(ours.read_bytes(), policy=policy.default)
    assert sent["Message-ID"].strip() == pend["message_id"]  # folded on its own line: a leading space
    request = x509.load_pem_x509_csr(pend["csr_pem"].encode())
    leaf = issue(authority, request)
    cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert)
    quoted = "".join(f"> {ln}\n" if ln else ">\n" for ln in sent.get_body(("plain",)).get_content().splitlines())
    msg = make_replies.message(
        f"RE: {sent['Subject']}",
        f"Hello,\n\nDownload your certificate:\n{cert_url}\n\nDownload the CA certificate: {ca_url}\n\n"
        f"Client ID: cid-quoted-3\n\nBest regards,\nStellantis PKI\n\n"
        f"On {sent['Date']}, pki@free2move.example wrote:\n{quoted}")
    msg["In-Reply-To"] = pend["message_id"]
    msg["References"] = pend["message_id"]
    stored = deliver(server, user, msg.as_bytes())
    assert b"> Please send the signed certificate, the CA certificate and the Client ID" in stored
    before = raw.snapshot()
    r = cli("replies")
    (line,) = uid_lines(r)
    assert f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in line and "Client ID cid-quoted-3" in line, line
    assert f"replies to our CSR e-mail {pend['message_id']} for {MZP}/fleet" in line, line
    assert line.index("its certificate is for the pending key") < line.index("replies to our CSR e-mail"), line
    assert files.requests == [path_of(cert_url), path_of(ca_url)]
    assert_imported(raw, leaf, authority.cert, "cid-quoted-3", before)
    assert_moved(server, user, [stored])


# ---------------------------------------------------------------- 6: the same reply twice

# A message whose certificate sits behind a one-time link is recognised by its Message-ID once imported
# (kept with the certificate): it is moved without downloading the used link again.
LINKS = [pytest.param(False, id="reusable-links"),
         pytest.param(True, id="one-time-links")]


def test_two_replies_for_the_same_csr_import_once_and_both_are_moved(cli, raw, box, authority, files):
    """The authority answered twice: once with the files attached, then again with links."""
    server, user = box
    request = pending_request(cli)
    leaf = issue(authority, request)
    first = deliver(server, user, attached_reply(leaf, authority.cert, "cid-twice"))
    cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert)
    second = deliver(server, user, make_replies.message(
        f"Re: Votre certificat {MZP}", f"Hello again,\n\nDownload your certificate: {cert_url}\n"
        f"Download the CA certificate: {ca_url}\nClient ID: cid-twice\n").as_bytes())
    before = raw.snapshot()
    r = cli("replies")
    one, two = uid_lines(r)
    assert "UID 1 (" in one and f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in one, r.out
    assert "UID 2 (" in two and f"already current for {MZP}/fleet, moved: serial {serial_of(leaf)} is already " \
        "current [its certificate is the current one" in two, r.out
    assert_imported(raw, leaf, authority.cert, "cid-twice", before)
    assert raw.meta(f"{CRED}/current")["current_version"] == 1  # written once
    assert_moved(server, user, [first, second])
    assert_state(raw, server, user, 2)


def test_the_same_reply_with_one_time_links_sent_twice_imports_once_and_both_are_moved(cli, raw, box, authority,
                                                                                       files):
    """The authority sent the same e-mail twice: its link was used by the first import (reusable links: the test
    above, with the second reply's own links)."""
    server, user = box
    files.one_time = True
    request = pending_request(cli)
    leaf = issue(authority, request)
    cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert)
    data = links_reply(cert_url, ca_url, "cid-resent")
    stored = [deliver(server, user, data), deliver(server, user, data)]
    before = raw.snapshot()
    r = cli("replies")
    one, two = uid_lines(r)
    assert "UID 1 (" in one and f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in one, r.out
    assert "UID 2 (" in two and f"already current for {MZP}/fleet, moved" in two, r.out
    assert_imported(raw, leaf, authority.cert, "cid-resent", before)
    assert_moved(server, user, stored)


# ---------------------------------------------------------------- 7: forged links


def test_forged_links_are_refused_without_downloading_and_stay_flagged(cli, raw, box, authority, files):
    server, user = box
    request = pending_request(cli)
    leaf = issue(authority, request)
    good_cert, good_ca, tokens = serve(cli, files, leaf, authority.cert)
    # 1. The real file, but behind a host that is not allowed (the server's address instead of its name).
    direct = good_cert.replace("https://localhost:", "https://127.0.0.1:")
    # 2, 3. Allowed links that redirect to a loopback address, and to another host.
    hop = [token(cli), token(cli)]
    files.routes["/d/to-loopback"] = ("redirect", direct)
    files.routes["/d/to-elsewhere"] = ("redirect", f"https://pki.stellantis-download.example/d/x?token={hop[1]}")
    links = [direct, files.url(f"/d/to-loopback?token={hop[0]}"), files.url(f"/d/to-elsewhere?token={hop[0]}")]
    stored = [deliver(server, user, make_replies.message(
        f"Your certificate for {MZP} ({n})", f"Hello,\n\nDownload your certificate: {url}\n\n"
        f"Client ID: cid-forged-{n}\n").as_bytes()) for n, url in enumerate(links, 1)]
    before = raw.snapshot()
    connections = files.connections
    r = cli("replies")
    lines = uid_lines(r)
    assert len(lines) == 3, r.out
    allowed = "is not one of the allowed download hosts (localhost); check the link really comes from the authority"
    assert "UID 1 (" in lines[0] and f"https://127.0.0.1:{files.port}/d/" in lines[0], lines[0]
    assert f"host 127.0.0.1 {allowed}" in lines[0]
    assert "UID 2 (" in lines[1] and f"{files.url('/d/to-loopback')}: redirected to https://127.0.0.1:" in lines[1]
    assert f"host 127.0.0.1 {allowed}" in lines[1]
    assert "UID 3 (" in lines[2] and "redirected to https://pki.stellantis-download.example/d/x:" in lines[2]
    assert f"host pki.stellantis-download.example {allowed}" in lines[2]
    assert all("left in place" in ln and "refused for" in ln for ln in lines), r.out
    assert not any(t in r.text for t in tokens + hop) and "token=" not in r.text
    # Only the two allowed links were requested; the forbidden host and the redirect targets never were.
    assert files.requests == ["/d/to-loopback?token=" + hop[0], "/d/to-elsewhere?token=" + hop[0]]
    assert files.connections - connections == 2
    # Nothing imported: only the mailbox state moved on; the messages stay, flagged, and come back next run.
    assert changed(before, raw.snapshot()) == {f"{MZP}/mailbox-state"}
    assert raw.read(f"{MZP}/mailbox-state")["data"]["left"]["refused"] == 3
    assert raw.read(f"{CRED}/current") is None
    assert server.fetch_all(user, "INBOX") == stored
    assert all("$PartnercertsRefused" in f and not (f & (KEYWORDS - {"$PartnercertsRefused"}))
               for f in server.flags(user, "INBOX").values())
    again = uid_lines(cli("replies"))
    assert len(again) == 3 and all("refused for" in ln for ln in again)


def test_a_refused_download_names_the_partner_in_its_line(cli, box, files):
    server, user = box
    deliver(server, user, make_replies.message(
        f"Your certificate for {MZP}", f"Download your certificate: https://pki.forged.example/d/1?token={token(cli)}\n"
        "Client ID: cid-x\n").as_bytes())
    (line,) = uid_lines(cli("replies"))
    assert "refused for , " not in line and f"refused for {MZP}" in line, line


# ---------------------------------------------------------------- 8: over the size limit


def test_a_message_over_the_size_limit_is_unreadable_flagged_and_left(cli, raw, box, authority):
    server, user = box
    cli.env["PARTNERCERTS_MAX_EML_BYTES"] = "8192"
    request = pending_request(cli)
    leaf = issue(authority, request)
    padding = "\n\n" + "This line pads the message far over the limit set for this test.\n" * 300
    big = deliver(server, user, attached_reply(leaf, authority.cert, "cid-big", text=padding))
    small = deliver(server, user, attached_reply(leaf, authority.cert, "cid-small"))
    assert len(big) > 8192 > len(small)
    before = raw.snapshot()
    r = cli("replies")
    one, two = uid_lines(r)
    assert "UID 1 (" in one and f": cannot be read, left in place: {len(big)} bytes, over the 8192-byte limit " \
        "(PARTNERCERTS_MAX_EML_BYTES)" in one, one
    assert "UID 2 (" in two and f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in two, two
    assert raw.read(f"{CRED}/current")["data"]["client_id"] == "cid-small"
    assert changed(before, raw.snapshot()) == {f"{CRED}/current", f"{CRED}/pending", f"index/{MZP}.fleet",
                                               f"{CRED}/history/{serial_of(leaf)}", f"{MZP}/mailbox-state"}
    assert raw.read(f"{MZP}/mailbox-state")["data"]["left"]["unreadable"] == 1
    assert server.fetch_all(user, "INBOX") == [big] and server.fetch_all(user, PROCESSED) == [small]
    assert server.flags(user, "INBOX")[1] & KEYWORDS == {"$PartnercertsUnreadable"}
    assert "\\Seen" not in server.flags(user, "INBOX")[1]  # never fetched: not marked read either
    # Reported again by the next run, still left.
    (again,) = uid_lines(cli("replies"))
    assert "UID 1 (" in again and "cannot be read, left in place" in again
    assert server.folder_uids(user, "INBOX") == [1]


def test_an_oversized_message_is_shown_with_its_subject_and_date(cli, box):
    server, user = box
    cli.env["PARTNERCERTS_MAX_EML_BYTES"] = "1024"
    deliver(server, user, make_replies.message("Question about your request", "Which application is it for?\n"
                                               + "padding padding padding padding\n" * 100).as_bytes())
    (line,) = uid_lines(cli("replies"))
    assert "cannot be read, left in place" in line
    assert "(no subject)" not in line and "'Question about your request'" in line, line


# ---------------------------------------------------------------- 9: the server goes away


def test_a_mailbox_that_went_down_after_delivery_changes_nothing(cli, raw, box, authority):
    server, user = box
    request = pending_request(cli)
    deliver(server, user, attached_reply(issue(authority, request), authority.cert, "cid-down"))
    before = raw.snapshot()
    assert raw.read(f"{MZP}/mailbox-state") is None
    server.stop()
    r = cli("replies", ok=False)
    assert r.rc == 4, r.text
    (failed,) = [ln.strip() for ln in r.err.splitlines() if "cannot connect" in ln]
    assert failed == f"FAILED: {server_name(server, user)}: cannot connect: [Errno 111] Connection refused", r.err
    assert r.err.strip().splitlines()[-1].startswith(f"error: could not read all of {server_name(server, user)}")
    assert uid_lines(r) == []
    assert unlocked(raw.snapshot()) == unlocked(before) and raw.read(f"{MZP}/mailbox-state") is None


def test_a_mailbox_that_cannot_be_reached_is_not_said_to_have_no_new_message(cli, box):
    server, user = box
    server.stop()
    r = cli("replies", ok=False)
    assert r.rc == 4 and "cannot connect" in r.err, r.text
    assert "no new message" not in r.out, r.out


def restart(server: DevDovecot) -> DevDovecot:
    """A new dovecot on the same home: same Maildirs and users (new ports, a new CA at the same path)."""
    return DevDovecot(server.home, users=dict(server.users))


def test_a_connection_dropped_between_import_and_move_is_recovered_by_the_next_run(cli, raw, box, authority, files,
                                                                                    inventory):
    """The server dies while the certificate downloads: the import happens, the move cannot; the folder state is
    not advanced, so the next run (on the server back up) finds the message, sees it current and moves it."""
    server, user = box
    request = pending_request(cli)
    leaf = issue(authority, request)
    cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert, on_cert=server.stop)
    stored = deliver(server, user, links_reply(cert_url, ca_url, "cid-drop"))
    before = raw.snapshot()
    r = cli("replies", ok=False)
    assert r.rc == 4, r.text
    (line,) = uid_lines(r)
    assert "UID 1 (" in line and f"imported for {MZP}/fleet: serial {serial_of(leaf)}" in line, r.out
    (failed,) = [ln.strip() for ln in r.err.splitlines() if "FAILED" in ln]
    assert failed.startswith(f"FAILED: {server_name(server, user)}: ") and "cannot" in failed, r.err
    assert raw.read(f"{MZP}/mailbox-state") is None  # not advanced
    assert {f"{CRED}/current", f"{CRED}/pending"} <= changed(before, raw.snapshot())
    back = restart(server)
    try:
        set_partner(inventory, reply_mailbox=mailbox_setting(inventory, port=back.imaps_port))
        assert back.fetch_all(user, "INBOX") == [stored]
        r2 = cli("replies")
        (line2,) = uid_lines(r2)
        assert "UID 1 (" in line2 and f"already current for {MZP}/fleet, moved" in line2, r2.out
        assert raw.meta(f"{CRED}/current")["current_version"] == 1
        assert_moved(back, user, [stored])
        assert_state(raw, back, user, 1)
    finally:
        back.stop()


# ---------------------------------------------------------------- 10: SIGKILL between import and move


@pytest.mark.parametrize("one_time", LINKS)
def test_a_run_killed_between_import_and_move_is_finished_by_the_next_run(cli, raw, box, authority, files,
                                                                          inventory, one_time):
    """dovecot is frozen (SIGSTOP) while the certificate downloads, so the run imports and then blocks on its
    move; it is killed there. The next run takes over the dead run's lock, sees the certificate current and moves
    the message; current stays at version 1."""
    server, user = box
    files.one_time = one_time
    set_partner(inventory, reply_mailbox=mailbox_setting(inventory, timeout=20))
    request = pending_request(cli)
    leaf = issue(authority, request)
    group = server.proc.pid  # the dovecot this test started, in its own process group

    def freeze():
        os.killpg(group, signal.SIGSTOP)
    cert_url, ca_url, tokens = serve(cli, files, leaf, authority.cert, on_cert=freeze)
    stored = deliver(server, user, links_reply(cert_url, ca_url, "cid-killed"))
    run = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "replies"], env=cli.env,
                           cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while (raw.read(f"{CRED}/pending") or {}).get("data", {}).get("state") != "consumed":
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its import"
            time.sleep(0.05)
        time.sleep(0.5)  # past the index write: blocked on the frozen IMAP server, before the move
        assert run.poll() is None
        run.send_signal(signal.SIGKILL)
        out, err = run.communicate(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        os.killpg(group, signal.SIGCONT)
    cli.assert_clean(Result(run.returncode, out, err))
    assert run.returncode == -signal.SIGKILL
    assert raw.meta(f"{CRED}/current")["current_version"] == 1
    assert raw.read(f"{MZP}/mailbox-state") is None
    assert raw.read("locks/rotate")["data"].get("pid") == str(run.pid)  # left held by the dead run
    assert server.fetch_all(user, "INBOX") == [stored]

    r = cli("replies")
    (line,) = uid_lines(r)
    assert "a rotation holds the lock" not in r.out
    assert "UID 1 (" in line and f"already current for {MZP}/fleet, moved: serial {serial_of(leaf)} is already " \
        "current" in line, r.out
    assert raw.meta(f"{CRED}/current")["current_version"] == 1
    assert raw.read(f"{CRED}/current")["data"]["client_id"] == "cid-killed"
    assert raw.read(f"{CRED}/pending")["data"]["state"] == "consumed"
    assert_moved(server, user, [stored])
    assert_state(raw, server, user, 1)


def links_reply(cert_url: str, ca_url: str, client_id: str) -> bytes:
    return make_replies.message(f"Your certificate for {MZP}",
                                f"Hello,\n\nDownload your certificate:\n{cert_url}\n\n"
                                f"Download the CA certificate: {ca_url}\n\nClient ID: {client_id}\n").as_bytes()
