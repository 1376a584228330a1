"""Years in minutes: the time-travel soak (`scripts/inv soak`; a small size runs in `scripts/inv test`).

One scheduled run per simulated day, exactly as cron runs it (`scripts/scheduled-rotate` with its root-only
environment file, the rotator AppRole, PARTNERCERTS_NOW moved a day at a time), against real servers: a raft
OpenBao node (restarted now and then), an SMTP server receiving the CSR e-mails, Dovecot holding the partners'
reply mailboxes, a webhook receiving the notifications, and SSH test hosts (namespaced sshd) that receive the real
deploy. The hosts' clocks move with the simulation: their Python (the Ansible modules) and the commands it runs
(openssl in the validate command) see the simulated time through libfaketime (Debian `faketime`).

The authority is `authority.Authority` (test code): it answers from what it received, late, sometimes twice,
sometimes not at all, sometimes refusing, rebuilding subjects, changing its CA. An operator (also test code here)
does what the runbook says when the product tells them to: resends a CSR after a reminder or a refusal, imports
the reply files of outbox partners with `import-cert --eml`, and has their own events: a rollback (and back), an
emergency re-key, a host added (then `deploy`) and one removed, Vault restarted, the control node killed in the
middle of a run once a simulated month.

After every finished run it checks, from independent readers (a raw hvac client on Vault, the files on the hosts
read inside their namespaces and parsed with `cryptography`, the metrics textfile parsed by prometheus_client):
no host serves an expired certificate or a mixed release, every host is in sync with Vault; no pending key was
replaced while live; every due renewal had started; reminders and alerts came when, and only when, they should;
the metrics match Vault. Any breach stops the soak with its day and seed; the same seed replays it."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import yaml
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.devservers import DevDovecot, free_port  # noqa: E402
from devtools.testhosts import TestHosts  # noqa: E402
from tests.conftest import Cli, Raw, Result  # noqa: E402
from tests.faults.cluster import Cluster  # noqa: E402
from tests.integration.test_rotation_prod import webhook_server  # noqa: E402
from tests.integration.test_unattended import key_body  # noqa: E402
from tests.soak.authority import Authority, csr_of_message, pem, spki_sha256  # noqa: E402

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN_AT = dt.timedelta(hours=2)        # the scheduled run, every day
OPERATOR_AT = dt.timedelta(hours=9)   # when the operator reads the night's notifications and acts
RENEW_BEFORE_DAYS = 60
REMINDER_DAYS = 14
INFORMATIONAL = {"csr_submitted", "certificate_imported", "deployed", "rekey"}


@dataclass
class Size:
    days: int
    partners: int
    apps: int
    hosts: int        # in the inventory at the start; one more is added during the soak, one removed
    initial_left: tuple[int, int]  # days left on the certificates the story starts with


SIZES = {
    "full": Size(days=1095, partners=4, apps=5, hosts=3, initial_left=(65, 365)),
    "small": Size(days=150, partners=2, apps=3, hosts=2, initial_left=(62, 110)),
}


class SoakFailure(AssertionError):
    pass


@dataclass
class Served:
    """What one host's `current` serves for one credential, as read from its files."""
    link: str
    serial: str
    not_after: dt.datetime
    cert_key: str    # SHA-256 of the certificate's public key
    key_key: str     # SHA-256 of the public key of client.key
    client_id: str
    issuer_ok: bool  # ca.crt holds the certificate's issuer


@dataclass
class Table:
    days: int = 0
    runs: int = 0
    renewals: int = 0
    delays: list = field(default_factory=list)
    reminders: int = 0
    resends: int = 0
    alerts: dict = field(default_factory=dict)
    worst_margin_days: float | None = None
    worst_margin_at: str = ""
    keys_lost: int = 0
    hosts_mixed: int = 0
    expired_on_host_days: int = 0
    runs_killed: int = 0
    vault_restarts: int = 0
    authority: dict = field(default_factory=dict)
    operator: dict = field(default_factory=dict)
    seconds: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        d = sorted(self.delays)
        delays = (f"{len(d)} answers: {d[0]:.1f} / {statistics.median(d):.1f} / {d[-1]:.1f} days "
                  "(min / median / max)") if d else "none"
        alerts = ", ".join(f"{n} {k}" for k, n in sorted(self.alerts.items())) or "none"
        a = self.authority
        return [
            ("simulated days", f"{self.days} ({self.runs} scheduled runs, {self.runs_killed} killed mid-run)"),
            ("renewals (certificates imported)", str(self.renewals)),
            ("authority delays seen", delays),
            ("authority mishaps", f"{a.get('lost', 0)} lost, {a.get('twice', 0)} answered twice, "
                                  f"{a.get('refused', 0)} refused once, {a.get('rebuilt', 0)} subjects rebuilt, "
                                  f"{a.get('ca_changes', 0)} CA changes"),
            ("reminders", str(self.reminders)),
            ("resends", str(self.resends)),
            ("alerts", alerts),
            ("operator events", ", ".join(f"{n} {k}" for k, n in sorted(self.operator.items())) or "none"),
            ("Vault restarts", str(self.vault_restarts)),
            ("days of margin left at the worst moment",
             f"{self.worst_margin_days:.1f} ({self.worst_margin_at})" if self.worst_margin_days is not None else "-"),
            ("keys lost", str(self.keys_lost)),
            ("hosts mixed", str(self.hosts_mixed)),
            ("expired-on-host days", str(self.expired_on_host_days)),
        ]

    def markdown(self) -> str:
        rows = self.rows()
        w = max(len(k) for k, _ in rows)
        out = [f"| {'measure'.ljust(w)} | value |", f"|{'-' * (w + 2)}|-------|"]
        out += [f"| {k.ljust(w)} | {v} |" for k, v in rows]
        return "\n".join(out)


