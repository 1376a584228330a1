"""Connecting to Vault/OpenBao: the standard VAULT_* environment, or the embedded workstation server."""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import _lazy, embedded, policies
from .errors import Conflict, EnvironmentFault, Error, NotSetUp, Remedy, UserError, VaultDenied, VaultUnavailable
from .settings import Settings, VaultSettings

log = logging.getLogger(__name__)
# Loaded on first use: a `status` that only reads, over the pipelined reader, never needs them (see Deferred).
if TYPE_CHECKING:
    import hvac
    import requests
else:  # loaded on first use (_lazy)
    hvac = _lazy.module("hvac")
    requests = _lazy.module("requests")


@dataclass(frozen=True)
class Lease:
    """How long the run's token lives: `full`, the seconds it is given at a login or a renewal (its TTL or
    period), and when it expires (time.monotonic()). `renewable`: Vault may extend it (auth/token/renew-self)."""

    full: float
    expires: float
    renewable: bool

    @classmethod
    def of(cls, ttl, full=None, renewable=False) -> "Lease | None":
        """From a login's or a renewal's auth block (lease_duration) or lookup-self (ttl, creation_ttl, period);
        None for a token that never expires (ttl 0: a root token) or an answer without a TTL."""
        try:
            left = float(ttl)
            whole = float(full or left)
        except (TypeError, ValueError):
            return None
        if left <= 0:
            return None
        return cls(max(whole, left), time.monotonic() + left, bool(renewable))

    @classmethod
    def of_login(cls, answer) -> "Lease | None":
        """From the answer to a login (its auth block)."""
        auth = (answer if isinstance(answer, dict) else {}).get("auth") or {}
        return cls.of(auth.get("lease_duration"), None, auth.get("renewable"))

    @property
    def left(self) -> float:
        return self.expires - time.monotonic()

    @property
    def fresh(self) -> bool:
        """More than a third of the lease is left: nothing to do yet."""
        return self.left > self.full / 3


def _bare_denial(errors) -> bool:
    """Vault's answer to a token it does not know (invalid, expired, revoked): a bare "permission denied". A valid
    token that a policy refuses gets the policy check's "1 error occurred: * permission denied" instead."""
    return isinstance(errors, list) and not any("error occurred" in str(e) for e in errors)


def _addresses(addr: str) -> list[str]:
    """VAULT_ADDR, or several comma-separated node addresses of one cluster (a partnercerts extension)."""
    return [a.strip().rstrip("/") for a in addr.split(",") if a.strip()]


class Light:
    """What the pipelined reader needs of a connection (keepalive.py), before any hvac client is made: the one
    node, the token and namespace, TLS verification and the timeout, as the adapter would hold them."""

    def __init__(self, base_uri: str, token: str, namespace: str | None, verify: bool | str):
        self.base_uri, self.token, self.namespace = base_uri, token, namespace
        self._kwargs = {"verify": verify, "timeout": 30}


class Deferred:
    """The hvac client of `connect`, made on first use; until then `light` serves the pipelined reader.

    `connect(..., light=True)` returns one for a token on a single node without a proxy (what the reader
    serves): a `status` then reads its two answers over the reader and never imports hvac or requests. Any
    request the reader hands back (an error, a denial, anything unusual), and anything else asked of the
    client, makes the real client first, exactly as `connect` makes it, and goes through it."""

    def __init__(self, make: Callable[[], hvac.Client], light: Light):
        self._make = make
        self._client: hvac.Client | None = None
        self.light = light

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)


