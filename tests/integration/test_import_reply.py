"""`import-cert --url` and `--eml`: the authority's reply as it arrives, through the same gate."""
import datetime as dt
from email.message import EmailMessage

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.integration.test_core_csr import CRED, csr_pem
from tests.integration.test_reply_fetch import start, stop
from tests.pki import CA

TOKEN = "tok-" + "9f" * 16


@pytest.fixture
def signed(cli, tmp_path):
    """A pending CSR signed by a test 'Stellantis' CA, the CA file, and an HTTPS server serving the certificate."""
    now = dt.datetime.now(dt.timezone.utc)
    pem = csr_pem(cli("csr", "--mzp", "MZP654321", "--app", "fleet").out)
    req = x509.load_pem_x509_csr(pem.encode())
    ca = CA("Test Stellantis CA", now=now)
    leaf = ca.issue(req.public_key(), req.subject, now=now)
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    download_ca = CA("Download server CA", now=now)
    (tmp_path / "download-ca.pem").write_bytes(download_ca.cert.public_bytes(serialization.Encoding.PEM))
    srv, thread = start(download_ca, tmp_path, leaf.public_bytes(serialization.Encoding.PEM))
    cli.env.update(PARTNERCERTS_DOWNLOAD_HOSTS="127.0.0.1",
                   PARTNERCERTS_DOWNLOAD_CAFILE=str(tmp_path / "download-ca.pem"))
    cli.secrets.append(TOKEN)
    yield leaf, ca, srv
    stop(srv, thread)


def test_url_download_imports_and_never_prints_the_link_token(cli, raw, signed, tmp_path):
    leaf, ca, srv = signed
    r = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--url", srv.url(f"/cert.pem?token={TOKEN}"),
            "--ca", str(tmp_path / "ca.pem"), "--client-id", "cid-url")
    assert "imported serial" in r.out
    assert raw.read(f"{CRED}/current")["data"]["fingerprint_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("path,extra,match,rc", [
    (f"/status/410?token={TOKEN}", {}, "the download link has expired or was already used", 2),
    ("/html", {}, "not a readable certificate", 6),  # downloaded, then refused by the gate
    ("/cert.pem", {"PARTNERCERTS_DOWNLOAD_HOSTS": ""}, "host", 2),
])
def test_bad_links_are_refused_and_change_nothing(cli, raw, signed, tmp_path, path, extra, match, rc):
    _, _, srv = signed
    before = raw.snapshot()
    url = srv.url(path) if "http" not in path else path
    r = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--url", url, "--ca", str(tmp_path / "ca.pem"),
            "--client-id", "x", ok=False, env=extra)
    assert r.rc == rc and match in r.err and r.err.count("\n") == 1, r.err
    assert raw.snapshot() == before
    http = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--url", "http://127.0.0.1/cert.pem", ok=False)
    assert http.rc == 2 and "https" in http.err.lower()


def reply_email(body: str, attachments=()) -> bytes:
    msg = EmailMessage()
    msg["From"] = "PSA B2B <noreply@mpsa.example>"
    msg["To"] = "pki@free2move.example"
    msg["Subject"] = "Votre certificat / Your certificate"
    msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="x-x509-ca-cert", filename=name)
    return bytes(msg)


def test_eml_with_attachments_and_client_id(cli, raw, signed, tmp_path):
    leaf, ca, _ = signed
    eml = tmp_path / "reply.eml"
    eml.write_bytes(reply_email("Bonjour,\n\nVeuillez trouver ci-joint votre certificat.\n"
                                "Identifiant client : cid-eml-42\n",
                                [("MZP654321.crt", leaf.public_bytes(serialization.Encoding.PEM)),
                                 ("stellantis-ca.der", ca.cert.public_bytes(serialization.Encoding.DER))]))
    cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--eml", str(eml))
    cur = raw.read(f"{CRED}/current")["data"]
    assert cur["client_id"] == "cid-eml-42"
    assert cur["ca_pem"] == ca.cert.public_bytes(serialization.Encoding.PEM).decode()


def test_eml_with_a_download_link(cli, raw, signed, tmp_path):
    leaf, ca, srv = signed
    eml = tmp_path / "reply.eml"
    eml.write_bytes(reply_email(f"Hello,\n\nDownload your certificate: {srv.url('/cert.pem?token=' + TOKEN)}\n"
                                "Client ID: cid-link-7\n",
                                [("ca.pem", ca.cert.public_bytes(serialization.Encoding.PEM))]))
    r = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--eml", str(eml))
    assert "cid-link-7" in r.out
    assert raw.read(f"{CRED}/current")["data"]["serial"]


def test_eml_without_certificate_is_refused(cli, raw, signed, tmp_path):
    eml = tmp_path / "reply.eml"
    eml.write_bytes(reply_email("Hello, your request is being processed.\n"))
    before = raw.snapshot()
    r = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--eml", str(eml), ok=False)
    assert r.rc == 2 and str(eml) in r.err and raw.snapshot() == before
    both = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--eml", str(eml), "--cert", "x", ok=False)
    assert both.rc == 2 and "exactly one of" in both.err
