"""The shapes `openssl ca` and OpenBao's PKI engine cannot be made to sign, built with `cryptography`'s builder
(SHA-1 with `openssl x509 -req`), each through the real `import-cert` against a real OpenBao: the exact one
line printed, the exit code, and Vault unchanged after a refusal (a snapshot read by a separate client)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.test_core_csr import CRED, csr_pem
from tests.integration.test_rotation_prod import set_global, webhook_server

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
HINT = "if the authority confirms the change, import it again with --accept-subject-change"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shapes Test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ku(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=True,
                         encipher_only=False, decipher_only=False)


class Authority:
    """One CA certificate and its key, built the way a real CA is (SKI, AKI, keyUsage, basicConstraints)."""

    def __init__(self, cn: str, issuer: "Authority | None" = None, *, ca: bool = True, cert_sign: bool = True,
                 path_length: int | None = None, not_before: dt.datetime | None = None, days: int = 3650):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        signer = issuer or self
        b = (x509.CertificateBuilder().subject_name(self.name).issuer_name(signer.name)
             .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(not_before or NOW - dt.timedelta(days=1))
             .not_valid_after((not_before or NOW) + dt.timedelta(days=days))
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                            critical=False)
             .add_extension(_ku(cert_sign), critical=True))
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        self.cert = b.sign(signer.key, hashes.SHA256())

    def issue(self, public_key, subject: x509.Name, san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
             .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(minutes=5))
             .not_valid_after(NOW + dt.timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(self.key, hashes.SHA256())


def _pem(*items: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in items)


@pytest.fixture
def hook():
    url, received, stop = webhook_server()
    yield url, received
    stop()


@pytest.fixture(scope="module")
def root() -> Authority:
    return Authority("Shapes Root CA")


@pytest.fixture
def request_(cli, tmp_path) -> x509.CertificateSigningRequest:
    """The pending CSR the toolkit made (its key stays in Vault)."""
    return x509.load_pem_x509_csr(csr_pem(cli("csr", "--mzp", "MZP654321", "--app", "fleet").out).encode())


def _replaced(name: x509.Name, oid, value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) if a.oid == oid else a for a in name])


def _import(cli, tmp_path, bundle: bytes, ca: x509.Certificate, *extra: str):
    cert, ca_file = tmp_path / "reply.pem", tmp_path / "ca.pem"
    cert.write_bytes(bundle)
    ca_file.write_bytes(_pem(ca))
    return cert, cli("import-cert", "--mzp", "MZP654321", "--app", "fleet", "--cert", str(cert), "--ca", str(ca_file),
                     "--client-id", "cid-shapes", *extra, ok=False)


def _sha1_signed(tmp_path, request: x509.CertificateSigningRequest) -> tuple[bytes, x509.Certificate]:
    """A leaf signed with SHA-1 by `openssl x509 -req` (cryptography refuses to sign with SHA-1)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("SHA-1 Root")).issuer_name(_name("SHA-1 Root"))
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(_ku(True), critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "sha1.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (tmp_path / "sha1-ca.pem").write_bytes(_pem(ca))
    (tmp_path / "req.csr").write_bytes(request.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ext.cnf").write_text("extendedKeyUsage = clientAuth\nbasicConstraints = CA:FALSE\n")
    subprocess.run(["openssl", "x509", "-req", "-sha1", "-in", str(tmp_path / "req.csr"), "-CA",
                    str(tmp_path / "sha1-ca.pem"), "-CAkey", str(tmp_path / "sha1.key"), "-set_serial", "4242",
                    "-days", "365", "-extfile", str(tmp_path / "ext.cnf"), "-out", str(tmp_path / "sha1.pem")],
                   check=True, capture_output=True)
    (tmp_path / "sha1.key").unlink()
    text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "sha1.pem"), "-noout", "-text"], check=True,
                          capture_output=True, text=True).stdout
    assert "sha1WithRSAEncryption" in text  # the independent reader agrees it is a SHA-1 signature
    return (tmp_path / "sha1.pem").read_bytes(), ca