def connect(settings: Settings, env: dict | None = None, light: bool = False) -> hvac.Client | Deferred:
    """An authenticated client: VAULT_ADDR if set, else the embedded server (started on demand).

    The VAULT_* settings come from `settings`, or from `env` when one is given (the tests' raw clients).
    `light`: a Deferred client where the pipelined reader can serve the reads (see Deferred).
    """
    vs = settings.vault if env is None else VaultSettings.from_env(env)
    addr = vs.addr
    if not addr:
        from .failover import FailoverAdapter  # with hvac, once a client is made (never for a Deferred)
        server = embedded.Embedded(settings)
        server.up()
        # Through the failover adapter too: a server just unsealed can answer 503 for a moment, retried in budget.
        return hvac.Client(url=server.addr, token=server.token(), timeout=30,
                           adapter=functools.partial(FailoverAdapter, [server.addr], vs.retry_seconds))
    verify: bool | str = True
    if vs.cacert:
        verify = vs.cacert
        if not Path(verify).is_file():
            raise UserError(f"VAULT_CACERT={verify}: no such file; "
                            "point it at the CA that signed the Vault server's certificate")
    if vs.skip_verify:
        verify = False
    nodes = _addresses(addr)
    # VAULT_TOKEN, then an explicit AppRole, then ~/.vault-token: a scheduled job given its
    # AppRole must not pick up an operator's token file.
    token = vs.token
    approle = bool(vs.role_id and vs.secret_id)
    if not token and not approle and vs.token_file is not None and vs.token_file.is_file():
        token = vs.token_file.read_text().strip()
    if light and token and len(nodes) == 1 and not vs.proxied:
        return Deferred(functools.partial(connect, settings, env), Light(nodes[0], token, vs.namespace, verify))
    from .failover import FailoverAdapter
    client = hvac.Client(url=nodes[0], verify=verify, namespace=vs.namespace, timeout=30,
                         adapter=functools.partial(FailoverAdapter, nodes, vs.retry_seconds))
    client.adapter.credentials = ("VAULT_TOKEN" if vs.token else str(vs.token_file) if token else
                                  "the AppRole login (VAULT_ROLE_ID)")
    try:
        if token:
            client.token = token
        elif approle:
            adapter = client.adapter
            adapter.relogin = functools.partial(client.auth.approle.login, role_id=vs.role_id,
                                                secret_id=vs.secret_id, mount_point=vs.approle_mount)
            adapter.lease = Lease.of_login(adapter.relogin())
        else:
            raise UserError(f"VAULT_ADDR={addr} is set but no credentials were found; set VAULT_TOKEN, "
                            "write ~/.vault-token, or set VAULT_ROLE_ID and VAULT_SECRET_ID")
    except hvac.exceptions.VaultError as exc:
        raise _not_vault(client, addr) or VaultDenied(
            f"Vault at {addr} refused the AppRole login ({_first_line(exc)}); "
            "check VAULT_ROLE_ID/VAULT_SECRET_ID") from None
    except requests.exceptions.RequestException as exc:
        raise VaultUnavailable(unreachable(addr, exc)) from None
    return client


