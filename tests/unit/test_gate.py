"""The strict import gate: every refusal, and every accepted input shape."""
import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from partnercerts import certs, keys
from partnercerts.certs import GateError, gate, load_bundle
from partnercerts.profile import Subject
from tests.pki import CA, NOW, key

SUBJECT = Subject(mzp="MZP128745", country="FR", state="Île-de-France", locality="Paris",
                  organization="Free2Move, SAS", email="pki@free2move.example")
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def world():
    ca = CA()
    pending = key()
    return ca, pending


def run(certs_list, pending, anchors, now=NOW, min_days=30):
    return gate(certs_list, pending_key_sha256=keys.spki_sha256(pending.public_key()),
                expected_subject=SUBJECT.to_name(), anchors=anchors, now=now, min_validity_days=min_days,
                source="reply.pem")


def test_accepts_a_good_certificate_and_finds_the_path(world):
    ca, pending = world
    inter = CA("Intermediate", issuer=ca)
    leaf = inter.issue(pending.public_key(), SUBJECT.to_name())
    got = run([inter.cert, leaf], pending, [ca.cert])
    assert got.leaf == leaf and got.chain == [inter.cert]


@pytest.mark.parametrize("case,match", [
    ("other_key", "no certificate is for the pending key"),
    ("other_subject", "changed who the certificate identifies"),
    ("expired", "expired on"),
    ("not_yet", "not valid before"),
    ("too_short", "under the 30-day minimum"),
    ("server_eku", "lacks clientAuth"),
    ("ca_cert", "is a CA certificate"),
    ("wrong_ca", "chain does not verify"),
    ("missing_intermediate", "chain does not verify"),
])
def test_refusals(world, case, match):
    ca, pending = world
    pub, subj = pending.public_key(), SUBJECT.to_name()
    bundle, anchors = None, [ca.cert]
    if case == "other_key":
        bundle = [ca.issue(key().public_key(), subj)]
    elif case == "other_subject":
        other = Subject(**{**SUBJECT.__dict__, "organization": "Free2Move SAS"})
        bundle = [ca.issue(pub, other.to_name())]
    elif case == "expired":
        bundle = [ca.issue(pub, subj, not_before=NOW - dt.timedelta(days=400), days=365)]
    elif case == "not_yet":
        bundle = [ca.issue(pub, subj, not_before=NOW + dt.timedelta(days=2))]
    elif case == "too_short":
        bundle = [ca.issue(pub, subj, days=10)]
    elif case == "server_eku":
        bundle = [ca.issue(pub, subj, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))]
    elif case == "ca_cert":
        bundle = [ca.issue(pub, subj, ca=True)]
    elif case == "wrong_ca":
        bundle = [CA("Impostor CA").issue(pub, subj)]
    elif case == "missing_intermediate":
        bundle = [CA("Intermediate", issuer=ca).issue(pub, subj)]
    with pytest.raises(GateError, match=match) as exc:
        run(bundle, pending, anchors)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("reply.pem: ")


def test_no_eku_is_accepted(world):
    ca, pending = world
    assert run([ca.issue(pending.public_key(), SUBJECT.to_name(), eku=None)], pending, [ca.cert])


def test_attribute_order_does_not_matter_but_values_do(world):
    ca, pending = world
    from cryptography import x509
    reordered = x509.Name(list(reversed(list(SUBJECT.to_name()))))
    assert run([ca.issue(pending.public_key(), reordered)], pending, [ca.cert])


def test_looping_chain_is_refused(world):
    _, pending = world
    a = CA("Loop A")
    b = CA("Loop B", issuer=a)
    leaf = b.issue(pending.public_key(), SUBJECT.to_name())
    with pytest.raises(GateError, match="chain does not verify"):
        run([leaf, b.cert, a.cert], pending, [CA("Real CA").cert])


def test_without_anchor_the_chain_is_kept_but_not_verified(world):
    ca, pending = world
    inter = CA("Intermediate", issuer=ca)
    leaf = inter.issue(pending.public_key(), SUBJECT.to_name())
    got = run([leaf, inter.cert, ca.cert], pending, [])
    assert got.chain == [inter.cert]  # the self-signed root is not taken from the reply


def _shapes(leaf, inter):
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, inter))
    return {
        "pem": pem,
        "pem_crlf": pem.replace(b"\n", b"\r\n"),
        "der": leaf.public_bytes(serialization.Encoding.DER),
        "p7_pem": pkcs7.serialize_certificates([leaf, inter], serialization.Encoding.PEM),
        "p7_der": pkcs7.serialize_certificates([leaf, inter], serialization.Encoding.DER),
    }


@pytest.mark.parametrize("shape", ["pem", "pem_crlf", "der", "p7_pem", "p7_der"])
def test_every_input_shape_is_read(world, shape):
    ca, pending = world
    inter = CA("Intermediate", issuer=ca)
    leaf = inter.issue(pending.public_key(), SUBJECT.to_name())
    got = load_bundle(_shapes(leaf, inter.cert)[shape], "f", LIMIT)
    assert leaf in got


@pytest.mark.parametrize("data,match", [
    (b"", "empty input"),
    (b"   \n", "empty input"),
    (b"\x00\x01garbage" * 10, "not a readable certificate"),
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "not a readable certificate"),
    (b"A" * (LIMIT + 1), "over the"),
])
def test_bad_input_is_refused(data, match):
    with pytest.raises(GateError, match=match):
        load_bundle(data, "f", LIMIT)


def test_truncated_pem_is_refused(world):
    ca, pending = world
    pem = ca.issue(pending.public_key(), SUBJECT.to_name()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(GateError, match="not a readable certificate"):
        load_bundle(pem[: len(pem) // 2], "f", LIMIT)


def test_too_many_certificates_are_refused(world):
    ca, pending = world
    many = [ca.cert] * 17
    with pytest.raises(GateError, match="more than 16"):
        load_bundle(pkcs7.serialize_certificates(many, serialization.Encoding.DER), "f", LIMIT)


def test_serial_is_printed_like_openssl(world):
    ca, pending = world
    import subprocess
    leaf = ca.issue(pending.public_key(), SUBJECT.to_name())
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=leaf.public_bytes(serialization.Encoding.PEM),
                         capture_output=True, check=True).stdout.decode().strip()
    assert out == f"serial={certs.serial_hex(leaf)}"


def test_a_stale_ca_beside_the_right_one_is_no_reason_to_refuse(world):
    ca, pending = world
    old = CA("Retired CA", now=NOW - dt.timedelta(days=400), days=30, not_before=NOW - dt.timedelta(days=500))
    leaf = ca.issue(pending.public_key(), SUBJECT.to_name())
    assert run([leaf], pending, [old.cert, ca.cert]).leaf == leaf


def test_the_expired_ca_that_signed_is_named(world):
    _, pending = world
    old = CA("Expired Signing CA", now=NOW - dt.timedelta(days=10), days=5, not_before=NOW - dt.timedelta(days=40))
    leaf = old.issue(pending.public_key(), SUBJECT.to_name(), not_before=NOW - dt.timedelta(days=1))
    with pytest.raises(GateError, match=r"^reply.pem: the CA certificate 'O=Test CA, CN=Expired Signing CA' is "
                                        r"outside its validity period \("):
        run([leaf], pending, [old.cert])
