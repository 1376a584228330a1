"""`import-cert` of certificates signed by a real authority: OpenBao's PKI secrets engine on the test server.

A PKI role rebuilds the subject from its own policy instead of copying the CSR: it writes its own O, OU
and C (PrintableString, in Go's order), keeps the CSR's CN, drops ST, L and emailAddress and adds the CN
as a DNS SAN; `sign-verbatim` copies the CSR's subject as it is. This module proves, on what the engine
really issued (each subject and SAN also read by `openssl x509`, an independent reader), that the gate
applies the subject rules of `partnercerts.subjects.compare`:
- a role that writes the CSR's own O, OU and C imports, with one exact warning naming every difference
  (attributes dropped, re-encoded, SAN entries added), stored with the certificate (current, history)
  and shown by `status --json`;
- `sign-verbatim` imports with no warning at all;
- a role that writes another O, drops O, OU and C, or splits "Free2Move, SAS" into two O values (a
  role's `organization` given as one comma-separated string) is refused with one exact line and nothing
  changes in Vault; with `--accept-subject-change` it imports, and who accepted which change is recorded;
- path validation (RFC 5280, cryptography's verifier) passes for the engine's root (keyUsage keyCertSign),
  and another CA is refused.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
from cryptography.hazmat.primitives import serialization

from tests.integration.test_core_csr import CRED
from tests.pki import CA

MZP, APP = "MZP654321", "fleet"
TTL = "8760h"
# `openssl x509 -subject` in the format `subjects.show_name` writes (certificate order, short names, ", ",
# RFC 2253 escapes, UTF-8 kept). OpenSSL 3's default (-nameopt oneline) writes `O = "Free2Move, SAS"`.
NAMEOPT = "esc_2253,utf8,sep_comma_plus_space,sname"

# The role of the PSA profile: the CSR's own O, OU and C. The engine splits a role's comma-separated string
# (organization="Free2Move, SAS" gives O=Free2Move and O=SAS), so every value is given as a one-item list.
PSA_ROLE = {"ou": ["Programs Partners"], "organization": ["Free2Move, SAS"], "country": ["FR"],
            "allow_any_name": True, "enforce_hostnames": False, "client_flag": True, "server_flag": False,
            "use_csr_common_name": True, "max_ttl": TTL}
ROLES = {
    "psa": PSA_ROLE,
    # SANs given when signing (alt_names, uri_sans) instead of the CSR's (which asks for none).
    "psa-sans": {**PSA_ROLE, "use_csr_sans": False, "allowed_uri_sans": ["urn:partner:*"]},
    "stellantis-o": {**PSA_ROLE, "organization": ["Stellantis Partners"]},
    "no-identity": {k: v for k, v in PSA_ROLE.items() if k not in ("ou", "organization", "country")},
    "comma-string-o": {**PSA_ROLE, "organization": "Free2Move, SAS"},
}

CSR_SUBJECT = ("C=FR, ST=Île-de-France, L=Boulogne-Billancourt, O=Free2Move\\, SAS, OU=Programs Partners, "
               "CN=MZP654321, emailAddress=pki@free2move.example")
ROLE_SUBJECT = "C=FR, O=Free2Move\\, SAS, OU=Programs Partners, CN=MZP654321"

WARNING = (f"warning: {MZP}/{APP}: the authority changed the subject the CSR asked for, accepted as it does not "
           "change who the certificate identifies: ")
ST_DROPPED = "ST dropped (CSR: 'Île-de-France')"
L_DROPPED = "L dropped (CSR: 'Boulogne-Billancourt')"
O_RECODED = "O re-encoded as PrintableString (CSR: UTF8String)"
OU_RECODED = "OU re-encoded as PrintableString (CSR: UTF8String)"
CN_RECODED = "CN re-encoded as PrintableString (CSR: UTF8String)"
EMAIL_DROPPED = "emailAddress dropped (CSR: 'pki@free2move.example')"
CN_SAN_ADDED = "SAN added: DNS:MZP654321"

# Case 1, the whole line, as the rules say: CN and C as asked (C was a PrintableString already); O and OU
# the CSR's values, re-encoded (3a); ST, L and emailAddress dropped, the e-mail not in the SAN (3b); C, O,
# OU, CN in the CSR's order (no 3d); the CN added as a DNS SAN (3e).
ROLE_WARNING = ("warning: MZP654321/fleet: the authority changed the subject the CSR asked for, accepted as it does "
                "not change who the certificate identifies: ST dropped (CSR: 'Île-de-France'); L dropped (CSR: "
                "'Boulogne-Billancourt'); O re-encoded as PrintableString (CSR: UTF8String); OU re-encoded as "
                "PrintableString (CSR: UTF8String); CN re-encoded as PrintableString (CSR: UTF8String); "
                "emailAddress dropped (CSR: 'pki@free2move.example'); SAN added: DNS:MZP654321")
ROLE_NOTES = [ST_DROPPED, L_DROPPED, O_RECODED, OU_RECODED, CN_RECODED, EMAIL_DROPPED]
assert ROLE_WARNING == WARNING + "; ".join([*ROLE_NOTES, CN_SAN_ADDED])


CLIENT_AUTH = "TLS Web Client Authentication"


@dataclass(frozen=True)
class Signing:
    endpoint: str                 # sign/<role> or sign-verbatim/<role>
    params: dict                  # besides csr and ttl
    subject: str                  # what `openssl x509 -subject -nameopt NAMEOPT` prints
    san: str                      # what `openssl x509 -ext subjectAltName` prints ("" when there is none)
    eku: str = CLIENT_AUTH        # what `openssl x509 -ext extendedKeyUsage` prints ("" when there is none)


ACCEPTED = {
    # 1. The role writes the CSR's own O, OU, C and adds the CN as a DNS SAN.
    "role-own-values": (Signing("sign/psa", {}, ROLE_SUBJECT, "DNS:MZP654321"), [*ROLE_NOTES, CN_SAN_ADDED]),
    # 2. SANs asked for when signing, the CN left out of them.
    "role-alt-names": (Signing("sign/psa-sans", {"exclude_cn_from_sans": True, "alt_names": "fleet.partner.example",
                                                 "uri_sans": "urn:partner:MZP654321"},
                               ROLE_SUBJECT, "DNS:fleet.partner.example, URI:urn:partner:MZP654321"),
                       [*ROLE_NOTES, "SAN added: DNS:fleet.partner.example, URI:urn:partner:MZP654321"]),
    # 2b. The CN left out of the SANs and none asked for: the engine writes no SAN extension at all.
    "role-no-san": (Signing("sign/psa", {"exclude_cn_from_sans": True}, ROLE_SUBJECT, ""), ROLE_NOTES),
    # 4. sign-verbatim: the CSR's subject, attribute by attribute and encoding by encoding; no SAN, no EKU.
    "verbatim": (Signing("sign-verbatim/psa", {}, CSR_SUBJECT, "", eku=""), []),
    "verbatim-client-eku": (Signing("sign-verbatim/psa", {"ext_key_usage": ["ClientAuth"]}, CSR_SUBJECT, ""), []),
}

REFUSED = [
    # 3. The role writes its own organization.
    pytest.param("stellantis-o", "C=FR, O=Stellantis Partners, OU=Programs Partners, CN=MZP654321",
                 ["O 'Stellantis Partners' (CSR: 'Free2Move, SAS')"],
                 [ST_DROPPED, L_DROPPED, OU_RECODED, CN_RECODED, EMAIL_DROPPED, CN_SAN_ADDED], id="role-own-o"),
    # 5. A role with no ou, organization, country: the engine leaves O, OU and C out.
    pytest.param("no-identity", "CN=MZP654321",
                 ["C dropped (CSR: 'FR')", "O dropped (CSR: 'Free2Move, SAS')",
                  "OU dropped (CSR: 'Programs Partners')"],
                 [ST_DROPPED, L_DROPPED, CN_RECODED, EMAIL_DROPPED, CN_SAN_ADDED], id="role-no-identity"),
    # The role's organization given as the string "Free2Move, SAS": the engine splits it at the comma into
    # two O values in one multi-valued RDN, DER-sorted (SAS first): another O, so an identity change.
    pytest.param("comma-string-o", "C=FR, O=SAS + O=Free2Move, OU=Programs Partners, CN=MZP654321",
                 ["O 'SAS', 'Free2Move' (CSR: 'Free2Move, SAS')"],
                 [ST_DROPPED, L_DROPPED, OU_RECODED, CN_RECODED, EMAIL_DROPPED, CN_SAN_ADDED],
                 id="role-comma-string-o"),
]


def sh(*args) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


@dataclass
class Pki:
    client: hvac.Client
    path: str
    ca_pem: str
    ca_file: Path

    def sign(self, endpoint: str, csr_pem: str, params: dict) -> dict:
        resp = self.client.write_data(f"{self.path}/{endpoint}", data={"csr": csr_pem, "ttl": TTL, **params})
        assert not resp.get("warnings"), resp.get("warnings")  # every parameter was used as given
        return resp["data"]


@pytest.fixture(scope="module")
def pki(bao, tmp_path_factory) -> Pki:
    """A `pki` mount of its own on the session's OpenBao: an internal root and the roles above."""
    client, path = bao.client(), "pki" + uuid.uuid4().hex[:10]
    client.sys.enable_secrets_engine("pki", path=path, config={"max_lease_ttl": "87600h"})
    try:
        root = client.write_data(f"{path}/root/generate/internal",
                                 data={"common_name": "Test PKI Root", "ttl": "87600h"})["data"]
        for name, role in ROLES.items():
            client.write_data(f"{path}/roles/{name}", data=role)
        ca_pem = client.adapter.get(f"/v1/{path}/cert/ca")["data"]["certificate"]
        assert ca_pem == root["certificate"]
        ca_file = tmp_path_factory.mktemp("openbao-pki") / "ca.pem"
        ca_file.write_text(ca_pem + "\n")
        yield Pki(client, path, ca_pem, ca_file)
    finally:
        client.sys.disable_secrets_engine(path)


