"""Private keys: generation and the forms they are kept in (PEM text in Vault, never on disk)."""
from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .profile import KEY_SPECS


def generate(key_spec: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SPECS[key_spec])


def to_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def from_pem(text: str):
    return serialization.load_pem_private_key(text.encode("ascii"), password=None)


def spki_sha256(public_key) -> str:
    """SHA-256 of the SubjectPublicKeyInfo: the key's identity shown to humans and the authority."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
