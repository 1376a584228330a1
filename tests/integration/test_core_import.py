"""`import-cert`: the README flow with a user's own CA (`openssl x509 -req`), every shape, and the gate."""
import datetime as dt
import json
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from partnercerts.profile import Subject
from tests.integration.test_core_csr import CRED, csr_pem
from tests.pki import CA

SUBJECT = Subject(mzp="MZP654321", country="FR", state="Île-de-France", locality="Boulogne-Billancourt",
                  organization="Free2Move, SAS", email="pki@free2move.example")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


@pytest.fixture
def own_ca(tmp_path):
    """A CA made with openssl by hand, the way a user of the README would."""
    d = tmp_path / "ca"
    d.mkdir()
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out",
       str(d / "ca.crt"), "-days", "3650", "-subj", "/O=My Test CA/CN=My Test CA")
    (d / "client.ext").write_text("extendedKeyUsage = clientAuth\nbasicConstraints = CA:FALSE\n")
    return d


def openssl_sign(ca_dir, csr_file, out, days=365, fmt="PEM"):
    sh("openssl", "x509", "-req", "-in", str(csr_file), "-CA", str(ca_dir / "ca.crt"), "-CAkey",
       str(ca_dir / "ca.key"), "-CAcreateserial", "-days", str(days), "-extfile", str(ca_dir / "client.ext"),
       "-outform", fmt, "-out", str(out))
    return out


def test_readme_flow_own_ca_import_status_and_history(cli, raw, own_ca, tmp_path):
    cli("csr", "--mzp", "MZP654321", "--app", "fleet", "--out", str(tmp_path / "fleet.csr"))
    cert = openssl_sign(own_ca, tmp_path / "fleet.csr", tmp_path / "fleet.crt")
    r = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(cert), "--ca",
            str(own_ca / "ca.crt"), "--client-id", "app-1234-abcd")
    serial = sh("openssl", "x509", "-in", str(cert), "-noout", "-serial").stdout.decode().strip().split("=")[1]
    assert f"imported serial {serial}" in r.out
    rows = json.loads(cli("status", "--json").out)
    fleet = next(x for x in rows if x["app"] == "fleet")
    assert set(fleet) == {"mzp", "app", "client_id", "state", "serial", "not_after", "days_left", "pending_since",
                          "hosts_in_sync", "hosts_total", "pending_submitted_at", "pending_age_days",
                          "turnaround_median_days", "subject_notes", "subject_change_accepted_by",
                          "pending_attention", "pending_message_id", "pending_times_sent", "pending_stage",
                          "pending_submission", "pending_last_sent_at", "pending_waiting_days",
                          "pending_reminded_at", "pending_times_reminded", "withdrawn_at", "withdrawn_by"}
    # `openssl x509 -req` signs the subject verbatim: nothing to warn about.
    assert fleet["subject_notes"] == [] and fleet["subject_change_accepted_by"] is None
    assert "changed the subject" not in r.err
    assert fleet["state"] == "active" and fleet["serial"] == serial and fleet["client_id"] == "app-1234-abcd"
    assert fleet["pending_since"] is None and fleet["not_after"].endswith("+00:00")
    end = sh("openssl", "x509", "-in", str(cert), "-noout", "-enddate").stdout.decode().strip().split("=")[1]
    assert dt.datetime.fromisoformat(fleet["not_after"]) == \
        dt.datetime.strptime(end, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.timezone.utc)
    # Raw layout: current holds the key of the former pending; history keeps the record; pending is a tombstone.
    cur = raw.read(f"{CRED}/current")["data"]
    pend1 = raw.read(f"{CRED}/pending", version=1)["data"]
    assert cur["key_pem"] == pend1["key_pem"] and cur["serial"] == serial
    assert raw.read(f"{CRED}/history/{serial}")["data"]["fingerprint_sha256"] == cur["fingerprint_sha256"]
    assert raw.read(f"{CRED}/pending")["data"]["state"] == "consumed"
    fp = sh("openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256").stdout.decode()
    assert fp.strip().split("=")[1].replace(":", "").lower() == cur["fingerprint_sha256"]
    # Importing the same file again is harmless.
    again = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(cert))
    assert "already current; nothing changed" in again.out
    # A renewal keeps the Client ID and moves the first certificate into the history only.
    cli("csr", "--mzp", "MZP654321", "--app", "fleet", "--out", str(tmp_path / "renew.csr"))
    cert2 = openssl_sign(own_ca, tmp_path / "renew.csr", tmp_path / "renew.crt")
    cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(cert2))
    cur2 = raw.read(f"{CRED}/current")
    assert cur2["metadata"]["version"] == 2 and cur2["data"]["client_id"] == "app-1234-abcd"
    assert raw.read(f"{CRED}/current", version=1)["data"]["serial"] == serial
    assert len(raw.c.secrets.kv.v2.list_secrets(f"partnercerts/{CRED}/history", mount_point=raw.mount)
               ["data"]["keys"]) == 2


