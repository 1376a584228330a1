"""Property-based tests (hypothesis) of the two doors hostile input comes through: the import gate
(`certs.load_bundle` + `certs.gate`) and the inventory loader (`inventory.load`).

Properties, for every generated input:
  * nothing but one of our errors (GateRefusal from the gate, UserError from the inventory) ever
    escapes (no crash, no "unexpected ValueError"), and its message is one line of bounded length;
  * the gate never accepts a certificate for another key than the pending one, and on well-formed
    certificates it decides exactly as an independent model of the rules (`expected_refusal`);
  * an inventory that loads holds only safe values (MZP, application names without '/' or '..',
    one-line bounded text, absolute normalised paths).

Bounded and deterministic in CI: `derandomize=True` and no example database (the same examples on
every run), `max_examples` per test, a per-example `deadline`, and a total time budget per test
(past it the remaining examples are skipped: the explicit @example cases always run first).
PARTNERCERTS_FUZZ_EXAMPLES=N raises the example count and PARTNERCERTS_FUZZ_SECONDS the budget for a
longer, still derandomised, local run.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from partnercerts import certs, inventory
from partnercerts.errors import Error, GateRefusal, UserError
from partnercerts.keys import spki_sha256
from partnercerts.profile import APP_RE, MAX_LEN, MZP_RE

EXAMPLES = int(os.environ.get("PARTNERCERTS_FUZZ_EXAMPLES") or 0)
BUDGET = float(os.environ.get("PARTNERCERTS_FUZZ_SECONDS") or 20)  # seconds of real work per test
MAX_MESSAGE = 600
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
MIN_DAYS = 30
LIMIT = 1 << 20


def bounded(max_examples: int, deadline_ms: int):
    """Deterministic, database-less settings with a bounded example count and per-example deadline."""
    return settings(max_examples=EXAMPLES or max_examples, deadline=dt.timedelta(milliseconds=deadline_ms),
                    derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class Budget:
    """Wall-clock budget of one test: `spent()` is True once it is used up (later examples are skipped)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.checked = 0

    def spent(self) -> bool:
        if time.monotonic() > self.end:
            return True
        self.checked += 1
        return False


def assert_one_line(exc: Error) -> None:
    text = str(exc)
    assert "\n" not in text and "\r" not in text, f"message is not one line: {text[:300]!r}"
    assert 0 < len(text) <= MAX_MESSAGE, f"message is {len(text)} characters: {text[:300]!r}"


# ============================================================== the import gate


