"""Certificates: parsing any shape the authority sends, the strict import gate, PKCS#12."""
from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import subjects
from .errors import GateRefusal, Remedy, UserError
from .keys import spki_sha256

MAX_CERTS = 16


class GateError(GateRefusal):
    """The import gate refused a certificate; nothing was written."""


# What cryptography raises for a certificate that parsed but holds something malformed or unknown
# (duplicate or undecodable extensions, an unknown public key or signature algorithm).
_MALFORMED = (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def _key_sha256(cert: x509.Certificate) -> str | None:
    """SHA-256 of the certificate's public key, or None when the key cannot be read."""
    try:
        return spki_sha256(cert.public_key())
    except _MALFORMED:
        return None


key_sha256 = _key_sha256  # for correlating a reply with a pending key, as the gate does


def _extension(cert: x509.Certificate, kind, source: str):
    """The value of one extension, None when absent; a malformed extension list is a refusal."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except _MALFORMED as exc:
        raise GateError(f"{source}: the certificate is malformed ({_why(exc)}); ask the authority for a well-formed "
                        "certificate") from None


_PARSE_ERROR = re.compile(r"ParseError \{ kind: (\w+)(?:.*?location: \[([^\]]*)\])?")


def _why(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    parse = _PARSE_ERROR.search(text)
    if parse:  # cryptography's ASN.1 parser: say what and where, not its internal structure
        where = ".".join(p.strip().strip('"') for p in (parse.group(2) or "").split(",") if p.strip())
        kind = re.sub(r"(?<!^)([A-Z])", r" \1", parse.group(1)).lower()
        return f"{kind} in {where}" if where else kind
    return text if len(text) <= 120 else text[:120] + "…"


def load_bundle(data: bytes, source: str, max_bytes: int) -> list[x509.Certificate]:
    """Every certificate in PEM (one or many), DER, or PKCS#7 (PEM or DER) input."""
    if not data.strip():
        raise GateError(f"{source}: empty input; give the certificate file the authority sent (PEM, DER or PKCS#7)")
    if len(data) > max_bytes:
        raise GateError(f"{source}: {len(data)} bytes is over the {max_bytes}-byte limit; "
                        "this is not a certificate file "
                        "(raise PARTNERCERTS_MAX_INPUT_BYTES only if it really is)")
    certs: list[x509.Certificate] = []
    try:
        if b"-----BEGIN" in data:
            if b"-----BEGIN PKCS7-----" in data or b"-----BEGIN CERTIFICATE CHAIN-----" in data:
                certs = pkcs7.load_pem_pkcs7_certificates(data)
            else:
                certs = x509.load_pem_x509_certificates(data)
        else:
            try:
                certs = [x509.load_der_x509_certificate(data)]
            except ValueError:
                certs = pkcs7.load_der_pkcs7_certificates(data)
    except _MALFORMED:  # includes PKCS#7 that is not signed data (enveloped, ...): UnsupportedAlgorithm
        certs = []
    if not certs:
        raise GateError(f"{source}: not a readable certificate (expected PEM, DER or PKCS#7); "
                        "check you saved the right file")
    if len(certs) > MAX_CERTS:
        raise GateError(f"{source}: holds {len(certs)} certificates, more than {MAX_CERTS}; "
                        "give the certificate and its chain only")
    return certs


def read_file(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); check the path") from None


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(cert: x509.Certificate) -> str:
    """The serial as `openssl x509 -serial` prints it: upper-case hex, even length."""
    text = format(cert.serial_number, "X")
    return text if len(text) % 2 == 0 else "0" + text


def to_pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def from_pem(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode("ascii")) if text.strip() else []


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


@dataclass(frozen=True)
class Accepted:
    """What the gate let through: the leaf, the path to the anchor, the anchor(s), and what the authority
    changed in the subject (`differences`: accepted by the rules; `accepted_changes`: identity changes a
    human accepted)."""

    leaf: x509.Certificate
    chain: list[x509.Certificate]
    anchors: list[x509.Certificate]
    differences: list[str] = field(default_factory=list)
    accepted_changes: list[str] = field(default_factory=list)


# The gate: small named checks, composed in `gate()` in the order a human would look.

def _pick_leaf(certs, pending_key_sha256: str, source: str) -> x509.Certificate:
    for cert in certs:
        if _key_sha256(cert) == pending_key_sha256:
            return cert
    found = ", ".join((_key_sha256(c) or "unreadable key")[:16] for c in certs[:4]) + (
        f" and {len(certs) - 4} more" if len(certs) > 4 else "")
    raise GateError(f"{source}: no certificate is for the pending key (pending key SHA-256 {pending_key_sha256[:16]}…, "
                    f"found {found}); import the certificate signed for the CSR this tool made")


def _check_subject(leaf: x509.Certificate, requested: x509.Name, requested_san: list, accept_change: bool,
                   source: str) -> subjects.SubjectDecision:
    decision = subjects.compare(requested, requested_san, leaf)
    if decision.refusal:
        raise GateError(f"{source}: {decision.refusal}")
    if decision.identity_changes and not accept_change:
        raise GateError(f"{source}: the authority changed who the certificate identifies "
                        f"({'; '.join(decision.identity_changes)}) in subject '{subjects.show_name(leaf.subject)}'; "
                        "check the change with the authority", remedy=Remedy.ACCEPT_SUBJECT_CHANGE)
    return decision


def _check_validity(leaf: x509.Certificate, now: dt.datetime, min_days: int, source: str) -> None:
    if now < leaf.not_valid_before_utc:
        raise GateError(f"{source}: not valid before {leaf.not_valid_before_utc.isoformat()}; "
                        "import it after that time "
                        "or check this machine's clock")
    if now >= leaf.not_valid_after_utc:
        raise GateError(f"{source}: expired on {leaf.not_valid_after_utc.isoformat()}; "
                        "ask the authority for a new certificate")
    left = leaf.not_valid_after_utc - now
    if left < dt.timedelta(days=min_days):
        raise GateError(f"{source}: valid for {left.days} more days only, under the {min_days}-day minimum "
                        "(PARTNERCERTS_MIN_VALIDITY_DAYS); ask the authority for a longer certificate")


def _check_eku(leaf: x509.Certificate, source: str) -> None:
    eku = _extension(leaf, x509.ExtendedKeyUsage, source)
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise GateError(f"{source}: extended key usage lacks clientAuth, so mutual TLS would fail; "
                        "ask the authority for a client-authentication certificate")


def _check_not_ca(leaf: x509.Certificate, source: str) -> None:
    bc = _extension(leaf, x509.BasicConstraints, source)
    if bc is not None and bc.ca:
        raise GateError(f"{source}: is a CA certificate, not a client certificate; import the client certificate")


def _check_anchors(anchors: list[x509.Certificate], issued: list[x509.Certificate], now: dt.datetime,
                   source: str) -> None:
    """After a path failure: name a CA certificate outside its validity that issued one of the certificates
    (the library says only "not valid at validation time"); a stale CA in the file that issued none is no reason."""
    issuers = {c.issuer for c in issued}
    for anchor in anchors:
        if anchor.subject in issuers and not (anchor.not_valid_before_utc <= now < anchor.not_valid_after_utc):
            raise GateError(f"{source}: the CA certificate '{subjects.show_name(anchor.subject)}' is outside its "
                            f"validity period ({anchor.not_valid_before_utc.date()} to "
                            f"{anchor.not_valid_after_utc.date()}); get the current CA certificate from the authority")


def gate(certs: list[x509.Certificate], *, pending_key_sha256: str, expected_subject: x509.Name,
         anchors: list[x509.Certificate], now: dt.datetime, min_validity_days: int, source: str,
         requested_san: list[x509.GeneralName] | None = None, accept_subject_change: bool = False) -> Accepted:
    """Accept a certificate only if every check passes; raise GateError naming the first failure.

    In order: the certificate for the pending key; the subject rules (`subjects.compare`: CN, then OU/O/C
    unless `accept_subject_change`); not a CA; validity and the minimum left; clientAuth when an EKU is
    there; then, given anchors, the RFC 5280 path from the leaf through the bundle's other certificates
    to an anchor (`paths.verify`, cryptography's verifier). Without anchors nothing is verified."""
    try:
        with warnings.catch_warnings():  # cryptography warns (on stderr) of a country name of the wrong length
            warnings.simplefilter("ignore", UserWarning)
            return _gate(certs, pending_key_sha256, expected_subject, list(requested_san or []),
                         accept_subject_change, anchors, now, min_validity_days, source)
    except _MALFORMED as exc:  # a field cryptography parses only when read (subject, issuer, extensions)
        raise GateError(f"{source}: a certificate in it is malformed ({_why(exc)}); ask the authority for a "
                        "well-formed certificate") from None


def _gate(certs, pending_key_sha256, expected_subject, requested_san, accept_subject_change, anchors, now,
          min_validity_days, source) -> Accepted:
    from . import paths
    leaf = _pick_leaf(certs, pending_key_sha256, source)
    decision = _check_subject(leaf, expected_subject, requested_san, accept_subject_change, source)
    _check_not_ca(leaf, source)
    _check_validity(leaf, now, min_validity_days, source)
    _check_eku(leaf, source)
    anchor_prints = {fingerprint(a) for a in anchors}
    extra = [c for c in certs if c is not leaf and fingerprint(c) not in anchor_prints]
    if anchors:
        try:
            chain = paths.verify(leaf, extra, anchors, now, source)
        except GateError:
            _check_anchors(anchors, [leaf, *extra], now, source)
            raise
    else:
        chain = [c for c in extra if not _is_self_signed(c)]
    return Accepted(leaf=leaf, chain=chain, anchors=anchors, differences=decision.differences,
                    accepted_changes=decision.identity_changes)


def _is_self_signed(cert: x509.Certificate) -> bool:
    try:
        if cert.issuer != cert.subject:
            return False
        cert.verify_directly_issued_by(cert)
    except (TypeError, InvalidSignature, *_MALFORMED):
        return False
    return True


def load_anchors(data: bytes, source: str, max_bytes: int) -> list[x509.Certificate]:
    """CA certificates given with --ca (one or a bundle)."""
    return load_bundle(data, source, max_bytes)


def pkcs12_bundle(key, leaf: x509.Certificate, chain: list[x509.Certificate], password: str,
                  name: str, legacy: bool = False) -> bytes:
    """PKCS#12: AES-256-CBC + PBKDF2 + SHA-256 MAC by default; 3DES/SHA-1 with legacy for old Java."""
    if legacy:
        algo = (serialization.PrivateFormat.PKCS12.encryption_builder()
                .kdf_rounds(2048)
                .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                .hmac_hash(hashes.SHA1())
                .build(password.encode()))
    else:
        algo = (serialization.PrivateFormat.PKCS12.encryption_builder()
                .kdf_rounds(2048)
                .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                .hmac_hash(hashes.SHA256())
                .build(password.encode()))
    return pkcs12.serialize_key_and_certificates(name.encode(), key, leaf, chain or None, algo)
