"""vault.*: the embedded workstation OpenBao, and bootstrapping a real Vault (mount, policies, AppRoles)."""
from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from invoke import task

from .. import policies
from ..errors import UserError
from ..settings import Settings
from ._common import info, reports_errors

if TYPE_CHECKING:
    from ..embedded import Embedded

# The Vault client (hvac, requests) and the embedded server are imported by the tasks that use them, so that
# every other command starts without them.


def _embedded() -> Embedded:
    from ..embedded import Embedded
    settings = Settings.from_env()
    if settings.vault.addr:
        raise UserError("VAULT_ADDR is set, so the embedded server is not used; unset VAULT_ADDR to manage it")
    return Embedded(settings)


@task
@reports_errors
def up(c):
    """Start (or reuse) the embedded OpenBao under .state/vault: initialised, unsealed, KV v2 mounted."""
    server = _embedded()
    server.up()
    info(f"embedded OpenBao up at {server.addr} (single-workstation mode; secrets under {server.dir})")


@task
@reports_errors
def down(c):
    """Stop this state directory's embedded OpenBao, never another checkout's (its data stays under .state/vault)."""
    server = _embedded()
    if server.down():
        print("stopped")
        return
    held = server.status()["port_held_by"]
    print(f"not running ({server.addr} is held by {held}, not by {server.dir})" if held else "not running")


@task(help={"json": "print the status as JSON"})
@reports_errors
def status(c, json=False):
    """Show whether this state directory's embedded OpenBao is running, initialised and unsealed (never another's)."""
    st = _embedded().status()
    if json:
        print(jsonlib.dumps(st, indent=2))
    else:
        for k, v in st.items():
            if k != "port_held_by" or v:
                print(f"{k}: {v}")


@task(help={"role-ids": "also print each AppRole's role_id (an identifier, not a secret; "
                        "vault.secret-id gives the secret ID that goes with it)"})
@reports_errors
def bootstrap(c, role_ids=False):
    """Enable the KV v2 mount and AppRole auth, write the rotator, deployer and auditor policies and AppRoles.

    Idempotent. The mount is PARTNERCERTS_KV_MOUNT (default 'secret'), the AppRole auth method is
    at VAULT_APPROLE_MOUNT (default 'approle'), the policies are partnercerts/policies/*.hcl rendered
    for the mount and PARTNERCERTS_PREFIX. Needs an operator token; without VAULT_ADDR it works on the
    embedded server.
    """
    settings = Settings.from_env()
    from .. import bootstrap as setup
    from ..vault import connect
    policies.rendered(settings.kv_mount, settings.prefix)  # a bad mount or prefix is refused before connecting
    for line in setup.bootstrap(connect(settings), settings, role_ids=role_ids):
        print(line)


@task(name="secret-id",
      help={"role": "the AppRole to log in as: rotator, deployer or auditor",
            "out": "write VAULT_ROLE_ID=... and VAULT_SECRET_ID=... lines to FILE (mode 0600; an existing file "
                   "must be yours) and print only its path; without it both lines go to stdout"})
@reports_errors
def secret_id(c, role, out=None):
    """Generate a new AppRole secret ID for a role (it never expires: revoking old ones is the operator's job).

    Prints VAULT_ROLE_ID and VAULT_SECRET_ID lines, the environment the tasks log in with, or
    writes them to a 0600 file with --out. Needs an operator token.
    """
    from .. import bootstrap as setup
    from ..vault import connect
    if role not in policies.ROLES:
        raise UserError(f"--role {role!r}: use one of {', '.join(policies.ROLES)}")
    path = Path(out) if out else None
    if path is not None:
        setup.refuse_unsafe_out(path)  # before a secret ID exists that would then lie around unused
    settings = Settings.from_env()
    text = setup.new_secret_id(connect(settings), settings, role)
    if path is None:
        sys.stdout.write(text)
        return
    setup.write_secret_file(path, text)
    print(path)
