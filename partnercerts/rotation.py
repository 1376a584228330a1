"""One rotation run, shared by the `rotate` task and playbooks/rotate.yml.

`start` plans, takes the lock in Vault and applies what is due; the caller then deploys
`report.deploy` with Ansible; `finish` records the run, sends notifications, refreshes the
metrics file and releases the lock. Notification and metrics failures never fail a run.
"""
from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass, field

from .errors import Error, Remedy
from .lifecycle import Action, Step
from .lock import Held, Lock, whoami
from .pending import CsrResult
from .planner import Row
from .store import iso, parse_time
from .submitter import Outcome, SubmitResult
from .toolkit import Toolkit


@dataclass(frozen=True)
class Applied:
    """What applying one step did: the key made (or found), and the submission's result."""

    step: Step
    submitted: SubmitResult
    made: CsrResult | None = None

    @property
    def key(self) -> str:
        return f"{self.step.mzp}/{self.step.app}"

    @property
    def remedy(self) -> Remedy | None:
        return self.submitted.remedy

    def describe(self) -> str:
        if self.made is None:
            lead = "pending CSR; "
        else:
            lead = "new key and CSR; " if self.made.created else "existing pending CSR; "
        return lead + self.submitted.describe()


@dataclass(frozen=True)
class Failure:
    key: str              # "MZP/app"
    error: Error

    def describe(self) -> str:
        return f"{self.key}: {self.error}"


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    applied: list[Applied] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)    # "MZP/app" whose Vault records changed
    imported: list[str] = field(default_factory=list)   # "MZP/app" whose current certificate changed
    deploy: list[str] = field(default_factory=list)     # "MZP/app" to deploy now
    events: list = field(default_factory=list)          # notify.Event
    held: Held | None = None                            # set when another run holds the lock
    lock_token: str = ""
    took_over: str = ""                                 # holder of a dead run's lock this run took over
    replies: list = field(default_factory=list)         # replies.MailboxRun: the reply mailboxes read first

    @property
    def todo(self) -> list[Step]:
        return [s for s in self.steps if s.action not in (Action.NOTHING, Action.WAIT)]


def event(kind: str, mzp: str, app: str, message: str, now: dt.datetime, **details):
    from .notify import Event, Kind
    return Event(kind=Kind(kind), mzp=mzp, app=app, message=message, details=details, at=now)


def apply(tk: Toolkit, step: Step, now: dt.datetime) -> Applied:
    """Carry out one planned step (issue, renew or submit)."""
    partner = tk.inventory.partner(step.mzp)
    if step.action is Action.SUBMIT:
        return Applied(step, tk.submitter.submit(partner, step.app, now))
    # The index is written once per credential, by the submission (it records both the new
    # pending key and its submission). Whenever the submission did not write it -- it failed, or
    # it found nothing to send -- it is written here, so it never misses the pending key.
    made = tk.pending.make_csr(step.mzp, step.app, now, index=False)
    key = (step.mzp, step.app)
    tk.index.written.discard(key)
    try:
        submitted = tk.submitter.submit(partner, step.app, now)
    except BaseException:
        if key not in tk.index.written:
            try:
                tk.index.reindex(step.mzp, step.app, now)
            except Exception:  # noqa: BLE001 - the submission's failure is the one to report
                pass
        raise
    if key not in tk.index.written:
        tk.index.reindex(step.mzp, step.app, now)
    return Applied(step, submitted, made)


