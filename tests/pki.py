"""A tiny test CA: makes the certificates the gate must accept or refuse (generated per test run)."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
_KEYS: list = []


def key(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def name(cn: str, o: str = "Test CA") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    def __init__(self, cn: str = "Test Stellantis CA", issuer: "CA | None" = None, now: dt.datetime = NOW,
                 days: int = 3650, not_before: dt.datetime | None = None):
        self.key = key()
        self.name = name(cn)
        signer = issuer or self
        b = (x509.CertificateBuilder().subject_name(self.name)
             .issuer_name(signer.name if issuer else self.name)
             .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(not_before or now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
        self.cert = b.sign(signer.key, hashes.SHA256())

    def issue(self, public_key, subject: x509.Name, *, now: dt.datetime = NOW, days: int = 365,
              not_before: dt.datetime | None = None, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), ca: bool = False):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
             .public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(not_before or now - dt.timedelta(minutes=5))
             .not_valid_after((not_before or now) + dt.timedelta(days=days)))
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return b.sign(self.key, hashes.SHA256())