@contextlib.contextmanager
def translated(addr: str, action: str, *, client: hvac.Client | None = None, asked: Asked | None = None,
               mount: str = "", path: str = "", denied: str | None = None):
    """The one place where hvac and requests exceptions become this toolkit's errors.

    `action` names the request in messages ("GET secret/data/...", "writing secret/data/..."); `path`, for a
    data write (a lost check-and-set is a Conflict, a missing mount NotSetUp); `denied`, what to do when the
    token may not make the request. With `client`, a refusal is looked into before it is reported (`diagnosed`):
    VAULT_ADDR that is no Vault server, a token Vault no longer accepts, or (with `asked`, what the request
    needed) the partnercerts policy that would have allowed it."""
    try:
        yield
    except hvac.exceptions.InvalidRequest as exc:
        if "check-and-set" in str(exc):
            raise Conflict(f"{path or action} was changed by another run while this one worked; "
                           "run the command again") from None
        raise diagnosed(client, addr) or EnvironmentFault(
            f"Vault at {addr} refused {action} ({_first_line(exc)})") from None
    except hvac.exceptions.InvalidPath:
        if not path:
            raise
        raise diagnosed(client, addr) or NotSetUp(
            f"cannot write {mount}/data/{path} at {addr}: the KV v2 mount '{mount}' is missing; create it",
            remedy=Remedy.BOOTSTRAP) from None
    except hvac.exceptions.Forbidden:
        raise refused(client, addr, action, asked, denied) from None
    except hvac.exceptions.VaultDown as exc:
        # 503: the server answered, so it is up but sealed, or a standby whose cluster has no active node.
        raise VaultUnavailable(f"Vault at {addr} is sealed or has no active node ({_first_line(exc).split(',')[0]}); "
                               "unseal it (bao operator unseal), then run again", remedy=Remedy.VAULT_UP) from None
    except hvac.exceptions.VaultError as exc:
        raise diagnosed(client, addr) or EnvironmentFault(
            f"Vault at {addr} failed {action} ({_first_line(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise VaultUnavailable(unreachable(addr, exc)) from None


def unreachable(addr: str, exc: Exception) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        if _PLAIN_HTTP.search(str(exc)):
            plain = re.sub(r"^https://", "http://", addr.split(",")[0].strip(), flags=re.I)
            return (f"VAULT_ADDR={addr}: the server speaks plain HTTP, not TLS; enable TLS on its listener, "
                    f"or for a loopback or development server only, set VAULT_ADDR={plain}")
        return (f"Vault at {addr}: TLS verification failed; set VAULT_CACERT to the CA that signed its certificate")
    return f"Vault at {addr} is unreachable ({type(exc).__name__}); check VAULT_ADDR and that the server is up"


# What OpenSSL says when the server answers a ClientHello in plain HTTP ("HTTP/1.1 400 ..." read as a record).
_PLAIN_HTTP = re.compile(r"wrong.version.number|record.layer.failure|packet.length.too.long|unknown.protocol", re.I)


# -- after a failure: what is really wrong ---------------------------------------------------------
# These look-ups run only once a request has failed, never on the way of one that works.

class _Answer(NamedTuple):
    status: int
    json: dict | None   # the body, when it is a JSON object
    kind: str           # its content type


@dataclass(frozen=True)
class Asked:
    """What a request needed of the token's policy: a capability on a path (and the body's parameters,
    some of which a policy may deny). For a refusal's message only."""

    capability: str            # read, list, create or update
    path: str                  # e.g. secret/data/partnercerts/MZP1/apps/fleet/pending
    mount: str
    prefix: str
    params: tuple[str, ...] = ()


def _probe(client: hvac.Client, method: str, path: str, *, body: dict | None = None,
           token: bool = True) -> _Answer | None:
    """One request of a diagnosis to the node that failed, no retry: its answer, or None without one."""
    adapter = client.adapter
    headers = {"X-Vault-Request": "true"}
    if token and getattr(adapter, "token", None):
        headers["X-Vault-Token"] = adapter.token
    if getattr(adapter, "namespace", None):
        headers["X-Vault-Namespace"] = adapter.namespace
    kw = getattr(adapter, "_kwargs", {})
    try:
        r = adapter.session.request(method, f"{adapter.base_uri}/v1/{path}", headers=headers, json=body,
                                    timeout=5, verify=kw.get("verify", True), cert=kw.get("cert"),
                                    proxies=kw.get("proxies"), allow_redirects=False)
    except requests.RequestException:
        return None
    try:
        data = r.json()
    except ValueError:
        data = None
    return _Answer(r.status_code, data if isinstance(data, dict) else None,
                   r.headers.get("Content-Type", "").split(";")[0].strip())


def _not_vault(client: hvac.Client, addr: str) -> Error | None:
    """UserError when the server at VAULT_ADDR answers sys/health, but not as Vault/OpenBao does."""
    seen = _probe(client, "GET", "sys/health", token=False)
    if seen is None or (seen.json is not None and "initialized" in seen.json):
        return None
    if seen.status >= 500:  # a proxy in front of a Vault that is down says so in HTML: not a wrong address
        return None
    what = f"HTTP {seen.status}" + (f", {seen.kind}" if seen.kind else "")
    return UserError(f"VAULT_ADDR={addr} does not point at a Vault or OpenBao server: /v1/sys/health answered "
                     f"{what}, not Vault's health status; set VAULT_ADDR to the Vault server's address, "
                     "e.g. https://vault.example.com:8200")


def _token_refused(client: hvac.Client, addr: str) -> VaultDenied:
    source = getattr(client.adapter, "credentials", "")
    if source.startswith("the AppRole"):
        why = getattr(client.adapter, "login_refused", "")
        if why:  # the token lapsed and the AppRole could not log in again (FailoverAdapter._relogin)
            return VaultDenied(f"Vault at {addr} no longer accepts the token of {source} and refused a new login "
                               f"({why}): the secret ID expired, ran out of uses or was revoked; write a new one "
                               "(scripts/inv vault.secret-id --role rotator --out FILE) and run again")
        return VaultDenied(f"Vault at {addr} no longer accepts the token of {source}: it was revoked; "
                           "run again to log in anew")
    if source == "VAULT_TOKEN":
        return VaultDenied(f"Vault at {addr} does not accept the token in VAULT_TOKEN: it is invalid, expired or "
                           "revoked; set VAULT_TOKEN to a valid token, or unset it and set VAULT_ROLE_ID and "
                           "VAULT_SECRET_ID to log in with the AppRole")
    if source:
        return VaultDenied(f"Vault at {addr} does not accept the token in {source}: it is invalid, expired or "
                           "revoked; log in again (vault login writes that file), or set VAULT_TOKEN, or "
                           "VAULT_ROLE_ID and VAULT_SECRET_ID to log in with the AppRole")
    return VaultDenied(f"Vault at {addr} does not accept this token: it is invalid, expired or revoked; "
                       "use a valid token")


def _looked_up(client: hvac.Client | None, addr: str) -> tuple[Error | None, tuple[str, ...] | None]:
    """After a refusal, what auth/token/lookup-self says: (the real error, None) when VAULT_ADDR is not a Vault
    server or the token is not accepted (Vault answers 403); else (None, the token's policies, or None when
    they are unknown: the token may not look itself up)."""
    if client is None:
        return None, None
    seen = _probe(client, "GET", "auth/token/lookup-self")
    if seen is None:
        return None, None
    data = (seen.json or {}).get("data")
    if seen.status == 200 and isinstance(data, dict):
        return None, tuple(str(p) for p in data.get("policies") or ())
    errors = (seen.json or {}).get("errors")
    if not isinstance(errors, list):  # not how Vault answers: is it Vault at all?
        return _not_vault(client, addr), None
    # A token Vault does not know (invalid, expired, revoked) gets a bare "permission denied"; a valid token
    # whose policies leave out lookup-self (no default policy) gets it as a policy check's "1 error occurred".
    if seen.status == 403 and _bare_denial(errors):
        return _token_refused(client, addr), None
    return None, None


def diagnosed(client: hvac.Client | None, addr: str) -> Error | None:
    """After a failed request: the error that says what is really wrong (VAULT_ADDR is not Vault, the token is
    invalid or expired), or None when neither is the case."""
    return _looked_up(client, addr)[0]


def refused(client: hvac.Client | None, addr: str, action: str, asked: Asked | None,
            denied: str | None) -> Error:
    """Vault answered 403 to `action`: a bad token or address, else a policy that does not allow it."""
    error, held = _looked_up(client, addr)
    if error is not None:
        return error
    who = f"this token (policies: {', '.join(held)})" if held else "this token"
    if denied is None and asked is not None:
        denied = _granted_by(asked)
    return VaultDenied(f"Vault at {addr} denied {action} to {who}; "
                       f"{denied or 'use a token or AppRole whose policy allows it'}")


def _granted_by(asked: Asked, what: str = "it") -> str:
    """'the partnercerts-rotator policy grants read on it: ...', naming the project's policies that allow it."""
    try:
        hcl = policies.rendered(asked.mount, asked.prefix)
    except (Error, OSError, ValueError):
        return ""
    names = [name for name, text in reversed(hcl.items()) if _allows(text, asked)]  # least privilege first
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"the {listed} polic{'y grants' if len(names) == 1 else 'ies grant'} {asked.capability} on {what}: "
            f"give {'it' if len(names) == 1 else 'the one for this job'} to the token or its AppRole")


