# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Every call from this collection's plugins into the partnercerts core package, in one place.

The core is a Python package installed on the controller beside ansible-core (pip install
partnercerts); it is not part of the collection. Its import is guarded, as community.hashi_vault
guards hvac: without it, a task fails with one line that says what to install.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os

from ansible.errors import AnsibleActionFail

try:
    from partnercerts import certs, deploy, inventory, keys, rotation
    from partnercerts.errors import Error, Remedy
    from partnercerts.hostreports import Checked
    from partnercerts.lifecycle import Action, Step
    from partnercerts.notify import Event, Kind
    from partnercerts.settings import Settings
    from partnercerts.store import Store
    from partnercerts.toolkit import Toolkit
    from partnercerts.vault import connect
except ImportError as exc:
    IMPORT_ERROR = exc  # type: ImportError | None
else:
    IMPORT_ERROR = None

# The core's remedies in the words of a playbook user (the core names them by meaning only).
HINTS = {} if IMPORT_ERROR is not None else {
    Remedy.VAULT_UP: "",  # the message already says to start or unseal it; no command of a checkout applies here
    Remedy.BOOTSTRAP: "an operator creates it (vault.bootstrap of the partnercerts command, with an operator token)",
    Remedy.MAKE_CSR: "run the rotate playbook with -e partnercerts_rotate_mzp={mzp} -e partnercerts_rotate_app={app}",
    Remedy.ROTATE: "run the rotate playbook with -e partnercerts_rotate_mzp={mzp} -e partnercerts_rotate_app={app}",
    Remedy.ROLLBACK: "make an earlier certificate current (partnercerts rollback --mzp {mzp} --app {app})",
    Remedy.STORE_ACCOUNT_PASSWORD: "store it in Vault (partnercerts account --mzp {mzp})",
    Remedy.STORE_SMTP_PASSWORD: "store it in Vault (partnercerts smtp-password)",
    Remedy.RESEND: "resend it with partnercerts submit --resend",
    Remedy.IMPORT_REPLY: "import the reply (partnercerts import-cert --mzp {mzp} --app {app} --eml REPLY.eml)",
    Remedy.DEPLOY: "run the deploy playbook",
    Remedy.STATUS: "partnercerts status shows every credential",
    Remedy.STORE_MAILBOX_PASSWORD: "store it in Vault (partnercerts mailbox-password --mzp {mzp})",
    Remedy.ACCEPT_SUBJECT_CHANGE: "if the authority confirms the change, import it by hand with "
                                  "partnercerts import-cert ... --accept-subject-change",
}

MISSING = ("the partnercerts Python package is not installed on the controller; pip install partnercerts "
           "(from its repository: pip install .) into the Python that runs ansible-playbook")


def require():
    """Fail the task in one line when the core cannot be imported."""
    if IMPORT_ERROR is not None:
        raise AnsibleActionFail("%s (%s)" % (MISSING, IMPORT_ERROR))


@contextlib.contextmanager
def user_errors():
    """The core's errors become a failed task with the core's one-line message, its remedy in playbook terms."""
    require()
    try:
        yield
    except Error as exc:
        raise AnsibleActionFail(exc.worded(HINTS)) from None


def now():
    return dt.datetime.now(dt.timezone.utc)


_STORES: dict = {}  # pid -> Store


def store():
    """One Vault connection per worker process."""
    pid = os.getpid()
    if pid not in _STORES:
        settings = Settings.from_env()
        _STORES[pid] = Store(connect(settings), settings)
    return _STORES[pid]


def toolkit(full_inventory=True):
    """The core's services over this controller's settings, inventory and Vault."""
    settings = Settings.from_env()
    inv = inventory.load(settings.inventory) if full_inventory else inventory.Inventory(path=settings.inventory)
    return Toolkit(settings, inv, Store(connect(settings), settings))


# -- release: what the host gets, and how it compares with Vault --------------------------------
def default_api_url():
    return deploy.DEFAULT_API_URL


def release_from_vault(mzp, app, api_url):
    """(module arguments for state=present, the release itself) for Vault's current record."""
    release = deploy.release_from_vault(store(), mzp, app, api_url)
    if release.withdrawn:  # rekey --withdraw: remove it from the host instead
        return dict(state="withdrawn", serial=release.serial), release
    files, modes = release.module_files()
    return dict(serial=release.serial, release_id=release.release_id, files=files, modes=modes,
                not_before=release.not_before, known_serials=list(release.known_serials)), release


def served_facts(release):
    """What inspect would report of a host serving exactly this release (deploy.drift's input)."""
    leaf = certs.from_pem(release.files["client.crt"].decode())[0]
    anchors = certs.from_pem(release.files["ca.crt"].decode())
    return {"present": True, "problems": [], "serial": release.serial, "fingerprint_sha256": certs.fingerprint(leaf),
            "key_sha256": keys.spki_sha256(leaf.public_key()),  # build_release checked that the key matches it
            "ca_fingerprint_sha256": certs.fingerprint(anchors[0]) if anchors else "",
            "not_after": leaf.not_valid_after_utc.isoformat()}


def drift(mzp, app, facts, expiring_days):
    """Problems of what a host serves compared with Vault's index of the credential (empty: in sync)."""
    found = store().read_index(mzp, app)
    return deploy.drift(found[0] if found else None, facts, now(), expiring_days)


