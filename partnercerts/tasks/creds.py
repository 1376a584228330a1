"""Credential tasks: csr, import-cert, status, p12, account, rotate."""
from __future__ import annotations

import getpass
import json as jsonlib
import os
import sys
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from ..errors import Error, Remedy, UserError
from . import _status
from ._ansible import playbook
from ._common import hinted, info, now, reports_errors, toolkit
from ._hints import HINTS

MZP_HELP = "partner login, e.g. MZP123456 (as defined in the inventory)"
APP_HELP = "application name of that partner (as defined in the inventory)"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


@task(help={"mzp": MZP_HELP, "app": APP_HELP,
            "out": "write the CSR to FILE and the OpenSSL parameter file beside it (FILE minus suffix + .conf)",
            "force": "replace a pending key and CSR with new ones (the old version stays in Vault)"})
@reports_errors
def csr(c, mzp, app, out=None, force=False):
    """Make (or return the pending) key and CSR with the exact PSA profile; the key goes only to Vault."""
    result = toolkit().pending.make_csr(mzp, app, now(), force=force)
    if result.warning:
        info(f"warning: {result.warning}")
    verb = "new key stored in Vault" if result.created else "pending CSR returned unchanged (no new key)"
    info(f"{mzp}/{app}: {verb}; public key SHA-256 {result.key_sha256}")
    if out:
        path = Path(out)
        conf = path.with_suffix(".conf") if path.suffix != ".conf" else path.with_name(path.name + ".conf")
        try:
            path.write_text(result.csr_pem)
            conf.write_text(result.openssl_config)
        except OSError as exc:
            raise Exit(f"error: --out {out}: cannot write ({exc.strerror}); choose a writable path", code=2) from None
        info(f"CSR written to {path}, OpenSSL parameter file to {conf}")
    else:
        sys.stdout.write(result.csr_pem + "\n" + result.openssl_config)


@task(name="import-cert",
      help={"mzp": MZP_HELP, "app": APP_HELP,
            "cert": "the signed certificate from the authority: PEM, DER or PKCS#7, with or without chain",
            "url": "download the certificate from this HTTPS link of the authority's reply",
            "eml": "a saved reply e-mail: the certificate, CA and Client ID are taken from it",
            "ca": "the Stellantis CA certificate (PEM/DER); the chain must verify to it",
            "client-id": "the Client ID from the authority's reply (default: from --eml, else keep the current one)",
            "accept-subject-change": "accept a change of OU, O or C by the authority, after checking it with them "
                                     "(recorded in Vault: who, when, the change)"})
@reports_errors
def import_cert(c, mzp, app, cert=None, url=None, eml=None, ca=None, client_id=None, accept_subject_change=False):
    """Import a signed certificate (a file, a download link or a reply e-mail) through the strict gate."""
    from .. import rotation, sources
    tk = toolkit()
    got = sources.resolve(tk.settings, cert=cert, url=url, eml=eml, ca=ca, client_id=client_id)
    for problem in got.problems:
        info(f"warning: {eml}: {problem}")
    when = now()
    result = tk.importer.import_cert(mzp, app, got.cert, when, ca=got.ca, client_id=got.client_id,
                                     accept_subject_change=accept_subject_change)
    for warning in result.warnings:
        info(f"warning: {warning}")
    if result.already_current:
        print(f"{mzp}/{app}: certificate serial {result.serial} is already current; nothing changed")
        return
    line = (f"{mzp}/{app}: imported serial {result.serial}, valid until {result.not_after}, "
            f"Client ID {result.client_id}, SHA-256 {result.fingerprint_sha256}")
    print(line)
    rotation.imported(tk, result, line, when, info)
    print(hinted("", Remedy.DEPLOY, mzp=mzp, app=app) + " (or let the next scheduled rotate do it)")


@task(help={"json": "print a JSON list instead of a table",
            "mzp": "only this partner", "app": "only this application"})
@reports_errors
def status(c, json=False, mzp=None, app=None):
    """One row per credential: state, serial, expiry, pending CSR (reads metadata only)."""
    _status.show(json=json, mzp=mzp, app=app)


@task(help={"mzp": MZP_HELP, "app": APP_HELP, "out": "where to write the .p12 file (mode 0600)",
            "legacy": "3DES/SHA-1 encryption for old Java (default: AES-256-CBC, PBKDF2, SHA-256 MAC)",
            "show-password": "print the bundle's password (kept in Vault) on stdout"})
