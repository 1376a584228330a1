"""The sandbox authority: plays the PSA authority locally, for the demo inventory and for tests.

Its CA key lives in Vault (store.sandbox_path). It checks the CSR the way the real
authority is documented to (signature, OU, CN = MZP) and signs with clientAuth. It also issues
the TLS server certificate of the sandbox API (partnercerts/sandbox/api.py).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .. import certs, keys
from ..errors import Conflict, IntegrityError, UserError
from ..profile import MZP_RE, OU
from ..store import AuthorityKey, Store

CA_NAME = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "partnercerts sandbox"),
    x509.NameAttribute(NameOID.COMMON_NAME, "partnercerts Sandbox Partner Authority"),
])


def _new_ca(now: dt.datetime, key_bits: int | None = None) -> tuple[str, str]:
    # key_bits: a smaller test key, for the benchmark only (partnercerts/bench.py); never for real partners.
    key = (rsa.generate_private_key(public_exponent=65537, key_size=key_bits) if key_bits
           else keys.generate("rsa3072"))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(CA_NAME).issuer_name(CA_NAME)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return keys.to_pem(key), certs.to_pem([cert])


class Authority:
    def __init__(self, store: Store, validity_days: int, test_key_bits: int | None = None):
        """test_key_bits: make the CA (if this creates it) with a smaller RSA key, so that the benchmark can
        issue thousands of certificates quickly. Benchmark only: the sandbox of a real inventory never sets it."""
        self.store = store
        self.validity_days = validity_days
        self.test_key_bits = test_key_bits
        self._cached: tuple | None = None

    def _ca(self, now: dt.datetime):
        # The CA record is written once (check-and-set 0) and never changes: read it once per Authority.
        if self._cached is not None:
            return self._cached
        found = self.store.authority()
        if found is None:
            key_pem, cert_pem = _new_ca(now, self.test_key_bits)
            try:
                self.store.put_authority(AuthorityKey(key_pem=key_pem, cert_pem=cert_pem))
            except Conflict:
                pass  # another run created it first; use theirs
            found = self.store.authority()
        if found is None:
            raise IntegrityError("the sandbox authority's CA was written but cannot be read back; check Vault")
        self._cached = (keys.from_pem(found.record.key_pem), certs.from_pem(found.record.cert_pem)[0])
        return self._cached

    def ca_pem(self, now: dt.datetime) -> str:
        return certs.to_pem([self._ca(now)[1]])

    def sign(self, csr: x509.CertificateSigningRequest, now: dt.datetime, validity_days: int | None = None) -> str:
        """Sign a partner CSR with the PSA profile; refuse what the real authority would refuse."""
        if not csr.is_signature_valid:
            raise UserError("sandbox authority: the CSR signature does not verify; make a new CSR")
        ou = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        cn = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if ou != [OU] or len(cn) != 1 or not isinstance(cn[0], str) or not MZP_RE.fullmatch(cn[0]):
            raise UserError(f"sandbox authority: subject {csr.subject.rfc4514_string()!r} is not the partner profile "
                            f"(OU={OU}, CN=MZP + six digits)")
        ca_key, ca_cert = self._ca(now)
        days = validity_days or self.validity_days
        cert = (x509.CertificateBuilder()
                .subject_name(csr.subject).issuer_name(ca_cert.subject)
                .public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return certs.to_pem([cert])

    def issue_server_cert(self, names: list[str], now: dt.datetime, validity_days: int = 90):
        """A TLS server key and certificate for the sandbox API, signed by this CA: serverAuth, one SAN per name
        (IP addresses as IP SANs, anything else as a DNS name). The key is returned, never stored."""
        sans: list[x509.GeneralName] = []
        for name in dict.fromkeys(n.strip() for n in names if n and n.strip()):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        if not sans:
            raise UserError("sandbox authority: a server certificate needs at least one name or address")
        ca_key, ca_cert = self._ca(now)
        key = keys.generate("rsa2048")
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "partnercerts sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, "partnercerts sandbox API"),
        ])
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return key, cert

    def ca_cert(self, now: dt.datetime) -> x509.Certificate:
        return self._ca(now)[1]

    @staticmethod
    def new_client_id() -> str:
        return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