_RULE = re.compile(r'^path\s+"([^"]+)"\s*\{(.*?)^\}', re.M | re.S)


def _allows(hcl: str, asked: Asked) -> bool:
    """Whether a policy allows the request: a rule whose path matches grants the capability, with none of the
    request's parameters among its denied_parameters, and no matching rule says deny."""
    granted = False
    for glob, body in _RULE.findall(hcl):
        pattern = re.escape(glob).replace(r"\+", "[^/]+")
        pattern = pattern[:-2] + ".*" if pattern.endswith(r"\*") else pattern
        if not re.fullmatch(pattern, asked.path):
            continue
        caps = re.search(r"capabilities\s*=\s*\[([^\]]*)\]", body)
        have = set(re.findall(r'"(\w+)"', caps.group(1))) if caps else set()
        if "deny" in have:
            return False
        block = re.search(r"denied_parameters\s*=\s*\{([^}]*)\}", body, re.S)
        refused_params = set(re.findall(r'"([^"]+)"\s*=', block.group(1))) if block else set()
        granted = granted or (asked.capability in have and not refused_params & set(asked.params))
    return granted


def missing_mount(client: hvac.Client, addr: str, mount: str, prefix: str) -> Error:
    """The mount check found no KV mount `mount`: why. VAULT_ADDR that is not Vault, a token Vault does not
    accept, a token whose policies allow nothing under the mount (Vault then hides the mount from it: the
    capabilities-self of the paths partnercerts uses tell), or a mount that is missing."""
    error, held = _looked_up(client, addr)
    if error is not None:
        return error
    under = (f"{mount}/metadata/{prefix}/_/apps/_/current", f"{mount}/data/{prefix}/_/apps/_/current")
    seen = _probe(client, "POST", "sys/capabilities-self", body={"paths": list(under)})
    caps = (seen.json or {}).get("data") if seen is not None and seen.status == 200 else None
    if isinstance(caps, dict):
        if all(set(caps.get(p) or ["deny"]) <= {"deny"} for p in under):
            who = f"this token (policies: {', '.join(held)})" if held else "this token"
            grant = _granted_by(Asked("read", under[0], mount, prefix), f"{mount}/metadata/{prefix}/*")
            return VaultDenied(f"Vault at {addr} denied the mount check (GET sys/internal/ui/mounts/{mount}) to "
                               f"{who}: its policies allow nothing under {mount}/{prefix}/; "
                               f"{grant or 'use a token or AppRole whose policy allows it'}")
        return NotSetUp(f"KV v2 mount '{mount}' does not exist at {addr}; create it, or set "
                        "PARTNERCERTS_KV_MOUNT to an existing one", remedy=Remedy.BOOTSTRAP)
    return NotSetUp(f"KV v2 mount '{mount}' does not exist at {addr} (or this token may not use it); "
                    "create it, or set PARTNERCERTS_KV_MOUNT to an existing one", remedy=Remedy.BOOTSTRAP)


def _first_line(exc: Exception) -> str:
    """The first line that says something of an hvac error ("1 error occurred:" and bullets skipped)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "error occurred" not in ln]
    return lines[0].lstrip("* ")[:200] if lines else type(exc).__name__
