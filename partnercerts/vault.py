"""Connecting to Vault/OpenBao: the standard VAULT_* environment, or the embedded workstation server."""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import hvac
import hvac.adapters
import hvac.exceptions
import requests

from . import embedded
from .errors import Conflict, EnvironmentFault, NotSetUp, Remedy, UserError, VaultDenied, VaultUnavailable
from .settings import Settings, VaultSettings


class FailoverAdapter(hvac.adapters.JSONAdapter):
    """Retries a request across the Vault nodes given, with bounded exponential backoff.

    A node that refuses the connection, times out, is sealed or standing by, or answers 5xx
    during a leader election is skipped; the next node (or the same after a pause) is tried
    until `budget` seconds have passed. Writes are check-and-set, so a retried write that had
    in fact succeeded comes back as a conflict, never as a second write.

    With several nodes, requests go to the active node only. OpenBao's standbys answer reads
    from their own copy of the data, which lags behind the writes (a key just written and read
    back through a standby is not there yet), so a standby that answers is still skipped: the
    active node is the one whose unauthenticated sys/health answers 200. It is looked up before
    the first request, after any failure and every PROBE_SECONDS; while no node is active (an
    election), the lookup is retried within the budget, then the nodes are tried in order.
    """

    RETRY_STATUS = (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway)
    PROBE_SECONDS = 5.0

    def __init__(self, base_uris: list[str], budget: float, **kwargs):
        kwargs.pop("base_uri", None)
        super().__init__(base_uri=base_uris[0], **kwargs)
        self.base_uris = base_uris
        self.budget = budget
        self._probed = 0.0  # when the active node was last confirmed (monotonic); 0: look before the next request
        self._tls_failed = False  # the last look failed TLS verification on every node

    def _find_active(self) -> str | None:
        """The node whose sys/health says it is the active one (put first), or None."""
        self._tls_failed = True
        for uri in list(self.base_uris):
            try:
                r = self.session.get(f"{uri}/v1/sys/health", timeout=5, verify=self._kwargs.get("verify"),
                                     cert=self._kwargs.get("cert"), proxies=self._kwargs.get("proxies"))
            except requests.exceptions.SSLError:
                continue
            except requests.RequestException:
                self._tls_failed = False
                continue
            self._tls_failed = False
            if r.status_code == 200:
                self.base_uris.remove(uri)
                self.base_uris.insert(0, uri)
                self.base_uri = uri
                self._probed = time.monotonic()
                return uri
        return None

    def request(self, *args, **kwargs):
        deadline = time.monotonic() + self.budget
        pause = 0.1
        while True:
            nodes = list(self.base_uris)
            if len(nodes) > 1:
                if time.monotonic() - self._probed > self.PROBE_SECONDS:
                    active = self._find_active()
                    if active is None and not self._tls_failed and time.monotonic() + pause <= deadline:
                        time.sleep(pause)  # no active node yet (an election): look again
                        pause = min(pause * 2, 2.0)
                        continue
                    nodes = [active] if active else nodes  # none active by the deadline: try each in turn
                else:
                    nodes = nodes[:1]  # the active node found by the last look
            tls_only = True  # a certificate that fails verification on every node will not pass on a retry
            last: Exception  # the failure of the last node tried (nodes is never empty)
            for uri in nodes:
                self.base_uri = uri
                try:
                    response = super().request(*args, **kwargs)
                    if uri != self.base_uris[0]:  # remember the node that answered
                        self.base_uris.remove(uri)
                        self.base_uris.insert(0, uri)
                    if not self._probed:  # answered although no node said it was active: keep it a while
                        self._probed = time.monotonic()
                    return response
                except requests.exceptions.SSLError as exc:
                    last = exc
                except (requests.ConnectionError, requests.Timeout, *self.RETRY_STATUS) as exc:
                    last, tls_only = exc, False
                    self._probed = 0.0  # the active node may have changed: look again before the next try
            if tls_only or time.monotonic() + pause > deadline:
                raise last
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _addresses(addr: str) -> list[str]:
    """VAULT_ADDR, or several comma-separated node addresses of one cluster (a partnercerts extension)."""
    return [a.strip().rstrip("/") for a in addr.split(",") if a.strip()]


