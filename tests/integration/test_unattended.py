"""Issue 12, "Done when": with a reply mailbox configured, a scheduled `rotate` takes a due credential from
renewal to deployed with no step on our side other than the authority's reply landing in the mailbox.

Everything is real: the scheduled job's own command (`scripts/scheduled-rotate` with its root-only environment
file and the rotator AppRole, as the systemd timer or cron entry runs it), an OpenBao server, an SMTP server
(aiosmtpd) receiving the CSR e-mail, a Dovecot IMAP server holding the reply, the sandbox API the hosts' smoke
call reaches, and three SSH hosts (each an sshd in its own namespaces) receiving the deploy.

The test plays the authority from what it received by e-mail only (never from Vault), and checks the outcome
with independent readers: `openssl` and `curl` inside the hosts' namespaces, a separate hvac client, imaplib
through the dovecot fixture, and the job's output and log scanned for every secret."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import json
import os
import re
import subprocess
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import ROOT, Result, free_port
from tests.integration import test_rotation_prod as prod
from tests.integration.test_rotation_prod import set_global, set_partner

MZP, APP = "MZP654321", "fleet"
smtp, webhook = prod.smtp, prod.webhook  # the SMTP server and webhook fixtures of the rotation tests
CRED = f"{MZP}/apps/{APP}"
AUTHORITY_TO = "connectedcar@mpsa.example"
MAILBOX_USER = "pki@free2move.example"
PROCESSED = "partnercerts/processed"
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # roles/partnercerts_schedule cron.j2


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_serial(cert: x509.Certificate) -> str:
    """The serial as `openssl x509 -serial` prints it (and as Vault records it)."""
    text = format(cert.serial_number, "X")
    return text if len(text) % 2 == 0 else "0" + text


def spki_pem(public_key) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def header(message: bytes, name: str) -> str:
    return str(email.message_from_bytes(message, policy=email.policy.default)[name]).strip()


def key_body(key_pem: str) -> str:
    """One base64 line from the middle of a private key PEM: printed anywhere, it would be a leak."""
    lines = [ln for ln in key_pem.splitlines() if ln and not ln.startswith("-----")]
    return lines[len(lines) // 2]


class World:
    """One partner whose CSRs go by e-mail and whose replies land in an IMAP mailbox, three SSH hosts serving its
    credential, a sandbox API for their smoke call, and the scheduled job's environment file."""

    def __init__(self, *, ssh_hosts, cli, raw, env, inventory, tmp_path, smtp_inbox, dovecot, user, authority):
        self.hosts, self.cli, self.raw, self.env = ssh_hosts, cli, raw, env
        self.inventory, self.tmp = inventory, tmp_path
        self.inbox, self.dovecot, self.user, self.authority = smtp_inbox, dovecot, user, authority
        self.names = [h.name for h in ssh_hosts.hosts]
        self.root = f"/srv/u{uuid.uuid4().hex[:8]}"
        self.dest = f"{self.root}/{APP}"
        self.env_file = tmp_path / "etc" / "rotate.env"
        self.log_file = tmp_path / "log" / "rotate.log"
        self.job_home = tmp_path / "job-home"
        self.job_env: dict[str, str] = {}
        self.t0 = dt.datetime.now(dt.timezone.utc)  # day 0 of the story (reset once the set-up starts)
        self.old: x509.Certificate | None = None    # the certificate current before the story
        self.events: list[dict] = []                # webhook payloads received (the notification batches)
        self.last_events: list[tuple[str, str]] = []
        self.outputs: list[str] = []   # everything any command of the test printed, for the final secret scan

    # -- on the hosts, read with openssl/readlink/find inside their namespaces --------------------------------
    def sh(self, host: str, *argv: str) -> subprocess.CompletedProcess:
        return self.hosts.run_in_host(host, list(argv))

    def served(self, host: str) -> dict:
        """What `current` serves on a host, read by openssl: serial, SHA-256 fingerprint, both public keys."""
        crt, key = f"{self.dest}/current/client.crt", f"{self.dest}/current/client.key"
        x = self.sh(host, "openssl", "x509", "-noout", "-serial", "-fingerprint", "-sha256", "-in", crt)
        assert x.returncode == 0, f"{host}: {crt}: {x.stderr}"
        fields = dict(line.split("=", 1) for line in x.stdout.splitlines() if "=" in line)
        cert_pub = self.sh(host, "openssl", "x509", "-noout", "-pubkey", "-in", crt)
        key_pub = self.sh(host, "openssl", "pkey", "-pubout", "-in", key)
        assert cert_pub.returncode == 0 and key_pub.returncode == 0, f"{host}: {cert_pub.stderr}{key_pub.stderr}"
        fp_key = next(k for k in fields if k.lower().startswith("sha256 fingerprint"))
        return {"serial": fields["serial"].strip(), "fingerprint": fields[fp_key].strip().replace(":", "").lower(),
                "cert_pub": cert_pub.stdout, "key_pub": key_pub.stdout,
                "link": self.sh(host, "readlink", f"{self.dest}/current").stdout.strip()}

    def tree(self, host: str) -> str:
        """Every file under the test's directory on the host with its size and mtime: to prove nothing moved."""
        return self.sh(host, "find", self.root, "-printf", "%p %s %T@ %l\n").stdout

    def reloads(self, host: str) -> int:
        return self.sh(host, "cat", f"{self.root}/reloads").stdout.count("reload")

    def curl(self, host: str) -> str:
        """An independent client on the host calls the sandbox API with the three deployed credentials."""
        env = dict(line.split("=", 1) for line in self.sh(host, "cat", f"{self.dest}/current/client.env")
                   .stdout.splitlines() if "=" in line)
        p = self.sh(host, "curl", "-sS", "--cert", f"{self.dest}/current/client.crt",
                    "--key", f"{self.dest}/current/client.key", "--cacert", f"{self.dest}/current/ca.crt",
                    "-u", f"{env['PSA_MZP']}:{env['PSA_MZP_PASSWORD']}", "-o", "/dev/null", "-w", "%{http_code}",
                    f"{env['PSA_API_URL']}/fleets?client_id={env['PSA_CLIENT_ID']}")
        return p.stdout.strip() + p.stderr

    # -- the scheduled job ------------------------------------------------------------------------------------
    def run_job(self, day: float) -> Result:
        """Run the scheduled job's command as cron runs it (root, cron's PATH, nothing else inherited), with the
        job's clock moved to `day` days after the test started through its own environment file."""
        now = self.t0 + dt.timedelta(days=day)
        lines = [f"{k}={v}" for k, v in {**self.job_env, "PARTNERCERTS_NOW": now.isoformat()}.items()]
        self.env_file.write_text("\n".join(lines) + "\n")
        os.chmod(self.env_file, 0o600)
        p = subprocess.run([str(ROOT / "scripts" / "scheduled-rotate"), str(self.env_file)],
                           env={"PATH": CRON_PATH, "HOME": str(self.job_home), "SHELL": "/bin/bash",
                                "LOGNAME": "root"},
                           cwd="/", capture_output=True, text=True, timeout=300)
        r = Result(p.returncode, p.stdout, p.stderr)
        self.outputs.append(r.text)
        self.outputs.append(json.dumps(self.events))
        self.last_events = self.kinds()
        print(f"--- day {day}: exit {r.rc}; events {self.last_events}")
        self.cli.assert_clean(r)
        return r

    def kinds(self) -> list[tuple[str, str]]:
        """The notifications the runs sent so far (kind and message), then forgotten."""
        out = [(e["kind"], e.get("message", "")) for batch in self.events for e in batch["events"]]
        self.events.clear()
        return out

    def learn(self, secret: str) -> None:
        if secret and secret not in self.cli.secrets:
            self.cli.secrets.append(secret)

    def status_row(self) -> dict:
        r = self.cli("status", "--json")
        self.outputs.append(r.text)
        (row,) = [x for x in json.loads(r.out) if x["mzp"] == MZP and x["app"] == APP]
        return row

    # -- the authority (test code): from the CSR e-mail it received, never from Vault --------------------------
    def answer(self, csr_mail, client_id: str) -> tuple[bytes, x509.Certificate]:
        """Sign the CSR attached to the e-mail and write the reply the way the authority does: the Client ID in
        the text, the certificate and the CA certificate attached, In-Reply-To our CSR e-mail."""
        (attachment,) = list(csr_mail.iter_attachments())
        csr = x509.load_pem_x509_csr(attachment.get_payload(decode=True))
        real_now = dt.datetime.now(dt.timezone.utc)
        leaf = x509.load_pem_x509_certificate(self.authority.sign(csr, real_now, validity_days=365).encode())
        msg = EmailMessage()
        msg["From"] = "Stellantis PKI <pki@stellantis.example>"
        msg["To"] = MAILBOX_USER
        msg["Subject"] = f"RE: {csr_mail['Subject']}"
        msg["Date"] = format_datetime(real_now)
        msg["Message-ID"] = make_msgid(domain="stellantis.example")
        msg["In-Reply-To"] = csr_mail["Message-ID"].strip()
        msg["References"] = csr_mail["Message-ID"].strip()
        msg.set_content(f"Bonjour,\n\nVeuillez trouver ci-joint le certificat de {MZP}.\n"
                        f"Client ID : {client_id}\n\nCordialement,\nStellantis PKI\n")
        msg.add_attachment(pem(leaf), maintype="application", subtype="x-pem-file", filename=f"{MZP}.crt")
        msg.add_attachment(self.authority.ca_pem(real_now).encode(), maintype="application",
                           subtype="x-pem-file", filename="stellantis-ca.crt")
        return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), leaf


