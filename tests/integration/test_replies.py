"""The reply mailbox: the authority's replies read from a real IMAP server (Debian's dovecot, a fixture), matched
to the pending key, taken in through the gate, moved or flagged, never lost or done twice.

Each test checks what Vault holds (a separate client), what the mailbox folders hold (imaplib, through the
fixture), and that nothing secret was printed (the `cli` fixture scans every output)."""
from __future__ import annotations

import datetime as dt
import json
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.test_core_csr import CRED, csr_pem
from tests.integration.test_rotation_prod import set_global, set_partner, webhook_server
from tests.pki import CA, key

MZP = "MZP654321"
PROCESSED = "partnercerts/processed"
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def box(dovecot, mailbox_user, inventory, cli):
    """A reply mailbox for MZP654321 in the inventory, its password in Vault: (server, user)."""
    user, password = mailbox_user("pki@free2move.example")
    set_partner(inventory, reply_mailbox={"host": dovecot.host, "port": dovecot.imaps_port, "security": "tls",
                                          "user": user, "cafile": str(dovecot.ca_file)})
    cli("mailbox-password", "--mzp", MZP, input=password + "\n")
    cli.secrets.append(password)
    return dovecot, user


@pytest.fixture(scope="module")
def authority() -> CA:
    return CA("Replies Test Stellantis CA", now=NOW - dt.timedelta(days=1))


def pending_request(cli) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(csr_pem(cli("csr", "--mzp", MZP, "--app", "fleet").out).encode())


