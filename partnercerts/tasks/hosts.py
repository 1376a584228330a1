"""Host tasks: deploy, verify and rollback, over the same playbooks a user runs with ansible-playbook."""
from __future__ import annotations

import re

from invoke import task
from invoke.exceptions import Exit

from ..errors import UserError
from ..settings import Settings
from ._ansible import playbook
from ._common import credentials, info, now, reports_errors
from .creds import APP_HELP, MZP_HELP


def _run(name: str, **kw) -> None:
    rc = playbook(name, Settings.from_env(), **kw)
    if rc != 0:
        raise Exit(f"error: {name} failed on some hosts (ansible-playbook exit {rc}); see the lines above", code=rc)


@task(help={"limit": "only these hosts (an Ansible --limit pattern)",
            "check": "show what would change (with a diff of release names), change nothing",
            "only": "only these credentials, comma-separated MZP/app",
            "batches": "deploy in batches, e.g. 1,100% (one canary host first); a failed batch stops the rest"})
@reports_errors
def deploy(c, limit=None, check=False, only=None, batches=None):
    """Deploy every host's credentials from Vault: stage, check, switch, reload, verify; roll back on failure."""
    extra: dict = {}
    if only:
        extra["partnercerts_deploy_only"] = [x.strip() for x in only.split(",") if x.strip()]
    if batches:
        sizes = [b.strip() for b in batches.split(",") if b.strip()]
        if not sizes or not all(re.fullmatch(r"[1-9][0-9]*%?", b) for b in sizes):
            raise UserError(f"--batches {batches!r}: give batch sizes like 1,100% or 2,50%")
        extra["partnercerts_deploy_serial"] = [int(b) if b.isdigit() else b for b in sizes]
        extra["partnercerts_deploy_max_fail_percentage"] = 0
    _run("deploy.yml", limit=limit, check=check, diff=check, extra=extra or None)


@task(help={"limit": "only these hosts (an Ansible --limit pattern)"})
@reports_errors
def verify(c, limit=None):
    """Compare what every host serves from current with Vault; exit non-zero on drift; change nothing."""
    _run("verify.yml", limit=limit)


@task(help={"mzp": MZP_HELP, "app": APP_HELP,
            "to": "serial to make current again (default: the certificate before the current one)",
            "dry-run": "say what would be rolled back, change nothing"})
@reports_errors
def rollback(c, mzp, app, to=None, dry_run=False):
    """Make an earlier certificate current again, in Vault and then on the credential's hosts."""
    creds = credentials()
    if dry_run:
        rows = creds.rows(now(), mzp, app)
        info(f"{mzp}/{app}: would roll back from serial {rows[0].serial} to {to or 'the previous certificate'}; "
             "nothing was changed")
        return
    result = creds.rollback(mzp, app, now(), to)
    print(f"{mzp}/{app}: serial {result.serial} (valid until {result.not_after}) is current again in Vault")
    _run("deploy.yml", extra={"partnercerts_deploy_only": [f"{mzp}/{app}"]})