# -- host reports --------------------------------------------------------------------------------
def record_hosts(mzp, app, reports, all_hosts):
    """Remember what each checked host serves; hosts not in all_hosts are forgotten, hosts not in reports
    keep their last report (HostReports.record). Returns (hosts in sync, hosts in all) after it."""
    with user_errors():
        checked = {host: Checked.from_result(r) for host, r in reports.items()}
        index = toolkit(full_inventory=False).hosts.record(mzp, app, checked, set(all_hosts), now())
    return int(index.hosts_in_sync or 0), int(index.hosts_total or 0)


# -- rotation ------------------------------------------------------------------------------------
def rotation_start(mzp, app, dry_run, owner_pid):
    """The result fields of one rotation run's start. A credential that failed does not fail the task: it is
    in failed_credentials, and the finish step (after the deploy of the others) fails the run naming it."""
    with user_errors():
        report = rotation.start(toolkit(), now(), mzp=mzp, app=app, dry_run=dry_run,
                                entry="playbooks/rotate.yml", owner_pid=owner_pid)
    if report.held:
        return dict(changed=False, held=dataclasses.asdict(report.held), deploy=[],
                    msg="another rotation holds the lock: %s, since %s; nothing done"
                        % (report.held.holder, report.held.acquired_at))
    out = dict(changed=bool(report.changed), run=_dump(report), deploy=report.deploy,
               plan=["%s/%s: %s (%s)" % (s.mzp, s.app, s.action.value, s.reason) for s in report.steps],
               applied=["%s: %s" % (a.key, a.describe()) for a in report.applied],
               replies=[h.line(r.server) for r in report.replies for h in r.handled],
               failed_credentials=["%s: %s" % (f.key, f.error.worded(HINTS)) for f in report.failed])
    return out


def rotation_finish(run, log, deploy_failures=()):
    """Record the run, notify, write metrics, release the lock; None when there is no run to finish.
    deploy_failures: "host: MZP/app: why" of the deploy play, whose hosts do not fail under rotate.yml
    so that this always runs. Returns the result and the failed message (every failure) or None."""
    deploy_failures = [str(f) for f in deploy_failures or []]
    lost = None
    with user_errors():
        report = _load(run)
        if not report.lock_token:
            return None, None
        try:
            failures = rotation.finish(toolkit(), report, now(), 2 if deploy_failures else 0, log=log)
        except Error as exc:  # Vault lost: the run's events and failures went out; every failure is still named
            lost, failures = exc.worded(HINTS), []
    out = dict(changed=False, events=[e.message for e in report.events], notify_failures=failures,
               failed_credentials=["%s: %s" % (f.key, f.error) for f in report.failed],
               deploy_failures=deploy_failures)
    lines = ["rotation failed for %s" % line for line in out["failed_credentials"]]
    lines += ["deploy failed on %s" % line for line in deploy_failures]
    if lost:
        lines.append("the run could not be recorded (%s); what it did and what failed was notified, and the next "
                     "run finishes the job" % lost)
    elif lines:
        lines.append("the run was recorded, notified and its lock released; the others were done; the next run "
                     "retries these")
    return out, ("; ".join(lines) if lines else None)


def _dump(report):
    """The parts of a report that finish needs, as plain data (no secrets)."""
    return {"lock_token": report.lock_token, "changed": report.changed, "deploy": report.deploy,
            "imported": report.imported,
            "failed": [[f.key, f.error.worded(HINTS)] for f in report.failed],
            "steps": [[s.mzp, s.app, s.action.value, s.reason, s.hosts_behind] for s in report.steps],
            "events": [[e.kind.value, e.mzp, e.app, e.message, e.details, e.at.isoformat()] for e in report.events]}


def _load(data):
    report = rotation.Report(lock_token=data.get("lock_token", ""), changed=list(data.get("changed", [])),
                             deploy=list(data.get("deploy", [])), imported=list(data.get("imported", [])),
                             failed=[rotation.Failure(str(k), Error(str(why)))
                                     for k, why in (f if isinstance(f, list) else [f, "failed in the start play"]
                                                    for f in data.get("failed", []))])
    report.steps = [Step(m, a, Action(act), r, bool(b)) for m, a, act, r, b in data.get("steps", [])]
    report.events = [Event(kind=Kind(k), mzp=m, app=a, message=msg, details=d, at=dt.datetime.fromisoformat(at))
                     for k, m, a, msg, d, at in data.get("events", [])]
    return report


# -- recover ---------------------------------------------------------------------------------------
def recover(mzp, app, host, files, ca_path=None):
    """The result of taking a host's release back into Vault (Importer.recover): no secret in it."""
    from partnercerts import sources
    with user_errors():
        tk = toolkit()
        ca = sources.from_file(tk.settings, str(ca_path)) if ca_path else None
        done = tk.importer.recover(mzp, app, host, files, now(), ca=ca)
    return dict(changed=True, serial=done.serial, not_after=done.not_after, client_id=done.client_id,
                fingerprint_sha256=done.fingerprint_sha256,
                msg="%s/%s: serial %s from %s is Vault's current again (valid until %s)"
                    % (mzp, app, done.serial, host, done.not_after))