def reply(authority: CA, public_key, subject: x509.Name, *, client_id: str = "cid-reply-1",
          in_reply_to: str = "", days: int = 365,
          not_before: dt.datetime | None = None) -> tuple[bytes, x509.Certificate]:
    """The authority's reply as it sends it: text with the Client ID, the certificate and the CA attached."""
    leaf = authority.issue(public_key, subject, now=NOW, days=days, not_before=not_before)
    msg = EmailMessage()
    msg["From"] = "Stellantis PKI <pki@stellantis.example>"
    msg["To"] = "pki@free2move.example"
    msg["Subject"] = f"Votre certificat {MZP} / fleet"
    msg["Date"] = format_datetime(NOW)
    msg["Message-ID"] = make_msgid(domain="stellantis.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content(f"Bonjour,\n\nVoici votre certificat pour {MZP}.\nClient ID : {client_id}\n\nCordialement\n")
    msg.add_attachment(leaf.public_bytes(serialization.Encoding.PEM), maintype="application",
                       subtype="x-pem-file", filename="MZP654321.crt")
    msg.add_attachment(authority.cert.public_bytes(serialization.Encoding.PEM), maintype="application",
                       subtype="x-pem-file", filename="stellantis-ca.crt")
    return msg.as_bytes(), leaf


def question() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Stellantis PKI <pki@stellantis.example>"
    msg["Subject"] = "Question about your request"
    msg["Date"] = format_datetime(NOW)
    msg.set_content("Hello, which application is this CSR for? Regards")
    return msg.as_bytes()


def unlocked(snapshot: dict) -> dict:
    """A Vault snapshot without the rotation lock's record (replies takes and releases the lock)."""
    return {k: v for k, v in snapshot.items() if not k.endswith("locks/rotate")}


def serial_of(cert: x509.Certificate) -> str:
    text = format(cert.serial_number, "X")
    return text if len(text) % 2 == 0 else "0" + text


def test_a_reply_for_the_pending_key_is_explained_then_imported_and_moved(cli, raw, box, authority):
    server, user = box
    request = pending_request(cli)
    data, leaf = reply(authority, request.public_key(), request.subject)
    server.deliver(user, data)
    before = raw.snapshot()
    dry = cli("replies", "--dry-run")
    (line,) = [ln for ln in dry.out.splitlines() if "UID" in ln]
    assert "UID 1 (" in line and "would import for MZP654321/fleet" in line, dry.out
    assert f"serial {serial_of(leaf)}" in line and "its certificate is for the pending key" in line
    assert "names MZP654321 and fleet" in line
    assert "dry run: no message was imported, moved or flagged" in dry.out
    assert raw.snapshot() == before and server.folder_uids(user, "INBOX") == [1]
    assert server.flags(user, "INBOX")[1] == set() or "\\Seen" not in server.flags(user, "INBOX")[1]

    r = cli("replies")
    assert f"imported for MZP654321/fleet: serial {serial_of(leaf)}" in r.out, r.text
    current = raw.read(f"{CRED}/current")["data"]
    assert current["serial"] == serial_of(leaf) and current["client_id"] == "cid-reply-1"
    assert current["ca_pem"] == authority.cert.public_bytes(serialization.Encoding.PEM).decode()
    assert raw.read(f"{CRED}/pending")["data"]["state"] == "consumed"
    assert server.folder_uids(user, "INBOX") == []
    assert server.fetch_all(user, PROCESSED) == [data.replace(b"\n", b"\r\n")] or \
        len(server.fetch_all(user, PROCESSED)) == 1
    state = raw.read(f"{MZP}/mailbox-state")["data"]
    assert state["folders"]["INBOX"] == {"uidvalidity": server.uidvalidity(user, "INBOX"), "last_uid": 1}
    # The next run has nothing new to read.
    again = cli("replies")
    assert "no new message" in again.out and raw.read(f"{CRED}/current")["metadata"]["version"] == 1


def test_unmatched_and_refused_replies_stay_flagged_and_are_reported_every_run(cli, raw, box, authority, inventory):
    server, user = box
    url, received, stop = webhook_server()
    try:
        set_global(inventory, partnercerts_notify={"webhook": {"url": url}})
        request = pending_request(cli)
        stranger, _ = reply(authority, key().public_key(), request.subject)
        expired, _ = reply(authority, request.public_key(), request.subject, days=10,
                           not_before=NOW - dt.timedelta(days=30))
        for message in (stranger, question(), expired):
            server.deliver(user, message)
        before = raw.snapshot()
        r = cli("replies")
        lines = [ln for ln in r.out.splitlines() if "UID" in ln]
        assert len(lines) == 3, r.out
        assert "UID 1 " in lines[0] and "matches no pending credential, left in place" in lines[0]
        assert "is for none of the pending keys of MZP654321" in lines[0]
        assert "UID 2 " in lines[1] and "matches no pending credential" in lines[1] and "no certificate" in lines[1]
        assert "UID 3 " in lines[2] and "refused for MZP654321/fleet, left in place" in lines[2]
        assert "expired on" in lines[2]
        # Vault: only the mailbox state (and the lock record) moved on; the credential is untouched.
        after = raw.snapshot()
        assert {k: v for k, v in unlocked(after).items() if not k.endswith("mailbox-state")} == unlocked(before)
        assert server.folder_uids(user, "INBOX") == [1, 2, 3]
        flags = server.flags(user, "INBOX")
        assert "$PartnercertsUnmatched" in flags[1] and "$PartnercertsUnmatched" in flags[2]
        assert "$PartnercertsRefused" in flags[3]
        kinds = [e["kind"] for batch in received for e in batch["events"]]
        assert kinds.count("reply_unmatched") == 2 and kinds.count("reply_refused") == 1
        # Still there next run: reported again (level-triggered, like reminders), never lost.
        received.clear()
        r2 = cli("replies")
        assert len([ln for ln in r2.out.splitlines() if "UID" in ln]) == 3
        assert [e["kind"] for batch in received for e in batch["events"]].count("reply_unmatched") == 2
    finally:
        stop()


def test_an_already_imported_reply_is_just_moved(cli, raw, box, authority, tmp_path):
    """As after a run killed between the import and the move: the certificate is current, the message moves."""
    server, user = box
    request = pending_request(cli)
    data, leaf = reply(authority, request.public_key(), request.subject)
    (tmp_path / "reply.eml").write_bytes(data)
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--eml", str(tmp_path / "reply.eml"))
    server.deliver(user, data)
    server.deliver(user, data)  # the authority sent it twice
    version = raw.read(f"{CRED}/current")["metadata"]["version"]
    r = cli("replies")
    lines = [ln for ln in r.out.splitlines() if "UID" in ln]
    assert len(lines) == 2 and all("already current for MZP654321/fleet, moved" in ln for ln in lines), r.out
    assert server.folder_uids(user, "INBOX") == [] and len(server.folder_uids(user, PROCESSED)) == 2
    assert raw.read(f"{CRED}/current")["metadata"]["version"] == version


def mailbox_setting(inventory, **over) -> dict:
    doc = yaml.safe_load((inventory / "group_vars" / "all" / "partners.yml").read_text(encoding="utf-8"))
    return {**doc["partnercerts_partners"][0]["reply_mailbox"], **over}


def test_a_rebuilt_folder_is_read_again_from_the_start(cli, raw, box, authority, inventory):
    server, user = box
    set_partner(inventory, reply_mailbox=mailbox_setting(inventory, folder="Authority"))
    request = pending_request(cli)
    server.deliver(user, question(), folder="Authority")
    cli("replies")
    old = raw.read(f"{MZP}/mailbox-state")["data"]["folders"]["Authority"]
    assert old["last_uid"] == 1
    server.recreate_folder(user, "Authority")
    data, leaf = reply(authority, request.public_key(), request.subject)
    server.deliver(user, data, folder="Authority")
    r = cli("replies")
    assert "UIDVALIDITY changed: read again from the start" in r.out, r.out
    assert f"imported for MZP654321/fleet: serial {serial_of(leaf)}" in r.out
    new = raw.read(f"{MZP}/mailbox-state")["data"]["folders"]["Authority"]
    assert new["uidvalidity"] != old["uidvalidity"] and new["last_uid"] == 1


def test_a_refused_login_or_a_mailbox_down_is_one_line_and_changes_nothing(cli, raw, box, dovecot):
    server, user = box
    pending_request(cli)
    cli("mailbox-password", "--mzp", MZP, input="not-the-password\n")
    before = raw.snapshot()
    r = cli("replies", ok=False)
    assert r.rc == 4, r.text
    assert "login refused; check the user and the password in Vault" in r.err
    assert "run scripts/inv mailbox-password --mzp MZP654321" in r.err
    assert "not-the-password" not in r.text and unlocked(raw.snapshot()) == unlocked(before)
    server.stop()
    r = cli("replies", ok=False)
    assert r.rc == 4 and "cannot connect" in r.err, r.text


def test_rotate_reads_the_mailbox_first_and_imports_what_arrived(cli, raw, box, authority, inventory, tmp_path):
    """Unattended: rotate submits (outbox), the authority's reply lands in the mailbox, the next rotate imports."""
    server, user = box
    mailbox = mailbox_setting(inventory)
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "pki@mpsa.example"},
                applications=[{"name": "fleet"}], reply_mailbox=mailbox)
    cli("rotate", "--no-deploy")
    pend = raw.read(f"{CRED}/pending")["data"]
    request = x509.load_pem_x509_csr(pend["csr_pem"].encode())
    data, leaf = reply(authority, request.public_key(), request.subject, in_reply_to=pend.get("message_id", ""))
    server.deliver(user, data)
    r = cli("rotate", "--no-deploy")
    assert f"imported for MZP654321/fleet: serial {serial_of(leaf)}" in r.out, r.text
    assert raw.read(f"{CRED}/current")["data"]["serial"] == serial_of(leaf)
    rows = json.loads(cli("status", "--json").out)
    assert rows[0]["state"] == "active" and rows[0]["serial"] == serial_of(leaf)
    assert server.folder_uids(user, "INBOX") == []
    # A mailbox that is down does not stop the rest of the run; the run says so and fails.
    server.stop()
    down = cli("rotate", "--no-deploy", ok=False)
    assert down.rc == 1 and "MZP654321 (reply mailbox)" in down.err and "cannot connect" in down.err
    assert "plan:" in down.out


