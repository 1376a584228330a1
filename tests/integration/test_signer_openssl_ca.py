"""`import-cert` of certificates signed by a real `openssl ca`, for the CSR the CLI made, through the subject rules.

`openssl ca` rebuilds the subject from its policy (the attributes the policy lists, in the policy's order, unless
`preserve`), drops the e-mail address with `email_in_dn = no`, copies it to the SAN with `subjectAltName =
email:copy`, and `-subj` replaces the request's DN (typed by `string_mask`). Against a CA made by `openssl req -x509`
in a directory of its own, with the same `openssl ca` a user or an authority runs, this proves that:

- what `subjects.compare` accepts imports (exit 0) with the chain verified to that CA, and stderr is exactly one
  warning line naming each difference by the rules of its docstring (nothing at all when the subject is verbatim);
  each certificate's subject is read back with `openssl x509 -subject`, an independent reader, and the expected
  differences are hard-coded per case: L dropped (the stock policy_match), ST/L/emailAddress dropped (a C/O/OU/CN
  policy), emailAddress dropped (email_in_dn = no) or moved to the SAN (with email:copy), a SAN added (email:copy
  alone), the attributes reordered (a CN-first policy, preserve = no; none with preserve = yes), and values
  re-encoded (-subj under string_mask = pkix);
- the same differences are recorded in Vault (`current` and the `history/<serial>` record) and shown by
  `status --json`;
- a changed O is refused (exit 6, one line naming both values and `--accept-subject-change`) with Vault unchanged,
  then imported when accepted, the acceptance (who, when, what) recorded and shown;
- a changed CN is refused even with `--accept-subject-change`, and a T61String subject cryptography cannot read
  (string_mask = nombstr) is refused as malformed, Vault unchanged after each.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MZP, APP = "MZP654321", "fleet"
CRED = f"{MZP}/apps/{APP}"
NOTES_WARNING = (f"warning: {MZP}/{APP}: the authority changed the subject the CSR asked for, accepted as it does "
                 "not change who the certificate identifies: ")
# `openssl x509 -subject` as an independent reader: certificate order, short names, ", " between, RFC 2253 escapes.
READER = "esc_2253,esc_ctrl,utf8,dump_nostr,dump_der,sep_comma_plus_space,sname"
CSR_SUBJECT = ("C=FR, ST=Île-de-France, L=Boulogne-Billancourt, O=Free2Move\\, SAS, OU=Programs Partners, "
               "CN=MZP654321, emailAddress=pki@free2move.example")
CSR_DN = ("/C=FR/ST=Île-de-France/L=Boulogne-Billancourt/O=Free2Move, SAS/OU=Programs Partners/CN=MZP654321"
          "/emailAddress=pki@free2move.example")

ROOT_CNF = """\
[ req ]
prompt = no
utf8 = yes
string_mask = utf8only
distinguished_name = dn
x509_extensions = v3_root
[ dn ]
C = FR
ST = Île-de-France
O = Free2Move, SAS
CN = Test Partner Root CA
[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

CLIENT_EXT = """\
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

POLICIES = """\
[ policy_match ]
countryName = match
stateOrProvinceName = match
organizationName = match
organizationalUnitName = optional
commonName = supplied
emailAddress = optional
[ policy_anything ]
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional
[ policy_c_o_ou_cn ]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[ policy_cn_first ]
commonName = supplied
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
emailAddress = optional
"""


def _ca_section(name: str, d: Path, **overrides: str) -> str:
    settings = {"dir": str(d), "database": "$dir/index.txt", "new_certs_dir": "$dir/newcerts",
                "serial": "$dir/serial", "certificate": "$dir/ca.crt", "private_key": "$dir/ca.key",
                "default_md": "sha256", "unique_subject": "no", "copy_extensions": "none",
                "string_mask": "utf8only", "preserve": "no", "email_in_dn": "yes", "policy": "policy_anything",
                "x509_extensions": "client_ext", **overrides}
    return f"[ {name} ]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


def sh(*args: str, cwd: Path | None = None) -> str:
    p = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout}{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def openssl_ca(tmp_path_factory) -> Path:
    """A CA directory as an authority running `openssl ca` keeps it; one root for the module."""
    d = tmp_path_factory.mktemp("openssl-ca")
    (d / "newcerts").mkdir()
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "root.cnf").write_text(ROOT_CNF, encoding="utf-8")
    sh("openssl", "req", "-x509", "-config", str(d / "root.cnf"), "-newkey", "rsa:2048", "-nodes",
       "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "3650")
    assert subject_of(d / "ca.crt") == "C=FR, ST=Île-de-France, O=Free2Move\\, SAS, CN=Test Partner Root CA"
    body = "".join([
        _ca_section("CA_default", d),
        _ca_section("CA_preserve", d, preserve="yes"),  # ignored by openssl ca: see the last test
        _ca_section("CA_no_email", d, email_in_dn="no"),
        _ca_section("CA_pkix", d, string_mask="pkix"),
        _ca_section("CA_nombstr", d, string_mask="nombstr"),
        "[ client_ext ]\n" + CLIENT_EXT,
        "[ client_ext_email_copy ]\n" + CLIENT_EXT + "subjectAltName = email:copy\n",
        POLICIES])
    (d / "openssl.cnf").write_text("[ ca ]\ndefault_ca = CA_default\n" + body, encoding="utf-8")
    # `openssl ca` reads `preserve` from the [ ca ] section only (apps/ca.c: BASE_SECTION), not from the
    # CA's own section where the stock openssl.cnf and the manual put it.
    (d / "preserve.cnf").write_text("[ ca ]\ndefault_ca = CA_default\npreserve = yes\n" + body, encoding="utf-8")
    return d


def sign(ca: Path, csr: Path, out: Path, *options: str, config: str = "openssl.cnf") -> Path:
    """`openssl ca` as the authority runs it (its output keeps the text dump before the PEM)."""
    sh("openssl", "ca", "-batch", "-config", str(ca / config), "-in", str(csr), "-out", str(out),
       "-days", "365", "-utf8", *options, cwd=ca)
    return out


def subject_of(cert: Path, typed: bool = False) -> str:
    line = sh("openssl", "x509", "-in", str(cert), "-noout", "-subject", "-nameopt",
              READER + (",show_type" if typed else "")).strip()
    return line.removeprefix("subject=")


def san_of(cert: Path) -> str:
    text = sh("openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    return "" if "X509v3 Subject Alternative Name" not in text else text.splitlines()[1].strip()


def serial_of(cert: Path) -> str:
    return sh("openssl", "x509", "-in", str(cert), "-noout", "-serial").strip().split("=")[1]


def make_csr(cli, tmp_path: Path) -> Path:
    path = tmp_path / "fleet.csr"
    cli("csr", "--mzp", MZP, "--app", APP, "--out", str(path))
    return path


def import_cert(cli, cert: Path, ca: Path, *extra: str, ok: bool = True):
    return cli("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(cert), "--ca", str(ca / "ca.crt"),
               "--client-id", "cid-1", *extra, ok=ok)


def status_row(cli) -> dict:
    return next(r for r in json.loads(cli("status", "--json").out) if r["mzp"] == MZP and r["app"] == APP)


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]           # options of `openssl ca`
    subject: str                    # what `openssl x509 -subject -nameopt READER` prints of the certificate
    notes: tuple[str, ...] = ()     # the differences the gate must name, in its order
    san: str = ""                   # what `openssl x509 -ext subjectAltName` prints
    typed: str = ""                 # the subject with its string types, where the case is about them
    config: str = "openssl.cnf"     # preserve.cnf: `preserve = yes` in its [ ca ] section


L_DROPPED = "L dropped (CSR: 'Boulogne-Billancourt')"
ST_DROPPED = "ST dropped (CSR: 'Île-de-France')"
EMAIL_DROPPED = "emailAddress dropped (CSR: 'pki@free2move.example')"
CN_FIRST = "CN=MZP654321, C=FR, ST=Île-de-France, L=Boulogne-Billancourt, O=Free2Move\\, SAS, OU=Programs Partners"
REORDERED = "attributes reordered: CN, C, ST, L, O, OU, emailAddress (CSR: C, ST, L, O, OU, CN, emailAddress)"
NO_EMAIL = "C=FR, ST=Île-de-France, L=Boulogne-Billancourt, O=Free2Move\\, SAS, OU=Programs Partners, CN=MZP654321"

CASES = {
    # C, ST, O match the CA's own values (UTF8String both sides, so ASN1_STRING_cmp agrees); the stock
    # policy_match has no localityName line, so L is not carried over.
    "policy_match": Case(
        ("-policy", "policy_match"),
        "C=FR, ST=Île-de-France, O=Free2Move\\, SAS, OU=Programs Partners, CN=MZP654321, "
        "emailAddress=pki@free2move.example",
        (L_DROPPED,)),
    "policy_anything": Case(("-policy", "policy_anything"), CSR_SUBJECT),
    "policy_c_o_ou_cn": Case(
        ("-policy", "policy_c_o_ou_cn"), "C=FR, O=Free2Move\\, SAS, OU=Programs Partners, CN=MZP654321",
        (ST_DROPPED, L_DROPPED, EMAIL_DROPPED)),
    "email_in_dn_no": Case(("-name", "CA_no_email"), NO_EMAIL, (EMAIL_DROPPED,)),
    "email_in_dn_no_san_email_copy": Case(
        ("-name", "CA_no_email", "-extensions", "client_ext_email_copy"), NO_EMAIL,
        ("emailAddress moved to the SAN (email:pki@free2move.example)",), san="email:pki@free2move.example"),
    "san_email_copy_kept_in_dn": Case(
        ("-extensions", "client_ext_email_copy"), CSR_SUBJECT,
        ("SAN added: email:pki@free2move.example",), san="email:pki@free2move.example"),
    "preserve_no_cn_first": Case(
        ("-policy", "policy_cn_first"), CN_FIRST + ", emailAddress=pki@free2move.example",
        (REORDERED,)),
    # preserve = yes (in [ ca ], see the fixture) keeps the CSR's order whatever the policy's.
    "preserve_yes_cn_first": Case(("-policy", "policy_cn_first"), CSR_SUBJECT, config="preserve.cnf"),
    # The authority retypes the CSR's DN (-subj) under string_mask = pkix: ASCII values become PrintableString,
    # Î forces BMPString; C and emailAddress have fixed types.
    "subj_retyped_string_mask_pkix": Case(
        ("-name", "CA_pkix", "-subj", CSR_DN), CSR_SUBJECT,
        ("ST re-encoded as BMPString (CSR: UTF8String)", "L re-encoded as PrintableString (CSR: UTF8String)",
         "O re-encoded as PrintableString (CSR: UTF8String)", "OU re-encoded as PrintableString (CSR: UTF8String)",
         "CN re-encoded as PrintableString (CSR: UTF8String)"),
        typed="C=PRINTABLESTRING:FR, ST=BMPSTRING:Île-de-France, L=PRINTABLESTRING:Boulogne-Billancourt, "
              "O=PRINTABLESTRING:Free2Move\\, SAS, OU=PRINTABLESTRING:Programs Partners, "
              "CN=PRINTABLESTRING:MZP654321, emailAddress=IA5STRING:pki@free2move.example"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_accepted_subject_differences_are_warned_and_recorded(cli, raw, openssl_ca, tmp_path, name):
    case = CASES[name]
    cert = sign(openssl_ca, make_csr(cli, tmp_path), tmp_path / "fleet.crt", *case.args, config=case.config)
    assert subject_of(cert) == case.subject
    assert san_of(cert) == case.san
    if case.typed:
        assert subject_of(cert, typed=True) == case.typed
    serial = serial_of(cert)

    r = import_cert(cli, cert, openssl_ca)
    assert r.rc == 0
    assert f"{MZP}/{APP}: imported serial {serial}," in r.out
    # Exactly one warning naming every difference; nothing at all for a verbatim subject (nor the unverified-chain
    # warning: the chain was verified to the CA given).
    assert r.err == (NOTES_WARNING + "; ".join(case.notes) + "\n" if case.notes else "")

    cur = raw.read(f"{CRED}/current")["data"]
    hist = raw.read(f"{CRED}/history/{serial}")["data"]
    assert cur["serial"] == serial and cur["ca_pem"] == (openssl_ca / "ca.crt").read_text()
    for record in (cur, hist):
        assert record.get("subject_notes", []) == list(case.notes)
        assert ("subject_notes" in record) == bool(case.notes)
        assert "subject_change" not in record
    row = status_row(cli)
    assert row["serial"] == serial and row["state"] == "active"
    assert row["subject_notes"] == list(case.notes) and row["subject_change_accepted_by"] is None


O_CHANGE = "O 'Other Org' (CSR: 'Free2Move, SAS')"


def test_changed_o_is_refused_then_imported_when_accepted(cli, raw, openssl_ca, tmp_path):
    cert = sign(openssl_ca, make_csr(cli, tmp_path), tmp_path / "fleet.crt",
                "-subj", "/C=FR/O=Other Org/OU=Programs Partners/CN=MZP654321")
    shown = "C=FR, O=Other Org, OU=Programs Partners, CN=MZP654321"
    assert subject_of(cert) == shown
    before = raw.snapshot()
    r = import_cert(cli, cert, openssl_ca, ok=False)
    assert r.rc == 6, r.text
    assert r.err == (f"error: {cert}: the authority changed who the certificate identifies ({O_CHANGE}) in subject "
                     f"'{shown}'; check the change with the authority; if the authority confirms the change, import "
                     "it again with --accept-subject-change\n")
    assert raw.snapshot() == before

    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    r = import_cert(cli, cert, openssl_ca, "--accept-subject-change")
    t1 = dt.datetime.now(dt.timezone.utc)
    serial = serial_of(cert)
    assert f"{MZP}/{APP}: imported serial {serial}," in r.out
    cur = raw.read(f"{CRED}/current")["data"]
    change = cur["subject_change"]
    assert set(change) == {"accepted_by", "accepted_at", "changes"}
    assert change["changes"] == [O_CHANGE]
    assert change["accepted_by"].startswith(f"{getpass.getuser()}@{socket.gethostname()}")
    accepted_at = dt.datetime.fromisoformat(change["accepted_at"])
    assert accepted_at.tzinfo is not None and t0 <= accepted_at <= t1
    # -subj replaced the whole DN: what it left out is named too, as accepted differences.
    notes = [ST_DROPPED, L_DROPPED, EMAIL_DROPPED]
    assert cur["subject_notes"] == notes
    assert r.err.splitlines() == [
        f"warning: {MZP}/{APP}: identity change accepted by {change['accepted_by']} and recorded in Vault: {O_CHANGE}",
        NOTES_WARNING + "; ".join(notes)]
    hist = raw.read(f"{CRED}/history/{serial}")["data"]
    assert hist["subject_change"] == change and hist["subject_notes"] == notes
    row = status_row(cli)
    assert row["serial"] == serial
    assert row["subject_change_accepted_by"] == change["accepted_by"] and row["subject_notes"] == notes


def test_refused_whatever_is_accepted_and_nothing_written(cli, raw, openssl_ca, tmp_path):
    """A CN other than the CSR's MZP is refused even with --accept-subject-change. And string_mask = nombstr (old
    openssl.cnf files) puts 'Île' in a T61String holding Latin-1 bytes, which cryptography cannot read: the gate
    refuses that certificate as malformed. Vault is unchanged after each."""
    csr = make_csr(cli, tmp_path)
    other_cn = sign(openssl_ca, csr, tmp_path / "other-cn.crt", "-subj", CSR_DN.replace("CN=MZP654321", "CN=MZP999999"))
    assert subject_of(other_cn) == CSR_SUBJECT.replace("CN=MZP654321", "CN=MZP999999")
    t61 = sign(openssl_ca, csr, tmp_path / "t61.crt", "-name", "CA_nombstr", "-subj", CSR_DN)
    assert subject_of(t61, typed=True).startswith("C=PRINTABLESTRING:FR, ST=T61STRING:Île-de-France, ")
    before = raw.snapshot()
    for extra in ((), ("--accept-subject-change",)):
        r = import_cert(cli, other_cn, openssl_ca, *extra, ok=False)
        assert r.rc == 6, r.text
        assert r.err == (f"error: {other_cn}: CN is 'MZP999999', not the MZP 'MZP654321' of the CSR; a certificate "
                         "for another login cannot authenticate this partner, ask the authority to sign the CSR for "
                         "its own CN\n")
        assert raw.snapshot() == before
    r = import_cert(cli, t61, openssl_ca, ok=False)
    assert r.rc == 6, r.text
    assert r.err.startswith(f"error: {t61}: a certificate in it is malformed (")
    assert r.err.endswith("); ask the authority for a well-formed certificate\n") and r.err.count("\n") == 1
    assert raw.snapshot() == before


def test_openssl_ca_reads_preserve_from_its_ca_section_only(openssl_ca, tmp_path):
    """Why preserve.cnf sets `preserve = yes` in [ ca ]: in the CA's own section (where the stock openssl.cnf and
    the manual put it) `openssl ca` ignores it and applies the policy's order; -preserveDN does what it says."""
    csr = tmp_path / "any.csr"
    sh("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", str(tmp_path / "any.key"), "-out", str(csr), "-utf8", "-subj", CSR_DN)
    ignored = sign(openssl_ca, csr, tmp_path / "ignored.crt", "-name", "CA_preserve", "-policy", "policy_cn_first")
    assert subject_of(ignored) == CN_FIRST + ", emailAddress=pki@free2move.example"
    flag = sign(openssl_ca, csr, tmp_path / "flag.crt", "-policy", "policy_cn_first", "-preserveDN")
    kept = sign(openssl_ca, csr, tmp_path / "kept.crt", "-policy", "policy_cn_first", config="preserve.cnf")
    assert subject_of(flag) == subject_of(kept) == CSR_SUBJECT
