"""What a host gets for one credential, and how what a host has compares with Vault.

Used by the Ansible action plugin (plugins/action/release.py, through plugins/plugin_utils/core.py) on the control
node: secrets go from Vault to the module's arguments in memory, never to a file here.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field

from . import certs, keys
from .errors import IntegrityError, Remedy, UserError
from .store import Index, Issued, Store

DEFAULT_API_URL = "https://api-cert.groupe-psa.com/connectedcar/v3"
MODES = {"client.crt": "0644", "client.key": "0600", "ca.crt": "0644", "client.p12": "0600", "client.env": "0600"}
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]*$")


@dataclass(frozen=True)
class Release:
    serial: str
    release_id: str
    files: dict[str, bytes]
    withdrawn: dict = field(default_factory=dict)  # rekey --withdraw: remove it from the hosts instead (no files)
    not_before: str = ""  # the certificate's, ISO 8601: a host serving a newer one unknown to Vault is left alone
    known_serials: tuple[str, ...] = ()  # every serial Vault holds for the credential (current and history)

    def module_files(self) -> tuple[dict, dict]:
        """The release module's `files` (name to base64 content: secret, no_log) and `modes` (name to mode)."""
        return ({name: base64.b64encode(data).decode("ascii") for name, data in self.files.items()},
                {name: MODES[name] for name in self.files})