class PKI:
    """The keys and CAs the gate examples are built from (made once: key generation is slow)."""

    def __init__(self):
        self.pending = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pending_sha = spki_sha256(self.pending.public_key())
        self.other = ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Île-de-France"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Paris"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Free2Move, SAS"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Programs Partners"),
            x509.NameAttribute(NameOID.COMMON_NAME, "MZP123456"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "pki@free2move.example")])
        self.ca_key, self.ca = self._ca("Fuzz Stellantis CA", None)
        self.mid_key, self.mid = self._ca("Fuzz Intermediate", (self.ca_key, self.ca))
        self.alt_key, self.alt = self._ca("Fuzz Other CA", None)
        # An intermediate whose keyUsage does not allow signing certificates: RFC 5280 path validation refuses it.
        self.nosign_key, self.nosign = self._ca("Fuzz No-keyCertSign Intermediate", (self.ca_key, self.ca),
                                                cert_sign=False)

    @staticmethod
    def _ca(cn, parent, cert_sign: bool | None = None):
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        signer_key, signer = parent or (k, None)
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(signer.subject if signer else name)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(NOW - dt.timedelta(days=10)).not_valid_after(NOW + dt.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
        if cert_sign is not None:  # else no keyUsage at all, as `openssl req -x509` makes a CA
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                                              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        return k, b.sign(signer_key, hashes.SHA256())


@functools.lru_cache(maxsize=1)
def pki() -> PKI:
    return PKI()


EKUS = {"none": None, "client": (ExtendedKeyUsageOID.CLIENT_AUTH,), "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
        "both": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        "code": (ExtendedKeyUsageOID.CODE_SIGNING,)}
SUBJECTS = ("same", "other_cn", "other_ou", "other_o", "dropped_o", "extra_attribute", "reordered", "dropped_l",
            "recased_c", "changed_email")


@st.composite
def cases(draw):
    """A certificate bundle described by its choices, so the expected outcome can be derived from them."""
    # Weighted towards certificates that pass the early checks, so the chain rules get exercised too.
    usual, any_start = st.integers(-30, 0), st.integers(-800, 40)
    long_enough, any_days = st.integers(60, 800), st.integers(1, 800)
    case = {
        "key": draw(st.sampled_from(["pending"] * 4 + ["other"])),
        "subject": draw(st.sampled_from(["same"] * 8 + list(SUBJECTS[1:]))),
        "start": draw(st.one_of(usual, usual, any_start)),  # not_before, in days from NOW
        "days": draw(st.one_of(long_enough, long_enough, any_days)),
        "eku": draw(st.sampled_from(["client", "client", "both", "none", "server", "code"])),
        "ca_flag": draw(st.sampled_from([False] * 7 + [True])),
        "issuer": draw(st.sampled_from(["ca", "mid", "alt", "self", "nosign"])),
        "with_mid": draw(st.booleans()),  # the intermediate that signed, when one did (mid or nosign)
        "with_ca": draw(st.booleans()),
        "noise": draw(st.integers(0, 3)),
        "anchors": draw(st.sampled_from(["ca", "alt", "both", "none"])),
        "encoding": draw(st.sampled_from(["pem", "der", "p7der", "p7pem"])),
    }
    size = 1 + case["with_mid"] + case["with_ca"] + case["noise"]
    case["order"] = draw(st.permutations(range(size)))  # where the leaf and the others sit in the file
    return case


def _subject(kind: str) -> x509.Name:
    base = list(pki().subject)
    if kind == "other_cn":
        base = [a if a.oid != NameOID.COMMON_NAME else x509.NameAttribute(NameOID.COMMON_NAME, "MZP999999")
                for a in base]
    elif kind == "other_ou":
        base = [a if a.oid != NameOID.ORGANIZATIONAL_UNIT_NAME
                else x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Other Unit") for a in base]
    elif kind == "other_o":
        base = [a if a.oid != NameOID.ORGANIZATION_NAME
                else x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Free2Move SAS") for a in base]
    elif kind == "dropped_o":
        base = [a for a in base if a.oid != NameOID.ORGANIZATION_NAME]
    elif kind == "extra_attribute":
        base.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, "1"))
    elif kind == "reordered":
        base = list(reversed(base))  # the same attributes in another order: the gate compares order-free
    elif kind == "dropped_l":
        base = [a for a in base if a.oid != NameOID.LOCALITY_NAME]
    elif kind == "recased_c":
        base = [a if a.oid != NameOID.COUNTRY_NAME else x509.NameAttribute(NameOID.COUNTRY_NAME, "fr") for a in base]
    elif kind == "changed_email":
        base = [a if a.oid != NameOID.EMAIL_ADDRESS
                else x509.NameAttribute(NameOID.EMAIL_ADDRESS, "other@example.com") for a in base]
    return x509.Name(base)


def build(case: dict) -> tuple[bytes, list[x509.Certificate], x509.Certificate]:
    """(input bytes, anchors, the leaf) for a case."""
    p = pki()
    key = p.pending if case["key"] == "pending" else p.other
    subject = _subject(case["subject"])
    signer_key, issuer_name = {"ca": (p.ca_key, p.ca.subject), "mid": (p.mid_key, p.mid.subject),
                               "alt": (p.alt_key, p.alt.subject), "self": (key, subject),
                               "nosign": (p.nosign_key, p.nosign.subject)}[case["issuer"]]
    start = NOW + dt.timedelta(days=case["start"])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(start)
         .not_valid_after(start + dt.timedelta(days=case["days"])))
    if case["ca_flag"]:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if EKUS[case["eku"]]:
        b = b.add_extension(x509.ExtendedKeyUsage(list(EKUS[case["eku"]])), critical=False)
    leaf = b.sign(signer_key, hashes.SHA256())
    mid = p.nosign if case["issuer"] == "nosign" else p.mid
    others = ([mid] if case["with_mid"] else []) + ([p.ca] if case["with_ca"] else [])
    for i in range(case["noise"]):
        others.append(x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                           f"noise {i}")]))
                      .issuer_name(p.alt.subject).public_key(p.other.public_key())
                      .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
                      .not_valid_after(NOW + dt.timedelta(days=90)).sign(p.alt_key, hashes.SHA256()))
    bundle = [([leaf] + others)[i] for i in case["order"]]
    if case["encoding"] == "der" and len(bundle) == 1:
        data = leaf.public_bytes(serialization.Encoding.DER)
    elif case["encoding"] == "p7der":
        data = pkcs7.serialize_certificates(bundle, serialization.Encoding.DER)
    elif case["encoding"] == "p7pem":
        data = pkcs7.serialize_certificates(bundle, serialization.Encoding.PEM)
    else:
        data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle)
    anchors = {"ca": [p.ca], "alt": [p.alt], "both": [p.alt, p.ca], "none": []}[case["anchors"]]
    return data, anchors, leaf