@pytest.fixture
def world(ssh_hosts, cli, raw, env, bao, inventory, tmp_path, smtp, dovecot, mailbox_user, webhook):
    """The partner's inventory (e-mail submission, reply mailbox, three hosts), its MZP and mailbox passwords in
    Vault, a current certificate that is due (45 days left, renew_before_days 60) deployed on every host, the
    sandbox API up for the hosts' smoke call, and the scheduled job's root-only environment file (rotator AppRole)."""
    from partnercerts.sandbox.authority import Authority
    from partnercerts.settings import Settings
    from partnercerts.store import Store

    controller, smtp_inbox = smtp
    user, mailbox_password = mailbox_user(MAILBOX_USER)
    authority = Authority(Store(bao.client(), Settings.from_env(env)), validity_days=365)
    w = World(ssh_hosts=ssh_hosts, cli=cli, raw=raw, env=env, inventory=inventory, tmp_path=tmp_path,
              smtp_inbox=smtp_inbox, dovecot=dovecot, user=user, authority=authority)
    gateway = str(ssh_hosts.subnet.network_address + 1)
    port = free_port()
    api = f"https://{gateway}:{port}/connectedcar/v3"
    (inventory / "hosts.yml").write_text(ssh_hosts.inventory_text(extra_vars={
        "partnercerts_deploy_credentials": [{
            "mzp": MZP, "app": APP, "dest": w.dest,
            "validate_command": f"test -s {w.dest}/current/client.crt",
            "reload_command": f"echo reload >> {w.root}/reloads",
        }],
        "partnercerts_deploy_api_url": api,
        "partnercerts_deploy_smoke_url": api + "/fleets",
    }))
    set_partner(inventory, applications=[{"name": APP}], renew_before_days=60,
                submission={"method": "email", "to": AUTHORITY_TO,
                            "smtp": {"host": "127.0.0.1", "port": controller.port, "security": "none"}},
                reply_mailbox={"host": dovecot.host, "port": dovecot.imaps_port, "security": "tls",
                               "user": user, "cafile": str(dovecot.ca_file)})
    set_global(inventory, partnercerts_notify={"webhook": {"url": webhook[0]}})
    w.events = webhook[1]
    mzp_password = "mzp-" + uuid.uuid4().hex
    for s in (mailbox_password, mzp_password):
        w.learn(s)
    cli("mailbox-password", "--mzp", MZP, input=mailbox_password + "\n")
    cli("account", "--mzp", MZP, input=mzp_password + "\n")
    cli("sandbox.up", "--port", str(port), "--bind", f"127.0.0.1,{gateway}")
    try:
        # The credential as it stands before the story: current, 45 days left, so due; deployed everywhere.
        w.t0 = dt.datetime.now(dt.timezone.utc)
        first_csr = tmp_path / "first.csr"
        cli("csr", "--mzp", MZP, "--app", APP, "--out", str(first_csr))
        old = x509.load_pem_x509_certificate(authority.sign(
            x509.load_pem_x509_csr(first_csr.read_bytes()), w.t0, validity_days=45).encode())
        (tmp_path / "old.crt").write_bytes(pem(old))
        (tmp_path / "ca.crt").write_text(authority.ca_pem(w.t0))
        cli("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(tmp_path / "old.crt"),
            "--ca", str(tmp_path / "ca.crt"), "--client-id", "cid-before-" + uuid.uuid4().hex[:8])
        current = raw.read(f"{CRED}/current")["data"]
        w.learn(current["p12_password"])
        w.learn(key_body(current["key_pem"]))
        cli("deploy")
        w.old = old
        # The scheduled job's environment file, as roles/partnercerts_schedule writes it (rotate.env.j2).
        cli("vault.bootstrap")
        creds = tmp_path / "rotator.env"
        cli("vault.secret-id", "--role", "rotator", "--out", str(creds))
        approle = dict(ln.split("=", 1) for ln in creds.read_text().splitlines() if "=" in ln)
        w.learn(approle["VAULT_SECRET_ID"])
        w.env_file.parent.mkdir(mode=0o700)
        w.job_home.mkdir()
        w.job_env = {"PARTNERCERTS_LOG_FILE": str(w.log_file), "VAULT_ADDR": env["VAULT_ADDR"],
                     "PARTNERCERTS_KV_MOUNT": env["PARTNERCERTS_KV_MOUNT"],
                     "PARTNERCERTS_INVENTORY": str(inventory), "PARTNERCERTS_STATE_DIR": str(tmp_path / "job-state"),
                     "VAULT_ROLE_ID": approle["VAULT_ROLE_ID"], "VAULT_SECRET_ID": approle["VAULT_SECRET_ID"]}
        w.kinds()  # the set-up's own notifications are not the story's
        yield w
    finally:
        cli("sandbox.down", ok=False)
        for name in w.names:
            ssh_hosts.run_in_host(name, ["rm", "-rf", w.root])