REFUSALS = {
    "changed_cn": "CN is 'MZP999999', not the MZP 'MZP654321' of the CSR; a certificate for another login cannot "
                  "authenticate this partner, ask the authority to sign the CSR for its own CN",
    "changed_ou": "the authority changed who the certificate identifies (OU 'Partner Programs' (CSR: 'Programs "
                  "Partners')) in subject 'C=FR, ST=Île-de-France, L=Boulogne-Billancourt, O=Free2Move\\, SAS, "
                  "OU=Partner Programs, CN=MZP654321, emailAddress=pki@free2move.example'; check the change with "
                  f"the authority; {HINT}",
    "another_key": None,  # the message names key hashes: checked by its start
    "issuer_without_keycertsign": "chain does not verify to the CA (an issuer's keyUsage lacks keyCertSign, so it "
                                  "may not sign certificates); ask the authority for its CA certificates",
    "issuer_not_a_ca": "chain does not verify to the CA (an issuer has no basicConstraints, so it is not a CA); "
                       "ask the authority for its CA certificates",
    "past_path_length": "chain does not verify to the CA (an intermediate is deeper than a CA's path length "
                        "constraint allows); ask the authority for the chain its CA permits",
    "expired_intermediate": "chain does not verify to the CA (a CA certificate on the path is expired or not yet "
                            "valid); ask the authority for its current chain (and check this machine's clock)",
    "sha1_signature": "chain does not verify to the CA (a certificate on the path is signed with a weak or "
                      "unsupported algorithm (SHA-1, MD5, DSA or EdDSA)); ask the authority to sign with SHA-256 "
                      "or stronger",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_shape_prints_one_exact_line_and_leaves_vault_unchanged(cli, raw, tmp_path, root, request_, case):
    pub, subject = request_.public_key(), request_.subject
    anchor = root.cert
    if case == "changed_cn":
        bundle = _pem(root.issue(pub, _replaced(subject, NameOID.COMMON_NAME, "MZP999999")))
    elif case == "changed_ou":
        bundle = _pem(root.issue(pub, _replaced(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "Partner Programs")))
    elif case == "another_key":
        bundle = _pem(root.issue(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
                                 subject))
    elif case == "issuer_without_keycertsign":
        mid = Authority("Shapes No-keyCertSign Intermediate", root, cert_sign=False)
        bundle = _pem(mid.issue(pub, subject), mid.cert)
    elif case == "issuer_not_a_ca":
        mid = Authority("Shapes Not-a-CA Issuer", root, ca=False)
        bundle = _pem(mid.issue(pub, subject), mid.cert)
    elif case == "past_path_length":
        top = Authority("Shapes Root pathlen 0", path_length=0)
        mid = Authority("Shapes Intermediate under pathlen 0", top)
        bundle, anchor = _pem(mid.issue(pub, subject), mid.cert), top.cert
    elif case == "expired_intermediate":
        mid = Authority("Shapes Expired Intermediate", root, not_before=NOW - dt.timedelta(days=400), days=365)
        bundle = _pem(mid.issue(pub, subject), mid.cert)
    else:
        bundle, anchor = _sha1_signed(tmp_path, request_)
    before = raw.snapshot()
    cert, r = _import(cli, tmp_path, bundle, anchor)
    assert r.rc == 6, r.text
    if REFUSALS[case] is None:
        assert r.err.startswith(f"error: {cert}: no certificate is for the pending key (pending key SHA-256 ")
        assert r.err.rstrip().endswith("import the certificate signed for the CSR this tool made")
    else:
        assert r.err == f"error: {cert}: {REFUSALS[case]}\n"
    assert raw.snapshot() == before
    if case in ("changed_cn", "another_key", "sha1_signature"):
        # No acceptance turns these into an import: only identity changes of OU, O, C can be accepted.
        _, again = _import(cli, tmp_path, bundle, anchor, "--accept-subject-change")
        assert again.rc == 6 and raw.snapshot() == before


def test_re_encoded_moved_and_added_attributes_import_with_one_warning_naming_each(cli, raw, tmp_path, root,
                                                                                   request_):
    """Country re-encoded (UTF8String, lower case), blanks in O, e-mail moved to the SAN, L dropped, a DNS SAN
    added and the attributes reordered: all accepted, each named; stored with the certificate; shown by status."""
    given = {a.oid: a.value for a in request_.subject}
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, given[NameOID.COMMON_NAME]),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, given[NameOID.ORGANIZATIONAL_UNIT_NAME]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Free2Move,  SAS"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, given[NameOID.STATE_OR_PROVINCE_NAME]),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "fr", _type=x509.name._ASN1Type.UTF8String),
    ])
    san = [x509.RFC822Name("pki@free2move.example"), x509.DNSName("fleet.free2move.example")]
    leaf = root.issue(request_.public_key(), subject, san=san)
    cert, r = _import(cli, tmp_path, _pem(leaf), root.cert)
    assert r.rc == 0, r.text
    notes = ["C re-encoded: 'fr' as UTF8String (CSR: 'FR' as PrintableString)",
             "L dropped (CSR: 'Boulogne-Billancourt')",
             "O written 'Free2Move,  SAS' (CSR: 'Free2Move, SAS')",
             "emailAddress moved to the SAN (email:pki@free2move.example)",
             "attributes reordered: CN, OU, O, ST, C (CSR: C, ST, O, OU, CN)",
             "SAN added: DNS:fleet.free2move.example"]
    warning = ("warning: MZP654321/fleet: the authority changed the subject the CSR asked for, accepted as it does "
               "not change who the certificate identifies: " + "; ".join(notes))
    assert warning in r.err.splitlines(), r.err
    serial = format(leaf.serial_number, "X")
    serial = serial if len(serial) % 2 == 0 else "0" + serial
    assert f"imported serial {serial}" in r.out
    current = raw.read(f"{CRED}/current")["data"]
    assert current["subject_notes"] == notes and "subject_change" not in current
    assert raw.read(f"{CRED}/history/{serial}")["data"]["subject_notes"] == notes
    row = next(x for x in json.loads(cli("status", "--json").out) if x["app"] == "fleet")
    assert row["subject_notes"] == notes and row["subject_change_accepted_by"] is None
    text = cli("status").err
    assert f"serial {serial}: the authority changed the subject: " + "; ".join(notes) in text


