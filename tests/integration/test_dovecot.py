"""The dovecot fixture (tests/plugins/mailbox.py, DevDovecot) is a real IMAP server: checked with the
standard library's imaplib as an independent client, never through DevDovecot's own helpers alone."""
from __future__ import annotations

import contextlib
import imaplib
import os
import re
import ssl
import subprocess
import time

import pytest

from devtools.devservers import DevDovecot
from tests.plugins import mailbox

KEYWORD = "$PartnercertsUnmatched"


def message(n: int) -> bytes:
    """A small RFC 5322 message with CRLF line endings (IMAP's own: FETCH returns them unchanged)."""
    return (f"From: ca@example.test\r\nTo: pki@example.test\r\nSubject: reply {n}\r\n"
            f"Message-ID: <{n}.{time.time_ns()}@example.test>\r\n\r\nbody {n}\r\n\xe9\r\n").encode("latin-1")


def imaps(server: DevDovecot, user: str, password: str) -> imaplib.IMAP4_SSL:
    """An independent IMAPS client, logged in, trusting only the test CA."""
    client = imaplib.IMAP4_SSL(server.host, server.imaps_port, timeout=5,
                               ssl_context=ssl.create_default_context(cafile=str(server.ca_file)))
    client.login(user, password)
    return client


def test_imaps_verifies_against_the_test_ca_and_advertises_move_uidplus(dovecot, mailbox_user):
    user, password = mailbox_user()
    with imaps(dovecot, user, password) as c:
        cert = c.sock.getpeercert()
        assert ("IP Address", dovecot.host) in cert["subjectAltName"]
        typ, caps = c.capability()
        assert typ == "OK"
        assert {"MOVE", "UIDPLUS", "IMAP4REV1"} <= set(caps[0].decode().upper().split())
    # The system's trust store does not know the test CA: refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, timeout=5, ssl_context=ssl.create_default_context())


def test_wrong_password_is_refused(dovecot, mailbox_user):
    user, password = mailbox_user()
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, timeout=5,
                           ssl_context=ssl.create_default_context(cafile=str(dovecot.ca_file))) as c:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login(user, password + "x")
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login("nobody-" + user, password)
        assert c.login(user, password)[0] == "OK"


def test_plain_port_needs_starttls_before_login(dovecot, mailbox_user):
    user, password = mailbox_user()
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=5) as c:
        assert "STARTTLS" in c.capabilities and "LOGINDISABLED" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            c.login(user, password)
        c.starttls(ssl_context=ssl.create_default_context(cafile=str(dovecot.ca_file)))
        assert "LOGINDISABLED" not in c.capabilities
        assert c.login(user, password)[0] == "OK"


def test_allow_plaintext_accepts_login_on_loopback_without_tls(dovecot_factory):
    server = dovecot_factory(users={"alice": "secret-1"}, allow_plaintext=True)
    with imaplib.IMAP4(server.host, server.imap_port, timeout=5) as c:
        assert "LOGINDISABLED" not in c.capabilities
        assert c.login("alice", "secret-1")[0] == "OK"


def test_users_added_or_changed_after_start_are_seen(dovecot, mailbox_user):
    user, password = mailbox_user()
    imaps(dovecot, user, password).logout()
    dovecot.add_user(user, "b" * len(password))  # same size, same second: the mtime still changes
    with pytest.raises(imaplib.IMAP4.error):
        imaps(dovecot, user, password)
    imaps(dovecot, user, "b" * len(password)).logout()


def test_deliver_then_fetch_gives_the_same_bytes(dovecot, mailbox_user):
    user, password = mailbox_user()
    sent = [message(1), message(2)]
    for m in sent:
        dovecot.deliver(user, m)
    third = message(3)
    dovecot.deliver(user, third, folder="Partner Replies/New")  # a new folder, created on the way
    with imaps(dovecot, user, password) as c:
        assert c.select("INBOX", readonly=True)[0] == "OK"
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        assert [item[1] for item in data if isinstance(item, tuple)] == sent
        typ, listing = c.list()
        assert any(b'"Partner Replies/New"' in line for line in listing)
    assert dovecot.fetch_all(user, "INBOX") == sent
    assert dovecot.folder_uids(user, "INBOX") == [1, 2]
    assert dovecot.fetch_all(user, "Partner Replies/New") == [third]