def expected_refusal(case: dict) -> str | None:
    """The rules of the import gate, restated independently: the reason it must refuse, or None."""
    if case["key"] != "pending":
        return "no certificate is for the pending key"
    if case["subject"] == "other_cn":
        return "not the MZP"
    if case["subject"] in ("other_ou", "other_o", "dropped_o"):
        return "changed who the certificate identifies"
    if case["ca_flag"]:
        return "is a CA certificate"
    start, end = case["start"], case["start"] + case["days"]
    if start > 0:
        return "not valid before"
    if end <= 0:
        return "expired on"
    if end < MIN_DAYS:
        return f"under the {MIN_DAYS}-day minimum"
    if case["eku"] in ("server", "code"):
        return "lacks clientAuth"
    anchors = {"ca": {"ca"}, "alt": {"alt"}, "both": {"ca", "alt"}, "none": set()}[case["anchors"]]
    if not anchors:
        return None  # imported with a warning that the chain was not verified
    if case["issuer"] in anchors:
        return None
    if case["issuer"] == "mid" and case["with_mid"] and "ca" in anchors:
        return None
    if case["issuer"] == "nosign" and case["with_mid"] and "ca" in anchors:
        return "keyUsage lacks keyCertSign"
    return "chain does not verify to the CA"


def gate(data: bytes, anchors: list[x509.Certificate]) -> certs.Accepted:
    p = pki()
    bundle = certs.load_bundle(data, "reply.crt", LIMIT)
    return certs.gate(bundle, pending_key_sha256=p.pending_sha, expected_subject=p.subject, anchors=anchors,
                      now=NOW, min_validity_days=MIN_DAYS, source="reply.crt")


@pytest.fixture(scope="module")
def gate_budget():
    return Budget(BUDGET)


@bounded(max_examples=400, deadline_ms=2000)
@given(case=cases())
def test_the_gate_decides_like_the_rules_and_never_accepts_another_key(case, gate_budget):
    if gate_budget.spent():
        return
    data, anchors, leaf = build(case)
    why = expected_refusal(case)
    event(f"expected: {why or 'accepted'}")  # --hypothesis-show-statistics shows the spread of outcomes
    try:
        accepted = gate(data, anchors)
    except GateRefusal as exc:
        assert_one_line(exc)
        assert why is not None, f"refused a certificate the rules accept: {exc}"
        assert why in str(exc), f"refused for another reason than {why!r}: {exc}"
        return
    assert why is None, f"accepted a certificate the rules refuse ({why})"
    assert spki_sha256(accepted.leaf.public_key()) == pki().pending_sha
    assert accepted.leaf == leaf
    # An accepted change of the subject is always named in a warning; an unchanged subject never is.
    assert bool(accepted.differences) == (case["subject"] != "same"), accepted.differences
    assert not accepted.accepted_changes