def start(tk: Toolkit, now: dt.datetime, *, mzp: str | None = None, app: str | None = None,
          dry_run: bool = False, deploy: bool = True, entry: str = "rotate",
          owner_pid: int | None = None) -> Report:
    """Plan; unless dry_run, take the lock and apply. Credential failures are collected, not raised.
    entry: what started the run, for the lock's holder; owner_pid: the process the run lives in, when
    not this one (rotate.yml: ansible-playbook)."""
    report = Report()
    tk.store.check_mount()
    if not dry_run:
        lock = Lock(tk.store)
        report.held = lock.acquire(whoami(entry, owner_pid), now, pid=owner_pid)
        if report.held:
            return report
        report.lock_token = lock.token
        report.took_over = lock.took_over
        tk.store.upgrade_index(now)  # once, under the lock: the index moves to its own folder (store.py)
    if tk.replies.configured(mzp):
        report.replies = tk.replies.run(now, mzp=mzp, dry_run=dry_run)
        absorb_replies(report, report.replies, now)
    report.steps = tk.planner.plan(now, mzp, app)
    if dry_run:
        report.deploy = [_key(s) for s in report.steps if deploy and (
            s.hosts_behind or _key(s) in report.imported or (s in report.todo and _imports_at_once(tk, s)))]
        return report
    for step in report.todo:
        try:
            done = apply(tk, step, now)
        except Error as exc:
            report.failed.append(Failure(_key(step), exc))
            continue
        report.applied.append(done)
        report.changed.append(done.key)
        line = f"{done.key}: {done.describe()}"
        if done.submitted.outcome is Outcome.IMPORTED and done.submitted.imported is not None:
            report.imported.append(done.key)
            report.events.append(imported_event(done.submitted.imported, line, now))
        elif done.submitted.outcome is Outcome.SENT:
            report.events.append(event("csr_submitted", step.mzp, step.app, line, now))
    if deploy:
        # Only a new current certificate, or hosts behind, needs the hosts: a renewal that sent a CSR to a
        # manual authority leaves them as they are.
        failed = {f.key for f in report.failed}
        report.deploy = [_key(s) for s in report.steps
                         if _key(s) not in failed and (_key(s) in report.imported or s.hosts_behind)]
    return report


def _imports_at_once(tk: Toolkit, step: Step) -> bool:
    """Whether the partner's authority signs while we wait (the sandbox), so the step changes the certificate."""
    try:
        return not tk.submitter.transport(tk.inventory.partner(step.mzp)).sends_message
    except Error:
        return False


def finish(tk: Toolkit, report: Report, now: dt.datetime, deploy_rc: int | None,
           log=lambda line: print(line, file=sys.stderr)) -> list[str]:
    """Events from the state after the run, notifications, run record, metrics, lock release.

    When Vault fails here (sealed, unreachable, refusing), what the run knows still goes out: its events and
    failures are notified, the metrics textfile says a run ran and did not succeed, and the error is raised."""
    try:
        lost: Error | None = None
        rows: list[Row] = []
        try:
            rows = _recorded(tk, report, now, deploy_rc, log)
        except Error as exc:
            lost = exc
        report.events.extend(_failure_events(report, now, lost))
        failures = notify(tk, report.events, log)
        if lost is not None:
            mark_failed_run(tk, now, log)
            raise lost
        write_metrics(tk, rows, now, log)
        return failures
    finally:
        if report.lock_token:
            try:
                lock = Lock(tk.store)
                if lock.adopt(report.lock_token):
                    lock.release(now)
            except Error as exc:
                # Already failing for Vault, or failing now: the next run takes over the lock of a run that is over.
                log(f"warning: the rotation lock could not be released ({exc}); the next run takes it over")


def _recorded(tk: Toolkit, report: Report, now: dt.datetime, deploy_rc: int | None, log) -> list[Row]:
    """Read the state after the run, add the events it raises, record the run in Vault; the rows for the metrics."""
    # Reuse the indexes the plan read, except those this run changed or deployed.
    touched = set(report.changed) | set(report.deploy)
    cached = {k: v for k, v in tk.planner.last_indexes.items() if k not in touched}
    rows = tk.planner.rows(now, cached=cached)
    if deploy_rc in (0, None):
        # Deployed fine yet no host reported: the credential has no hosts; say so, or it stays "behind".
        hostless = [r for r in rows if r.key in report.deploy and r.hosts_total is None and r.serial]
        for r in hostless:
            tk.hosts.record(r.mzp, r.app, {}, set(), now)
        if hostless:
            rows = tk.planner.rows(now, cached=cached)
    report.events.extend(_deploy_events(report, rows, deploy_rc, now))
    report.events.extend(_state_events(tk, rows, now))
    reminded = _record_reminders(tk, report.events, now, log)
    if reminded:  # the metrics show the stage `reminded` from this run on, not from the next
        rows = tk.planner.rows(now, cached={k: v for k, v in cached.items() if k not in reminded})
    deployed_ok = not any(e.kind.value == "deploy_failed" for e in report.events)
    ok = not report.failed and deploy_rc in (None, 0) and deployed_ok
    record = tk.store.run_record()
    record.last_run = iso(now)
    if ok:
        record.last_success = iso(now)
    tk.store.put_run_record(record)
    return rows


