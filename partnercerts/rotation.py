"""One rotation run, shared by `scripts/inv rotate` and playbooks/rotate.yml.

`start` plans, takes the lock in Vault and applies what is due; the caller then deploys
`report.deploy` with Ansible; `finish` records the run, sends notifications, refreshes the
metrics file and releases the lock. Notification and metrics failures never fail a run.
"""
from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass, field

from .credentials import Credentials, iso
from .errors import Conflict, UserError
from .lifecycle import Action, Step
from .lock import Held, Lock, whoami


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)      # one per applied step
    failed: list[str] = field(default_factory=list)     # "MZP/app: why"
    changed: list[str] = field(default_factory=list)    # "MZP/app" whose Vault records changed
    deploy: list[str] = field(default_factory=list)     # "MZP/app" to deploy now
    events: list = field(default_factory=list)          # notify.Event
    held: Held | None = None                            # set when another run holds the lock
    lock_token: str = ""
    took_over: str = ""                                 # holder of a dead run's lock this run took over

    @property
    def todo(self) -> list[Step]:
        return [s for s in self.steps if s.action not in (Action.NOTHING, Action.WAIT)]


def event(kind: str, mzp: str, app: str, message: str, now: dt.datetime, **details):
    from .notify import Event, Kind
    return Event(kind=Kind(kind), mzp=mzp, app=app, message=message, details=details, at=now)


def start(creds: Credentials, now: dt.datetime, *, mzp: str | None = None, app: str | None = None,
          dry_run: bool = False, deploy: bool = True, entry: str = "scripts/inv rotate",
          owner_pid: int | None = None) -> Report:
    """Plan; unless dry_run, take the lock and apply. Credential failures are collected, not raised.
    owner_pid: the process the run lives in, when not this one (rotate.yml: ansible-playbook)."""
    report = Report()
    creds.store.check_mount()
    if not dry_run:
        lock = Lock(creds.store)
        report.held = lock.acquire(whoami(entry, owner_pid), now, pid=owner_pid)
        if report.held:
            return report
        report.lock_token = lock.token
        report.took_over = lock.took_over
    report.steps = creds.plan(now, mzp, app)
    if dry_run:
        report.deploy = [_key(s) for s in report.steps if s in report.todo or (deploy and s.hosts_behind)]
        return report
    for step in report.todo:
        partner = creds.inventory.partner(step.mzp)
        try:
            line = creds.apply(step, now)
        except Conflict as exc:
            report.failed.append(f"{_key(step)}: {exc}")
            continue
        except UserError as exc:
            report.failed.append(f"{_key(step)}: {exc}")
            continue
        report.lines.append(f"{_key(step)}: {line}")
        report.changed.append(_key(step))
        if partner.submission.method == "sandbox":
            report.events.append(event("certificate_imported", step.mzp, step.app, f"{_key(step)}: {line}", now))
        elif "already submitted" not in line:
            report.events.append(event("csr_submitted", step.mzp, step.app, f"{_key(step)}: {line}", now))
    if deploy:
        failed = {f.split(":", 1)[0] for f in report.failed}
        report.deploy = [_key(s) for s in report.steps
                         if _key(s) not in failed and (_key(s) in report.changed or s.hosts_behind)]
    return report


