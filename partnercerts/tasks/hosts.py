"""Host tasks: deploy, verify and rollback, over the same playbooks a user runs with ansible-playbook."""
from __future__ import annotations

import re

from invoke import task
from invoke.exceptions import Exit

from ..errors import UserError
from ..settings import Settings
from ._ansible import checkout, inventory_has_host, playbook
from ._common import info, now, reports_errors, toolkit
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
    tk = toolkit()
    if dry_run:
        rows = tk.planner.rows(now(), mzp, app)
        info(f"{mzp}/{app}: would roll back from serial {rows[0].serial} to {to or 'the previous certificate'}; "
             "nothing was changed")
        return
    checkout(tk.settings)  # the deploy that follows needs the playbooks: refuse before changing Vault
    result = tk.importer.rollback(mzp, app, now(), to)
    print(f"{mzp}/{app}: serial {result.serial} (valid until {result.not_after}) is current again in Vault")
    _run("deploy.yml", extra={"partnercerts_deploy_only": [f"{mzp}/{app}"]})


@task(help={"from-host": "the inventory host whose current release is taken back into Vault",
            "mzp": MZP_HELP, "app": APP_HELP,
            "ca": "the CA certificate (PEM) its chain must verify to (default: PARTNERCERTS_CA_FILE, else Vault's "
                  "current CA)"})
@reports_errors
def recover(c, from_host, mzp, app, ca=None):
    """After Vault was restored from an older backup: take the release a host serves back into Vault."""
    from pathlib import Path

    tk = toolkit()
    tk.inventory.partner(mzp).app(app)
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", from_host) or not inventory_has_host(tk.settings, from_host):
        raise UserError(f"--from-host {from_host}: no such host in the inventory {tk.settings.inventory}; give the "
                        "name of one host that serves the credential (ansible-inventory --list shows them)")
    extra = {"partnercerts_recover_mzp": mzp, "partnercerts_recover_app": app}
    if ca:
        path = Path(ca).absolute()
        if not path.is_file():
            raise UserError(f"--ca {ca}: no such file; give the CA certificate (PEM) the chain must verify to")
        extra["partnercerts_recover_ca"] = str(path)
    _run("recover.yml", limit=from_host, extra=extra)
    rows = tk.planner.rows(now(), mzp, app)
    print(f"{mzp}/{app}: serial {rows[0].serial} (valid until {rows[0].not_after}) from {from_host} is current "
          f"in Vault again; deploy it to the other hosts: scripts/inv deploy --only {mzp}/{app}")


@task(help={"remove": "remove the scheduled rotation (the log and the environment file stay)",
            "credentials-file": "file with VAULT_ROLE_ID=/VAULT_SECRET_ID= of the rotator AppRole "
                                "(scripts/inv vault.secret-id --role rotator --out FILE); needed with VAULT_ADDR",
            "method": "auto (systemd timer where systemd runs, else cron), systemd or cron",
            "when": "systemd OnCalendar expression (default daily at 06:00) or, with cron, a cron schedule"})
@reports_errors
def schedule(c, remove=False, credentials_file=None, method="auto", when=None):
    """Install (or --remove) the scheduled rotation on this machine: a systemd timer, or a cron entry."""
    from pathlib import Path

    settings = Settings.from_env()
    if method not in ("auto", "systemd", "cron"):
        raise UserError(f"--method {method!r}: use auto, systemd or cron")
    env = dict(settings.schedule_env)
    env["PARTNERCERTS_INVENTORY"] = str(settings.inventory)
    env["PARTNERCERTS_STATE_DIR"] = str(settings.state_dir)
    if env.get("VAULT_CACERT"):
        env["VAULT_CACERT"] = str(Path(env["VAULT_CACERT"]).absolute())
    extra = {"partnercerts_schedule_hosts": "localhost", "partnercerts_schedule_repo_dir": str(checkout(settings)),
             "partnercerts_schedule_state": "absent" if remove else "present",
             "partnercerts_schedule_method": method, "partnercerts_schedule_environment": env}
    if credentials_file:
        path = Path(credentials_file).absolute()
        if not path.is_file():
            raise UserError(f"--credentials-file {credentials_file}: no such file; make it with "
                            "scripts/inv vault.secret-id --role rotator --out FILE")
        if path.stat().st_mode & 0o077:
            raise UserError(f"--credentials-file {credentials_file}: readable by others; chmod 600 it first")
        extra["partnercerts_schedule_credentials_file"] = str(path)
    elif settings.vault.addr and not remove:
        raise UserError("the scheduled job needs its own Vault credentials: make them with "
                        "scripts/inv vault.secret-id --role rotator --out FILE, then pass --credentials-file FILE")
    if when:
        extra["partnercerts_schedule_cron" if method == "cron" else "partnercerts_schedule_on_calendar"] = when
    _run("schedule.yml", extra=extra)