def test_an_accepted_identity_change_is_recorded_and_notified_with_the_subject_notes(cli, raw, inventory, tmp_path,
                                                                                    root, request_, hook):
    """O changed by the authority: refused, then accepted by a human; Vault records who, when and what, and the
    certificate_imported notification carries the change and the other differences."""
    url, received = hook
    set_global(inventory, partnercerts_notify={"webhook": {"url": url}})
    subject = x509.Name([a for a in _replaced(request_.subject, NameOID.ORGANIZATION_NAME, "Free2Move SAS")
                         if a.oid != NameOID.LOCALITY_NAME])
    bundle = _pem(root.issue(request_.public_key(), subject))
    before = raw.snapshot()
    cert, refused = _import(cli, tmp_path, bundle, root.cert)
    assert refused.rc == 6 and "(O 'Free2Move SAS' (CSR: 'Free2Move, SAS'))" in refused.err
    assert raw.snapshot() == before and received == []
    _, r = _import(cli, tmp_path, bundle, root.cert, "--accept-subject-change")
    assert r.rc == 0, r.text
    current = raw.read(f"{CRED}/current")["data"]
    change = current["subject_change"]
    assert set(change) == {"accepted_by", "accepted_at", "changes"}
    assert change["changes"] == ["O 'Free2Move SAS' (CSR: 'Free2Move, SAS')"]
    person = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    assert change["accepted_by"].startswith(f"{person}@") and "(Vault token " in change["accepted_by"]
    assert dt.datetime.fromisoformat(change["accepted_at"]) >= NOW
    assert current["subject_notes"] == ["L dropped (CSR: 'Boulogne-Billancourt')"]
    assert (f"warning: MZP654321/fleet: identity change accepted by {change['accepted_by']} and recorded in Vault: "
            "O 'Free2Move SAS' (CSR: 'Free2Move, SAS')") in r.err.splitlines()
    serial = current["serial"]
    assert raw.read(f"{CRED}/history/{serial}")["data"]["subject_change"] == change
    row = next(x for x in json.loads(cli("status", "--json").out) if x["app"] == "fleet")
    assert row["subject_change_accepted_by"] == change["accepted_by"]
    (imported,) = [e for batch in received for e in batch["events"] if e["kind"] == "certificate_imported"]
    assert imported["details"]["subject_notes"] == ["L dropped (CSR: 'Boulogne-Billancourt')"]
    assert imported["details"]["subject_change"] == change["changes"]
    assert imported["details"]["subject_change_accepted_by"] == change["accepted_by"]


def test_status_shows_notes_with_semicolons_whole_and_says_when_more_are_in_vault(cli, raw, tmp_path, root,
                                                                                  request_):
    """A value holding '; ' stays one note; past what the index may hold, status says how many more Vault has."""
    added = [NameOID.TITLE, NameOID.POSTAL_CODE, NameOID.GIVEN_NAME, NameOID.SURNAME, NameOID.PSEUDONYM,
             NameOID.SERIAL_NUMBER, NameOID.GENERATION_QUALIFIER, NameOID.DN_QUALIFIER, NameOID.USER_ID,
             NameOID.BUSINESS_CATEGORY]
    subject = x509.Name(list(_replaced(request_.subject, NameOID.LOCALITY_NAME, "Paris; 8e"))
                        + [x509.NameAttribute(oid, f"value {n} of a long attribute the authority added")
                           for n, oid in enumerate(added)])
    _, r = _import(cli, tmp_path, _pem(root.issue(request_.public_key(), subject)), root.cert)
    assert r.rc == 0, r.text
    notes = raw.read(f"{CRED}/current")["data"]["subject_notes"]
    assert notes[0] == "L 'Paris; 8e' (CSR: 'Boulogne-Billancourt')"
    assert notes[1:] == [f"{name} 'value {n} of a long attribute the authority added' added" for n, name in
                         enumerate(["title", "postalCode", "GN", "SN", "pseudonym", "serialNumber",
                                    "generationQualifier", "dnQualifier", "UID", "businessCategory"])]
    row = next(x for x in json.loads(cli("status", "--json").out) if x["app"] == "fleet")
    shown = row["subject_notes"]
    assert len(json.dumps(shown, ensure_ascii=False)) <= 500 and 5 <= len(shown) < len(notes)
    assert shown[:-1] == notes[:len(shown) - 1]
    assert shown[-1] == f"and {len(notes) - len(shown) + 1} more, in the certificate's record in Vault"
