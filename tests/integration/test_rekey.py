"""`rekey`: an emergency key replacement, end to end against a real OpenBao (and the outbox as the channel)."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.test_core_csr import CRED, csr_pem
from tests.integration.test_rotation_prod import set_global, set_partner, webhook_server
from tests.pki import CA

MZP = "MZP654321"


def test_rekey_makes_a_new_key_now_submits_it_urgent_and_keeps_the_old_certificate(cli, raw, inventory, tmp_path):
    outbox = tmp_path / "outbox"
    url, received, stop = webhook_server()
    try:
        set_partner(inventory, submission={"method": "outbox", "dir": str(outbox), "to": "pki@mpsa.example"},
                    applications=[{"name": "fleet"}])
        set_global(inventory, partnercerts_notify={"webhook": {"url": url}})
        ca = CA("Rekey Test CA", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
        request = x509.load_pem_x509_csr(csr_pem(cli("csr", "--mzp", MZP, "--app", "fleet").out).encode())
        leaf = ca.issue(request.public_key(), request.subject, now=dt.datetime.now(dt.timezone.utc))
        (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert", str(tmp_path / "leaf.pem"), "--ca",
            str(tmp_path / "ca.pem"), "--client-id", "cid-rekey")
        old = raw.read(f"{CRED}/current")
        serial = old["data"]["serial"]

        refused = cli("rekey", "--mzp", MZP, "--app", "fleet", ok=False)
        assert refused.rc == 2 and "--reason: say why the key is replaced" in refused.err

        r = cli("rekey", "--mzp", MZP, "--app", "fleet", "--reason", "laptop holding the key stolen")
        assert f"the authority is asked to revoke serial {serial}" in r.out, r.text
        assert f"serial {serial} stays current and deployed until the new certificate is imported" in r.out
        pend = raw.read(f"{CRED}/pending")["data"]
        assert pend["state"] == "pending" and pend["key_sha256"] != old["data"]["key_sha256"]
        assert pend["rekey"]["reason"] == "laptop holding the key stolen"
        assert pend["rekey"]["revoke_serial"] == serial
        assert pend["rekey"]["by"].split("@")[0] and dt.datetime.fromisoformat(pend["rekey"]["at"])
        assert pend["submitted_at"] and pend["message_id"]
        # The old certificate is untouched: still current, still what the hosts get.
        now_current = raw.read(f"{CRED}/current")
        assert now_current["data"] == old["data"] and now_current["metadata"]["version"] == old["metadata"]["version"]
        (folder,) = outbox.iterdir()
        msg = email.message_from_bytes((folder / f"{MZP}-fleet.eml").read_bytes(), policy=email.policy.default)
        assert msg["Subject"] == f"URGENT: key replacement for {MZP}, application fleet"
        assert msg["Importance"] == "high" and msg["Message-ID"].strip() == pend["message_id"]
        body = msg.get_body(("plain",)).get_content()
        assert f"revoke certificate serial {serial} once it is issued" in body
        assert "(reason: laptop holding the key stolen)" in body and pend["key_sha256"] in body
        row = json.loads(cli("status", "--json").out)[0]
        assert row["state"] == "pending" and row["serial"] == serial and row["pending_times_sent"] == 1
        (event,) = [e for batch in received for e in batch["events"] if e["kind"] == "rekey"]
        assert event["details"]["revoke_serial"] == serial and event["details"]["reason"] == \
            "laptop holding the key stolen"
    finally:
        stop()


def test_rekey_without_a_current_certificate_says_so_and_changes_nothing(cli, raw):
    before = raw.snapshot()
    r = cli("rekey", "--mzp", MZP, "--app", "fleet", "--reason", "test", ok=False)
    assert r.rc == 2 and "no current certificate yet" in r.err and raw.snapshot() == before


def _on_a_terminal(cli, args, typed: str):
    """Run a task with stdin, stdout and stderr on a pseudo-terminal, typing `typed` at its prompt."""
    import os
    import pty
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, Result
    leader, follower = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], env=cli.env,
                         cwd=cli.cwd, stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out, sent, deadline = b"", False, time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if not sent and b"to go on: " in out:
            os.write(leader, typed.encode() + b"\n")
            sent = True
    os.close(leader)
    r = Result(p.wait(timeout=60), out.decode(errors="replace"), "")
    cli.assert_clean(r)
    return r, sent


def test_rekey_withdraw_asks_on_a_terminal_and_a_wrong_answer_changes_nothing(cli, raw, inventory, tmp_path):
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "pki@mpsa.example"},
                applications=[{"name": "fleet"}])
    ca = CA("Withdraw Prompt CA", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    request = x509.load_pem_x509_csr(csr_pem(cli("csr", "--mzp", MZP, "--app", "fleet").out).encode())
    (tmp_path / "leaf.pem").write_bytes(ca.issue(request.public_key(), request.subject,
                                                 now=dt.datetime.now(dt.timezone.utc))
                                        .public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert", str(tmp_path / "leaf.pem"), "--ca",
        str(tmp_path / "ca.pem"), "--client-id", "cid-prompt")
    serial = raw.read(f"{CRED}/current")["data"]["serial"]
    args = ("rekey", "--mzp", MZP, "--app", "fleet", "--reason", "key pasted in a chat", "--withdraw")
    before = raw.snapshot()
    r, asked = _on_a_terminal(cli, args, "yes")
    assert asked and f"removes serial {serial} from every host now, and the service has NO credential" in r.out
    assert r.rc == 2 and "--withdraw not confirmed; nothing was changed" in r.out, r.out
    assert raw.snapshot() == before and not (tmp_path / "outbox").exists()
    r, asked = _on_a_terminal(cli, args, f"{MZP}/fleet")
    assert asked and f"serial {serial} is withdrawn in Vault; removing it from the hosts now" in r.out, r.out
    assert raw.read(f"{CRED}/current")["data"]["withdrawn"]["reason"] == "key pasted in a chat"
    assert raw.read(f"{CRED}/pending")["data"]["rekey"]["revoke_serial"] == serial


def test_rekey_withdraw_with_an_authority_that_signs_at_once_deploys_the_new_certificate(cli, raw):
    cli("rotate")  # the sandbox authority signs at once
    old = raw.read(f"{CRED}/current")["data"]["serial"]
    r = cli("rekey", "--mzp", MZP, "--app", "fleet", "--reason", "drill", "--withdraw", "--yes")
    new = raw.read(f"{CRED}/current")["data"]
    assert new["serial"] != old and "withdrawn" not in new
    assert f"serial {old} is withdrawn; the new certificate (serial {new['serial']}) is already imported" in r.out
    assert raw.read(f"{CRED}/history/{old}")["data"]["withdrawn"]["reason"] == "drill"