def finish(creds: Credentials, report: Report, now: dt.datetime, deploy_rc: int | None,
           log=lambda line: print(line, file=sys.stderr)) -> list:
    """Events from the state after the run, notifications, run record, metrics, lock release."""
    try:
        # Reuse the indexes the plan read, except those this run changed or deployed.
        touched = set(report.changed) | set(report.deploy)
        cached = {k: v for k, v in creds.last_indexes.items() if k not in touched}
        rows = creds.rows(now, cached=cached)
        if deploy_rc in (0, None):
            # Deployed fine yet no host reported: the credential has no hosts; say so, or it stays "behind".
            hostless = [r for r in rows if f"{r.mzp}/{r.app}" in report.deploy and r.hosts_total is None and r.serial]
            for r in hostless:
                creds.record_hosts(r.mzp, r.app, {}, set(), now)
            if hostless:
                rows = creds.rows(now, cached=cached)
        by_key = {f"{r.mzp}/{r.app}": r for r in rows}
        for key in report.deploy:
            r = by_key.get(key)
            if r is None:
                continue
            hosts = f"{r.hosts_in_sync}/{r.hosts_total}" if r.hosts_total is not None else "?"
            ok = r.hosts_total is not None and r.hosts_in_sync == r.hosts_total and deploy_rc in (0, None)
            report.events.append(event("deployed" if ok else "deploy_failed", r.mzp, r.app,
                                        f"{key}: serial {r.serial} {'deployed to' if ok else 'NOT on all of'} its hosts "
                                        f"({hosts} in sync)", now, serial=r.serial, hosts=hosts))
        for r in rows:
            key = f"{r.mzp}/{r.app}"
            partner = creds.inventory.partner(r.mzp)
            if r.state == "expired":
                report.events.append(event("expired", r.mzp, r.app, f"{key}: the certificate expired on {r.not_after}",
                                            now, serial=r.serial, not_after=r.not_after))
            elif r.state == "expiring" and not r.pending_since:
                report.events.append(event("expiring_unrenewed", r.mzp, r.app,
                                            f"{key}: expires in {r.days_left} days and no renewal is pending",
                                            now, serial=r.serial, days_left=r.days_left))
            if r.pending_age_days is not None and r.pending_age_days >= partner.pending_reminder_days:
                report.events.append(event("reminder", r.mzp, r.app,
                                            f"{key}: CSR pending for {r.pending_age_days} days, no reply imported yet",
                                            now, pending_age_days=r.pending_age_days,
                                            submitted_at=r.pending_submitted_at))
        deployed_ok = not any(e.kind.value == "deploy_failed" for e in report.events)
        ok = not report.failed and deploy_rc in (None, 0) and deployed_ok
        _record_run(creds, now, ok)
        failures = notify(creds, report.events, log)
        write_metrics(creds, rows, now, log)
        return failures
    finally:
        if report.lock_token:
            lock = Lock(creds.store)
            if lock.adopt(report.lock_token):
                lock.release(now)


def _record_run(creds: Credentials, now: dt.datetime, ok: bool) -> None:
    path = creds.store.runs_path()
    custom = creds.store.read_custom(path)
    custom["last_run"] = iso(now)
    if ok:
        custom["last_success"] = iso(now)
    rec = creds.store.read(path)
    try:
        creds.store.write(path, custom, cas=rec.version if rec else creds.store.version(path))
    except Conflict:
        pass  # another run recorded itself at the same moment
    creds.store.write_custom(path, custom)


def last_runs(creds: Credentials) -> tuple[dt.datetime | None, dt.datetime | None]:
    custom = creds.store.read_custom(creds.store.runs_path())
    parse = (lambda v: dt.datetime.fromisoformat(v) if v else None)
    return parse(custom.get("last_run")), parse(custom.get("last_success"))


def notify(creds: Credentials, events: list, log) -> list[str]:
    config = creds.inventory.notify
    if not config or not events:
        return []
    from .notify import Notifier
    password = None
    try:
        rec = creds.store.read(creds.store.smtp_path(None))
        password = rec.data.get("password") if rec else None
    except UserError as exc:
        log(f"warning: notifications: cannot read the SMTP password: {exc}")
    return Notifier(config, password, log).send(events)


def write_metrics(creds: Credentials, rows, now: dt.datetime, log, path: str | None = None) -> str | None:
    target = path or creds.inventory.metrics_textfile
    if not target:
        return None
    from .metrics import render, write_textfile
    last_run, last_success = last_runs(creds)
    try:
        write_textfile(target, render(rows, now=now, last_run=last_run, last_success=last_success))
    except (UserError, OSError) as exc:
        log(f"warning: metrics: {exc}")
        return None
    return target


def _key(step: Step) -> str:
    return f"{step.mzp}/{step.app}"