def signed(cli, pki: Pki, tmp_path: Path, endpoint: str, params: dict) -> Path:
    """The CLI's pending CSR, signed by the engine at `endpoint`, saved as the authority would send it."""
    csr_file = tmp_path / "fleet.csr"
    cli("csr", "--mzp", MZP, "--app", APP, "--out", str(csr_file))
    data = pki.sign(endpoint, csr_file.read_text(), params)
    assert data["issuing_ca"] == pki.ca_pem
    cert = tmp_path / "fleet.crt"
    cert.write_text(data["certificate"] + "\n")
    return cert


def openssl_subject(path: Path, kind: str = "x509", types: bool = False) -> str:
    out = sh("openssl", kind, "-in", path, "-noout", "-subject", "-nameopt", NAMEOPT + (",show_type" if types else ""))
    return out.strip().removeprefix("subject=")


def openssl_ext(cert: Path, ext: str) -> str:
    """One extension's value as `openssl x509 -ext` prints it, "" when the certificate has none."""
    lines = sh("openssl", "x509", "-in", cert, "-noout", "-ext", ext).splitlines()
    return lines[1].strip() if len(lines) > 1 and lines[0].startswith("X509v3 ") else ""


def recoded_by_openssl(csr: Path, cert: Path) -> list[str]:
    """The attributes whose string type `openssl -nameopt show_type` shows changed between CSR and certificate."""
    def typed(path: Path, kind: str) -> dict[str, str]:
        fields = re.split(r"(?<!\\), ", openssl_subject(path, kind, types=True))
        return {f.split("=", 1)[0]: f.split("=", 1)[1].split(":", 1)[0] for f in fields}
    asked, got = typed(csr, "req"), typed(cert, "x509")
    return [name for name in asked if name in got and asked[name] != got[name]]


