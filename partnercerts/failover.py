"""The hvac adapter of every Vault connection (`vault.connect`): failover across a cluster's nodes with bounded
backoff, and the token kept alive for as long as the run. Imported when a connection is made, with hvac."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import hvac.adapters
import hvac.exceptions
import requests

from .vault import Lease, _bare_denial, _first_line, log


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
    credentials = ""  # where the token came from, for a message that says it is invalid (set by connect)

    def __init__(self, base_uris: list[str], budget: float, **kwargs):
        kwargs.pop("base_uri", None)
        super().__init__(base_uri=base_uris[0], **kwargs)
        self.base_uris = base_uris
        self.budget = budget
        self._probed = 0.0  # when the active node was last confirmed (monotonic); 0: look before the next request
        self._tls_failed = False  # the last look failed TLS verification on every node
        # The token's life (TokenKeeping): set by connect().
        self.relogin: Callable[[], dict] | None = None  # logs in anew (the AppRole's), returns Vault's answer
        self.lease: Lease | None = None  # None: not known yet (looked up before the first request) or no expiry
        self.login_refused = ""  # why the last new login failed, for the message of the refusal that follows
        self._looked = False  # lookup-self was asked (a token given as VAULT_TOKEN or in ~/.vault-token)
        self._keeping = threading.Lock()

    # -- keeping the token alive for as long as the run ---------------------------------------------
    # A run can outlast its token: an AppRole's token_ttl (an hour by default) or token_max_ttl, a periodic
    # token's period. So before a request, a token with less than a third of its lease left is renewed
    # (renew-self), and when Vault will not extend it far enough (its max TTL is near), the AppRole logs in
    # anew. A token that expired or was revoked anyway (the machine slept, the token was revoked) is
    # replaced once more on the first refusal, and the refused request is repeated: Vault did not carry it
    # out. A token given as such (VAULT_TOKEN, ~/.vault-token) can only be renewed: once it cannot, the run
    # goes on until Vault refuses it, and that refusal says so (`_token_refused`).

    def request(self, method, url, *args, **kwargs):
        if url.lstrip("/").startswith("v1/auth/"):  # logins, renew-self, lookup-self: never kept themselves
            return self._send(method, url, *args, **kwargs)
        self.keep()
        try:
            return self._send(method, url, *args, **kwargs)
        except hvac.exceptions.Forbidden as exc:
            if self.relogin is None or not _bare_denial(exc.errors) or not self._relogin("Vault refused the token"):
                raise
            return self._send(method, url, *args, **kwargs)

    def keep(self, lookup: Callable[[], dict | None] | None = None) -> None:
        """Renew the token, or log in anew, when less than a third of its lease is left. The pipelined reader
        calls it too (its reads do not go through request()), with `lookup`: lookup-self over its own
        connection, so that a given token's first look costs no second connection."""
        lease = self.lease
        if (lease.fresh if lease is not None else self._looked or not self.token):
            return
        with self._keeping:
            if self.lease is None and not self._looked:
                self._looked = True
                self.lease = self._lookup_lease(lookup)
            lease = self.lease
            if lease is None or lease.fresh:  # no expiry, or fresh (looked up, or renewed by another thread)
                return
            if lease.renewable and self._renewed(lease):
                return
            if self.relogin is not None:
                self._relogin(f"the token has {max(lease.left, 0):.0f} s left and Vault will not renew it further")
                return
            if lease.left > 0:
                log.warning("the Vault token in %s expires in %.0f s and Vault will not renew it further; a run "
                            "that outlasts it stops at its next request", self.credentials or "use", lease.left)
            self.lease = None  # warned once: no more attempts

    def _lookup_lease(self, lookup: Callable[[], dict | None] | None = None) -> Lease | None:
        """The lease of a token given as such, from auth/token/lookup-self (None: no expiry, or it may not look)."""
        try:
            answer = lookup() if lookup is not None else self._send("GET", "/v1/auth/token/lookup-self")
        except (hvac.exceptions.VaultError, requests.RequestException):
            return None
        data = (answer if isinstance(answer, dict) else {}).get("data") or {}
        return Lease.of(data.get("ttl"), data.get("period") or data.get("creation_ttl"), data.get("renewable"))

    def _renewed(self, lease: Lease) -> bool:
        """Renew-self for the token's whole lease; True when Vault extended it past a third of it."""
        try:
            auth = (self._send("POST", "/v1/auth/token/renew-self", json={"increment": int(lease.full)})
                    or {}).get("auth") or {}
        except (hvac.exceptions.VaultError, requests.RequestException):
            return False
        renewed = Lease.of(auth.get("lease_duration"), lease.full, auth.get("renewable"))
        if renewed is None:
            return False
        self.lease = renewed
        return renewed.fresh

    def _relogin(self, why: str) -> bool:
        """Log in anew with the AppRole; False (and the reason kept for the refusal's message) if Vault refuses."""
        assert self.relogin is not None
        try:
            answer = self.relogin()  # through JSONAdapter.login, which sets self.token
        except hvac.exceptions.VaultError as exc:
            self.login_refused = _first_line(exc)
            log.warning("%s; logging in again with the AppRole failed: %s", why, self.login_refused)
            return False
        self.lease = Lease.of_login(answer)
        log.info("%s: logged in again with the AppRole", why)
        return True

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

    def _send(self, *args, **kwargs):
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
