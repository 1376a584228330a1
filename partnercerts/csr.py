"""Certificate signing requests with the exact PSA profile."""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .profile import Subject


def build(subject: Subject, key) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject.to_name()).sign(key, hashes.SHA256())


def to_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def from_pem(text: str) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(text.encode("ascii"))


def requested_san(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    """The subjectAltName entries the CSR asks for (the PSA profile asks for none)."""
    try:
        return list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (x509.ExtensionNotFound, ValueError):
        return []