def fleet_row(cli) -> dict:
    return next(r for r in json.loads(cli("status", "--json").out) if r["mzp"] == MZP and r["app"] == APP)


def import_args(cert: Path, ca: Path, *extra: str) -> list[str]:
    return ["import-cert", "--mzp", MZP, "--app", APP, "--cert", str(cert), "--ca", str(ca), "--client-id", "cid-1",
            *extra]


@pytest.mark.parametrize("signing,notes", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_engine_signed_certificate_imports_naming_each_difference(cli, raw, pki, tmp_path, signing, notes):
    cert = signed(cli, pki, tmp_path, signing.endpoint, signing.params)
    # What the engine issued, read by openssl, is what the case says.
    assert openssl_subject(tmp_path / "fleet.csr", "req") == CSR_SUBJECT
    assert openssl_subject(cert) == signing.subject
    assert openssl_ext(cert, "subjectAltName") == signing.san
    assert openssl_ext(cert, "extendedKeyUsage") == signing.eku
    assert [n.split(" ", 1)[0] for n in notes if " re-encoded " in n] == recoded_by_openssl(tmp_path / "fleet.csr",
                                                                                          cert)
    if signing.endpoint == "sign/psa" and not signing.params:
        # The path is really validated: the same certificate against another CA is refused, nothing written.
        other = tmp_path / "other-ca.pem"
        other.write_bytes(CA("Other Root").cert.public_bytes(serialization.Encoding.PEM))
        before = raw.snapshot()
        refused = cli(*import_args(cert, other), ok=False)
        assert (refused.rc, refused.err) == (6, f"error: {cert}: chain does not verify to the CA (no issuer found for "
                                                "'CN=Test PKI Root' among the bundle and the CA given); give the "
                                                "matching CA file with --ca\n")
        assert raw.snapshot() == before
    r = cli(*import_args(cert, pki.ca_file))
    serial = sh("openssl", "x509", "-in", cert, "-noout", "-serial").strip().split("=")[1]
    assert f"{MZP}/{APP}: imported serial {serial}," in r.out
    # One warning line naming every difference, nothing else (the chain verified: no warning about it).
    assert r.err.splitlines() == ([WARNING + "; ".join(notes)] if notes else [])
    if signing.endpoint == "sign/psa" and not signing.params:
        assert r.err == ROLE_WARNING + "\n"
    # The differences are stored with the certificate and shown by status.
    cur = raw.read(f"{CRED}/current")["data"]
    assert cur["serial"] == serial and cur["ca_pem"] == pki.ca_pem + "\n" and cur["chain_pem"] == ""
    assert cur.get("subject_notes", []) == notes and ("subject_notes" in cur) == bool(notes)
    assert "subject_change" not in cur
    assert raw.read(f"{CRED}/history/{serial}")["data"].get("subject_notes", []) == notes
    row = fleet_row(cli)
    assert row["serial"] == serial and row["state"] == "active"
    assert row["subject_notes"] == notes and row["subject_change_accepted_by"] is None


@pytest.mark.parametrize("role,subject,changes,notes", REFUSED)
def test_identity_change_refused_then_accepted_and_recorded(bao, cli, raw, pki, tmp_path, role, subject, changes,
                                                            notes):
    cert = signed(cli, pki, tmp_path, f"sign/{role}", {})
    assert openssl_subject(cert) == subject
    assert openssl_ext(cert, "subjectAltName") == "DNS:MZP654321"
    before = raw.snapshot()
    refused = cli(*import_args(cert, pki.ca_file), ok=False)
    assert refused.rc == 6, refused.text
    line = (f"error: {cert}: the authority changed who the certificate identifies ({'; '.join(changes)}) "
            f"in subject '{subject}'; check the change with the authority; if the authority confirms the "
            "change, import it again with --accept-subject-change\n")
    assert refused.err == line
    assert raw.snapshot() == before
    # A human checked with the authority: the same file imports, and the acceptance is recorded.
    started = dt.datetime.now(dt.timezone.utc)
    r = cli(*import_args(cert, pki.ca_file, "--accept-subject-change"))
    cur = raw.read(f"{CRED}/current")["data"]
    change = cur["subject_change"]
    assert set(change) == {"accepted_by", "accepted_at", "changes"} and change["changes"] == changes
    token = bao.client().auth.token.lookup_self()["data"]["display_name"]
    assert change["accepted_by"] == f"{getpass.getuser()}@{socket.gethostname()} (Vault token {token})"
    accepted_at = dt.datetime.fromisoformat(change["accepted_at"])
    assert accepted_at.tzinfo is not None and started - dt.timedelta(seconds=5) <= accepted_at
    assert accepted_at <= dt.datetime.now(dt.timezone.utc)
    assert cur["subject_notes"] == notes
    assert raw.read(f"{CRED}/history/{cur['serial']}")["data"]["subject_change"] == change
    assert r.err.splitlines() == [f"warning: {MZP}/{APP}: identity change accepted by {change['accepted_by']} and "
                                  f"recorded in Vault: {'; '.join(changes)}", WARNING + "; ".join(notes)]
    row = fleet_row(cli)
    assert row["serial"] == cur["serial"] and row["subject_change_accepted_by"] == change["accepted_by"]
    assert row["subject_notes"] == notes