def _failure_events(report: Report, now: dt.datetime, lost: Error | None) -> list:
    """A `rotation_failed` event per credential (or reply mailbox) that failed, and one for the run when Vault
    was lost before it could be recorded."""
    out = []
    for f in report.failed:
        mzp, _, app = f.key.partition("/")
        mzp, app = (mzp, app) if app else (f.key.split(" ")[0], "")
        out.append(event("rotation_failed", mzp, app, f"{f.key}: {f.error}", now, error=str(f.error)))
    if lost is not None:
        done = ", ".join(report.imported) or "nothing"
        out.append(event("rotation_failed", "", "", f"the rotation run could not be finished: {lost}; imported "
                         f"before that: {done}; the next run finishes the job", now, error=str(lost)))
    return out


def _deploy_events(report: Report, rows: list[Row], deploy_rc: int | None, now: dt.datetime) -> list:
    by_key = {r.key: r for r in rows}
    out = []
    for key in report.deploy:
        r = by_key.get(key)
        if r is None:
            continue
        hosts = f"{r.hosts_in_sync}/{r.hosts_total}" if r.hosts_total is not None else "?"
        ok = r.hosts_total is not None and r.hosts_in_sync == r.hosts_total and deploy_rc in (0, None)
        out.append(event("deployed" if ok else "deploy_failed", r.mzp, r.app,
                         f"{key}: serial {r.serial} {'deployed to' if ok else 'NOT on all of'} its hosts "
                         f"({hosts} in sync)", now, serial=r.serial, hosts=hosts))
    return out


def _state_events(tk: Toolkit, rows: list[Row], now: dt.datetime) -> list:
    out = []
    for r in rows:
        partner = tk.inventory.partner(r.mzp)
        if r.state == "expired":
            out.append(event("expired", r.mzp, r.app, f"{r.key}: the certificate expired on {r.not_after}",
                             now, serial=r.serial, not_after=r.not_after))
        elif r.state == "expiring" and not r.pending_since:
            out.append(event("expiring_unrenewed", r.mzp, r.app,
                             f"{r.key}: expires in {r.days_left} days and no renewal is pending",
                             now, serial=r.serial, days_left=r.days_left))
        if r.pending_age_days is not None and r.pending_age_days >= partner.pending_reminder_days:
            out.append(event("reminder", r.mzp, r.app,
                             f"{r.key}: CSR pending for {r.pending_age_days} days, no reply imported yet",
                             now, pending_age_days=r.pending_age_days, submitted_at=r.pending_submitted_at))
    return out


def _record_reminders(tk: Toolkit, events: list, now: dt.datetime, log) -> set[str]:
    """Keep each reminder with its pending CSR, so status shows it `reminded` (when, how many times).
    Returns the "MZP/app" recorded."""
    done = set()
    for e in events:
        if e.kind.value == "reminder":
            try:
                tk.pending.reminded(e.mzp, e.app, now)
                done.add(f"{e.mzp}/{e.app}")
            except Error as exc:
                log(f"warning: {e.mzp}/{e.app}: cannot record the reminder in Vault: {exc}")
    return done