def test_a_scheduled_rotate_takes_a_due_credential_from_renewal_to_deployed_with_only_the_reply(world, raw, cli):
    w = world
    old = w.old
    assert old is not None
    old_serial = openssl_serial(old)
    old_fp = hashlib.sha256(old.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert all(w.served(h)["serial"] == old_serial for h in w.names)
    assert w.status_row()["state"] == "expiring"  # current, and within the lead time: due
    assert re.search(rf"{MZP}/{APP}\s+renew\b", cli("rotate", "--dry-run").out)

    # -- Run 1 (day 0): renewal. A new key and CSR, e-mailed once; the hosts keep serving the old certificate. --
    trees = {h: w.tree(h) for h in w.names}
    first = w.run_job(0)
    assert first.rc == 0, first.text
    assert re.search(rf"{MZP}/{APP}\s+renew\b", first.out), first.out
    assert f"CSR e-mailed to {AUTHORITY_TO}" in first.out, first.out
    assert len(w.inbox.messages) == 1, [m["Subject"] for m in w.inbox.messages]
    (csr_mail,) = w.inbox.messages
    pending = raw.read(f"{CRED}/pending")["data"]
    w.learn(key_body(pending["key_pem"]))
    assert csr_mail["To"] == AUTHORITY_TO and csr_mail["Message-ID"].strip() == pending["message_id"]
    (attachment,) = list(csr_mail.iter_attachments())
    mailed_csr = x509.load_pem_x509_csr(attachment.get_payload(decode=True))
    assert mailed_csr.is_signature_valid
    # The CSR is for the pending key, not for the current one.
    pending_pub = subprocess.run(["openssl", "pkey", "-pubout"], input=pending["key_pem"], capture_output=True,
                                 text=True, check=True).stdout
    assert spki_pem(mailed_csr.public_key()) == pending_pub
    assert spki_pem(mailed_csr.public_key()) != spki_pem(old.public_key())
    for h in w.names:
        s = w.served(h)
        assert (s["serial"], s["fingerprint"], s["link"]) == (old_serial, old_fp, f"releases/{old_serial}"), h
    assert {h: w.tree(h) for h in w.names} == trees, "the renewal run changed files on the hosts"
    assert all(f"releases/{old_serial}/client.crt" in trees[h] for h in w.names), trees
    assert all(w.reloads(h) == 1 for h in w.names)  # the set-up's deploy only
    assert raw.read(f"{CRED}/current")["data"]["serial"] == old_serial
    assert w.status_row()["state"] == "pending"
    kinds = [k for k, _ in w.last_events]
    assert "csr_submitted" in kinds and "certificate_imported" not in kinds, w.last_events
    # Nothing new to serve: the hosts are not touched, and nobody is told the old certificate was "deployed".
    assert "deploying" not in first.out and "deployed" not in kinds, (first.out, w.last_events)

    # -- Run 2 (day 0.5): nothing has arrived. It waits, and sends nothing again. --
    waiting = w.run_job(0.5)
    assert waiting.rc == 0, waiting.text
    assert re.search(rf"{MZP}/{APP}\s+wait\b", waiting.out) and "no new message" in waiting.out, waiting.out
    assert len(w.inbox.messages) == 1 and w.last_events == []

    # -- The authority answers, from the e-mail alone; the reply lands in the mailbox. Nothing else is done. --
    client_id = w.authority.new_client_id()
    reply_bytes, leaf = w.answer(csr_mail, client_id)
    w.dovecot.deliver(w.user, reply_bytes)
    assert w.dovecot.folder_uids(w.user, "INBOX") == [1]
    new_serial = openssl_serial(leaf)
    new_fp = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert new_serial != old_serial

    # -- Run 3 (day 1): reads the mailbox, imports through the gate, deploys, verifies. --
    second = w.run_job(1)
    assert second.rc == 0, second.text
    assert f"imported for {MZP}/{APP}: serial {new_serial}" in second.out, second.out
    assert "deploying 1 credential(s)" in second.out, second.out
    assert len(w.inbox.messages) == 1, "the import run sent another e-mail"
    events = dict(w.last_events)
    assert f"serial {new_serial}" in events.get("certificate_imported", ""), w.last_events
    assert f"serial {new_serial} deployed to its hosts (3/3 in sync)" in events.get("deployed", ""), w.last_events
    # Hosts, read by openssl: the new certificate, the key matching it and the mailed CSR, a working API call.
    for h in w.names:
        s = w.served(h)
        assert (s["serial"], s["fingerprint"], s["link"]) == (new_serial, new_fp, f"releases/{new_serial}"), h
        assert s["key_pub"] == s["cert_pub"] == spki_pem(mailed_csr.public_key()), f"{h}: key does not match"
        assert w.curl(h) == "200", h
        assert w.reloads(h) == 2, h  # reloaded once more, for the new certificate
    # Vault, read by a separate client.
    current = raw.read(f"{CRED}/current")
    w.learn(current["data"]["p12_password"])
    assert current["data"]["serial"] == new_serial and current["data"]["fingerprint_sha256"] == new_fp
    assert current["data"]["client_id"] == client_id
    assert current["data"]["key_pem"] == pending["key_pem"]
    assert raw.read(f"{CRED}/pending")["data"]["state"] == "consumed"
    assert raw.read(f"{CRED}/history/{old_serial}") is not None
    # The mailbox: the reply moved to the processed folder, nothing left in INBOX.
    assert w.dovecot.folder_uids(w.user, "INBOX") == []
    (processed,) = w.dovecot.fetch_all(w.user, PROCESSED)
    assert header(processed, "Message-ID") == header(reply_bytes, "Message-ID")
    # status, as a human reads it.
    row = w.status_row()
    assert row["state"] == "active" and row["serial"] == new_serial, row
    assert (row["hosts_in_sync"], row["hosts_total"]) == (3, 3), row
    assert not row.get("pending_since"), row

    # -- Run 4 (day 2): nothing to do; nothing sent, read, moved or changed. --
    trees = {h: w.tree(h) for h in w.names}
    reloads = {h: w.reloads(h) for h in w.names}
    version = current["metadata"]["version"]
    pending_version = raw.read(f"{CRED}/pending")["metadata"]["version"]
    third = w.run_job(2)
    assert third.rc == 0, third.text
    assert "nothing to do" in third.out and "no new message" in third.out, third.out
    assert "deploying" not in third.out, third.out
    assert len(w.inbox.messages) == 1 and w.last_events == []
    assert w.dovecot.folder_uids(w.user, "INBOX") == [] and len(w.dovecot.folder_uids(w.user, PROCESSED)) == 1
    assert {h: w.tree(h) for h in w.names} == trees and {h: w.reloads(h) for h in w.names} == reloads
    assert raw.read(f"{CRED}/current")["metadata"]["version"] == version
    assert raw.read(f"{CRED}/pending")["metadata"]["version"] == pending_version

    # -- No secret anywhere: the job's output (checked per run by cli.assert_clean), its log file, status. --
    log = w.log_file.read_text()
    assert log.count("scheduled rotation finished: exit 0") == 4, log
    cli.assert_clean(Result(0, log, ""))
    for secret in cli.secrets:
        assert all(secret not in text for text in w.outputs)