@pytest.mark.parametrize("fmt", ["DER", "PKCS7-PEM", "PKCS7-DER", "PEM-with-chain"])
def test_every_shape_imports(cli, raw, own_ca, tmp_path, fmt):
    cli("csr", "--mzp", "MZP654321", "--app", "fleet", "--out", str(tmp_path / "f.csr"))
    pem = openssl_sign(own_ca, tmp_path / "f.csr", tmp_path / "f.pem")
    target = tmp_path / "reply"
    if fmt == "DER":
        sh("openssl", "x509", "-in", str(pem), "-outform", "DER", "-out", str(target))
    elif fmt.startswith("PKCS7"):
        sh("openssl", "crl2pkcs7", "-nocrl", "-certfile", str(pem), "-certfile", str(own_ca / "ca.crt"),
           "-outform", fmt.split("-")[1], "-out", str(target))
    else:
        target.write_bytes(pem.read_bytes() + (own_ca / "ca.crt").read_bytes())
    cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(target), "--ca",
        str(own_ca / "ca.crt"), "--client-id", "cid")
    assert raw.read(f"{CRED}/current")["data"]["cert_pem"] == pem.read_text()


def _cert_for(pem_csr: str, **kw) -> bytes:
    req = x509.load_pem_x509_csr(pem_csr.encode())
    return CAS["ca"].issue(req.public_key(), kw.pop("subject", req.subject), now=dt.datetime.now(dt.timezone.utc),
                           **kw).public_bytes(serialization.Encoding.PEM)


CAS: dict = {}
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.mark.parametrize("case,match", [
    ("other_key", "no certificate is for the pending key"),
    ("other_subject", "changed who the certificate identifies (O 'Free2Move SAS' (CSR: 'Free2Move, SAS'))"),
    ("expired", "expired on"),
    ("not_yet_valid", "not valid before"),
    ("too_short", "under the 30-day minimum"),
    ("server_only_eku", "lacks clientAuth"),
    ("wrong_ca", "chain does not verify to the CA"),
    ("garbage", "not a readable certificate"),
    ("empty", "empty input"),
    ("oversized", "-byte limit"),
    ("missing_file", "cannot read"),
    ("bad_client_id", "not a Client ID"),
    ("no_client_id", "needs its Client ID"),
])
def test_gate_refusals_leave_vault_unchanged(cli, raw, tmp_path, case, match):
    CAS.setdefault("ca", CA("Gate Test CA"))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(CAS["ca"].cert.public_bytes(serialization.Encoding.PEM))
    pem = csr_pem(cli("csr", "--mzp", "MZP654321", "--app", "fleet").out)
    other = Subject(**{**SUBJECT.__dict__, "organization": "Free2Move SAS"}).to_name()
    body = {
        "other_key": lambda: CAS["ca"].issue(CA().key.public_key(), x509.load_pem_x509_csr(pem.encode()).subject,
                                             now=NOW).public_bytes(serialization.Encoding.PEM),
        "other_subject": lambda: _cert_for(pem, subject=other),
        "expired": lambda: _cert_for(pem, not_before=NOW - dt.timedelta(days=400)),
        "not_yet_valid": lambda: _cert_for(pem, not_before=NOW + dt.timedelta(days=3)),
        "too_short": lambda: _cert_for(pem, days=7),
        "server_only_eku": lambda: _cert_for(pem, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        "wrong_ca": lambda: CA("Impostor").issue(x509.load_pem_x509_csr(pem.encode()).public_key(),
                                                 x509.load_pem_x509_csr(pem.encode()).subject, now=NOW)
        .public_bytes(serialization.Encoding.PEM),
        "garbage": lambda: b"<html>Your download link has expired</html>",
        "empty": lambda: b"",
        "oversized": lambda: b"-----BEGIN CERTIFICATE-----\n" + b"A" * (2 << 20),
        "missing_file": lambda: None,
        "bad_client_id": lambda: _cert_for(pem),
        "no_client_id": lambda: _cert_for(pem),
    }[case]()
    cert_file = tmp_path / "reply.crt"
    if body is not None:
        cert_file.write_bytes(body)
    before = raw.snapshot()
    args = ["import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(cert_file), "--ca", str(ca_file)]
    if case == "bad_client_id":
        args += ["--client-id", "x; rm -rf /"]
    elif case != "no_client_id":
        args += ["--client-id", "cid-1"]
    r = cli(*args, ok=False)
    # A bad argument or file is the user's (exit 2); a certificate the gate refuses is a gate refusal (exit 6).
    assert r.rc == (2 if case in ("missing_file", "bad_client_id", "no_client_id") else 6), r.text
    assert match in r.err
    assert r.err.count("\n") == 1 and r.err.startswith("error: ")
    assert raw.snapshot() == before


def test_import_without_pending_names_the_command(cli, raw, own_ca, tmp_path):
    (tmp_path / "x.crt").write_bytes((own_ca / "ca.crt").read_bytes())
    r = cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(tmp_path / "x.crt"), ok=False)
    assert r.rc == 2 and "scripts/inv csr --mzp MZP654321 --app fleet" in r.err
    assert raw.snapshot() == {}
