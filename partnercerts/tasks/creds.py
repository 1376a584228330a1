"""Credential tasks: csr, import-cert, status, p12, account, rotate."""
from __future__ import annotations

import getpass
import json as jsonlib
import os
import sys
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from .. import certs
from ..errors import UserError
from ..lifecycle import Action
from ._ansible import playbook
from ._common import credentials, info, now, reports_errors

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
    result = credentials().make_csr(mzp, app, now(), force=force)
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
            "ca": "the Stellantis CA certificate (PEM/DER); the chain must verify to it",
            "client-id": "the Client ID from the authority's reply (default: keep the current one)"})
@reports_errors
def import_cert(c, mzp, app, cert, ca=None, client_id=None):
    """Import a signed certificate through the strict gate and make it current."""
    creds = credentials()
    limit = creds.settings.max_input_bytes
    cert_data = certs.read_file(cert, limit)
    ca_data = certs.read_file(ca, limit) if ca else None
    result = creds.import_cert(mzp, app, cert_data, cert, now(), ca_data=ca_data, ca_source=ca or "",
                               client_id=client_id)
    if result.warning:
        info(f"warning: {result.warning}")
    if result.already_current:
        print(f"{mzp}/{app}: certificate serial {result.serial} is already current; nothing changed")
    else:
        print(f"{mzp}/{app}: imported serial {result.serial}, valid until {result.not_after}, "
              f"Client ID {result.client_id}, SHA-256 {result.fingerprint_sha256}")


@task(help={"json": "print a JSON list instead of a table",
            "mzp": "only this partner", "app": "only this application"})
@reports_errors
def status(c, json=False, mzp=None, app=None):
    """One row per credential: state, serial, expiry, pending CSR (reads metadata only)."""
    rows = credentials().rows(now(), mzp, app)
    if json:
        print(jsonlib.dumps([r.as_json() for r in rows], indent=2))
        return
    header = ("mzp", "app", "client_id", "state", "serial", "not_after", "days_left", "pending_since", "hosts")
    table = [header] + [(r.mzp, r.app, r.client_id or "-", r.state, r.serial or "-", r.not_after or "-",
                         "-" if r.days_left is None else str(r.days_left), r.pending_since or "-",
                         "-" if r.hosts_total is None else f"{r.hosts_in_sync}/{r.hosts_total}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    for r in rows:
        if r.note:
            info(f"note: {r.mzp}/{r.app}: {r.note}")


@task(help={"mzp": MZP_HELP, "app": APP_HELP, "out": "where to write the .p12 file (mode 0600)",
            "legacy": "3DES/SHA-1 encryption for old Java (default: AES-256-CBC, PBKDF2, SHA-256 MAC)",
            "show-password": "print the bundle's password (kept in Vault) on stdout"})
@reports_errors
def p12(c, mzp, app, out, legacy=False, show_password=False):
    """Write a PKCS#12 bundle of the current key, certificate and chain."""
    blob, password = credentials().p12(mzp, app, legacy=legacy)
    try:
        _write_private(Path(out), blob)
    except OSError as exc:
        raise Exit(f"error: --out {out}: cannot write ({exc.strerror}); choose a writable path", code=2) from None
    info(f"{mzp}/{app}: PKCS#12 written to {out} ({'legacy 3DES/SHA-1' if legacy else 'AES-256-CBC, SHA-256 MAC'}); "
         "its password is in Vault" + ("" if show_password else " (--show-password prints it)"))
    if show_password:
        print(password)


@task(help={"mzp": MZP_HELP})
@reports_errors
def account(c, mzp):
    """Store the MZP password in Vault, read from a prompt or from stdin (never from arguments)."""
    if sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass(f"{mzp} password: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ; nothing was stored, run the command again")
    else:
        password = (sys.stdin.readline() if sys.stdin else "").rstrip("\r\n")
    changed = credentials().set_account_password(mzp, password, now())
    print(f"{mzp}: password {'stored' if changed else 'unchanged (Vault already had it)'}")


@task(help={"mzp": "only this partner", "app": "only this application",
            "dry-run": "print the plan and change nothing",
            "no-deploy": "change credentials in Vault only; leave the hosts to a later deploy"})
@reports_errors
def rotate(c, mzp=None, app=None, dry_run=False, no_deploy=False):
    """Plan, then apply: renew what is due, import what the authority signed, deploy and verify on the hosts."""
    creds = credentials()
    when = now()
    steps = creds.plan(when, mzp, app)
    width = max([len(f"{s.mzp}/{s.app}") for s in steps] + [10])
    print("plan:")
    for s in steps:
        print(f"  {f'{s.mzp}/{s.app}'.ljust(width)}  {s.action.value:<8} {s.reason}")
    todo = [s for s in steps if s.action not in (Action.NOTHING, Action.WAIT)]
    behind = [s for s in steps if s.hosts_behind and s not in todo and not no_deploy]
    if not todo and not behind:
        print("nothing to do")
        return
    if dry_run:
        print(f"dry run: {len(todo)} credential(s) would change, {len(todo) + len(behind)} would be deployed; "
              "nothing was changed")
        return
    failed = []
    for s in todo:
        try:
            print(f"  {f'{s.mzp}/{s.app}'.ljust(width)}  {creds.apply(s, when)}")
        except UserError as exc:
            failed.append(f"{s.mzp}/{s.app}")
            print(f"  {f'{s.mzp}/{s.app}'.ljust(width)}  FAILED: {exc}", file=sys.stderr)
    deploy = [] if no_deploy else [f"{s.mzp}/{s.app}" for s in todo + behind if f"{s.mzp}/{s.app}" not in failed]
    rc = 0
    if deploy:
        print(f"deploying {len(deploy)} credential(s) to their hosts: {', '.join(deploy)}")
        rc = playbook("deploy.yml", creds.settings, extra={"partnercerts_deploy_only": deploy})
    if failed:
        raise Exit(f"error: rotation failed for {', '.join(failed)} (see above); the others were done", code=1)
    if rc != 0:
        raise Exit(f"error: deploying failed on some hosts (ansible-playbook exit {rc}); see the lines above; "
                   "the next run retries them", code=rc)
    print(f"done: {len(todo)} credential(s) changed, {len(deploy)} deployed and verified")