class Inbox:
    """The authority's incoming mail (aiosmtpd handler): the CSR e-mails, raw."""

    def __init__(self):
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 OK"


class Soak:
    def __init__(self, base: Path, size: Size, seed: int, log=print):
        self.base, self.size, self.seed, self.log = base, size, seed, log
        self.rng = random.Random(seed)
        self.table = Table()
        self.t0 = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) \
            + dt.timedelta(days=1)
        self.vault: Cluster | None = None
        self.hosts: TestHosts | None = None
        self.dovecot: DevDovecot | None = None
        self.smtp: Controller | None = None
        self.inbox = Inbox()
        self.webhook_stop = None
        self.events: list[dict] = []
        self.creds: list[tuple[str, str]] = []
        self.validity: dict[tuple[str, str], int] = {}
        self.email_partners: list[str] = []
        self.outbox_partners: list[str] = []
        self.active_hosts: list[str] = []
        self.spare_host = ""
        self.removed_hosts: list[str] = []
        self.dest_root = "/srv/soak"
        self.seen_outbox: set[str] = set()
        self.reply_files: list = []          # (Answer, path) waiting for the operator
        self.last_pending: dict[tuple[str, str], str] = {}
        self.rekeyed: set[tuple[str, str]] = set()
        self.last_resend: dict[tuple[str, str], dt.datetime] = {}
        self.attention: set[tuple[str, str]] = set()
        self.refusals_delivered: list[tuple[str, str]] = []
        self.cache: dict[bytes, object] = {}
        self.schedule: dict[int, list[str]] = {}
        self.rolled_back: tuple[tuple[str, str], str] | None = None
        self.prev_state: dict = {}
        self.kill_wait = 0
        self.busy_seconds = 8.0   # how long the last run that deployed took: the kills land inside such a run

    # == set-up =================================================================================================
    def __enter__(self) -> "Soak":
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for stop in (lambda: self.smtp and self.smtp.stop(), lambda: self.webhook_stop and self.webhook_stop(),
                     lambda: self.dovecot and self.dovecot.stop(), lambda: self.hosts and self.hosts.down(),
                     lambda: self.vault and self.vault.down()):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - tear everything down, report what failed
                self.log(f"teardown: {exc}")

    def _up(self) -> None:
        size = self.size
        self.log(f"soak: seed {self.seed}, {size.days} simulated days from {self.t0.date()}, "
                 f"{size.partners * size.apps} credentials, {size.hosts} hosts (+1 added, -1 removed)")
        if not os.path.exists(LIBFAKETIME):
            raise SoakFailure(f"{LIBFAKETIME} is missing: run scripts/install-system-deps (as root)")
        self.vault = Cluster(self.base / "vault", size=1).up()
        self.hosts = TestHosts(self.base / "hosts", size.hosts + 1, name_prefix="soak").up()
        names = [h.name for h in self.hosts.hosts]
        self.active_hosts, self.spare_host = names[:-1], names[-1]
        self.dovecot = DevDovecot(self.base / "dovecot")
        self.smtp = Controller(self.inbox, hostname="127.0.0.1", port=free_port())
        self.smtp.start()
        url, self.events, self.webhook_stop = webhook_server()
        for i in range(size.partners):
            mzp = f"MZP7{i:05d}"
            (self.email_partners if i % 2 == 0 else self.outbox_partners).append(mzp)
            for j in range(size.apps):
                cred = (mzp, f"app{j}")
                self.creds.append(cred)
                self.validity[cred] = 90 if (i + j) % 4 == 0 else 365
        mailboxes = {m: f"pki@{m.lower()}.example" for m in self.email_partners}
        rebuilds = {self.outbox_partners[0]} if self.outbox_partners else set()
        self.authority = Authority(random.Random(self.seed * 7919 + 1), self.t0, self.validity, mailboxes, rebuilds)
        self.mount = "soak"
        self.vault.client().sys.enable_secrets_engine("kv", path=self.mount, options={"version": "2"})
        self.raw = Raw(self.vault.client(), self.mount)
        self._write_inventory(url)
        self._write_faketime(self.t0 - dt.timedelta(hours=1))
        (self.base / "home").mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_"))}
        self.env.update(VAULT_ADDR=self.vault.vault_addr, VAULT_TOKEN=self.vault.token,
                        PARTNERCERTS_KV_MOUNT=self.mount, PARTNERCERTS_INVENTORY=str(self.inventory),
                        PARTNERCERTS_STATE_DIR=str(self.base / "operator-state"), HOME=str(self.base / "home"))
        self.cli = Cli(self.env, self.base)
        self.cli.secrets.append(self.vault.token)
        for mzp in self.email_partners:
            password = "mbx-" + hashlib.sha256(f"{self.seed}{mzp}".encode()).hexdigest()[:20]
            self.dovecot.add_user(mailboxes[mzp], password)
            self.cli.secrets.append(password)
            self.cli("mailbox-password", "--mzp", mzp, input=password + "\n")
        for mzp in self.email_partners + self.outbox_partners:
            password = "mzp-" + hashlib.sha256(f"{self.seed}{mzp}pw".encode()).hexdigest()[:20]
            self.cli.secrets.append(password)
            self.cli("account", "--mzp", mzp, input=password + "\n")
        self._initial_certificates()
        self.cli("vault.bootstrap")
        creds = self.base / "rotator.env"
        self.cli("vault.secret-id", "--role", "rotator", "--out", str(creds))
        approle = dict(ln.split("=", 1) for ln in creds.read_text().splitlines() if "=" in ln)
        self.cli.secrets.append(approle["VAULT_SECRET_ID"])
        creds.unlink()
        (self.base / "etc").mkdir(mode=0o700)
        (self.base / "job-home").mkdir()
        self.job_env = {"PARTNERCERTS_LOG_FILE": str(self.base / "log" / "rotate.log"),
                        "VAULT_ADDR": self.vault.vault_addr, "PARTNERCERTS_KV_MOUNT": self.mount,
                        "PARTNERCERTS_INVENTORY": str(self.inventory),
                        "PARTNERCERTS_STATE_DIR": str(self.base / "job-state"),
                        "VAULT_ROLE_ID": approle["VAULT_ROLE_ID"], "VAULT_SECRET_ID": approle["VAULT_SECRET_ID"]}
        self._plan_events()
        self.events.clear()

    def _write_inventory(self, webhook_url: str) -> None:
        self.inventory = self.base / "inventory"
        (self.inventory / "group_vars" / "all").mkdir(parents=True)
        self.outbox = self.base / "outbox"
        self.metrics = self.base / "metrics" / "partnercerts.prom"
        self.metrics.parent.mkdir()
        partners = []
        for mzp in self.email_partners + self.outbox_partners:
            p = {"mzp": mzp, "country": "FR", "state": "Île-de-France", "locality": "Poissy",
                 "organization": f"Soak Partner {mzp[-2:]}, SAS", "email": f"pki@{mzp.lower()}.example",
                 "renew_before_days": RENEW_BEFORE_DAYS, "pending_reminder_days": REMINDER_DAYS,
                 "applications": [{"name": a} for m, a in self.creds if m == mzp]}
            if mzp in self.email_partners:
                p["submission"] = {"method": "email", "to": "connectedcar@mpsa.example",
                                   "smtp": {"host": "127.0.0.1", "port": self.smtp.port, "security": "none"}}
                p["reply_mailbox"] = {"host": self.dovecot.host, "port": self.dovecot.imaps_port, "security": "tls",
                                      "user": f"pki@{mzp.lower()}.example", "cafile": str(self.dovecot.ca_file)}
            else:
                p["submission"] = {"method": "outbox", "dir": str(self.outbox), "to": "connectedcar@mpsa.example"}
            partners.append(p)
        (self.inventory / "group_vars" / "all" / "partners.yml").write_text(
            yaml.safe_dump({"partnercerts_partners": partners}, allow_unicode=True), encoding="utf-8")
        (self.inventory / "group_vars" / "all" / "settings.yml").write_text(yaml.safe_dump({
            "partnercerts_notify": {"webhook": {"url": webhook_url}},
            "partnercerts_metrics_textfile": str(self.metrics)}))
        wrapper = self.base / "python-simulated-clock"
        wrapper.write_text("#!/bin/sh\n# The host's clock is the simulation's (libfaketime): Python and what it runs\n"
                           f"export LD_PRELOAD={LIBFAKETIME} FAKETIME_TIMESTAMP_FILE={self.base / 'faketime'} "
                           "FAKETIME_NO_CACHE=1\nexec /usr/bin/python3 \"$@\"\n")
        wrapper.chmod(0o755)
        self._write_hosts()

    def _write_hosts(self) -> None:
        """hosts.yml: the active hosts only (a removed host is no longer a host of the credentials)."""
        assert self.hosts is not None
        extra = {
            "ansible_python_interpreter": str(self.base / "python-simulated-clock"),
            "partnercerts_deploy_credentials": [{
                "mzp": m, "app": a, "dest": f"{self.dest_root}/{m}-{a}",
                "validate_command": f"openssl x509 -checkend 0 -noout -in {self.dest_root}/{m}-{a}/current/client.crt",
                "reload_command": f"echo reload >> {self.dest_root}/{m}-{a}.reloads",
            } for m, a in self.creds],
        }
        text = self.hosts.inventory_text(extra_vars=extra)
        doc = yaml.safe_load(text)
        group = doc["all"]["children"]["integration"]
        group["hosts"] = {n: v for n, v in group["hosts"].items() if n in self.active_hosts}
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump(doc))

    def _write_faketime(self, now: dt.datetime) -> None:
        (self.base / "faketime").write_text(now.strftime("@%Y-%m-%d %H:%M:%S") + "\n")

    def at(self, now: dt.datetime) -> dict:
        return {"PARTNERCERTS_NOW": now.isoformat()}

    def _initial_certificates(self) -> None:
        """The deployment as the story finds it: every credential current, with staggered days left, deployed."""
        now = self.t0 - dt.timedelta(hours=1)
        chain = self.base / "ca-chain.pem"
        chain.write_bytes(pem(self.authority.intermediate.cert, self.authority.root.cert))
        for cred in self.creds:
            mzp, app = cred
            out = self.base / "initial.csr"
            self.cli("csr", "--mzp", mzp, "--app", app, "--out", str(out), env=self.at(now))
            csr = x509.load_pem_x509_csr(out.read_bytes())
            lo, hi = self.size.initial_left
            left = min(self.rng.uniform(lo, hi), self.validity[cred] - 1)
            issued = now + dt.timedelta(days=left - self.validity[cred])
            req = self._request(cred, csr, issued)
            leaf, _ = self.authority.sign(req, issued)
            self.authority.issued.append((req, leaf, [], issued))
            path = self.base / "initial.crt"
            path.write_bytes(pem(leaf))
            self.cli("import-cert", "--mzp", mzp, "--app", app, "--cert", str(path), "--ca", str(chain),
                     "--client-id", Authority.client_id(cred), env=self.at(now))
            self._learn(cred)
        self.cli("deploy", env=self.at(now))

    def _request(self, cred, csr, at):
        from tests.soak.authority import Request
        return Request(cred, spki_sha256(csr.public_key()), csr, "", at, at, "normal", at, self.validity[cred],
                       cred[0] in self.email_partners, done=True)

    def _learn(self, cred) -> None:
        """Remember the secrets of a credential's current record: printed anywhere, they would be a leak."""
        cur = self.raw.read(f"{cred[0]}/apps/{cred[1]}/current")
        if cur:
            for value in (cur["data"].get("p12_password", ""), key_body(cur["data"]["key_pem"])):
                if value and value not in self.cli.secrets:
                    self.cli.secrets.append(value)

    def _plan_events(self) -> None:
        """The operator's events, at seeded days spread over the soak."""
        days = self.size.days
        rng = random.Random(self.seed * 104729 + 3)

        def put(frac: float, what: str) -> None:
            day = max(1, min(days - 2, int(days * frac) + rng.randint(-3, 3)))
            self.schedule.setdefault(day, []).append(what)
        put(0.30, "add-host")
        put(0.70, "remove-host")
        put(0.35, "rollback")
        put(0.52, "rekey")
        put(0.45, "ca-change")
        if days > 600:
            put(0.80, "ca-change")
        for k in range(1, max(2, days // 120) + 1):
            put(k / (max(2, days // 120) + 1), "vault-restart")
        for month in range(days // 30):
            self.schedule.setdefault(month * 30 + rng.randint(3, 27), []).append("kill")

    # == the days ===============================================================================================
    def run(self, stop_after: int | None = None) -> Table:
        """Every simulated day; `stop_after` ends early (a replay up to the day a failure named)."""
        started = time.monotonic()
        for day in range(self.size.days if stop_after is None else min(self.size.days, stop_after + 1)):
            self.day(day)
        self.finish()
        self.table.seconds = time.monotonic() - started
        return self.table

    def fail(self, day: int, what: str) -> None:
        self.table.delays = list(self.authority.delays)
        self.table.authority = dict(self.authority.counts)
        raise SoakFailure(f"day {day} ({(self.t0 + dt.timedelta(days=day)).date()}), seed {self.seed}: {what}")

    def day(self, day: int) -> None:
        midnight = self.t0 + dt.timedelta(days=day)
        run_at = midnight + RUN_AT
        todo = self.schedule.get(day, [])
        certs_in = self._deliver(run_at)
        if "kill" in todo and not certs_in and day + 1 < self.size.days and self.kill_wait < 10:
            # The power cut is worth most in the middle of an import and deploy: wait for a reply (10 days at most).
            todo.remove("kill")
            self.schedule.setdefault(day + 1, []).append("kill")
            self.kill_wait += 1
        elif "kill" in todo:
            self.kill_wait = 0
        if "vault-restart" in todo:
            self._restart_vault()
        self._write_faketime(run_at)
        killed = "kill" in todo and self._run_job(run_at, kill_after=self.rng.uniform(0.2, 0.9) * self.busy_seconds)
        if killed:  # the next run, an hour later (the systemd timer's retry), finishes the job
            self.events.clear()
            run_at += dt.timedelta(hours=1)
            self._write_faketime(run_at)
        if killed or "kill" not in todo:
            self._run_job(run_at)
        sent = self._batch()
        self._check(day, run_at, sent, killed)
        self._collect_submissions(run_at)
        self._operator(day, midnight + OPERATOR_AT, sent, todo)
        self._collect_submissions(midnight + OPERATOR_AT)
        self.table.days = day + 1
        if day % 30 == 0 or day == self.size.days - 1:
            self.log(f"soak: day {day} ({run_at.date()}): {len(self.authority.issued) - len(self.creds)} signed, "
                     f"{self.table.reminders} reminders, worst margin {self.table.worst_margin_days or 0:.1f} days")

    def _run_job(self, now: dt.datetime, kill_after: float | None = None) -> bool:
        """The scheduled job as cron runs it; with kill_after, SIGKILL its whole process group after that many
        seconds (the control node losing power). Returns whether it was killed before it finished."""
        env_file = self.base / "etc" / "rotate.env"
        lines = [f"{k}={v}" for k, v in {**self.job_env, "PARTNERCERTS_NOW": now.isoformat()}.items()]
        env_file.write_text("\n".join(lines) + "\n")
        os.chmod(env_file, 0o600)
        proc = subprocess.Popen([str(ROOT / "scripts" / "scheduled-rotate"), str(env_file)],
                                env={"PATH": CRON_PATH, "HOME": str(self.base / "job-home"), "SHELL": "/bin/bash",
                                     "LOGNAME": "root"}, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        started = time.monotonic()
        try:
            out, err = proc.communicate(timeout=kill_after if kill_after is not None else 600)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise SoakFailure(f"{now}: the scheduled run did not finish in 600 s") from None
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            self.table.runs_killed += 1
            self.table.operator["control node killed mid-run"] = self.table.operator.get(
                "control node killed mid-run", 0) + 1
            self.cli.assert_clean(Result(-9, out, err))
            return True
        self.table.runs += 1
        r = Result(proc.returncode, out, err)
        self.cli.assert_clean(r)
        if r.rc != 0:
            raise SoakFailure(f"{now}: the scheduled run failed ({r.rc}), seed {self.seed}:\n{r.text[-3000:]}")
        if "deploying" in r.out:
            self.busy_seconds = time.monotonic() - started
        return False

    def _batch(self) -> list[dict]:
        out = [e for batch in self.events for e in batch["events"]]
        self.events.clear()
        return out

    # -- the authority's side ---------------------------------------------------------------------------------
    def _collect_submissions(self, now: dt.datetime) -> None:
        """What reached the desk: CSR e-mails (SMTP), and the outbox messages the operator sent on."""
        while self.inbox.messages:
            raw = self.inbox.messages.pop(0)
            self._receive(raw, now)
        if self.outbox.exists():
            for eml in sorted(self.outbox.glob("*/*.eml")):
                if str(eml) not in self.seen_outbox:
                    self.seen_outbox.add(str(eml))
                    self._receive(eml.read_bytes(), now)

    def _receive(self, raw: bytes, now: dt.datetime) -> None:
        csr_pem, message_id = csr_of_message(raw)
        csr = x509.load_pem_x509_csr(csr_pem)
        mzp = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        digest = spki_sha256(csr.public_key())
        known = self.authority.open.get(digest)  # a resend the operator sent just before importing its answer
        cred = known.cred if known else next((c for c in self.creds if c[0] == mzp and self._pending_key(c) == digest),
                                             None)
        if cred is None:
            raise SoakFailure(f"{now}: the desk received a CSR of {mzp} for no pending key")
        self.authority.receive(cred, csr_pem, message_id, now, cred[0] in self.email_partners)

    def _deliver(self, upto: dt.datetime) -> int:
        """Send what the desk answered by now; the number of certificates the next run will import."""
        answers = self.authority.answers(upto)
        for a in answers:
            if a.request.email:
                self.dovecot.deliver(self.authority.mailbox_of[a.request.cred[0]], a.message)
                if a.kind == "refusal":
                    self.refusals_delivered.append(a.request.cred)
            else:
                path = self.base / "downloads" / f"{a.at:%Y%m%d%H%M%S}-{a.request.cred[0]}-{a.request.cred[1]}.eml"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(a.message)
                self.reply_files.append((a, path))
        return sum(a.request.email and a.kind == "cert" for a in answers)

    # -- the operator -----------------------------------------------------------------------------------------
    def _op(self, now: dt.datetime, *args: str, ok: bool = True, input: str | None = None) -> Result:
        r = self.cli(*args, env=self.at(now), ok=ok, input=input)
        self.table.operator[args[0]] = self.table.operator.get(args[0], 0) + 1
        return r

    def _operator(self, day: int, now: dt.datetime, sent: list[dict], todo: list[str]) -> None:
        self._write_faketime(now)
        for cred in self.creds:  # status shows `needs_attention`: the runbook says read it, then resend
            pend = self.prev_state[cred]["pending"]  # Vault as this morning's check read it; nothing wrote since
            if pend and pend.get("attention"):
                self._resend(cred, now)
        for e in sent:
            cred = (e["mzp"], e.get("app", ""))
            if e["kind"] == "reminder" and cred in self.creds:
                last = self.last_resend.get(cred)
                if last is None or now - last >= dt.timedelta(days=REMINDER_DAYS):
                    self._resend(cred, now)
        for a, path in [x for x in self.reply_files if x[0].at <= now]:
            self.reply_files.remove((a, path))
            mzp, app = a.request.cred
            r = self._op(now, "import-cert", "--mzp", mzp, "--app", app, "--eml", str(path), ok=False)
            if a.kind == "refusal":
                if r.rc == 0 or len(r.err.strip().splitlines()) != 1:
                    self.fail(day, f"import-cert --eml of a refusal: exit {r.rc}, {r.err!r}")
                self._resend(a.request.cred, now)
            elif r.rc != 0:
                self.fail(day, f"import-cert --eml {path.name} failed: {r.text}")
            else:
                self._learn(a.request.cred)
        for what in todo:
            getattr(self, "_event_" + what.replace("-", "_"), lambda d, n: None)(day, now)

    def _resend(self, cred, now: dt.datetime) -> None:
        if not self._pending_key(cred):
            return
        self._op(now, "submit", "--mzp", cred[0], "--app", cred[1], "--resend")
        self.last_resend[cred] = now
        self.table.resends += 1

    def _event_add_host(self, day: int, now: dt.datetime) -> None:
        self.active_hosts.append(self.spare_host)
        self._write_hosts()
        self._op(now, "deploy")

    def _event_remove_host(self, day: int, now: dt.datetime) -> None:
        gone = self.active_hosts.pop(0)
        self.removed_hosts.append(gone)
        self._write_hosts()
        self.table.operator["host removed"] = 1

    def _event_rollback(self, day: int, now: dt.datetime) -> None:
        """The new certificate of a credential breaks something: roll back to the previous one (the one with the
        most days left among credentials with nothing pending), and forward again two days later."""
        best = None
        for cred in self.creds:
            if self._pending_key(cred):
                continue
            cur = self.raw.read(f"{cred[0]}/apps/{cred[1]}/current")["data"]
            if now - dt.datetime.fromisoformat(cur["imported_at"]) < dt.timedelta(days=8):
                continue  # the desk may still send that certificate a second time: roll back a settled one
            for serial in self._history(cred):
                if serial == cur["serial"]:
                    continue
                rec = self.raw.read(f"{cred[0]}/apps/{cred[1]}/history/{serial}")["data"]
                left = dt.datetime.fromisoformat(rec["not_after"]) - now
                if left > dt.timedelta(days=5) and (best is None or left > best[0]):
                    best = (left, cred, serial, cur["serial"])
        if best is None:
            self.schedule.setdefault(day + 7, []).append("rollback")  # nothing to roll back to yet: later
            return
        _, cred, serial, newer = best
        self._op(now, "rollback", "--mzp", cred[0], "--app", cred[1], "--to", serial)
        self.schedule.setdefault(day + 2, []).append("rollforward")
        self.rolled_back = (cred, newer)

    def _event_rollforward(self, day: int, now: dt.datetime) -> None:
        assert self.rolled_back is not None
        cred, serial = self.rolled_back
        cur = self.raw.read(f"{cred[0]}/apps/{cred[1]}/current")["data"]
        if cur["serial"] != serial and dt.datetime.fromisoformat(
                self.raw.read(f"{cred[0]}/apps/{cred[1]}/history/{serial}")["data"]["not_after"]) > now:
            self._op(now, "rollback", "--mzp", cred[0], "--app", cred[1], "--to", serial)

    def _event_rekey(self, day: int, now: dt.datetime) -> None:
        free = [c for c in self.creds if not self._pending_key(c)]
        if not free:
            self.schedule.setdefault(day + 3, []).append("rekey")
            return
        cred = self.rng.choice(free)
        self._op(now, "rekey", "--mzp", cred[0], "--app", cred[1], "--reason", "soak: key suspected exposed",
                 "--yes")
        self.rekeyed.add(cred)

    def _event_ca_change(self, day: int, now: dt.datetime) -> None:
        self.authority.change_ca(now)

    def _restart_vault(self) -> None:
        assert self.vault is not None
        node = self.vault.nodes[0]
        node.kill()
        self.vault.restart(node)
        self.vault.wait_leader()
        self.raw = Raw(self.vault.client(), self.mount)
        self.table.vault_restarts += 1

    # -- reading Vault and the hosts ----------------------------------------------------------------------------
    def _history(self, cred) -> list[str]:
        try:
            return self.raw.c.secrets.kv.v2.list_secrets(f"partnercerts/{cred[0]}/apps/{cred[1]}/history",
                                                         mount_point=self.mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return []

    def _pending_key(self, cred) -> str:
        p = self.raw.read(f"{cred[0]}/apps/{cred[1]}/pending")
        if p is None or p["data"].get("state", "pending") != "pending" or not p["data"].get("key_pem"):
            return ""
        return p["data"]["key_sha256"]

    def _vault_state(self) -> dict:
        out = {}
        for cred in self.creds:
            cur = self.raw.read(f"{cred[0]}/apps/{cred[1]}/current")
            pend = self.raw.read(f"{cred[0]}/apps/{cred[1]}/pending")
            live = pend is not None and pend["data"].get("state", "pending") == "pending" \
                and pend["data"].get("key_pem")
            out[cred] = {"current": cur["data"] if cur else None, "pending": pend["data"] if live else None}
        return out

    def _served(self, host: str) -> dict[tuple[str, str], Served | str]:
        """Every credential's `current` on a host, read in one command inside its namespaces."""
        assert self.hosts is not None
        script = ("for d in " + " ".join(shlex.quote(f"{self.dest_root}/{m}-{a}") for m, a in self.creds) + "; do "
                  'echo "@@ $d $(readlink "$d/current")"; for f in client.crt client.key ca.crt client.env; do '
                  'echo "@@f $f"; cat "$d/current/$f" 2>/dev/null; done; done')
        p = self.hosts.run_in_host(host, ["sh", "-c", script])
        out: dict[tuple[str, str], Served | str] = {}
        for block in p.stdout.split("@@ ")[1:]:
            head, _, rest = block.partition("\n")
            path, _, link = head.partition(" ")
            m, _, a = Path(path).name.partition("-")
            files = {}
            for part in rest.split("@@f ")[1:]:
                fname, _, body = part.partition("\n")
                files[fname.strip()] = body.encode()
            out[(m, a)] = self._parse_served(link, files) if link else "absent"
        return out

    def _parse_served(self, link: str, files: dict[str, bytes]) -> Served | str:
        key = (link.encode(),) + tuple(files.get(n, b"") for n in ("client.crt", "client.key", "ca.crt", "client.env"))
        digest = hashlib.sha256(b"\0".join(key)).digest()
        if digest in self.cache:
            return self.cache[digest]  # type: ignore[return-value]
        try:
            cert = x509.load_pem_x509_certificate(files["client.crt"])
            priv = serialization.load_pem_private_key(files["client.key"], None,
                                                      unsafe_skip_rsa_key_validation=True)
            cas = x509.load_pem_x509_certificates(files["ca.crt"]) if files.get("ca.crt") else []
        except (KeyError, ValueError) as exc:
            served: Served | str = f"unreadable ({exc})"
        else:
            env = dict(ln.split("=", 1) for ln in files.get("client.env", b"").decode().splitlines() if "=" in ln)
            serial = format(cert.serial_number, "X")
            served = Served(link, serial if len(serial) % 2 == 0 else "0" + serial, cert.not_valid_after_utc,
                            spki_sha256(cert.public_key()), spki_sha256(priv.public_key()),
                            env.get("PSA_CLIENT_ID", ""), any(c.subject == cert.issuer for c in cas))
        self.cache[digest] = served
        return served

    # -- the checks --------------------------------------------------------------------------------------------
    def _check(self, day: int, now: dt.datetime, sent: list[dict], killed: bool) -> None:
        state = self._vault_state()
        before, self.prev_state = self.prev_state, state
        problems: list[str] = []
        kinds: dict[str, list[tuple[str, str]]] = {}
        for e in sent:
            kinds.setdefault(e["kind"], []).append((e.get("mzp", ""), e.get("app", "")))
        # Hosts: never expired, never mixed, in sync with Vault after a finished run.
        for host in self.active_hosts:
            served = self._served(host)
            for cred in self.creds:
                s = served.get(cred)
                cur = state[cred]["current"]
                if not isinstance(s, Served):
                    problems.append(f"{host} {cred}: current is {s}")
                    self.table.hosts_mixed += 1
                    continue
                if s.not_after <= now:
                    self.table.expired_on_host_days += 1
                    problems.append(f"{host} {cred}: serves serial {s.serial}, expired {s.not_after}")
                if s.cert_key != s.key_key or not s.link.startswith(f"releases/{s.serial}") or not s.issuer_ok \
                        or s.client_id != Authority.client_id(cred):
                    self.table.hosts_mixed += 1
                    problems.append(f"{host} {cred}: a mixed release: {s}")
                if cur is None or s.serial != cur["serial"]:
                    self.table.hosts_mixed += 1
                    problems.append(f"{host} {cred}: serves {s.serial}, Vault's current is {cur and cur['serial']}")
                margin = (s.not_after - now).total_seconds() / 86400
                if self.table.worst_margin_days is None or margin < self.table.worst_margin_days:
                    self.table.worst_margin_days = margin
                    self.table.worst_margin_at = f"{cred[0]}/{cred[1]} on {now.date()}"
        reminders_due = set()
        for cred in self.creds:
            cur, pend = state[cred]["current"], state[cred]["pending"]
            key = pend["key_sha256"] if pend else ""
            last = self.last_pending.get(cred, "")
            # Never two pending keys: a live pending key is only ever replaced by the import that consumes it
            # (then its key is current), or by an emergency re-key.
            if last and key and key != last and cred not in self.rekeyed:
                problems.append(f"{cred}: the pending key {last[:12]} was replaced by {key[:12]} while live")
            if last and not key and cur and cur.get("key_sha256") != last and cred not in self.rekeyed:
                problems.append(f"{cred}: the pending key {last[:12]} vanished without becoming current")
            if key and key != last:
                self.rekeyed.discard(cred)
            self.last_pending[cred] = key
            # Every due renewal has started: by the lead time, or a third of the lifetime.
            if cur:
                na, nb = dt.datetime.fromisoformat(cur["not_after"]), dt.datetime.fromisoformat(cur["not_before"])
                left = na - now
                due = left.days <= RENEW_BEFORE_DAYS or left < (na - nb) / 3
                if due and not pend:
                    problems.append(f"{cred}: {left.days} days left and no renewal pending")
            if pend and pend.get("created_at"):
                age = (now - dt.datetime.fromisoformat(pend["created_at"])).days
                if age >= REMINDER_DAYS:
                    reminders_due.add(cred)
        got_reminders = set(kinds.get("reminder", []))
        if got_reminders != reminders_due:
            problems.append(f"reminders {sorted(got_reminders)}, expected {sorted(reminders_due)}")
        attention_due = set(self.refusals_delivered)
        self.refusals_delivered.clear()
        got_attention = set(kinds.get("needs_attention", []))
        if got_attention != attention_due and not (killed and got_attention <= attention_due):
            problems.append(f"needs_attention {kinds.get('needs_attention')}, expected {sorted(attention_due)}")
        for kind in ("expired", "expiring_unrenewed", "rotation_failed", "deploy_failed", "reply_refused",
                     "reply_unmatched"):
            if kind in kinds:
                said = [e.get("message", "") for e in sent if e["kind"] == kind]
                problems.append(f"alert {kind} for {kinds[kind]}: none was expected ({' | '.join(said)[:1500]})")
        for kind, who in kinds.items():
            if kind == "reminder":
                self.table.reminders += len(who)
            if kind not in INFORMATIONAL:
                self.table.alerts[kind] = self.table.alerts.get(kind, 0) + len(who)
        for cred in self.creds:
            if state[cred]["current"] and ((before.get(cred) or {}).get("current") or {}).get("serial") != \
                    state[cred]["current"]["serial"]:
                self._learn(cred)
        problems += self._check_metrics(now, state)
        if problems:
            more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
            self.fail(day, "; ".join(problems[:12]) + more)

    def _check_metrics(self, now: dt.datetime, state: dict) -> list[str]:
        families = {f.name: f for f in text_string_to_metric_families(self.metrics.read_text())}
        problems = []

        def sample(family: str, cred) -> float | None:
            f = families.get(f"partnercerts_{family}")
            for s in (f.samples if f else []):
                if s.labels.get("mzp") == cred[0] and s.labels.get("app") == cred[1]:
                    return s.value
            return None
        for cred in self.creds:
            cur, pend = state[cred]["current"], state[cred]["pending"]
            expiry = sample("certificate_expiration_timestamp_seconds", cred)
            want = int(dt.datetime.fromisoformat(cur["not_after"]).timestamp()) if cur else None
            if expiry != want:
                problems.append(f"metrics: {cred} expires at {expiry}, Vault says {want}")
            age = sample("pending_age_seconds", cred)
            if (age or 0) > 0 and not pend or pend and age is None:
                problems.append(f"metrics: {cred} pending age {age}, Vault pending {bool(pend)}")
        success = families.get("partnercerts_last_success_timestamp_seconds")
        if not success or int(success.samples[0].value) != int(now.timestamp()):
            problems.append(f"metrics: last success {success and success.samples[0].value}, the run was at {now}")
        return problems

    # == the end ================================================================================================
    def finish(self) -> None:
        """Keys lost: every certificate the authority issued must have its key in Vault (current or history)."""
        held: set[str] = set()
        for cred in self.creds:
            cur = self.raw.read(f"{cred[0]}/apps/{cred[1]}/current")
            if cur:
                held.add(cur["data"]["key_sha256"])
            for serial in self._history(cred):
                rec = self.raw.read(f"{cred[0]}/apps/{cred[1]}/history/{serial}")
                if rec:
                    held.add(rec["data"]["key_sha256"])
        lost = [(r.cred, c.serial_number) for r, c, _, _ in self.authority.issued
                if spki_sha256(c.public_key()) not in held]
        self.table.keys_lost = len(lost)
        self.table.renewals = sum(len(set(self._history(c)) | {self.prev_state[c]["current"]["serial"]}) - 1
                                  for c in self.creds)
        self.table.delays = list(self.authority.delays)
        self.table.authority = dict(self.authority.counts)
        log = (self.base / "log" / "rotate.log").read_text()
        self.cli.assert_clean(Result(0, log, ""))
        if lost:
            raise SoakFailure(f"seed {self.seed}: {len(lost)} issued certificate(s) whose key Vault lost: {lost[:5]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--days", type=int, help="simulated days (default: the size's)")
    parser.add_argument("--seed", type=int, help="replay this seed (default: a new one, printed)")
    parser.add_argument("--stop-after", type=int, help="stop after this day (same story: replay up to a failure)")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.days:
        size = dataclasses.replace(size, days=args.days)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)

    def stop(signum, frame):  # SIGTERM (a CI timeout, kill): tear the servers and hosts down on the way out
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="partnercerts-soak-") as tmp, Soak(Path(tmp), size, seed) as soak:
        try:
            table = soak.run(args.stop_after)
        except SoakFailure as exc:
            print(f"\nSOAK FAILED: {exc}\nreplay: scripts/inv soak --size {args.size} --days {size.days} "
                  f"--seed {seed}", file=sys.stderr)
            print(soak.table.markdown())
            return 1
    print()
    print(table.markdown())
    print(f"\nseed {seed}, {table.seconds / 60:.1f} minutes")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": seed, **dataclasses.asdict(table)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
