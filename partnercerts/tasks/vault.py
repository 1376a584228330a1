"""vault.*: the embedded workstation OpenBao, and bootstrapping a real Vault."""
from __future__ import annotations

import json as jsonlib
import os

from invoke import task

from ..embedded import Embedded
from ..errors import UserError
from ..settings import Settings
from ..store import Store
from ..vault import connect
from ._common import info, reports_errors


def _embedded() -> Embedded:
    if os.environ.get("VAULT_ADDR"):
        raise UserError("VAULT_ADDR is set, so the embedded server is not used; unset VAULT_ADDR to manage it")
    return Embedded(Settings.from_env())


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
    """Stop the embedded OpenBao (its data stays under .state/vault)."""
    server = _embedded()
    print("stopped" if server.down() else "not running")


@task(help={"json": "print the status as JSON"})
@reports_errors
def status(c, json=False):
    """Show whether the embedded OpenBao is running, initialised and unsealed."""
    st = _embedded().status()
    if json:
        print(jsonlib.dumps(st, indent=2))
    else:
        for k, v in st.items():
            print(f"{k}: {v}")


@task
@reports_errors
def bootstrap(c):
    """Enable the KV v2 mount (PARTNERCERTS_KV_MOUNT, default 'secret') on the Vault in VAULT_ADDR."""
    settings = Settings.from_env()
    client = connect(settings)
    store = Store(client, settings)
    try:
        store.check_mount()
        print(f"KV v2 mount '{settings.kv_mount}' already enabled")
        return
    except UserError:
        pass
    client.sys.enable_secrets_engine("kv", path=settings.kv_mount, options={"version": "2"})
    store.check_mount()
    print(f"KV v2 mount '{settings.kv_mount}' enabled")
