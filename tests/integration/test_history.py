"""`history`: the audit trail of one credential, rebuilt from the versions a real OpenBao keeps.

One credential walks through csr, submit, resend, a reminder, import, deploy, rekey, an import with an accepted
subject change (by another token), deploy and rollback; the trail lists it newest first, in text and JSON,
with no secret. The pure functions are also checked on records the walk does not make (an answer without a
certificate, a withdrawal, the sandbox, deleted and pruned versions)."""
from __future__ import annotations

import datetime as dt
import json

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from partnercerts import audit, policies
from tests.integration.test_rotation_prod import at, set_partner
from tests.pki import CA

MZP = "MZP654321"
CRED = f"{MZP}/apps/fleet"


def _token(bao, mount: str, role: str, display: str) -> str:
    """A token with this test mount's rendered `role` policy and a display name (as an AppRole login has)."""
    root = bao.client()
    name = f"{mount}-{role}"
    hcl = policies.rendered(mount, "partnercerts")[policies.name(role)]
    root.sys.create_or_update_acl_policy(name=name, policy=hcl)
    return root.auth.token.create(policies=[name], display_name=display, ttl="1h")["auth"]["client_token"]


def _sign(ca: CA, raw, path, *, subject=None):
    csr = x509.load_pem_x509_csr(raw.read(f"{CRED}/pending")["data"]["csr_pem"].encode())
    now = dt.datetime.now(dt.timezone.utc)
    cert = ca.issue(csr.public_key(), subject or csr.subject, now=now, days=365, not_before=now - dt.timedelta(days=1))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _changed_subject(raw) -> x509.Name:
    """The CSR's subject with O changed (an identity change to accept) and L dropped (a note)."""
    csr = x509.load_pem_x509_csr(raw.read(f"{CRED}/pending")["data"]["csr_pem"].encode())
    out = []
    for attr in csr.subject:
        if attr.oid == NameOID.LOCALITY_NAME:
            continue
        out.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Free2Move Lease, SAS")
                   if attr.oid == NameOID.ORGANIZATION_NAME else attr)
    return x509.Name(out)


def _learn_secrets(cli, raw) -> None:
    """Every key and PKCS#12 password Vault holds for the credential: none may ever be printed."""
    for path in ("pending", "current"):
        latest = raw.read(f"{CRED}/{path}")
        for v in range(1, latest["metadata"]["version"] + 1):
            data = raw.read(f"{CRED}/{path}", version=v)["data"]
            cli.secrets += [data[k] for k in ("key_pem", "p12_password") if data.get(k)]


