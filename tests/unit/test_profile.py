"""The PSA subject profile: exact fields, validation, and the OpenSSL parameter file."""
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from partnercerts import csr, keys
from partnercerts.errors import UserError
from partnercerts.profile import Subject, check_country, check_email, check_mzp, check_text, make_subject

SUBJECT = Subject(mzp="MZP128745", country="FR", state="Île-de-France", locality="Paris",
                  organization="Free2Move, SAS", email="pki@free2move.example")


def openssl_subject(pem: bytes, kind: str = "req") -> str:
    return subprocess.run(["openssl", kind, "-noout", "-subject", "-nameopt", "RFC2253,-esc_msb,utf8"],
                          input=pem, capture_output=True, check=True).stdout.decode().strip()


def test_csr_has_exact_profile_read_back_by_openssl():
    key = keys.generate("rsa2048")
    pem = csr.to_pem(csr.build(SUBJECT, key)).encode()
    verify = subprocess.run(["openssl", "req", "-noout", "-verify", "-text"], input=pem, capture_output=True)
    assert verify.returncode == 0 and b"verify OK" in verify.stdout + verify.stderr
    assert b"Public-Key: (2048 bit)" in verify.stdout
    assert b"sha256WithRSAEncryption" in verify.stdout
    assert openssl_subject(pem) == (
        "subject=emailAddress=pki@free2move.example,CN=MZP128745,OU=Programs Partners,"
        "O=Free2Move\\, SAS,L=Paris,ST=Île-de-France,C=FR")


def test_openssl_parameter_file_reproduces_the_same_subject(tmp_path):
    key = keys.generate("rsa2048")
    ours = csr.to_pem(csr.build(SUBJECT, key)).encode()
    conf = tmp_path / "CSRConfig.conf"
    conf.write_text(SUBJECT.openssl_config("rsa2048"), encoding="utf-8")
    keyfile = tmp_path / "k.pem"  # a throwaway test key, only to drive openssl
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    theirs = subprocess.run(["openssl", "req", "-new", "-config", str(conf), "-key", str(keyfile)],
                            capture_output=True, check=True).stdout
    assert openssl_subject(theirs) == openssl_subject(ours)


@pytest.mark.parametrize("value", ["Ho $HOME # not a comment", "back\\slash", ' "quoted" '.strip(), "trailing\\"])
def test_parameter_file_escapes_what_openssl_would_interpret(tmp_path, value):
    subject = Subject(**{**SUBJECT.__dict__, "organization": value})
    conf = tmp_path / "c.conf"
    conf.write_text(subject.openssl_config(), encoding="utf-8")
    key = keys.generate("rsa2048")
    keyfile = tmp_path / "k.pem"
    keyfile.write_text(keys.to_pem(key))
    out = subprocess.run(["openssl", "req", "-new", "-config", str(conf), "-key", str(keyfile)],
                         capture_output=True, check=True).stdout
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    got = x509.load_pem_x509_csr(out).subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert got == value


def test_key_specs_give_the_sizes_asked():
    assert keys.generate("rsa3072").key_size == 3072


@pytest.mark.parametrize("bad", ["MZP12345", "MZP1234567", "mzp123456", "ABC123456", "MZP12345a", "", None, 123456])
def test_mzp_must_be_mzp_and_six_digits(bad):
    with pytest.raises(UserError, match="field 'mzp'.*MZP"):
        check_mzp(bad, "inv.yml: partner #1")


@pytest.mark.parametrize("bad", ["F", "FRA", "fr", "1A", ""])
def test_country_must_be_two_letters(bad):
    with pytest.raises(UserError, match="field 'country'.*two capital letters"):
        check_country(bad, "x")


@pytest.mark.parametrize("bad", ["no-at-sign", "a@b", "a b@c.fr", "a@c.fr\n", "@c.fr"])
def test_email_is_checked(bad):
    with pytest.raises(UserError, match="field 'email'"):
        check_email(bad, "x")


@pytest.mark.parametrize("bad,why", [("a\nb", "newline"), ("", "empty"), (" x", "blanks"), ("x" * 200, "limit")])
def test_free_text_fields_are_one_bounded_line(bad, why):
    with pytest.raises(UserError, match=why):
        check_text("state", bad, "x")


def test_make_subject_keeps_unicode_and_commas_exactly():
    s = make_subject({"mzp": "MZP128745", "country": "FR", "state": "Île-de-France", "locality": "Paris",
                      "organization": "Free2Move, SAS", "email": "pki@free2move.example"}, "x")
    assert s == SUBJECT