def _control() -> tuple[bytes, bytes]:
    """A good leaf for the pending key (PEM, and DER), signed by the CA."""
    p = pki()
    leaf = (x509.CertificateBuilder().subject_name(p.subject).issuer_name(p.ca.subject)
            .public_key(p.pending.public_key()).serial_number(4242).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(p.ca_key, hashes.SHA256()))
    return leaf.public_bytes(serialization.Encoding.PEM), leaf.public_bytes(serialization.Encoding.DER)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 flips a byte, 1 inserts one, 2 deletes one, 3 truncates."""
    out = bytearray(data)
    for kind, pos, value in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] ^= value or 1
        elif kind == 1:
            out.insert(i, value)
        elif kind == 2:
            del out[i]
        else:
            del out[i:]
    return bytes(out)


@functools.lru_cache(maxsize=1)
def malformed_examples() -> dict[str, bytes]:
    """Well-formed shells around malformed content, found by the hostile corpus (see make_corpus.py)."""
    from tests.fixtures import make_corpus
    with tempfile.TemporaryDirectory() as tmp:
        csr = (x509.CertificateSigningRequestBuilder().subject_name(pki().subject)
               .sign(pki().pending, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        corpus = make_corpus.make_all(tmp, csr_pem=csr, now=NOW, kinds=("cert",))
        return {name: corpus[f"cert/{name}"].path.read_bytes()
                for name in ("duplicate_extension.der", "unknown_key_algorithm.pem", "enveloped.p7b",
                             "signed_no_certs.p7b", "chain_loop.pem", "many_certs.p7b", "truncated.p7b")}


@pytest.fixture(scope="module")
def bytes_budget():
    return Budget(BUDGET)


@bounded(max_examples=500, deadline_ms=2000)
@given(source=st.one_of(
    st.tuples(st.just("control_pem"), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16),
                                                         st.integers(0, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("control_der"), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16),
                                                         st.integers(0, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("raw"), st.binary(max_size=3000)),
    st.tuples(st.just("pem_armoured"), st.binary(max_size=2000)),
    st.tuples(st.just("p7_armoured"), st.binary(max_size=2000)),
    st.tuples(st.just("der_header"), st.binary(max_size=2000)),
))
@example(source=("malformed", "duplicate_extension.der"))
@example(source=("malformed", "unknown_key_algorithm.pem"))
@example(source=("malformed", "enveloped.p7b"))
@example(source=("malformed", "signed_no_certs.p7b"))
@example(source=("malformed", "chain_loop.pem"))
@example(source=("malformed", "many_certs.p7b"))
@example(source=("malformed", "truncated.p7b"))
def test_broken_and_mutated_bytes_raise_only_user_errors_and_never_pass_another_key(source, bytes_budget):
    kind, arg = source
    if kind != "malformed" and bytes_budget.spent():
        return
    pem, der = _control()
    if kind == "malformed":
        data = malformed_examples()[arg]
    elif kind == "control_pem":
        data = _mutate(pem, arg)
    elif kind == "control_der":
        data = _mutate(der, arg)
    elif kind == "pem_armoured":
        data = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(arg) + b"-----END CERTIFICATE-----\n"
    elif kind == "p7_armoured":
        data = b"-----BEGIN PKCS7-----\n" + base64.encodebytes(arg) + b"-----END PKCS7-----\n"
    elif kind == "der_header":
        data = b"\x30\x82" + len(arg).to_bytes(2, "big") + arg
    else:
        data = arg
    for anchors in ([pki().ca], []):
        try:
            accepted = gate(data, anchors)
        except GateRefusal as exc:
            assert_one_line(exc)
            continue
        # Whatever got through is for the pending key and, with the CA given, really signed by it.
        assert spki_sha256(accepted.leaf.public_key()) == pki().pending_sha
        if anchors:
            accepted.leaf.verify_directly_issued_by(pki().ca)


# ============================================================== the inventory loader

GOOD = {"mzp": "MZP111111", "country": "DE", "state": "Bayern", "locality": "München",
        "organization": "Acme, GmbH", "email": "a@acme.example", "applications": [{"name": "fleet"}]}
HOSTILE_TEXT = ["../../etc/passwd", "..", "/etc/cron.d", "fleet/../x", "a;rm -rf /", "$(id)", "`id`", "x\ny",
                "x\r\ny", "x\0y", "\x1b[31m", "a" * 129, "ü" * 70, "MZP123456\n", " MZP123456", "{{ lookup('x') }}",
                "%s%s%n", "'; DROP TABLE", "\u202e", "a@b.example\nBcc: c@d.example", "C:\\x", "~root", ""]
scalars = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=80), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True), st.booleans(), st.none(), st.binary(max_size=8),
                    st.dates(), st.datetimes())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4)),
    max_leaves=12)
KEYS = ["mzp", "country", "state", "locality", "organization", "email", "applications", "submission",
        "renew_before_days", "pending_reminder_days", "deploy_window_days", "ou", "cn"]
SUBMISSION_VALUES = st.one_of(
    st.sampled_from(["sandbox", "email", "outbox", "pigeon"]),
    st.fixed_dictionaries({"method": st.sampled_from(["outbox", "email", "sandbox"])},
                          optional={"to": st.one_of(st.just("ca@mpsa.example"), values),
                                    "from": values,
                                    "dir": st.one_of(st.sampled_from(["/var/spool/out", "/var/../etc", "out",
                                                                      "/var/spool/out/", "//x", "/a/./b",
                                                                      "/a\nb"]), values),
                                    "smtp": st.one_of(st.fixed_dictionaries(
                                        {"host": st.one_of(st.just("smtp.example.com"), values)},
                                        optional={"port": values, "security": values, "user": values,
                                                  "timeout": values, "cafile": values, "password": values}),
                                        values)}),
    values)


@st.composite
def partners(draw):
    partner = dict(GOOD)
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True)):
        if key == "applications":
            partner[key] = draw(st.one_of(
                st.lists(st.one_of(st.sampled_from(HOSTILE_TEXT + ["fleet", "big"]),
                                   st.fixed_dictionaries({"name": st.one_of(st.sampled_from(HOSTILE_TEXT), values)},
                                                         optional={"key": values, "x": values})),
                         max_size=3),
                values))
        elif key == "submission":
            partner[key] = draw(SUBMISSION_VALUES)
        else:
            partner[key] = draw(st.one_of(st.sampled_from(HOSTILE_TEXT), values))
    if draw(st.booleans()):
        partner[draw(st.one_of(st.text(max_size=12), st.integers(), st.tuples(st.integers())))] = draw(values)
    return partner


@st.composite
def inventories(draw):
    doc = {"partnercerts_partners": draw(st.one_of(st.lists(partners(), min_size=1, max_size=2), values))}
    for extra in draw(st.lists(st.sampled_from(["partnercerts_notify", "partnercerts_sandbox_api",
                                                "partnercerts_metrics_textfile"]), max_size=2, unique=True)):
        if extra == "partnercerts_notify":
            doc[extra] = draw(st.one_of(values, st.fixed_dictionaries(
                {"webhook": st.one_of(st.just({"url": "https://hooks.example/x"}), values)},
                optional={"events": st.one_of(st.lists(st.one_of(st.sampled_from(["deployed", "expired"]), values),
                                                       max_size=3), values),
                          "email": values})))
        elif extra == "partnercerts_metrics_textfile":
            doc[extra] = draw(st.one_of(st.sampled_from(["/var/lib/x.prom", "../x.prom", "x.prom", "/a/../b.prom",
                                                         "/a//b.prom"]), values))
        else:
            doc[extra] = draw(values)
    text = yaml.safe_dump(doc, allow_unicode=True, width=10 ** 6)
    edits = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(list("[]{}:-?&*!|>'\"#%@`\t\n ,"))),
                          max_size=draw(st.sampled_from([0, 0, 0, 2]))))
    for pos, char in edits:  # now and then, break the YAML itself
        i = pos % (len(text) + 1)
        text = text[:i] + char + text[i:]
    return text


def clean_absolute(path: str) -> bool:
    return path.startswith("/") and os.path.normpath(path) == path and not path.startswith("//") \
        and path.isprintable() and path != "/"


def assert_safe(inv: inventory.Inventory) -> None:
    """What a loaded inventory may hold: the values every later step (Vault paths, hosts, CSRs) relies on."""
    for p in inv.partners:
        assert MZP_RE.fullmatch(p.mzp)
        for a in p.applications:
            assert APP_RE.fullmatch(a.name) and "/" not in a.name and ".." not in a.name
        for name in ("state", "locality", "organization", "email"):
            value = getattr(p.subject, name)
            assert isinstance(value, str) and value.isprintable() and len(value) <= MAX_LEN[name]
        if p.submission.method == "outbox":
            assert clean_absolute(p.submission.outbox_dir), p.submission.outbox_dir
    if inv.metrics_textfile:
        assert clean_absolute(inv.metrics_textfile), inv.metrics_textfile


@pytest.fixture(scope="module")
def inventory_dir():
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "group_vars" / "all").mkdir(parents=True)
        yield Path(tmp)


@pytest.fixture(scope="module")
def inventory_budget():
    return Budget(BUDGET)


@bounded(max_examples=600, deadline_ms=2000)
@given(text=inventories())
@example(text="partnercerts_partners: " + "[" * 700 + "]" * 700 + "\n")  # nesting deeper than the stack
@example(text="partnercerts_partners:\n  - ? [a, b]\n    : c\n")  # a list as a mapping key
@example(text="? {a: 1}\n: x\n")
@example(text=yaml.safe_dump({"partnercerts_partners": [GOOD], "partnercerts_notify": {
    "webhook": {"url": "https://hooks.example/x"}, "events": [{"deployed": True}]}}))
@example(text=yaml.safe_dump({"partnercerts_partners": [dict(GOOD, mzp="MZP111111\nMZP222222")]}))
@example(text=yaml.safe_dump({"partnercerts_partners": [dict(GOOD, mzp="MZP" + "1" * 700)]}))
@example(text=yaml.safe_dump({"partnercerts_partners": [dict(GOOD, submission={
    "method": "outbox", "to": "ca@mpsa.example", "dir": "/var/spool/../../etc/cron.d"})]}))
@example(text=yaml.safe_dump({"partnercerts_partners": [GOOD], "partnercerts_metrics_textfile": "../../x.prom"}))
@example(text=yaml.safe_dump({"partnercerts_partners": [dict(GOOD, submission={
    "method": "email", "to": "ca@mpsa.example", "smtp": {"host": "smtp.example.com", "security": ["tls"]}})]}))
def test_the_inventory_loader_raises_only_user_errors_and_keeps_only_safe_values(text, inventory_dir,
                                                                                  inventory_budget):
    explicit = text.startswith("partnercerts_partners: [[[") or "? " in text[:40] or len(text) > 4000
    if not explicit and inventory_budget.spent():
        return
    (inventory_dir / "group_vars" / "all" / "partners.yml").write_text(text, encoding="utf-8")
    try:
        inv = inventory.load(inventory_dir)
    except UserError as exc:
        assert_one_line(exc)
        return
    assert_safe(inv)


def test_the_fuzz_settings_are_deterministic_and_bounded():
    """CI runs the same examples every time, with a per-example deadline and a bounded count."""
    for fn in (test_the_gate_decides_like_the_rules_and_never_accepts_another_key,
               test_broken_and_mutated_bytes_raise_only_user_errors_and_never_pass_another_key,
               test_the_inventory_loader_raises_only_user_errors_and_keeps_only_safe_values):
        s = fn._hypothesis_internal_use_settings
        assert s.derandomize and s.database is None and s.deadline is not None and s.max_examples <= max(
            EXAMPLES, 600)