def test_history_walks_one_credential_newest_first_without_a_secret(cli, raw, bao, mount, inventory, tmp_path):
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "c@mpsa.example"},
                applications=[{"name": "fleet"}], pending_reminder_days=7)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"h1": {
        "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "partnercerts_deploy_credentials": [{"mzp": MZP, "app": "fleet", "dest": str(tmp_path / "h1" / "fleet")}]}}}}))
    ca = CA("History CA", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    alice = _token(bao, mount, "rotator", "alice")
    auditor = _token(bao, mount, "auditor", "audit")
    cli.secrets += [alice, auditor, "mzp-password-history"]

    cli("account", "--mzp", MZP, input="mzp-password-history\n", env=at(0))  # the deploy needs it
    cli("csr", "--mzp", MZP, "--app", "fleet", "--out", str(tmp_path / "fleet.csr"), env=at(0))
    cli("submit", env=at(1))
    cli("submit", "--resend", env=at(2))
    first_sent = raw.read(f"{CRED}/pending")["data"]["sent"]
    assert "wait" in cli("rotate", "--no-deploy", env=at(10)).out  # waiting 8 days since the resend: a reminder
    assert raw.read(f"{CRED}/pending")["data"]["times_reminded"] == 1
    first_key = raw.read(f"{CRED}/pending")["data"]["key_sha256"]
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert", _sign(ca, raw, tmp_path / "one.pem"), "--ca",
        str(tmp_path / "ca.pem"), "--client-id", "cid-history", env=at(11))
    serial1 = raw.read(f"{CRED}/current")["data"]["serial"]
    cli("deploy", env=at(11))
    cli("rekey", "--mzp", MZP, "--app", "fleet", "--reason", "laptop holding the key stolen", env=at(12))
    rekeyed = raw.read(f"{CRED}/pending")["data"]
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert",
        _sign(ca, raw, tmp_path / "two.pem", subject=_changed_subject(raw)), "--accept-subject-change",
        env={**at(13), "VAULT_TOKEN": alice})
    serial2 = raw.read(f"{CRED}/current")["data"]["serial"]
    cli("deploy", env=at(13))
    cli("rollback", "--mzp", MZP, "--app", "fleet", env=at(14))
    assert raw.read(f"{CRED}/current")["data"]["serial"] == serial1
    _learn_secrets(cli, raw)

    # JSON: the whole walk, newest first, each event from the version it was read from.
    found = json.loads(cli("history", "--mzp", MZP, "--app", "fleet", "--json").out)
    assert [e["kind"] for e in found] == [
        "deployed", "rollback", "deployed", "imported", "csr_submitted", "rekey", "key_made",
        "deployed", "imported", "reminder", "csr_resent", "csr_submitted", "key_made", "mzp_password"]
    by = {(e["kind"], e["source"]): e for e in found}
    assert all(e["mzp"] == MZP and e["app"] == "fleet" for e in found)
    assert by[("key_made", "pending v1")]["details"]["key_sha256"] == first_key
    assert by[("key_made", "pending v1")]["at"] == dt.datetime.fromisoformat(at(0)["PARTNERCERTS_NOW"]).replace(
        microsecond=0).isoformat()
    submitted = next(e for e in found if e["kind"] == "csr_submitted" and e["details"]["key_sha256"] == first_key)
    assert submitted["details"] == {"method": "outbox", "message_id": first_sent[0]["message_id"],
                                    "key_sha256": first_key}
    resent = next(e for e in found if e["kind"] == "csr_resent")
    assert resent["details"]["message_id"] == first_sent[1]["message_id"] != first_sent[0]["message_id"]
    assert resent["details"]["times_sent"] == 2
    assert next(e for e in found if e["kind"] == "reminder")["details"]["times_reminded"] == 1
    rekey = next(e for e in found if e["kind"] == "rekey")
    assert rekey["details"]["reason"] == "laptop holding the key stolen"
    assert rekey["details"]["by"] == rekeyed["rekey"]["by"] and rekey["details"]["revoke_serial"] == serial1
    assert found[4]["details"]["message_id"] == rekeyed["message_id"]  # the urgent CSR's Message-ID
    imports = [e for e in found if e["kind"] == "imported"]
    assert [i["details"]["serial"] for i in imports] == [serial2, serial1]
    assert "token-alice" in imports[0]["details"]["by"] and "by" not in imports[1]["details"]  # not recorded
    assert imports[0]["details"]["subject_change"] and any("L" in n for n in imports[0]["details"]["subject_notes"])
    assert imports[1]["details"]["client_id"] == "cid-history" and imports[1]["details"]["submission"] == "outbox"
    rollback = found[1]
    assert (rollback["details"]["serial"], rollback["details"]["from_serial"]) == (serial1, serial2)
    assert rollback["details"]["hosts"] == [f"h1: serial {serial1} (in sync)"]
    assert [e["details"]["serials"] for e in found if e["kind"] == "deployed"] == [[serial1], [serial2], [serial1]]
    vault_times = [e["vault_time"] for e in found]
    assert vault_times == sorted(vault_times, reverse=True)

    # Text: one line per event, the same order, time first; readable by the rotator's policy.
    text = cli("history", "--mzp", MZP, "--app", "fleet", env={"VAULT_TOKEN": alice}).out.splitlines()
    assert len(text) == len(found)
    assert [line.split()[1] for line in text] == [e["kind"] for e in found]
    assert [line.split()[0] for line in text] == [e["at"] for e in found]
    assert f"emergency re-key by {rekeyed['rekey']['by']}: laptop holding the key stolen" in text[5]
    assert f"serial {serial1}" in text[1] and f"made current again, replacing serial {serial2}" in text[1]
    assert first_sent[0]["message_id"] in text[-3] and "token-alice" in text[3]

    # The auditor reads metadata only: refused, saying which policy history needs; nothing else printed.
    denied = cli("history", "--mzp", MZP, "--app", "fleet", env={"VAULT_TOKEN": auditor}, ok=False)
    assert denied.rc == 4 and denied.out == "" and denied.err.count("\n") == 1, denied.text
    assert "the auditor policy reads metadata only" in denied.err and "rotator" in denied.err
    # An unknown credential: one line, exit 2.
    for args in (("--mzp", "MZP999999", "--app", "fleet"), ("--mzp", MZP, "--app", "nope")):
        unknown = cli("history", *args, ok=False)
        assert unknown.rc == 2 and unknown.out == "" and unknown.err.count("\n") == 1, unknown.text
        assert "no such credential, neither in" in unknown.err