def test_the_metric_counts_what_was_left_in_the_mailbox(cli, box, authority, tmp_path):
    server, user = box
    pending_request(cli)
    server.deliver(user, question())
    cli("replies")
    text = cli("metrics").out
    assert 'partnercerts_replies_left{mzp="MZP654321",reason="unmatched"} 1' in text
    assert 'partnercerts_replies_left{mzp="MZP654321",reason="refused"} 0' in text
    assert "# TYPE partnercerts_replies_left gauge" in text


def test_an_answer_without_certificate_needs_attention_until_a_human_resends(cli, raw, box, inventory, tmp_path):
    """A question or a refusal in reply to our CSR e-mail: the credential needs attention, the key is kept."""
    server, user = box
    url, received, stop = webhook_server()
    try:
        set_global(inventory, partnercerts_notify={"webhook": {"url": url}})
        set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"),
                                           "to": "pki@mpsa.example"},
                    applications=[{"name": "fleet"}], reply_mailbox=mailbox_setting(inventory))
        cli("rotate", "--no-deploy")
        pend = raw.read(f"{CRED}/pending")["data"]
        msg = EmailMessage()
        msg["From"] = "Stellantis PKI <pki@stellantis.example>"
        msg["Subject"] = "Re: CSR MZP654321 fleet - MZP inconnu"
        msg["Date"] = "Fri, 20 Nov 2026 09:30:00 +0000"
        msg["In-Reply-To"] = pend["message_id"]
        msg.set_content("Bonjour, ce MZP est inconnu de nos services. Cordialement")
        server.deliver(user, msg.as_bytes())
        r = cli("rotate", "--no-deploy")
        assert "the authority answered MZP654321/fleet without a certificate, left in place (needs attention)" \
            in r.out, r.text
        assert f"replies to our CSR e-mail {pend['message_id']} for MZP654321/fleet" in r.out
        row = json.loads(cli("status", "--json").out)[0]
        assert row["state"] == "needs_attention"
        assert row["pending_attention"] == "Fri, 20 Nov 2026 09:30:00 +0000: Re: CSR MZP654321 fleet - MZP inconnu"
        assert row["pending_message_id"] == pend["message_id"] and row["pending_times_sent"] == 1
        assert "the authority answered the CSR without a certificate" in cli("status").err
        after = raw.read(f"{CRED}/pending")["data"]
        assert after["key_pem"] == pend["key_pem"] and after["attention"]["message_id"] == msg["Message-ID"] or \
            after["attention"]["subject"] == "Re: CSR MZP654321 fleet - MZP inconnu"
        assert "$PartnercertsAttention" in server.flags(user, "INBOX")[1]
        assert "needs_attention" in [e["kind"] for batch in received for e in batch["events"]]
        # A human settles it with the authority and sends the CSR again: back to waiting.
        cli("submit", "--resend")
        row = json.loads(cli("status", "--json").out)[0]
        assert row["state"] == "pending" and row["pending_attention"] is None and row["pending_times_sent"] == 2
        # The answer was acted on: the next run settles it (moved, no alert), instead of calling it unmatched
        # now that the CSR went out under another Message-ID (the soak found this: an alert every night).
        received.clear()
        again = cli("rotate", "--no-deploy")
        assert "answers an earlier send of the CSR of MZP654321/fleet, moved" in again.out, again.text
        assert server.folder_uids(user, "INBOX") == [] and len(server.folder_uids(user, PROCESSED)) == 1
        assert [e["kind"] for batch in received for e in batch["events"]] == []
        assert json.loads(cli("status", "--json").out)[0]["state"] == "pending"
    finally:
        stop()


def test_replies_without_any_mailbox_says_so(cli, inventory):
    r = cli("replies")
    assert r.out == f"no partner has a reply_mailbox in {inventory}; add one to read the authority's replies\n"
    r = cli("replies", "--mzp", MZP, ok=False)
    assert r.rc == 2 and "partner MZP654321 has no 'reply_mailbox'; add one" in r.err
