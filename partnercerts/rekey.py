"""Emergency re-key: a key suspected to be exposed is replaced now, even though its certificate is valid.

A new key and CSR are made at once (the old pending one, if any, stays in Vault's history), marked with
the reason, who and when, and submitted by the partner's usual channel marked urgent, asking the
authority to revoke the old certificate by serial. The old certificate stays current and deployed until
the new one is imported: the service keeps a credential in the meantime, unless `withdraw`: then the
current record is marked withdrawn (the same reason, who and when), every later deploy removes it from
the hosts instead of serving it, and no rollback makes it current again. The new certificate, once
imported, replaces the mark.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from .errors import Error, UserError
from .importer import require_current
from .pending import CsrResult
from .store import iso
from .submitter import Outcome as SubmitOutcome
from .submitter import SubmitResult
from .toolkit import Toolkit

MAX_REASON = 300


@dataclass(frozen=True)
class Rekeyed:
    mzp: str
    app: str
    made: CsrResult
    submitted: SubmitResult
    revoke_serial: str
    by: str
    reason: str
    withdrawn: bool = False
    submit_error: Error | None = None  # the CSR is kept; the next rotate submits it (its plan says `submit`)


def check_reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise UserError("--reason: say why the key is replaced (e.g. 'laptop with the key stolen'); it is kept in "
                        "Vault and sent to the authority")
    if len(text) > MAX_REASON or any(ord(c) < 32 for c in text) or "-----BEGIN" in text:
        raise UserError(f"--reason: one line of plain text, at most {MAX_REASON} characters")
    return text


def rekey(tk: Toolkit, mzp: str, app: str, reason: str, now: dt.datetime, withdraw: bool = False) -> Rekeyed:
    """Make a new key and CSR now, record why, and submit it marked urgent with a revocation request;
    with `withdraw`, also mark the current certificate withdrawn (the caller deploys, which removes it)."""
    text = check_reason(reason)
    current = require_current(tk.inventory, tk.store, mzp, app)
    partner = tk.inventory.partner(mzp)
    by = tk.store.who()
    made = tk.pending.make_csr(mzp, app, now, force=True, index=False)
    pend = tk.store.live_pending(mzp, app)
    assert pend is not None and pend.record.key_sha256 == made.key_sha256
    note = {"reason": text, "by": by, "at": iso(now), "revoke_serial": current.serial}
    tk.store.put_pending(mzp, app, replace(pend.record, rekey=note), cas=pend.version)
    try:
        if withdraw:
            withdraw_current(tk, mzp, app, {"reason": text, "by": by, "at": iso(now)})
        submitted, failed = SubmitResult(SubmitOutcome.NO_PENDING), None
        try:
            submitted = tk.submitter.submit(partner, app, now)
        except Error as exc:
            failed = exc
    finally:
        tk.index.reindex(mzp, app, now)
    return Rekeyed(mzp, app, made, submitted, current.serial, by, text, withdraw, failed)


def withdraw_current(tk: Toolkit, mzp: str, app: str, note: dict) -> None:
    """Mark the current record and its history entry withdrawn: deploys remove it, rollbacks refuse it."""
    cur = tk.store.current(mzp, app)
    if cur is None:
        raise UserError(f"{mzp}/{app}: no current certificate to withdraw")
    if not cur.record.withdrawn:
        marked = replace(cur.record, withdrawn=note)
        tk.store.put_current(mzp, app, marked, cas=cur.version)
        hist = tk.store.history(mzp, app, marked.serial)
        tk.store.put_history(mzp, app, replace(hist.record, withdrawn=note) if hist else marked,
                             cas=hist.version if hist else 0)
