"""What a credential is exported as on the control node: the PKCS#12 bundle (`p12`)."""
from __future__ import annotations

from .importer import require_current
from .inventory import Inventory
from .store import Store


def p12(inventory: Inventory, store: Store, mzp: str, app: str, legacy: bool = False) -> tuple[bytes, str]:
    """The current key, certificate and chain as PKCS#12, and its password (kept in Vault with the credential)."""
    from . import certs, keys
    cur = require_current(inventory, store, mzp, app)
    key = keys.from_pem(cur.key_pem)
    leaf = certs.from_pem(cur.cert_pem)[0]
    chain = certs.from_pem(cur.chain_pem) + certs.from_pem(cur.ca_pem)
    blob = certs.pkcs12_bundle(key, leaf, chain, cur.p12_password, f"{mzp}-{app}", legacy=legacy)
    return blob, cur.p12_password
