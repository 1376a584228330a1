"""Action plugin: one rotation run for playbooks/rotate.yml, through the same core as `scripts/inv rotate`.

state=start plans, takes the lock in Vault and renews what is due, returning what to deploy;
state=finish (given start's result) records the run, notifies, writes metrics, releases the lock.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from partnercerts import rotation  # noqa: E402
from partnercerts.errors import Error, Remedy  # noqa: E402
from partnercerts.lifecycle import Action, Step  # noqa: E402
from partnercerts.toolkit import Toolkit  # noqa: E402

# The core's remedies in the words of a playbook user.
HINTS = {
    Remedy.VAULT_UP: "start and unseal it",
    Remedy.BOOTSTRAP: "an operator creates it (scripts/inv vault.bootstrap from a checkout of partnercerts)",
    Remedy.MAKE_CSR: "run playbooks/rotate.yml with -e partnercerts_rotate_mzp={mzp} -e partnercerts_rotate_app={app}",
    Remedy.ROTATE: "run playbooks/rotate.yml with -e partnercerts_rotate_mzp={mzp} -e partnercerts_rotate_app={app}",
    Remedy.ROLLBACK: "make an earlier certificate current (scripts/inv rollback --mzp {mzp} --app {app})",
    Remedy.STORE_ACCOUNT_PASSWORD: "store it in Vault (scripts/inv account --mzp {mzp})",
    Remedy.STORE_SMTP_PASSWORD: "store it in Vault (scripts/inv smtp-password --mzp {mzp})",
    Remedy.RESEND: "a resend is not done from the playbook (scripts/inv submit --resend)",
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("state", "mzp", "app", "dry_run", "run"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        state = args.get("state", "start")
        now = dt.datetime.now(dt.timezone.utc)
        try:
            tk = Toolkit.open()
            if state == "start":
                # The lock lives as long as ansible-playbook (this worker is forked from it and ends
                # with this task), so a lock left by a killed playbook is recognised as dead.
                report = rotation.start(tk, now, mzp=args.get("mzp"), app=args.get("app"),
                                        dry_run=bool(args.get("dry_run")), entry="playbooks/rotate.yml",
                                        owner_pid=os.getppid())
                if report.held:
                    result.update(changed=False, held=dataclasses.asdict(report.held), deploy=[],
                                  msg=f"another rotation holds the lock: {report.held.holder}, "
                                      f"since {report.held.acquired_at}; nothing done")
                    return result
                result.update(changed=bool(report.changed), run=_dump(report), deploy=report.deploy,
                              plan=[f"{s.mzp}/{s.app}: {s.action.value} ({s.reason})" for s in report.steps],
                              applied=[f"{a.key}: {a.describe()}" for a in report.applied],
                              failed_credentials=[f"{f.key}: {f.error.worded(HINTS)}" for f in report.failed])
                if report.failed:
                    result.update(failed=True, msg="rotation failed for " + "; ".join(result["failed_credentials"]))
            elif state == "finish":
                report = _load(args.get("run") or {})
                if not report.lock_token:
                    return dict(result, changed=False, skipped=True, msg="no run to finish")
                failures = rotation.finish(tk, report, now, None, log=lambda line: self._display.warning(line))
                result.update(changed=False, events=[e.message for e in report.events], notify_failures=failures)
            else:
                raise AnsibleActionFail(f"state must be start or finish, not {state!r}")
        except Error as exc:
            raise AnsibleActionFail(exc.worded(HINTS)) from None
        return result


def _dump(report: rotation.Report) -> dict:
    """The parts of a report that finish needs, as plain data (no secrets)."""
    return {"lock_token": report.lock_token, "changed": report.changed, "deploy": report.deploy,
            "failed": [f.key for f in report.failed],
            "steps": [[s.mzp, s.app, s.action.value, s.reason, s.hosts_behind] for s in report.steps],
            "events": [[e.kind.value, e.mzp, e.app, e.message, e.details, e.at.isoformat()] for e in report.events]}


def _load(data: dict) -> rotation.Report:
    from partnercerts.notify import Event, Kind
    report = rotation.Report(lock_token=data.get("lock_token", ""), changed=list(data.get("changed", [])),
                             deploy=list(data.get("deploy", [])),
                             failed=[rotation.Failure(str(k), Error("failed in the start play"))
                                     for k in data.get("failed", [])])
    report.steps = [Step(m, a, Action(act), r, bool(b)) for m, a, act, r, b in data.get("steps", [])]
    report.events = [Event(kind=Kind(k), mzp=m, app=a, message=msg, details=d, at=dt.datetime.fromisoformat(at))
                     for k, m, a, msg, d, at in data.get("events", [])]
    return report