def env_value(value: str) -> str:
    """A value both `sh` and systemd's EnvironmentFile read back unchanged."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise UserError("a value for client.env contains a line break; fix it in Vault")
    if _PLAIN.match(value):
        return value
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'


def read_env(text: str) -> dict[str, str]:
    """client.env read back (the values env_value wrote: plain, or double-quoted with \\ before " \\ $ `)."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(["\\$`])', r"\1", value[1:-1])
        out[name.strip()] = value
    return out


def build_release(mzp: str, app: str, current: Issued, password: str, api_url: str) -> Release:
    """The five files of a release, from the current record and the MZP password."""
    if not current.ca_pem:
        raise UserError(f"{mzp}/{app}: no CA certificate in Vault, and clients need it to verify the API; "
                        f"import the certificate again with --ca FILE")
    key = keys.from_pem(current.key_pem)
    leaf = certs.from_pem(current.cert_pem)[0]
    if keys.spki_sha256(key.public_key()) != keys.spki_sha256(leaf.public_key()):
        raise IntegrityError(f"{mzp}/{app}: Vault's key does not match its certificate (serial {current.serial}); "
                             "refusing to deploy; restore an earlier certificate",
                             remedy=Remedy.ROLLBACK, mzp=mzp, app=app)
    chain = certs.from_pem(current.chain_pem)
    anchors = certs.from_pem(current.ca_pem)
    p12 = certs.pkcs12_bundle(key, leaf, chain + anchors, current.p12_password, f"{mzp}-{app}")
    env = "".join(f"{k}={env_value(v)}\n" for k, v in (
        ("PSA_MZP", mzp), ("PSA_CLIENT_ID", current.client_id), ("PSA_API_URL", api_url),
        ("PSA_MZP_PASSWORD", password), ("PSA_P12_PASSWORD", current.p12_password)))
    files = {
        "client.crt": (current.cert_pem + current.chain_pem).encode(),
        "client.key": current.key_pem.encode(),
        "ca.crt": current.ca_pem.encode(),
        "client.p12": p12,
        "client.env": env.encode(),
    }
    # The p12 differs on every build (random salt), so identity comes from the sources;
    # the private key among them makes the digest unguessable.
    h = hashlib.sha256()
    for part in (files["client.crt"], files["client.key"], files["ca.crt"], files["client.env"],
                 repr(sorted(MODES.items())).encode()):
        h.update(hashlib.sha256(part).digest())
    return Release(serial=current.serial, release_id=h.hexdigest(), files=files,
                   not_before=leaf.not_valid_before_utc.isoformat(), known_serials=tuple(current.known_serials))


def release_from_vault(store: Store, mzp: str, app: str, api_url: str) -> Release:
    cur = store.current(mzp, app)
    if cur is None:
        raise UserError(f"{mzp}/{app}: no current certificate in Vault to deploy", remedy=Remedy.ROTATE,
                        mzp=mzp, app=app)
    if cur.record.withdrawn:
        return Release(serial=cur.record.serial, release_id="", files={}, withdrawn=dict(cur.record.withdrawn))
    acct = store.account(mzp)
    if acct is None or not acct.record.password:
        raise UserError(f"{mzp}: no MZP password in Vault, and API calls need it; store it",
                        remedy=Remedy.STORE_ACCOUNT_PASSWORD, mzp=mzp)
    return build_release(mzp, app, cur.record, acct.record.password, api_url)


def ahead(index: Index, host: dict, now: dt.datetime) -> bool:
    """Whether a host serves a certificate newer than Vault's current one that Vault does not know: still valid,
    issued after Vault's (notBefore), and neither Vault's current serial nor one of its history. Its key is then
    on that host only (Vault was restored from a backup taken before it was imported), and a deploy must leave
    it alone. The release module applies the same rule on the host before it switches (`ahead_of_vault`)."""
    serial, nb, na = host.get("serial") or "", host.get("not_before") or "", host.get("not_after") or ""
    known = {s for s in index.known_serials.split(",") if s} | {index.serial}
    if not serial or serial in known or not nb or not na or not index.not_before:
        return False
    return dt.datetime.fromisoformat(nb) > dt.datetime.fromisoformat(index.not_before) \
        and dt.datetime.fromisoformat(na) > now


def drift(index: Index | None, host: dict, now: dt.datetime, expiring_days: int) -> list[str]:
    """How what a host serves from `current` differs from Vault's index; [] when in sync."""
    if index is None or not index.serial:
        return ["stale: Vault has no current certificate for this credential"]
    if index.withdrawn_at:
        if host.get("present") or host.get("release"):
            return [f"withdrawn: current still points at {host.get('release') or '?'} (serial "
                    f"{host.get('serial') or '?'}); Vault withdrew serial {index.serial} "
                    f"on {index.withdrawn_at} (rekey --withdraw), so no certificate may be served until the new "
                    "one is imported"]
        return [f"mismatched: {p}" for p in host.get("problems", [])]
    if not host.get("present"):
        return ["missing: nothing deployed in current"] + [f"mismatched: {p}" for p in host.get("problems", [])]
    out = [f"mismatched: {p}" for p in host.get("problems", [])]
    if host.get("fingerprint_sha256") != index.fingerprint_sha256:
        if host.get("serial") == index.serial:
            out.append("mismatched: client.crt differs from Vault's certificate with the same serial")
        elif ahead(index, host, now):
            out.append(f"ahead: serves serial {host.get('serial')} (issued {host.get('not_before')}), newer than "
                       f"Vault's current {index.serial} (issued {index.not_before}) and unknown to Vault: its key "
                       "is on the hosts only (Vault restored from a backup older than that import?); deploys leave "
                       "it alone; take it back into Vault (README: Disaster recovery)")
        else:
            out.append(f"stale: serves serial {host.get('serial') or '?'}, Vault's current is {index.serial}")
    elif index.key_sha256 and host.get("key_sha256") != index.key_sha256:
        out.append("mismatched: client.key is not Vault's key")
    if index.ca_fingerprint_sha256 and host.get("ca_fingerprint_sha256") != index.ca_fingerprint_sha256:
        out.append("mismatched: ca.crt is not Vault's CA certificate")
    na = host.get("not_after")
    if na:
        left = dt.datetime.fromisoformat(na) - now
        if left <= dt.timedelta(0):
            out.append(f"expiring: the served certificate expired on {na}")
        elif left < dt.timedelta(days=expiring_days):
            out.append(f"expiring: the served certificate expires in {left.days} days ({na})")
    return out