def absorb_replies(report: Report, runs: list, now: dt.datetime) -> None:
    """What reading the reply mailboxes did, as the run's changes, failures and events."""
    from .replies import Outcome
    for run in runs:
        if run.failure is not None:
            report.failed.append(Failure(f"{run.mzp} (reply mailbox)", run.failure))
        for handled in run.handled:
            line = handled.line(run.server)
            details = {"mailbox": run.server, "uid": handled.uid, "reply_subject": handled.subject,
                       "reply_date": handled.date, "reason": handled.detail}
            if handled.outcome is Outcome.IMPORTED and handled.imported is not None:
                for keys in (report.changed, report.imported):
                    if handled.key not in keys:
                        keys.append(handled.key)
                report.events.append(imported_event(handled.imported, line, now))
            elif handled.outcome is Outcome.WOULD_IMPORT and handled.key not in report.imported:
                report.imported.append(handled.key)  # a dry run: it would be deployed too
            elif handled.outcome is Outcome.REFUSED:
                report.events.append(event("reply_refused", handled.mzp or run.mzp, handled.app, line, now,
                                           **details))
            elif handled.outcome is Outcome.NEEDS_ATTENTION:
                report.events.append(event("needs_attention", handled.mzp, handled.app, line, now, **details))
            elif handled.outcome in (Outcome.UNMATCHED, Outcome.UNREADABLE):
                report.events.append(event("reply_unmatched", run.mzp, "", line, now, **details))


def imported_event(result, line: str, now: dt.datetime):
    """The certificate_imported event of an import, with what the authority changed in the subject."""
    details: dict = {"serial": result.serial, "not_after": result.not_after}
    if result.subject_notes:
        details["subject_notes"] = list(result.subject_notes)
    if result.subject_change:
        details["subject_change_accepted_by"] = result.subject_change.get("accepted_by", "")
        details["subject_change"] = list(result.subject_change.get("changes", []))
    return event("certificate_imported", result.mzp, result.app, line, now, **details)


def imported(tk: Toolkit, result, line: str, now: dt.datetime, log) -> None:
    """After an import by hand: notify, and refresh the metrics file."""
    notify(tk, [imported_event(result, line, now)], log)
    write_metrics(tk, tk.planner.rows(now), now, log)


def last_runs(tk: Toolkit) -> tuple[dt.datetime | None, dt.datetime | None]:
    record = tk.store.run_record()
    return parse_time(record.last_run), parse_time(record.last_success)


def notify(tk: Toolkit, events: list, log) -> list[str]:
    config = tk.inventory.notify
    if not config or not events:
        return []
    from .notify import Notifier
    password = None
    try:
        password = tk.passwords.smtp(None)
    except Error as exc:
        log(f"warning: notifications: cannot read the SMTP password: {exc}")
    return Notifier(config, password, log).send(events)


def mark_failed_run(tk: Toolkit, now: dt.datetime, log) -> None:
    """Vault lost: the textfile keeps the credentials' samples of the last run that could read them, and its
    run time becomes now, so PartnercertsLastRunFailed fires at once instead of the staleness alerts a day on."""
    target = tk.inventory.metrics_textfile
    if not target:
        return
    from .metrics import mark_run, write_textfile
    try:
        try:
            with open(target, encoding="utf-8") as fh:
                previous = fh.read()
        except FileNotFoundError:
            previous = ""
        write_textfile(target, mark_run(previous, now))
        log(f"warning: metrics: {target}: only the run time is new (Vault could not be read)")
    except (Error, OSError) as exc:
        log(f"warning: metrics: {exc}")


def write_metrics(tk: Toolkit, rows: list[Row], now: dt.datetime, log, path: str | None = None) -> str | None:
    target = path or tk.inventory.metrics_textfile
    if not target:
        return None
    from .metrics import render, write_textfile
    last_run, last_success = last_runs(tk)
    try:
        write_textfile(target, render(rows, now=now, last_run=last_run, last_success=last_success,
                                      replies_left=tk.replies.left(), partners=tk.inventory.partners))
    except (Error, OSError) as exc:
        log(f"warning: metrics: {exc}")
        return None
    return target


def _key(step: Step) -> str:
    return f"{step.mzp}/{step.app}"
