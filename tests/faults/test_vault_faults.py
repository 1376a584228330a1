"""Vault unreachable or sealed at each step of a rotation: a clear error, and the next run finishes
the job, with the same key wherever a CSR had already left for the authority.

The server is a real single-node OpenBao (raft) that is really sealed (sys/seal), or cut off by a
loopback proxy that drops every connection from a chosen request on; the proxy picks the moment
exactly (the n-th write to a given path, before or after the server did it)."""
import datetime as dt
import email
import email.policy
import json

import pytest
import yaml
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import free_port
from tests.faults.conftest import (
    MZP,
    audit,
    clean_failure,
    csr_key,
    finish,
    make_world,
    new_mount,
    released_keys,
    sign_pending,
    unseal,
    versions,
)
from tests.plugins.chaos import fault_run

APP = "fleet"
CRED = rf"/data/partnercerts/{MZP}/apps/{APP}"

# Where a rotation (outbox submission) loses Vault: (method, path pattern, n-th match, before/after).
ROTATION_STEPS = {
    "before the key is stored": ("POST", CRED + "/pending$", 1, "before"),
    "after the key is stored, before the CSR is released": ("POST", CRED + "/pending$", 1, "after"),
    "after the CSR is released, before its submission is recorded": ("POST", CRED + "/pending$", 3, "before"),
}
# Where an import loses Vault: history, the index marked, current, the pending tombstone, the index derived.
INDEX = r"/metadata/partnercerts/index/" + MZP + r"\." + APP + "$"
IMPORT_STEPS = {
    "import: before the history entry": ("POST", CRED + r"/history/[0-9A-F]+$", 1, "before", "cut"),
    "import: history written, index marked, before current": ("POST", INDEX, 1, "after", "cut"),
    "import: history written, before current": ("POST", CRED + "/current$", 1, "before", "seal"),
    "import: current written, before the tombstone": ("POST", CRED + "/pending$", 1, "before", "cut"),
    "import: tombstone written, before the index": ("POST", INDEX, 2, "before", "seal"),
}


@pytest.fixture
def world(sealable, proxies, tmp_path):
    """An outbox partner on the sealable server, reached through a proxy the test can cut."""
    client = sealable.client()
    proxy = proxies(sealable.nodes[0].addr, sealable.token)
    w = make_world(tmp_path / "w", proxy.addr, sealable.token, new_mount(client), client)
    w.proxy = proxy
    yield w
    proxy.restore()
    unseal(sealable)


def restore(w, sealable):
    w.proxy.restore()
    unseal(sealable)


def expect_vault_error(r, action):
    assert clean_failure(r), f"not a clean failure ({r.rc}):\n{r.text}"
    last = r.err.strip().splitlines()[-1]
    assert "Vault at" in last and ("sealed" in last if action == "seal" else "unreachable" in last), last


def import_released(w, ca, tmp_path, cli):
    cert = sign_pending(w, APP, ca, tmp_path)
    return cli("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(cert), "--ca", str(ca.path),
               "--client-id", "fault-client", ok=False)


@pytest.mark.parametrize("action", ["cut", "seal"])
@pytest.mark.parametrize("step", list(ROTATION_STEPS))
def test_vault_lost_during_a_rotation(step, action, world, sealable, ca, tmp_path, chaos):
    w = world
    record = chaos(f"vault {'unreachable' if action == 'cut' else 'sealed'}: {step}")
    cli = w.cli()
    with fault_run(record, lambda: audit(w, APP).lost()):
        method, path, nth, when = ROTATION_STEPS[step]
        w.proxy.arm(method, path, nth=nth, when=when, action=action)
        failed = finish(w.popen("rotate", "--no-deploy"))
        assert w.proxy.fired.is_set(), f"the fault never fired; requests: {w.proxy.writes()}"
        expect_vault_error(failed, action)
        restore(w, sealable)
        before = versions(w.raw, f"{MZP}/apps/{APP}/pending")
        sent_before = released_keys(w.outbox, APP)
        if step == "before the key is stored":
            assert before == [] and sent_before == []
        elif step.startswith("after the key is stored"):
            assert len(before) == 1 and sent_before == [], "a CSR left before its key was safely stored"
        else:
            assert sent_before == [before[0]["key_sha256"]], "the CSR in the outbox is not the stored key's"

        again = cli("rotate", "--no-deploy", ok=False)
        assert again.rc == 0, f"the next run did not finish the job ({again.rc}):\n{again.text}"
        assert "holds the lock" not in again.out, f"the next run was locked out by the failed one:\n{again.out}"
        pending = w.raw.read(f"{MZP}/apps/{APP}/pending")["data"]
        assert pending["state"] == "pending" and pending["submitted_at"], pending.get("state")
        sent = released_keys(w.outbox, APP)
        if sent_before:  # the released CSR's key is the one that stays, whatever the next run did
            assert set(sent) == set(sent_before), "a different key was released after the CSR had left"
        imported = import_released(w, ca, tmp_path, cli)
        assert imported.rc == 0, imported.text
        a = audit(w, APP)
        assert a.current == pending["key_sha256"] and set(sent) == {a.current}
        assert a.lost() == 0, a
    record.run("failed cleanly, next run finished")


