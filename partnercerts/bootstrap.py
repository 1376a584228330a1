"""Preparing a real Vault for partnercerts: the KV v2 mount, AppRole auth, the three policies and their
AppRoles (idempotent); and new AppRole secret IDs, written only to a private file of the caller's."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions

from . import policies
from .errors import Error, NotSetUp, Remedy, UserError
from .settings import Settings
from .store import Store
from .vault import translated

ADMIN_HINT = ("vault.bootstrap and vault.secret-id need an operator token (VAULT_TOKEN) that may manage mounts, "
              "auth methods, ACL policies and AppRoles")


def bootstrap(client: hvac.Client, settings: Settings, role_ids: bool = False) -> Iterator[str]:
    """Enable what is missing, write what differs; yields one line per step (and each role_id if asked)."""
    hcl = policies.rendered(settings.kv_mount, settings.prefix)  # refuses a bad mount or prefix before any write
    approle = approle_mount(settings)
    addr = client.adapter.base_uri
    yield _enable_kv(client, settings, addr)
    yield _enable_approle(client, approle, addr)
    for name, text in hcl.items():
        yield _write_policy(client, name, text, addr)
    for name in hcl:
        yield _write_role(client, name, approle, addr)
    if role_ids:
        for name in hcl:
            yield f"{name} role_id {role_id(client, name, approle, addr)}"


def new_secret_id(client: hvac.Client, settings: Settings, role: str) -> str:
    """A new secret ID for one of the roles, as the VAULT_ROLE_ID and VAULT_SECRET_ID lines the tasks log in with."""
    if role not in policies.ROLES:
        raise UserError(f"--role {role!r}: use one of {', '.join(policies.ROLES)}")
    approle = approle_mount(settings)
    addr = client.adapter.base_uri
    name = policies.name(role)
    rid = role_id(client, name, approle, addr)
    with _asking(addr, f"generating a secret ID for {name} (POST auth/{approle}/role/{name}/secret-id)"):
        sid = client.auth.approle.generate_secret_id(name, mount_point=approle)["data"]["secret_id"]
    return f"VAULT_ROLE_ID={rid}\nVAULT_SECRET_ID={sid}\n"


def approle_mount(settings: Settings) -> str:
    mount = settings.vault.approle_mount
    if not mount or any(part in ("", ".", "..") for part in mount.split("/")):
        raise UserError(f"environment VAULT_APPROLE_MOUNT={mount!r} is not a Vault path; use e.g. 'approle'")
    return mount


def _asking(addr: str, what: str):
    """What Vault answers an administrative call, as one line naming the call and the fix."""
    return translated(addr, what, denied=ADMIN_HINT)


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
        raise NotSetUp(f"mount '{mount}' at {addr} is {kind}, not KV v2; set PARTNERCERTS_KV_MOUNT to another path")
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
        raise NotSetUp(f"auth method at '{mount}/' on {addr} is '{found.get('type')}', not AppRole; "
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


def role_id(client, name: str, mount: str, addr: str) -> str:
    with _asking(addr, f"reading the role_id of {name} (GET auth/{mount}/role/{name}/role-id)"):
        try:
            return client.auth.approle.read_role_id(name, mount_point=mount)["data"]["role_id"]
        except hvac.exceptions.InvalidPath:
            raise NotSetUp(f"AppRole {name} does not exist at auth/{mount} on {addr}; create it",
                           remedy=Remedy.BOOTSTRAP) from None


def refuse_unsafe_out(path: Path) -> None:
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


def write_secret_file(path: Path, text: str) -> None:
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
