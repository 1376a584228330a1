"""The subject rules (`subjects.compare`), case by case, and subjects shown exactly as openssl shows them."""
from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from partnercerts.subjects import compare, normalised, show_name

C, ST, L, ORG, OU, CN, E = (NameOID.COUNTRY_NAME, NameOID.STATE_OR_PROVINCE_NAME, NameOID.LOCALITY_NAME,
                          NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME,
                          NameOID.EMAIL_ADDRESS)
CSR = x509.Name([x509.NameAttribute(C, "FR"), x509.NameAttribute(ST, "Île-de-France"),
                 x509.NameAttribute(L, "Villeneuve-d'Ascq"), x509.NameAttribute(ORG, "Free2Move, SAS"),
                 x509.NameAttribute(OU, "Programs Partners"), x509.NameAttribute(CN, "MZP128745"),
                 x509.NameAttribute(E, "pki@free2move.example")])
KEY = ec.generate_private_key(ec.SECP256R1())


def cert(subject: x509.Name, san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(KEY.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(KEY, hashes.SHA256())


def without(*oids) -> list[x509.NameAttribute]:
    return [a for a in CSR if a.oid not in oids]


def replaced(oid, value: str, **kw) -> list[x509.NameAttribute]:
    return [x509.NameAttribute(oid, value, **kw) if a.oid == oid else a for a in CSR]


@pytest.mark.parametrize("attrs,san,refusal,identity,notes", [
    (list(CSR), None, "", [], []),
    (replaced(CN, "MZP999999"), None, "CN is 'MZP999999', not the MZP 'MZP128745' of the CSR", [], []),
    (without(CN), None, "CN is none, not the MZP 'MZP128745' of the CSR", [], []),
    (replaced(CN, "mzp128745"), None, "CN is 'mzp128745', not the MZP", [], []),
    (replaced(ORG, "Free2Move SAS"), None, "", ["O 'Free2Move SAS' (CSR: 'Free2Move, SAS')"], []),
    (without(OU), None, "", ["OU dropped (CSR: 'Programs Partners')"], []),
    (list(CSR) + [x509.NameAttribute(OU, "Fleet")], None, "",
     ["OU 'Programs Partners', 'Fleet' (CSR: 'Programs Partners')"], []),
    (replaced(ORG, "FREE2MOVE,   sas"), None, "", [], ["O written 'FREE2MOVE,   sas' (CSR: 'Free2Move, SAS')"]),
    (replaced(C, "FR", _type=_ASN1Type.UTF8String), None, "", [],
     ["C re-encoded as UTF8String (CSR: PrintableString)"]),
    (replaced(OU, "Ｐrograms Partners"), None, "", [],  # a full-width letter: the same after NFKC
     ["OU written 'Ｐrograms Partners' (CSR: 'Programs Partners')"]),
    (without(ST, L, E), None, "", [], ["ST dropped (CSR: 'Île-de-France')", "L dropped (CSR: \"Villeneuve-d'Ascq\")",
                                       "emailAddress dropped (CSR: 'pki@free2move.example')"]),
    (without(E), [x509.RFC822Name("pki@free2move.example")], "", [],
     ["emailAddress moved to the SAN (email:pki@free2move.example)"]),
    (without(E), [x509.RFC822Name("other@free2move.example")], "", [],
     ["emailAddress dropped (CSR: 'pki@free2move.example')", "SAN added: email:other@free2move.example"]),
    (list(CSR), [x509.DNSName("MZP128745"), x509.UniformResourceIdentifier("urn:psa:MZP128745")], "", [],
     ["SAN added: DNS:MZP128745, URI:urn:psa:MZP128745"]),
    (list(reversed(list(CSR))), None, "", [],
     ["attributes reordered: emailAddress, CN, OU, O, L, ST, C (CSR: C, ST, L, O, OU, CN, emailAddress)"]),
    (list(CSR) + [x509.NameAttribute(NameOID.SERIAL_NUMBER, "42")], None, "", [], ["serialNumber '42' added"]),
    (replaced(L, "Lille"), None, "", [], ["L 'Lille' (CSR: \"Villeneuve-d'Ascq\")"]),
])
def test_the_rules(attrs, san, refusal, identity, notes):
    got = compare(CSR, [], cert(x509.Name(attrs), san))
    assert got.refusal.startswith(refusal) if refusal else got.refusal == ""
    if not refusal:
        assert got.identity_changes == identity
        assert got.differences == notes


def test_a_san_the_csr_asked_for_is_no_difference():
    asked = [x509.DNSName("fleet.example")]
    assert compare(CSR, asked, cert(CSR, asked)).differences == []


def test_normalised_is_what_people_read():
    assert normalised("  Free2Move,\t SAS ") == normalised("FREE2MOVE, sas") == "free2move, sas"
    assert normalised("ﬁ") == "fi"  # compatibility ligature


@pytest.mark.parametrize("attrs", [
    list(CSR),
    [x509.NameAttribute(CN, "a+b=c;d<e>f\"g\\h"), x509.NameAttribute(ORG, "#lead"), x509.NameAttribute(OU, " space"),
     x509.NameAttribute(L, "trailing ")],
    [x509.NameAttribute(NameOID.SERIAL_NUMBER, "42"), x509.NameAttribute(NameOID.GIVEN_NAME, "Zoë"),
     x509.NameAttribute(NameOID.SURNAME, "Ñúñez"), x509.NameAttribute(NameOID.TITLE, "Ops"),
     x509.NameAttribute(NameOID.STREET_ADDRESS, "1 rue X"), x509.NameAttribute(NameOID.POSTAL_CODE, "75001"),
     x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example")],
])
def test_subjects_are_shown_as_openssl_shows_them(attrs):
    c = cert(x509.Name(attrs))
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt",
                          "sep_comma_plus_space,esc_2253,utf8,sname"],
                         input=c.public_bytes(serialization.Encoding.PEM), capture_output=True, check=True)
    assert out.stdout.decode().rstrip("\n") == "subject=" + show_name(c.subject)


def test_a_multi_valued_rdn_is_shown_with_plus_as_openssl_does():
    name = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(C, "FR")]),
                      x509.RelativeDistinguishedName([x509.NameAttribute(ORG, "SAS"),
                                                      x509.NameAttribute(ORG, "Free2Move")]),
                      x509.RelativeDistinguishedName([x509.NameAttribute(CN, "MZP128745")])])
    c = cert(name)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt",
                          "sep_comma_plus_space,esc_2253,utf8,sname"],
                         input=c.public_bytes(serialization.Encoding.PEM), capture_output=True, check=True)
    assert out.stdout.decode().rstrip("\n") == "subject=" + show_name(c.subject)
    assert " + " in show_name(c.subject)