def connect(settings: Settings, env: dict | None = None) -> hvac.Client:
    """An authenticated client: VAULT_ADDR if set, else the embedded server (started on demand).

    The VAULT_* settings come from `settings`, or from `env` when one is given (the tests' raw clients).
    """
    vs = settings.vault if env is None else VaultSettings.from_env(env)
    addr = vs.addr
    if not addr:
        server = embedded.Embedded(settings)
        server.up()
        return server.client()
    verify: bool | str = True
    if vs.cacert:
        verify = vs.cacert
        if not Path(verify).is_file():
            raise UserError(f"VAULT_CACERT={verify}: no such file; "
                            "point it at the CA that signed the Vault server's certificate")
    if vs.skip_verify:
        verify = False
    nodes = _addresses(addr)
    client = hvac.Client(url=nodes[0], verify=verify, namespace=vs.namespace, timeout=30,
                         adapter=functools.partial(FailoverAdapter, nodes, vs.retry_seconds))
    # VAULT_TOKEN, then an explicit AppRole, then ~/.vault-token: a scheduled job given its
    # AppRole must not pick up an operator's token file.
    token = vs.token
    approle = bool(vs.role_id and vs.secret_id)
    if not token and not approle and vs.token_file is not None and vs.token_file.is_file():
        token = vs.token_file.read_text().strip()
    try:
        if token:
            client.token = token
        elif approle:
            client.auth.approle.login(role_id=vs.role_id, secret_id=vs.secret_id, mount_point=vs.approle_mount)
        else:
            raise UserError(f"VAULT_ADDR={addr} is set but no credentials were found; set VAULT_TOKEN, "
                            "write ~/.vault-token, or set VAULT_ROLE_ID and VAULT_SECRET_ID")
    except hvac.exceptions.VaultError as exc:
        raise VaultDenied(f"Vault at {addr} refused the AppRole login ({_first_line(exc)}); "
                          "check VAULT_ROLE_ID/VAULT_SECRET_ID") from None
    except requests.exceptions.RequestException as exc:
        raise VaultUnavailable(unreachable(addr, exc)) from None
    return client


@contextlib.contextmanager
def translated(addr: str, action: str, *, mount: str = "", path: str = "",
               denied: str = "use a token or AppRole whose policy allows it"):
    """The one place where hvac and requests exceptions become this toolkit's errors.

    `action` names the request in messages ("GET secret/data/...", "writing secret/data/..."); `path`, for a
    data write (a lost check-and-set is a Conflict, a missing mount NotSetUp); `denied`, what to do when the
    token may not make the request."""
    try:
        yield
    except hvac.exceptions.InvalidRequest as exc:
        if "check-and-set" in str(exc):
            raise Conflict(f"{path or action} was changed by another run while this one worked; "
                           "run the command again") from None
        raise EnvironmentFault(f"Vault at {addr} refused {action} ({_first_line(exc)})") from None
    except hvac.exceptions.InvalidPath:
        if not path:
            raise
        raise NotSetUp(f"cannot write {mount}/data/{path} at {addr}: the KV v2 mount '{mount}' is missing; "
                       "create it", remedy=Remedy.BOOTSTRAP) from None
    except hvac.exceptions.Forbidden:
        raise VaultDenied(f"Vault at {addr} denied {action}; {denied}") from None
    except hvac.exceptions.VaultDown:
        raise VaultUnavailable(f"Vault at {addr} is sealed or down; unseal it", remedy=Remedy.VAULT_UP) from None
    except hvac.exceptions.VaultError as exc:
        raise EnvironmentFault(f"Vault at {addr} failed {action} ({_first_line(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise VaultUnavailable(unreachable(addr, exc)) from None


def unreachable(addr: str, exc: Exception) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return (f"Vault at {addr}: TLS verification failed; set VAULT_CACERT to the CA that signed its certificate")
    return f"Vault at {addr} is unreachable ({type(exc).__name__}); check VAULT_ADDR and that the server is up"


def _first_line(exc: Exception) -> str:
    """The first line that says something of an hvac error ("1 error occurred:" and bullets skipped)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "error occurred" not in ln]
    return lines[0].lstrip("* ")[:200] if lines else type(exc).__name__
