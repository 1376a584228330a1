"""Rotation with a manual authority: e-mail and outbox submission, the long wait with reminders,
the lock in Vault, notifications, metrics, and a year in the life of one credential."""
import datetime as dt
import email
import email.policy
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from partnercerts import keys
from tests.conftest import ROOT, free_port
from tests.pki import CA

MZP = "MZP654321"
CRED = f"{MZP}/apps/fleet"


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def webhook_server():
    """A JSON webhook receiver on loopback: (url, received payloads, stop)."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop():
        server.shutdown()
        server.server_close()
    return f"http://127.0.0.1:{server.server_address[1]}/hook", received, stop


@pytest.fixture
def webhook():
    url, received, stop = webhook_server()
    yield url, received
    stop()


def set_partner(inventory, **over):
    path = inventory / "group_vars" / "all" / "partners.yml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["partnercerts_partners"][0].update(over)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def set_global(inventory, **values):
    path = inventory / "group_vars" / "all" / "settings.yml"
    doc = yaml.safe_load(path.read_text()) if path.exists() else {}
    doc.update(values)
    path.write_text(yaml.safe_dump(doc))


_STARTED = dt.datetime.now(dt.timezone.utc)  # the moment the days of at() count from


def at(day: float, base: dt.datetime = _STARTED) -> dict:
    return {"PARTNERCERTS_NOW": (base + dt.timedelta(days=day)).isoformat()}


def test_email_submission_sends_one_message_per_csr_and_resends_only_when_asked(cli, raw, inventory, smtp):
    controller, inbox = smtp
    set_partner(inventory, submission={"method": "email", "to": "connectedcar@mpsa.example",
                                       "smtp": {"host": "127.0.0.1", "port": controller.port, "security": "none"}})
    first = cli("rotate", "--no-deploy")
    assert first.out.count("CSR e-mailed to connectedcar@mpsa.example") == 2
    assert len(inbox.messages) == 2
    pending = raw.read(f"{CRED}/pending")["data"]
    msg = next(m for m in inbox.messages if "application fleet" in m["Subject"])
    assert msg["To"] == "connectedcar@mpsa.example" and msg["From"] == "pki@free2move.example"
    assert msg["Message-ID"].strip() == pending["message_id"] and pending["submitted_at"]
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == f"{MZP}-fleet.csr"
    assert attachment.get_payload(decode=True).decode() == pending["csr_pem"]
    csr = x509.load_pem_x509_csr(attachment.get_payload(decode=True))
    assert keys.spki_sha256(csr.public_key()) == pending["key_sha256"]
    text = msg.get_body(("plain",)).get_content()
    assert pending["key_sha256"] in text and "Île-de-France" in text and "fleet" in text
    # The next runs wait; nothing is sent twice.
    again = cli("rotate", "--no-deploy")
    assert "wait" in again.out and len(inbox.messages) == 2
    assert "no pending CSR to submit" not in cli("submit").out and len(inbox.messages) == 2
    status = {r["app"]: r for r in json.loads(cli("status", "--json").out)}
    assert status["fleet"]["state"] == "pending" and status["fleet"]["pending_submitted_at"]
    resent = cli("submit", "--mzp", MZP, "--app", "fleet", "--resend")
    assert "e-mailed" in resent.out and len(inbox.messages) == 3
    assert inbox.messages[2]["Message-ID"] != msg["Message-ID"]
    assert len(raw.read(f"{CRED}/pending")["data"]["sent"]) == 2
    assert raw.read(f"{CRED}/pending")["data"]["key_pem"] == pending["key_pem"]  # same key, same CSR


def test_email_submission_failure_is_clear_and_retried_next_run(cli, raw, inventory, smtp):
    controller, inbox = smtp
    set_partner(inventory, submission={"method": "email", "to": "c@mpsa.example",
                                       "smtp": {"host": "127.0.0.1", "port": free_port(), "security": "none"}})
    r = cli("rotate", "--no-deploy", ok=False)
    assert r.rc == 1 and "127.0.0.1" in r.err and "FAILED" in r.err
    assert raw.read(f"{CRED}/pending")["data"].get("submitted_at", "") == ""
    set_partner(inventory, submission={"method": "email", "to": "c@mpsa.example",
                                       "smtp": {"host": "127.0.0.1", "port": controller.port, "security": "none"}})
    plan = cli("rotate", "--no-deploy", "--dry-run")
    assert "submit" in plan.out
    cli("rotate", "--no-deploy")
    assert len(inbox.messages) == 2


def test_outbox_leaves_a_ready_to_send_message(cli, raw, inventory, tmp_path):
    outbox = tmp_path / "outbox"
    set_partner(inventory, submission={"method": "outbox", "dir": str(outbox), "to": "contact@stellantis.example"})
    r = cli("rotate", "--no-deploy", "--app", "fleet", "--mzp", MZP)
    assert "written to the outbox" in r.out
    (folder,) = list(outbox.iterdir())
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{MZP}-fleet.conf", f"{MZP}-fleet.csr", f"{MZP}-fleet.eml"]
    pending = raw.read(f"{CRED}/pending")["data"]
    assert (folder / f"{MZP}-fleet.csr").read_text() == pending["csr_pem"]
    msg = email.message_from_bytes((folder / f"{MZP}-fleet.eml").read_bytes(), policy=email.policy.default)
    assert msg["To"] == "contact@stellantis.example" and msg["Message-ID"].strip() == pending["message_id"]
    (att,) = list(msg.iter_attachments())
    assert att.get_payload(decode=True).decode() == pending["csr_pem"]
    assert "PRIVATE" not in "".join(p.read_text() for p in folder.iterdir())
    # The parameter file reproduces the subject with openssl.
    made = subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "/dev/null",
                           "-config", str(folder / f"{MZP}-fleet.conf"), "-subj", "/CN=x", "-noout"],
                          capture_output=True)
    assert made.returncode == 0


def test_a_second_run_waits_for_the_lock_and_says_who_holds_it(cli, raw, bao, mount, env):
    from partnercerts.lock import Lock
    from partnercerts.settings import Settings
    from partnercerts.store import Store
    store = Store(bao.client(), Settings.from_env(env))
    lock = Lock(store)
    now = dt.datetime.now(dt.timezone.utc)
    assert lock.acquire("ops@other-host pid 42 (scripts/inv rotate)", now) is None
    r = cli("rotate", "--no-deploy")
    assert r.rc == 0 and "another rotation holds the lock: ops@other-host pid 42" in r.out
    assert raw.read(f"{CRED}/pending") is None
    # An expired lock is taken over; a released one too.
    expired = cli("rotate", "--no-deploy", env=at(1))
    assert "holds the lock" not in expired.out and "done" in expired.out
    lock_rec = raw.read("locks/rotate")["data"]
    assert lock_rec["state"] == "released"


def test_concurrent_rotations_make_one_pending_key_each_and_all_exit_cleanly(cli, raw, env, inventory, tmp_path):
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "out"), "to": "c@mpsa.example"})

    def one(_):
        return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "rotate", "--no-deploy"],
                              env=env, capture_output=True, text=True, timeout=300)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sum("holds the lock" in r.stdout for r in results) >= 1
    for app in ("fleet", "big"):
        latest = raw.read(f"{MZP}/apps/{app}/pending")
        # created, Message-ID recorded, submitted: three versions of one key
        keys_seen = {raw.read(f"{MZP}/apps/{app}/pending", version=v)["data"]["key_pem"]
                     for v in range(1, latest["metadata"]["version"] + 1)}
        assert len(keys_seen) == 1 and latest["metadata"]["version"] == 3
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_status_follows_the_csr_through_its_stages(cli, raw, inventory, tmp_path):
    """created, submitted, waiting, reminded (counted, a dry run does not count), resent, issued."""
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "c@mpsa.example"},
                applications=[{"name": "fleet"}], pending_reminder_days=7)
    prom = tmp_path / "partnercerts.prom"
    set_global(inventory, partnercerts_metrics_textfile=str(prom))

    def row(day):
        return json.loads(cli("status", "--json", env=at(day)).out)[0]

    def cell(day):
        out = cli("status", env=at(day)).out.splitlines()
        column = out[0].index("csr")
        return out[1][column:].split()[0]

    assert row(0)["pending_stage"] is None and cell(0) == "-"
    cli("csr", "--mzp", MZP, "--app", "fleet", "--out", str(tmp_path / "fleet.csr"), env=at(0))
    r = row(0)
    assert r["pending_stage"] == "created" and r["pending_submission"] is None and r["pending_waiting_days"] is None
    cli("submit", env=at(1))
    r = row(1.5)
    assert (r["pending_stage"], r["pending_submission"], r["pending_times_sent"]) == ("submitted", "outbox", 1)
    assert r["pending_last_sent_at"] == r["pending_submitted_at"] and r["pending_message_id"]
    assert (row(4)["pending_stage"], row(4)["pending_waiting_days"], cell(4)) == ("waiting", 3, "waiting(3d)")
    cli("rotate", "--no-deploy", "--dry-run", env=at(9))  # plans only: no reminder is raised
    assert row(9)["pending_stage"] == "waiting"
    cli("rotate", "--no-deploy", env=at(9))
    # The run that raises the first reminder already writes the stage into the metrics.
    assert f'partnercerts_pending_stage{{mzp="{MZP}",app="fleet",stage="reminded"}} 1' in prom.read_text()
    assert f'partnercerts_pending_reminder_seconds{{mzp="{MZP}"}} {7 * 86400}' in prom.read_text()
    cli("rotate", "--no-deploy", env=at(10))
    r = row(10)
    assert (r["pending_stage"], r["pending_times_reminded"], cell(10)) == ("reminded", 2, "reminded(2x)")
    assert dt.datetime.fromisoformat(r["pending_reminded_at"]) == dt.datetime.fromisoformat(
        at(10)["PARTNERCERTS_NOW"]).replace(microsecond=0)
    assert raw.read(f"{CRED}/pending")["data"]["times_reminded"] == 2
    # Sent again: the wait starts over, the reminders are cleared, the first submission is kept.
    cli("submit", "--resend", env=at(11))
    r = row(11)
    assert (r["pending_stage"], r["pending_times_sent"], r["pending_times_reminded"], r["pending_reminded_at"]) == (
        "submitted", 2, None, None)
    assert r["pending_last_sent_at"] > r["pending_submitted_at"]
    assert row(13)["pending_waiting_days"] == 2
    ca = CA("Stages CA", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1), days=3650)
    csr = x509.load_pem_x509_csr(raw.read(f"{CRED}/pending")["data"]["csr_pem"].encode())
    cert = tmp_path / "fleet.crt"
    cert.write_bytes(ca.issue(csr.public_key(), csr.subject, days=365).public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert", str(cert), "--ca", str(tmp_path / "ca.pem"),
        "--client-id", "stages-client", env=at(13))
    r = row(13)
    assert (r["pending_stage"], r["state"], r["pending_times_sent"], r["pending_waiting_days"]) == (
        "issued", "active", None, None)


def test_a_year_with_a_manual_authority(cli, raw, inventory, tmp_path, webhook):
    """Issue, wait with reminders, import, lead time, renew, import again: frozen time, one credential."""
    url, received = webhook
    outbox = tmp_path / "outbox"
    set_partner(inventory, submission={"method": "outbox", "dir": str(outbox), "to": "c@mpsa.example"},
                applications=[{"name": "fleet"}], pending_reminder_days=7, renew_before_days=60)
    set_global(inventory, partnercerts_notify={"webhook": {"url": url}},
               partnercerts_metrics_textfile=str(tmp_path / "metrics" / "partnercerts.prom"))
    (tmp_path / "metrics").mkdir()
    ca = CA("Walk CA", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1), days=3650)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))

    def kinds():
        return [e["kind"] for batch in received for e in batch["events"]]

    def sign(day):
        csr = x509.load_pem_x509_csr(raw.read(f"{CRED}/pending")["data"]["csr_pem"].encode())
        start = dt.datetime.fromisoformat(at(day)["PARTNERCERTS_NOW"])
        cert = ca.issue(csr.public_key(), csr.subject, now=start, days=365, not_before=start - dt.timedelta(hours=1))
        path = tmp_path / f"reply-{day}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    cli("rotate", "--no-deploy", env=at(0))
    assert kinds() == ["csr_submitted"]
    cli("rotate", "--no-deploy", env=at(3))
    assert "reminder" not in kinds()
    for day in (8, 9):  # level-triggered: every run past the threshold reminds again
        r = cli("rotate", "--no-deploy", env=at(day))
        assert "wait" in r.out
    assert kinds().count("reminder") == 2
    assert "CSR pending for 9 days" in cli("status", env=at(9)).err
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert", str(sign(10)), "--ca", str(ca_file),
        "--client-id", "walk-client", env=at(10))
    assert "certificate_imported" in kinds()
    row = json.loads(cli("status", "--json", env=at(10)).out)[0]
    assert row["state"] == "active" and row["turnaround_median_days"] == 10.0
    received.clear()
    assert "nothing" in cli("rotate", "--no-deploy", env=at(200)).out and kinds() == []
    # A third of the lifetime left: renew, submit again, wait, import.
    r = cli("rotate", "--no-deploy", env=at(255))
    assert "renew" in r.out and kinds() == ["csr_submitted"]
    assert json.loads(cli("status", "--json", env=at(256)).out)[0]["state"] == "pending"
    first_serial = raw.read(f"{CRED}/current")["data"]["serial"]
    cli("import-cert", "--mzp", MZP, "--app", "fleet", "--cert", str(sign(259)), env=at(259))
    cur = raw.read(f"{CRED}/current")["data"]
    assert cur["serial"] != first_serial and cur["client_id"] == "walk-client" and cur["turnarounds"] == [
        10 * 86400, 4 * 86400]
    assert raw.read(f"{CRED}/history/{first_serial}") is not None
    row = json.loads(cli("status", "--json", env=at(259)).out)[0]
    assert row["state"] == "active" and row["turnaround_median_days"] == 7.0
    # Metrics were refreshed by the runs; an expired certificate with nothing pending alerts.
    prom = (tmp_path / "metrics" / "partnercerts.prom").read_text()
    (line,) = [x for x in prom.splitlines() if x.startswith("partnercerts_certificate_expiration_timestamp_seconds{")]
    assert f'mzp="{MZP}"' in line and 'app="fleet"' in line
    assert float(line.rsplit(" ", 1)[1]) == dt.datetime.fromisoformat(cur["not_after"]).timestamp()
    assert "partnercerts_last_success_timestamp_seconds" in prom
    received.clear()
    cli("rotate", "--no-deploy", "--dry-run", env=at(700))
    r = cli("rotate", "--no-deploy", env=at(700))
    assert "expired" in kinds() and "expired on" in r.out
    # A slow authority: its turnaround no longer fits the lead time.
    set_partner(inventory, renew_before_days=10)
    assert "no longer fits in renew_before_days" in cli("status", env=at(259)).err


def test_rotate_playbook_does_what_rotate_does(cli, raw, env, inventory, tmp_path):
    run_env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    playbook = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
                str(ROOT / "playbooks" / "rotate.yml")]
    first = subprocess.run(playbook, env=run_env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = json.loads(cli("status", "--json").out)
    assert {r["state"] for r in rows} == {"active"}
    assert "PRIVATE KEY" not in first.stdout + first.stderr
    assert raw.read("locks/rotate")["data"]["state"] == "released"
    second = subprocess.run(playbook, env=run_env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "changed=0" in second.stdout
    assert "nothing to do" in cli("rotate", "--dry-run").out