def test_uid_move_to_a_new_folder_keeps_uids_growing(dovecot, mailbox_user):
    user, password = mailbox_user()
    for n in range(3):
        dovecot.deliver(user, message(n))
    with imaps(dovecot, user, password) as c:
        assert c.create('"Archive/Matched"')[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
        typ, _ = c.uid("MOVE", "1", '"Archive/Matched"')
        assert typ == "OK"
        copyuid = c.response("COPYUID")[1][0].decode()  # RFC 4315: "<uidvalidity> <source> <dest>"
        assert copyuid.split()[1:] == ["1", "1"]
        typ, _ = c.uid("MOVE", "3", '"Archive/Matched"')
        assert typ == "OK"
        assert c.response("COPYUID")[1][0].decode().split()[1:] == ["3", "2"]
    assert dovecot.folder_uids(user, "INBOX") == [2]
    assert dovecot.folder_uids(user, "Archive/Matched") == [1, 2]
    dovecot.deliver(user, message(9))
    assert dovecot.folder_uids(user, "INBOX") == [2, 4]  # a moved-out UID is never reused
    assert [m.split(b"\r\n")[2] for m in dovecot.fetch_all(user, "Archive/Matched")] == [
        b"Subject: reply 0", b"Subject: reply 2"]


def test_a_keyword_can_be_set_and_read_back(dovecot, mailbox_user):
    user, password = mailbox_user()
    dovecot.deliver(user, message(1))
    dovecot.deliver(user, message(2))
    with imaps(dovecot, user, password) as c:
        assert c.select("INBOX")[0] == "OK"
        assert "\\*" in c.response("PERMANENTFLAGS")[1][0].decode()  # new keywords allowed
        assert c.uid("STORE", "2", "+FLAGS", f"({KEYWORD} \\Seen)")[0] == "OK"
    assert dovecot.flags(user, "INBOX") == {1: set(), 2: {KEYWORD, "\\Seen"}}
    with imaps(dovecot, user, password) as c:
        c.select("INBOX", readonly=True)
        typ, data = c.uid("SEARCH", "KEYWORD", KEYWORD)
        assert typ == "OK" and data[0].split() == [b"2"]


def test_recreate_folder_changes_uidvalidity(dovecot, mailbox_user):
    user, password = mailbox_user()
    dovecot.deliver(user, message(1), folder="Replies")
    before = dovecot.uidvalidity(user, "Replies")
    with imaps(dovecot, user, password) as c:
        typ, data = c.status("Replies", "(UIDVALIDITY MESSAGES)")
        assert typ == "OK" and int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1)) == before
    dovecot.recreate_folder(user, "Replies")
    after = dovecot.uidvalidity(user, "Replies")
    assert after != before
    assert dovecot.folder_uids(user, "Replies") == []
    dovecot.deliver(user, message(2), folder="Replies")
    assert dovecot.folder_uids(user, "Replies") == [1]


def live(pid: int) -> bool:
    """Whether pid is a running (not zombie) process."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def test_stop_leaves_no_dovecot_process(dovecot_factory):
    server = dovecot_factory(users={"alice": "secret-1"})
    idle = imaps(server, "alice", "secret-1")  # a live imap process as well
    idle.select("INBOX")
    master, pids = server.proc.pid, server.pids()
    assert master in pids and len(pids) >= 4
    assert pgrep(str(server.conf_path)) == [master]
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert not [p for p in pids if live(p)]
    assert pgrep(str(server.conf_path)) == []
    assert server.pids() == []
    server.stop()  # idempotent
    with contextlib.suppress(OSError):
        idle.shutdown()


def test_a_server_that_cannot_start_fails_clearly(tmp_path):
    class Broken(DevDovecot):
        def _config(self) -> str:
            return super()._config() + "no_such_setting = yes\n"

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="(?s)did not accept a TLS LOGIN.*no_such_setting"):
        Broken(tmp_path / "broken")
    assert time.monotonic() - started < 10
    assert pgrep(str(tmp_path / "broken" / "dovecot.conf")) == []


def test_without_dovecot_the_fixture_fails_not_skips(monkeypatch):
    monkeypatch.setattr(mailbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(mailbox.os.path, "exists", lambda path: False)
    with pytest.raises(pytest.fail.Exception, match=r"run scripts/install-system-deps \(as root\)"):
        mailbox.require_dovecot()