@reports_errors
def p12(c, mzp, app, out, legacy=False, show_password=False):
    """Write a PKCS#12 bundle of the current key, certificate and chain."""
    from ..bundles import p12 as bundle
    tk = toolkit()
    blob, password = bundle(tk.inventory, tk.store, mzp, app, legacy=legacy)
    try:
        _write_private(Path(out), blob)
    except OSError as exc:
        raise Exit(f"error: --out {out}: cannot write ({exc.strerror}); choose a writable path", code=2) from None
    info(f"{mzp}/{app}: PKCS#12 written to {out} ({'legacy 3DES/SHA-1' if legacy else 'AES-256-CBC, SHA-256 MAC'}); "
         "its password is in Vault" + ("" if show_password else " (--show-password prints it)"))
    if show_password:
        print(password)


def _read_password(prompt: str) -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass(prompt)
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ; nothing was stored, run the command again")
        return password
    return (sys.stdin.readline() if sys.stdin else "").rstrip("\r\n")


@task(help={"mzp": MZP_HELP})
@reports_errors
def account(c, mzp):
    """Store the MZP password in Vault, read from a prompt or from stdin (never from arguments)."""
    password = _read_password(f"{mzp} password: ")
    changed = toolkit().passwords.set_account(mzp, password, now())
    print(f"{mzp}: password {'stored' if changed else 'unchanged (Vault already had it)'}")


@task(help={"mzp": "only this partner", "app": "only this application",
            "dry-run": "print the plan and change nothing",
            "no-deploy": "change credentials in Vault only; leave the hosts to a later deploy"})
@reports_errors
def rotate(c, mzp=None, app=None, dry_run=False, no_deploy=False):
    """Plan, then apply: renew what is due, import what the authority signed, deploy and verify on the hosts."""
    from .. import rotation
    tk = toolkit()
    when = now()
    report = rotation.start(tk, when, mzp=mzp, app=app, dry_run=dry_run, deploy=not no_deploy,
                            entry="scripts/inv rotate")
    if report.held:
        print(f"another rotation holds the lock: {report.held.holder}, since {report.held.acquired_at} "
              f"(expires {report.held.expires_at}); nothing done")
        return
    if report.took_over:
        print(f"took over the rotation lock of a run that died on this machine: {report.took_over}")
    print_replies(report.replies, dry_run)
    width = max([len(f"{s.mzp}/{s.app}") for s in report.steps] + [10])
    print("plan:")
    for s in report.steps:
        print(f"  {f'{s.mzp}/{s.app}'.ljust(width)}  {s.action.value:<8} {s.reason}")
    if dry_run:
        if report.todo or report.deploy:
            print(f"dry run: {len(report.todo)} credential(s) would change, {len(report.deploy)} would be deployed; "
                  "nothing was changed")
        else:
            print("nothing to do")
        return
    for done in report.applied:
        print(f"  {hinted(f'{done.key}: {done.describe()}', done.remedy)}")
    for failure in report.failed:
        print(f"  FAILED {failure.key}: {failure.error.worded(HINTS)}", file=sys.stderr)
    rc = None
    if report.deploy:
        print(f"deploying {len(report.deploy)} credential(s) to their hosts: {', '.join(report.deploy)}")
        rc = playbook("deploy.yml", tk.settings, extra={"partnercerts_deploy_only": report.deploy})
    try:
        rotation.finish(tk, report, when, rc, log=info)
    except Error as exc:  # Vault lost at the end: what the run did and failed was notified; name every failure
        also = [f"rotation failed for {', '.join(f.key for f in report.failed)}"] if report.failed else []
        also += [f"deploying failed on some hosts (ansible-playbook exit {rc})"] if rc else []
        raise Exit(f"error: the run could not be recorded: {exc.worded(HINTS)}"
                   + "".join(f"; {line}" for line in also), code=exc.exit_code) from None
    if report.failed:
        raise Exit(f"error: rotation failed for {', '.join(f.key for f in report.failed)} "
                   "(see above); the others were done", code=1)
    if rc:
        raise Exit(f"error: deploying failed on some hosts (ansible-playbook exit {rc}); see the lines above; "
                   "the next run retries them", code=rc)
    if not report.todo and not report.deploy:
        print("nothing to do")
    else:
        print(f"done: {len(report.changed)} credential(s) changed, {len(report.deploy)} deployed and verified")


@task(help={"mzp": "only this partner", "app": "only this application",
            "resend": "send CSRs that were already submitted again (same CSR, new Message-ID)"})
@reports_errors
def submit(c, mzp=None, app=None, resend=False):
    """Submit pending CSRs by each partner's method (e-mail, outbox, sandbox); never twice unless --resend."""
    results = toolkit().submitter.submit_all(now(), mzp, app, resend=resend)
    for key, result in results:
        print(hinted(f"{key}: {result.describe()}", result.remedy))
    if not results:
        print("no pending CSR to submit")


@task(name="smtp-password", help={"mzp": "the partner whose e-mail submission account it is "
                                         "(default: the notification account)"})
