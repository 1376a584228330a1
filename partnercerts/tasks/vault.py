"""vault.*: the embedded workstation OpenBao, and bootstrapping a real Vault (mount, policies, AppRoles)."""
from __future__ import annotations

import contextlib
import json as jsonlib
import os
import stat
import sys
from pathlib import Path

import hvac.exceptions
import requests
from invoke import task

from .. import policies
from ..embedded import Embedded
from ..errors import Error, UserError
from ..settings import Settings
from ..store import Store
from ..vault import connect, unreachable
from ._common import info, reports_errors

ADMIN_HINT = ("vault.bootstrap and vault.secret-id need an operator token (VAULT_TOKEN) that may manage mounts, "
              "auth methods, ACL policies and AppRoles")


def _embedded() -> Embedded:
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


def _approle_mount(settings: Settings) -> str:
    mount = settings.vault.approle_mount
    if not mount or any(part in ("", ".", "..") for part in mount.split("/")):
        raise UserError(f"environment VAULT_APPROLE_MOUNT={mount!r} is not a Vault path; use e.g. 'approle'")
    return mount


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "error occurred" not in ln]
    return lines[0].lstrip("* ")[:200] if lines else type(exc).__name__


@contextlib.contextmanager
def _asking(addr: str, what: str):
    """Turn what Vault answers an administrative call into one line naming the call and the fix."""
    try:
        yield
    except hvac.exceptions.Forbidden:
        raise UserError(f"Vault at {addr} denied {what}; {ADMIN_HINT}") from None
    except hvac.exceptions.VaultDown:
        raise UserError(f"Vault at {addr} is sealed or down; unseal it (or run scripts/inv vault.up)") from None
    except hvac.exceptions.InvalidRequest as exc:
        raise UserError(f"Vault at {addr} refused {what} ({_first_line(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise UserError(unreachable(addr, exc)) from None


def _enable_kv(client, settings: Settings, addr: str) -> str:
    mount = settings.kv_mount
    with _asking(addr, "listing secrets engines (GET sys/mounts)"):
        mounts = client.sys.list_mounted_secrets_engines()
    found = (mounts.get("data") or mounts).get(f"{mount}/")
    if found is None:
        with _asking(addr, f"enabling the KV v2 mount (POST sys/mounts/{mount})"):
            client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
        Store(client, settings).check_mount()
        return f"KV v2 mount '{mount}' enabled"
    if found.get("type") not in ("kv", "generic") or str((found.get("options") or {}).get("version")) != "2":
        kind = f"KV version {(found.get('options') or {}).get('version') or 1}" if found.get("type") in (
            "kv", "generic") else f"a '{found.get('type')}' secrets engine"
        raise UserError(f"mount '{mount}' at {addr} is {kind}, not KV v2; set PARTNERCERTS_KV_MOUNT to another path")
    return f"KV v2 mount '{mount}' already enabled"


def _enable_approle(client, mount: str, addr: str) -> str:
    def methods() -> dict:
        with _asking(addr, "listing auth methods (GET sys/auth)"):
            resp = client.sys.list_auth_methods()
        return resp.get("data") or resp

    found = methods().get(f"{mount}/")
    if found is None:
        try:
            with _asking(addr, f"enabling the AppRole auth method (POST sys/auth/{mount})"):
                client.sys.enable_auth_method("approle", path=mount)
            return f"AppRole auth method at '{mount}/' enabled"
        except Error:
            found = methods().get(f"{mount}/")  # enabled meanwhile by another run?
            if found is None:
                raise
    if found.get("type") != "approle":
        raise UserError(f"auth method at '{mount}/' on {addr} is '{found.get('type')}', not AppRole; "
                        "set VAULT_APPROLE_MOUNT to another path")
    return f"AppRole auth method at '{mount}/' already enabled"


def _write_policy(client, name: str, hcl: str, addr: str) -> str:
    with _asking(addr, f"reading policy {name} (GET sys/policies/acl/{name})"):
        try:
            old = client.sys.read_acl_policy(name)["data"].get("policy")
        except hvac.exceptions.InvalidPath:
            old = None
    if old == hcl:
        return f"policy {name} unchanged"
    with _asking(addr, f"writing policy {name} (PUT sys/policies/acl/{name})"):
        client.sys.create_or_update_acl_policy(name, hcl)
    return f"policy {name} written"


def _write_role(client, name: str, mount: str, addr: str) -> str:
    wanted = {"token_policies": [name], **policies.ROLE_SETTINGS}
    url = f"/v1/auth/{mount}/role/{name}"
    with _asking(addr, f"reading AppRole {name} (GET auth/{mount}/role/{name})"):
        try:
            have = client.adapter.get(url)["data"]
        except hvac.exceptions.InvalidPath:
            have = None
    if have and all(have.get(k) == v for k, v in wanted.items()):
        return f"approle {name} unchanged"
    with _asking(addr, f"writing AppRole {name} (POST auth/{mount}/role/{name})"):
        client.adapter.post(url, json=wanted)
    return f"approle {name} written"


def _role_id(client, name: str, mount: str, addr: str) -> str:
    with _asking(addr, f"reading the role_id of {name} (GET auth/{mount}/role/{name}/role-id)"):
        try:
            return client.auth.approle.read_role_id(name, mount_point=mount)["data"]["role_id"]
        except hvac.exceptions.InvalidPath:
            raise UserError(f"AppRole {name} does not exist at auth/{mount} on {addr}; "
                            "create it with scripts/inv vault.bootstrap") from None


@task(help={"role-ids": "also print each AppRole's role_id (an identifier, not a secret; "
                        "vault.secret-id gives the secret ID that goes with it)"})
@reports_errors
def bootstrap(c, role_ids=False):
    """Enable the KV v2 mount and AppRole auth, write the rotator, deployer and auditor policies and AppRoles.

    Idempotent. The mount is PARTNERCERTS_KV_MOUNT (default 'secret'), the AppRole auth method is
    at VAULT_APPROLE_MOUNT (default 'approle'), the policies are policies/*.hcl rendered for the
    mount and PARTNERCERTS_PREFIX. Needs an operator token; without VAULT_ADDR it works on the
    embedded server.
    """
    settings = Settings.from_env()
    hcl = policies.rendered(settings.kv_mount, settings.prefix)  # refuses a bad mount or prefix before any write
    approle = _approle_mount(settings)
    client = connect(settings)
    addr = client.adapter.base_uri
    print(_enable_kv(client, settings, addr))
    print(_enable_approle(client, approle, addr))
    for name, text in hcl.items():
        print(_write_policy(client, name, text, addr))
    for name in hcl:
        print(_write_role(client, name, approle, addr))
    if role_ids:
        for name in hcl:
            print(f"{name} role_id {_role_id(client, name, approle, addr)}")


def _refuse_unsafe_out(path: Path) -> None:
    """An existing --out must be a regular file of ours: never follow a link or write into someone else's file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"--out {path}: cannot use it ({exc.strerror}); choose another path") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise UserError(f"--out {path}: exists and is not a regular file owned by you; "
                        "refusing to write a secret into it; choose a new path")


def _write_secret_file(path: Path, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write ({exc.strerror}); choose a writable path") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():  # swapped since the first look
            raise UserError(f"--out {path}: is not a regular file owned by you; refusing to write a secret into it")
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        fh.write(text)
        fh.flush()
        os.fsync(fd)


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
    if role not in policies.ROLES:
        raise UserError(f"--role {role!r}: use one of {', '.join(policies.ROLES)}")
    path = Path(out) if out else None
    if path is not None:
        _refuse_unsafe_out(path)  # before a secret ID exists that would then lie around unused
    settings = Settings.from_env()
    approle = _approle_mount(settings)
    client = connect(settings)
    addr = client.adapter.base_uri
    name = policies.name(role)
    rid = _role_id(client, name, approle, addr)
    with _asking(addr, f"generating a secret ID for {name} (POST auth/{approle}/role/{name}/secret-id)"):
        sid = client.auth.approle.generate_secret_id(name, mount_point=approle)["data"]["secret_id"]
    text = f"VAULT_ROLE_ID={rid}\nVAULT_SECRET_ID={sid}\n"
    if path is None:
        sys.stdout.write(text)
        return
    _write_secret_file(path, text)
    print(path)
