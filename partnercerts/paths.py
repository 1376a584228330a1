"""RFC 5280 path validation of an imported certificate, by `cryptography.x509.verification`.

The library builds the path from the leaf through the bundle's other certificates to a CA given with
`--ca` and checks every link: signatures, validity at the gate's `now`, basicConstraints CA:TRUE and
path length, keyUsage keyCertSign, name constraints, allowed signature algorithms (no SHA-1, no MD5)
and issuer key sizes (RSA 2048 bits at least), clientAuth where an EKU is present.

It applies the Web PKI profile, which asks more than RFC 5280 of certificates that real authorities
commonly issue. Three of its extension rules are relaxed, each for a reason stated in the README
(section "Import: what the gate accepts"):
- the client certificate need not carry a subjectAltName: the PSA profile identifies the partner in the
  subject (CN = MZP), and its CSR asks for no SAN;
- the client certificate need not carry an authorityKeyIdentifier: `openssl ca` without an extensions
  section issues none, and OpenSSL, Java and curl do not need it to build the path;
- a CA certificate may lack keyUsage altogether (RFC 5280 asks for it, but `openssl req -x509` with the
  stock openssl.cnf leaves it out, and OpenSSL and Java accept such CAs); when keyUsage is there, it must
  assert keyCertSign, as the library requires.
"""
from __future__ import annotations

import datetime as dt
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509 import verification as v

from .certs import GateError

MAX_CHAIN_DEPTH = 8

# (what the library says, what the gate says, what fixes it): the first match words a failure.
_REASONS: tuple[tuple[str, str, str], ...] = (
    ("keycertsign must be asserted", "an issuer's keyUsage lacks keyCertSign, so it may not sign certificates",
     "ask the authority for its CA certificates"),
    ("basicconstraints.ca must be asserted", "an issuer is not a CA (basicConstraints CA:TRUE is missing)",
     "ask the authority for its CA certificates"),
    ("2.5.29.19: missing required extension", "an issuer has no basicConstraints, so it is not a CA",
     "ask the authority for its CA certificates"),
    ("2.5.29.19: certificate is missing required extension", "an issuer has no basicConstraints, so it is not a CA",
     "ask the authority for its CA certificates"),
    ("path length constraint violated", "an intermediate is deeper than a CA's path length constraint allows",
     "ask the authority for the chain its CA permits"),
    ("not valid at validation time", "a CA certificate on the path is expired or not yet valid",
     "ask the authority for its current chain (and check this machine's clock)"),
    ("forbidden signature algorithm", "a certificate on the path is signed with a weak or unsupported algorithm "
     "(SHA-1, MD5, DSA or EdDSA)", "ask the authority to sign with SHA-256 or stronger"),
    ("forbidden public key algorithm", "an issuer's key is of an unsupported type",
     "ask the authority for its current chain"),
    ("rsa key is too weak", "an issuer's RSA key is under 2048 bits", "ask the authority for its current chain"),
    ("name constraint", "a CA's name constraints do not permit this certificate",
     "ask the authority which CA may sign for this partner"),
    ("required eku not found", "a CA on the path does not allow clientAuth (its extended key usage)",
     "ask the authority for a CA that issues client certificates"),
    ("exceeds max depth", f"the path is longer than {MAX_CHAIN_DEPTH} certificates or loops",
     "give the certificate and its chain only, and the matching CA file with --ca"),
    ("signature check limit", "the bundle holds too many candidate issuers", "give the certificate and its chain only"),
    ("x509v3", "a certificate on the path is not X.509 version 3", "ask the authority for its current chain"),
    ("unaccounted-for critical extension", "a certificate on the path has a critical extension this gate does "
     "not know", "ask the authority which extension that is"),
    ("incorrect criticality", "a certificate on the path marks an extension with the wrong criticality",
     "ask the authority for a well-formed certificate"),
    ("prohibited extension", "a certificate carries an extension its role forbids (nameConstraints in a "
     "client certificate)", "ask the authority for a well-formed certificate"),
)
_OID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def _ca_key_usage(policy: v.Policy, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    """Relaxed rule: a CA may lack keyUsage; when it has one, keyCertSign must be asserted (as the library asks)."""
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("keyUsage.keyCertSign must be asserted in a CA certificate")


def _verifier(anchors: list[x509.Certificate], now: dt.datetime) -> v.ClientVerifier:
    ca = v.ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.KeyUsage, v.Criticality.AGNOSTIC, _ca_key_usage)
    ee = (v.ExtensionPolicy.webpki_defaults_ee()
          .may_be_present(x509.SubjectAlternativeName, v.Criticality.AGNOSTIC, None)
          .may_be_present(x509.AuthorityKeyIdentifier, v.Criticality.NON_CRITICAL, None))
    return (v.PolicyBuilder().store(v.Store(anchors)).time(now).max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=ca, ee_policy=ee).build_client_verifier())


def worded(message: str) -> tuple[str, str]:
    """(reason, fix) for one of the library's failure messages."""
    low = message.lower()
    for needle, reason, fix in _REASONS:
        if needle in low:
            return reason, fix
    if "missing required extension" in low:
        oid = _OID.search(message)
        return (f"a certificate on the path lacks an extension the profile requires ({oid.group(0) if oid else '?'})",
                "ask the authority for its current chain")
    return "", ""


def verify(leaf: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate],
           now: dt.datetime, source: str) -> list[x509.Certificate]:
    """The intermediates on the verified path from the leaf to an anchor; a GateError naming why, otherwise."""
    # A self-signed certificate is a root: trusted only when given as the CA, never a link on the path
    # (the library would try it as its own issuer until the depth limit).
    links = [c for c in intermediates if not _self_signed(c)]
    try:
        verified = _verifier(anchors, now).verify(leaf, links)
    except v.VerificationError as exc:
        reason, fix = worded(str(exc))
        if not reason:
            issuer = _issuer_name(leaf)
            reason = f"no issuer found for '{issuer}' among the bundle and the CA given"
            fix = "give the matching CA file with --ca"
        raise GateError(f"{source}: chain does not verify to the CA ({reason}); {fix}") from None
    return list(verified.chain[1:-1])


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        if cert.subject != cert.issuer:
            return False
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _issuer_name(leaf: x509.Certificate) -> str:
    from .subjects import show_name
    return show_name(leaf.issuer)