@reports_errors
def smtp_password(c, mzp=None):
    """Store an SMTP password in Vault, read from a prompt or from stdin (never from arguments)."""
    password = _read_password(f"SMTP password{f' for {mzp}' if mzp else ' for notifications'}: ")
    changed = toolkit().passwords.set_smtp(mzp, password, now())
    print(f"SMTP password {'stored' if changed else 'unchanged (Vault already had it)'}")


@task(help={"textfile": "write to this file (atomically, for node_exporter's textfile collector) "
                        "instead of stdout; default: partnercerts_metrics_textfile of the inventory"})
@reports_errors
def metrics(c, textfile=None):
    """Print or write Prometheus metrics: expiry, pending age, hosts in sync, last run and success."""
    from .. import rotation
    from ..metrics import render
    tk = toolkit()
    when = now()
    rows = tk.planner.rows(when)
    target = textfile or tk.inventory.metrics_textfile
    if target:
        if not rotation.write_metrics(tk, rows, when, info, path=target):
            raise Exit(f"error: --textfile {target}: could not be written; check the directory", code=2)
        info(f"metrics written to {target}")
        return
    last_run, last_success = rotation.last_runs(tk)
    sys.stdout.write(render(rows, now=when, last_run=last_run, last_success=last_success,
                            replies_left=tk.replies.left(), partners=tk.inventory.partners))


def print_replies(runs, dry_run: bool) -> None:
    """One line per message of the reply mailboxes read, and per mailbox that could not be read."""
    for run in runs:
        rescan = " (its UIDVALIDITY changed: read again from the start)" if run.rescanned else ""
        if run.handled:
            print(f"replies in {run.server}{rescan}:")
        elif run.failure is None:
            print(f"replies in {run.server}: no new message{rescan}")
        for handled in run.handled:
            print(f"  {handled.line(run.server)}")
        if run.failure is not None:
            print(f"  FAILED: {run.failure.worded(HINTS)}", file=sys.stderr)
    if dry_run and any(run.handled for run in runs):
        print("dry run: no message was imported, moved or flagged")


@task(help={"mzp": "only this partner's reply mailbox",
            "dry-run": "say what each message is and what would be done; import, move and flag nothing"})
@reports_errors
def replies(c, mzp=None, dry_run=False):
    """Read the authority's replies from the reply mailboxes; import what is for a pending key, through the gate."""
    from .. import rotation
    from ..lock import Lock, whoami
    tk = toolkit()
    when = now()
    if mzp is None and not tk.replies.configured():
        print(f"no partner has a reply_mailbox in {tk.inventory.path}; add one to read the authority's replies")
        return
    lock = Lock(tk.store)
    if not dry_run:
        held = lock.acquire(whoami("scripts/inv replies"), when)
        if held:
            print(f"a rotation holds the lock: {held.holder}, since {held.acquired_at}; nothing done")
            return
    try:
        runs = tk.replies.run(when, mzp=mzp, dry_run=dry_run)
        print_replies(runs, dry_run)
        if not dry_run:
            report = rotation.Report()
            rotation.absorb_replies(report, runs, when)
            rotation.notify(tk, report.events, info)
            if report.changed:
                rotation.write_metrics(tk, tk.planner.rows(when), when, info)
            for key in report.changed:
                mzp_, app_ = key.split("/")
                print(hinted("", Remedy.DEPLOY, mzp=mzp_, app=app_) + " (or let the next scheduled rotate do it)")
    finally:
        if not dry_run:
            lock.release(when)
    failed = [r for r in runs if r.failure is not None]
    if failed:
        raise Exit(f"error: could not read all of {', '.join(r.server for r in failed)} (see above); what was "
                   "settled stays settled, the rest is read again next run", code=4)


@task(name="mailbox-password", help={"mzp": MZP_HELP})
@reports_errors
def mailbox_password(c, mzp):
    """Store the password of a partner's reply mailbox in Vault, read from a prompt or from stdin."""
    tk = toolkit()
    password = _read_password(f"password of the reply mailbox of {mzp}: ")
    changed = tk.passwords.set_mailbox(mzp, password, now())
    info(f"{mzp}: reply mailbox password {'stored in Vault' if changed else 'unchanged (Vault already had it)'}")


@task(help={"mzp": MZP_HELP, "app": APP_HELP,
            "reason": "why the key is replaced (kept in Vault, sent to the authority and notified)",
            "withdraw": "also remove the current certificate from the hosts now: the service has NO credential "
                        "until the new certificate is imported",
            "yes": "with --withdraw: do not ask for confirmation"})