@pytest.mark.parametrize("step", list(IMPORT_STEPS))
def test_vault_lost_during_an_import(step, world, sealable, ca, tmp_path, chaos):
    w = world
    method, path, nth, when, action = IMPORT_STEPS[step]
    record = chaos(f"vault {'unreachable' if action == 'cut' else 'sealed'}: {step}")
    cli = w.cli()
    with fault_run(record, lambda: audit(w, APP).lost()):
        cli("rotate", "--no-deploy")
        cert = sign_pending(w, APP, ca, tmp_path)
        args = ("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(cert), "--ca", str(ca.path),
                "--client-id", "fault-client")
        w.proxy.arm(method, path, nth=nth, when=when, action=action)
        failed = finish(w.popen(*args))
        assert w.proxy.fired.is_set(), f"the fault never fired; requests: {w.proxy.writes()}"
        expect_vault_error(failed, action)
        restore(w, sealable)
        # The user runs the import again, then the scheduled rotation runs: both finish the job.
        again = cli(*args, ok=False)
        assert again.rc == 0, again.text
        rotate = cli("rotate", "--no-deploy", ok=False)
        assert rotate.rc == 0 and "holds the lock" not in rotate.out, rotate.text
        status = {r["app"]: r for r in json.loads(cli("status", "--json").out)}
        assert status[APP]["state"] == "active", (
            f"after the interrupted import, status says {status[APP]['state']!r} and rotate says "
            f"{rotate.out.strip().splitlines()[1:2]}: the pending record was never settled")
        pending = w.raw.read(f"{MZP}/apps/{APP}/pending")["data"]
        assert pending["state"] == "consumed"
        a = audit(w, APP)
        assert a.current == pending["key_sha256"] and a.released == {a.current}
        assert a.lost() == 0, a
    record.run("failed cleanly, next run finished")


def test_vault_lost_after_the_csr_was_e_mailed(world, sealable, ca, tmp_path, chaos):
    """E-mail submission: Vault goes away right after the message left (before it is recorded); the next
    run sends the same CSR again under the same Message-ID, and that key is the one imported."""
    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    w = world
    record = chaos("vault unreachable: after the CSR was e-mailed, before it is recorded")
    inbox = Inbox()

    def mailed():
        """(Message-ID, key) of every CSR e-mailed to the authority."""
        out = []
        for msg in inbox.messages:
            (attachment,) = list(msg.iter_attachments())
            out.append((msg["Message-ID"].strip(), csr_key(attachment.get_payload(decode=True))))
        return out

    def keys_lost():
        a = audit(w, APP)
        return len({k for _, k in mailed()} - a.pending - {a.current}) + a.lost()

    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        with fault_run(record, keys_lost):
            path = w.inventory / "group_vars" / "all" / "partners.yml"
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            doc["partnercerts_partners"][0]["submission"] = {
                "method": "email", "to": "connectedcar@mpsa.example",
                "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"}}
            path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
            cli = w.cli()
            w.proxy.arm("POST", CRED + "/pending$", nth=3, when="before", action="cut")
            failed = finish(w.popen("rotate", "--no-deploy"))
            expect_vault_error(failed, "cut")
            restore(w, sealable)
            assert len(inbox.messages) == 1, "the message did not leave before Vault went away"
            again = cli("rotate", "--no-deploy", ok=False)
            assert again.rc == 0 and "holds the lock" not in again.out, again.text
            sent = mailed()
            pending = w.raw.read(f"{MZP}/apps/{APP}/pending")["data"]
            assert {k for _, k in sent} == {pending["key_sha256"]}, "an e-mailed CSR carries another key"
            assert {m for m, _ in sent} == {pending["message_id"]}, "the resent message has another Message-ID"
            # The authority answers the (identical) request: that key is imported.
            cert = tmp_path / "reply.crt"
            req = x509.load_pem_x509_csr(pending["csr_pem"].encode())
            now = dt.datetime.now(dt.timezone.utc)
            cert.write_bytes(ca.issue(req.public_key(), req.subject, now=now, not_before=now - dt.timedelta(hours=1))
                             .public_bytes(serialization.Encoding.PEM))
            cli("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(cert), "--ca", str(ca.path),
                "--client-id", "mail-client")
            assert audit(w, APP).current == pending["key_sha256"] and keys_lost() == 0
    finally:
        smtp.stop()
    record.run(f"failed cleanly, next run re-sent the same message ({len(sent)} e-mails, 1 key)")