def _v(path, n, data, t, **kw):
    return audit.Version(path, n, f"2026-01-01T00:00:{t:02d}.5Z", data, **kw)


def test_the_pure_functions_read_answers_withdrawals_the_sandbox_and_gaps():
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    marker = key.splitlines()[0]  # hostile text in a reply's subject: a key's first line
    live = {"state": "pending", "key_pem": key, "key_sha256": "k1", "created_at": "2026-01-01T00:00:00+00:00",
            "submitted_at": "2026-01-01T00:00:01+00:00", "submission": "email", "message_id": "<m1@x>",
            "sent": [{"at": "2026-01-01T00:00:01+00:00", "message_id": "<m1@x>", "method": "email"}]}
    attention = {**live, "attention": {"subject": "MZP unknown\r\n" + marker, "date": "Thu",
                                       "message_id": "<r1@psa>", "seen_at": "2026-01-01T00:00:02+00:00"}}
    issued = {"key_pem": key, "p12_password": "pw-secret", "serial": "AA", "key_sha256": "k0",
              "imported_at": "2026-01-01T00:00:03+00:00", "submission": "sandbox",
              "submitted_at": "2026-01-01T00:00:03+00:00", "client_id": "c"}
    withdrawn = {**issued, "withdrawn": {"reason": "leak", "by": "bob@h (Vault token token-bob)",
                                         "at": "2026-01-01T00:00:04+00:00"}}
    trail = audit.Trail(MZP, "fleet",
                        pending=[_v("pending", 3, live, 1), _v("pending", 4, attention, 2),
                                 _v("pending", 5, None, 5, deleted_at="2026-01-01T00:00:06Z")],
                        current=[_v("current", 1, issued, 3), _v("current", 2, withdrawn, 4)],
                        history={"BB": [_v("history/BB", 1, {**issued, "serial": "BB",
                                                              "imported_at": "2026-01-01T00:00:00+00:00"}, 0)]},
                        account=[_v("account", 1, None, 0)])
    found = audit.events(trail)
    kinds = [e.kind.value for e in found]
    assert kinds[:4] == ["version_deleted", "withdrawn", "imported", "csr_submitted"]
    assert set(kinds) >= {"needs_attention", "key_made", "mzp_password"} and kinds.count("imported") == 2
    answer = next(e for e in found if e.kind is audit.Kind.NEEDS_ATTENTION)
    assert answer.details["reply_message_id"] == "<r1@psa>" and "\n" not in answer.summary
    assert "withheld" in answer.details["reply_subject"]
    assert next(e for e in found if e.kind is audit.Kind.WITHDRAWN).details["by"].endswith("token-bob)")
    sandbox = next(e for e in found if e.kind is audit.Kind.CSR_SUBMITTED and e.source == "current v1")
    assert sandbox.details["method"] == "sandbox"
    stale = next(e for e in found if e.kind is audit.Kind.IMPORTED and e.details["serial"] == "BB")
    assert "never made current" in stale.summary
    dumped = json.dumps([e.as_json(MZP, "fleet") for e in found]) + "\n".join(e.line() for e in found)
    assert "PRIVATE KEY-----" not in dumped and "pw-secret" not in dumped and "key_pem" not in dumped
    assert audit.vault_ns("2026-01-01T00:00:00.5Z") > audit.vault_ns("2026-01-01T00:00:00.123456789Z")


class _PrunedStore:
    """Metadata of a path whose versions 1 to 3 KV v2 pruned (max_versions 2): only 4 and 5 are kept."""

    def metadata(self, path):
        return {"max_versions": 2, "versions": {str(n): {"created_time": f"2026-01-01T00:00:0{n}Z",
                                                         "deletion_time": "", "destroyed": n == 5} for n in (4, 5)}}

    def read_version(self, path, version):
        assert version == 4  # a destroyed version is not asked for
        return type("R", (), {"data": {"hosts": {}, "checked_at": ""}})()


def test_pruned_and_destroyed_versions_are_said_not_hidden():
    versions, note = audit._versions(_PrunedStore(), "p/hosts", "hosts")
    assert [(v.number, v.destroyed, v.data is not None) for v in versions] == [(4, False, True), (5, True, False)]
    assert note == ("hosts: versions 1 to 3 were pruned by KV v2 (max_versions 2): what they recorded is not shown")
    (destroyed,) = audit.deletion_events(versions)
    assert destroyed.kind is audit.Kind.VERSION_DESTROYED and destroyed.source == "hosts v5"