@reports_errors
def rekey(c, mzp, app, reason=None, withdraw=False, yes=False):
    """Emergency re-key: a new key and CSR now, submitted urgent with a request to revoke the old certificate."""
    from .. import rotation
    from ..importer import require_current
    from ..rekey import check_reason
    from ..rekey import rekey as do_rekey
    from ._ansible import checkout
    tk = toolkit()
    when = now()
    if withdraw:
        check_reason(reason)
        checkout(tk.settings)  # the deploy that removes it needs the playbooks: refuse before changing Vault
        serial = require_current(tk.inventory, tk.store, mzp, app).serial
        _confirm_withdrawal(mzp, app, serial, yes)
    done = do_rekey(tk, mzp, app, reason or "", when, withdraw=withdraw)
    sent = (done.submitted.describe() if done.submit_error is None
            else f"NOT submitted ({done.submit_error.worded(HINTS)}); the next rotate submits it")
    line = (f"{mzp}/{app}: re-keyed by {done.by} ({done.reason}): new key SHA-256 {done.made.key_sha256}; "
            f"{sent}; the authority is asked to revoke serial {done.revoke_serial}")
    print(line)
    rc = None
    if withdraw:
        if done.submitted.imported is not None:  # an authority that signs at once (the sandbox)
            print(f"{mzp}/{app}: serial {done.revoke_serial} is withdrawn; the new certificate (serial "
                  f"{done.submitted.imported.serial}) is already imported: deploying it in its place")
        else:
            print(f"{mzp}/{app}: serial {done.revoke_serial} is withdrawn in Vault; removing it from the hosts now: "
                  "the service has no credential until the new certificate is imported")
        rc = playbook("deploy.yml", tk.settings, extra={"partnercerts_deploy_only": [f"{mzp}/{app}"]})
    else:
        print(f"{mzp}/{app}: serial {done.revoke_serial} stays current and deployed until the new certificate is "
              "imported")
    details = {"reason": done.reason, "by": done.by, "revoke_serial": done.revoke_serial}
    if withdraw:
        details["withdrawn"] = "yes" if rc == 0 else "in Vault; not yet removed from every host"
    rotation.notify(tk, [rotation.event("rekey", mzp, app, line, when, **details)], info)
    if done.submit_error is not None:
        raise Exit(f"error: {mzp}/{app}: the new CSR was made but not submitted; see above", code=1)
    if rc:
        raise Exit(f"error: {mzp}/{app}: removing serial {done.revoke_serial} failed on some hosts "
                   f"(ansible-playbook exit {rc}); they may still serve it; every deploy retries "
                   f"(scripts/inv deploy --only {mzp}/{app})", code=rc)


def _confirm_withdrawal(mzp: str, app: str, serial: str, yes: bool) -> None:
    """--withdraw leaves the service without a credential: ask, unless --yes; never assume without a terminal."""
    if yes:
        return
    question = (f"{mzp}/{app}: --withdraw removes serial {serial} from every host now, and the service has NO "
                "credential until the new certificate is imported. Type the credential's name "
                f"({mzp}/{app}) to go on: ")
    if sys.stdin is None or not sys.stdin.isatty():
        raise UserError(f"--withdraw: the service of {mzp}/{app} would have no credential until the new "
                        "certificate is imported; confirm with --yes (no terminal to ask on); nothing was changed")
    if input(question).strip() != f"{mzp}/{app}":
        raise UserError("--withdraw not confirmed; nothing was changed")


@task(help={"mzp": MZP_HELP + "; also one no longer in the inventory, while Vault holds its records",
            "app": APP_HELP,
            "json": "print a JSON list of events (at, kind, mzp, app, summary, details, source, vault_time)"})
@reports_errors
def history(c, mzp, app, json=False):
    """The audit trail of one credential, newest first, rebuilt from every version Vault keeps.

    Keys made, CSRs sent and resent (Message-IDs), reminders, answers without a certificate, re-keys,
    imports (serial, who accepted a subject change, subject notes), withdrawals, deploys and rollbacks
    with their hosts. Reads only, but reads the data of older versions: it needs the rotator policy (or a
    token that may read <mount>/data/<prefix>/*); the auditor policy, metadata only, is refused.
    No key, password, certificate or CSR is ever printed.
    """
    from .. import audit
    tk = toolkit()
    found = audit.history(tk.inventory, tk.store, mzp, app)
    if not found.in_inventory:
        info(f"note: {mzp}/{app} is no longer in {tk.inventory.path}; showing what Vault keeps of it")
    for note in found.notes:
        info(f"note: {note}")
    if json:
        print(jsonlib.dumps(found.as_json(), indent=2, ensure_ascii=False))
        return
    if not found.events:
        info(f"{mzp}/{app}: Vault holds no record of it yet")
    for line in found.lines():
        print(line)
