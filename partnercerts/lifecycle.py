"""Credential states, the renewal decision and the rotation plan. Time is always passed in."""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from .store import Index


class State(str, enum.Enum):
    NONE = "none"
    PENDING = "pending"
    NEEDS_ATTENTION = "needs_attention"  # pending, and the authority answered without a certificate
    ACTIVE = "active"
    EXPIRING = "expiring"
    EXPIRED = "expired"


class Stage(str, enum.Enum):
    """Where the CSR of a credential is in the conversation with the authority (after certmonger's
    submit and poll states)."""
    CREATED = "created"                  # a pending key and CSR, never sent
    SUBMITTED = "submitted"              # sent less than a day ago
    WAITING = "waiting"                  # sent, the authority has not answered yet
    REMINDED = "reminded"                # still waiting past pending_reminder_days: reminders were raised
    NEEDS_ATTENTION = "needs_attention"  # the authority answered without a certificate: a human acts
    ISSUED = "issued"                    # no CSR pending: the last one became the current certificate


def stage_of(index: Index | None, now: dt.datetime) -> Stage | None:
    """The CSR's stage from the index alone; None when the credential has neither CSR nor certificate."""
    if index is None:
        return None
    if not index.pending_since:
        return Stage.ISSUED if index.serial else None
    if not index.pending_submitted_at:
        return Stage.CREATED
    if index.pending_attention:
        return Stage.NEEDS_ATTENTION
    if index.pending_reminded_at:
        return Stage.REMINDED
    sent = last_sent(index)
    return Stage.SUBMITTED if sent is None or now - sent < dt.timedelta(days=1) else Stage.WAITING


def last_sent(index: Index) -> dt.datetime | None:
    """When the pending CSR was last sent: its last resend, else its submission."""
    from .store import parse_time
    return parse_time(index.pending_sent_at or index.pending_submitted_at)


class Action(str, enum.Enum):
    ISSUE = "issue"        # no certificate yet: new key, CSR, submit
    RENEW = "renew"        # certificate due: new key, CSR, submit
    SUBMIT = "submit"      # a pending CSR was never submitted (e.g. an interrupted run)
    WAIT = "wait"          # a submitted CSR waits for the authority
    NOTHING = "nothing"


@dataclass(frozen=True)
class Decision:
    due: bool
    reason: str


def renewal_decision(now: dt.datetime, not_before: dt.datetime | None, not_after: dt.datetime | None,
                     renew_before_days: int) -> Decision:
    """Whether a certificate must be renewed now. Rules, first match wins:

    1. no certificate: due;
    2. expired (now >= not_after): due;
    3. days left <= renew_before_days: due (the authority is manual, so the lead time is long);
    4. less than a third of the lifetime left: due (short-lived certificates);
    5. otherwise not due.
    """
    if not_after is None:
        return Decision(True, "no certificate")
    left = not_after - now
    if left <= dt.timedelta(0):
        return Decision(True, f"expired on {not_after.date().isoformat()}")
    days_left = left.days
    if days_left <= renew_before_days:
        return Decision(True, f"{days_left} days left, within the {renew_before_days}-day lead time")
    if not_before is not None and not_after > not_before and left < (not_after - not_before) / 3:
        return Decision(True, f"{days_left} days left, under a third of the certificate's lifetime")
    return Decision(False, f"{days_left} days left")


def days_left(now: dt.datetime, not_after: dt.datetime | None) -> int | None:
    if not_after is None:
        return None
    return (not_after - now).days


def state_of(index: Index | None, now: dt.datetime, renew_before_days: int) -> State:
    """Expired shows first (it hurts now), then a renewal in flight, then the certificate's own state."""
    if index is None:
        return State.NONE
    nb, na = index.not_before_dt(), index.not_after_dt()
    if na is not None and now >= na:
        return State.EXPIRED
    if index.pending_since:
        return State.NEEDS_ATTENTION if index.pending_attention else State.PENDING
    if na is None:
        return State.NONE
    return State.EXPIRING if renewal_decision(now, nb, na, renew_before_days).due else State.ACTIVE


@dataclass(frozen=True)
class Step:
    mzp: str
    app: str
    action: Action
    reason: str
    hosts_behind: bool = False  # its hosts were never checked, or some do not serve the current certificate


def hosts_behind(index: Index | None) -> bool:
    """Whether the hosts of a credential may not serve its current certificate (per the last report)."""
    if index is None or not index.serial:
        return False
    return not index.hosts_total or index.hosts_in_sync != index.hosts_total


def plan_one(mzp: str, app: str, index: Index | None, now: dt.datetime, renew_before_days: int) -> Step:
    """What rotation does for one credential, judged from its index alone."""
    if index is not None and index.pending_since:
        since = index.pending_since_dt()
        age = (now - since).days if since else 0
        if not index.pending_submitted_at:
            return Step(mzp, app, Action.SUBMIT, f"CSR made {age} days ago was never submitted", hosts_behind(index))
        if index.pending_attention:
            return Step(mzp, app, Action.WAIT, f"CSR submitted {age} days ago; the authority answered without a "
                        f"certificate ({index.pending_attention}): a human must act", hosts_behind(index))
        return Step(mzp, app, Action.WAIT, f"CSR submitted {age} days ago, waiting for the authority",
                    hosts_behind(index))
    nb = index.not_before_dt() if index else None
    na = index.not_after_dt() if index else None
    decision = renewal_decision(now, nb, na, renew_before_days)
    if not decision.due:
        return Step(mzp, app, Action.NOTHING, decision.reason, hosts_behind(index))
    return Step(mzp, app, Action.ISSUE if na is None else Action.RENEW, decision.reason)
