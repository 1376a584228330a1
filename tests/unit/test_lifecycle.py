"""The renewal decision and the plan, with the clock frozen."""
import datetime as dt

import pytest

from partnercerts.lifecycle import Action, State, plan_one, renewal_decision, state_of
from partnercerts.store import Index

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def d(days):
    return T0 + dt.timedelta(days=days)


@pytest.mark.parametrize("now_day,lead,due,reason", [
    (0, 60, False, "365 days left"),
    # A one-year certificate: a third of its lifetime (121.7 days) comes before a 60-day lead time.
    (243, 60, False, "122 days left"),
    (244, 60, True, "121 days left, under a third"),
    # A lead time longer than a third of the lifetime comes first.
    (214, 150, False, "151 days left"),
    (215, 150, True, "150 days left, within the 150-day lead time"),
    (364, 60, True, "1 days left, within"),
    (365, 60, True, "expired"),
    (400, 60, True, "expired"),
])
def test_lead_time_and_lifetime_rules(now_day, lead, due, reason):
    decision = renewal_decision(d(now_day), d(0), d(365), lead)
    assert decision.due is due
    assert reason in decision.reason


def test_no_certificate_is_due():
    assert renewal_decision(T0, None, None, 60) == renewal_decision(T0, None, None, 1)
    assert renewal_decision(T0, None, None, 60).reason == "no certificate"


def test_a_third_of_lifetime_wins_for_short_certificates():
    # 90-day certificate, 20-day lead time: a third of the lifetime (30 days) comes first.
    assert not renewal_decision(d(59), d(0), d(90), 20).due
    assert renewal_decision(d(61), d(0), d(90), 20).due
    assert "third" in renewal_decision(d(61), d(0), d(90), 20).reason


def idx(**kw):
    return Index(not_before=d(0).isoformat(), not_after=d(365).isoformat(), serial="01", **kw)


def test_states():
    assert state_of(None, T0, 60) is State.NONE
    assert state_of(idx(), d(10), 60) is State.ACTIVE
    assert state_of(idx(), d(250), 60) is State.EXPIRING
    assert state_of(idx(), d(366), 60) is State.EXPIRED
    assert state_of(idx(pending_since=d(310).isoformat()), d(311), 60) is State.PENDING
    # An expired certificate shows as expired even while its renewal is pending: it hurts now.
    assert state_of(idx(pending_since=d(310).isoformat()), d(366), 60) is State.EXPIRED
    assert state_of(Index(pending_since=T0.isoformat()), T0, 60) is State.PENDING


def test_plan():
    assert plan_one("MZP1", "a", None, T0, 60).action is Action.ISSUE
    assert plan_one("MZP1", "a", idx(), d(10), 60).action is Action.NOTHING
    assert plan_one("MZP1", "a", idx(), d(250), 60).action is Action.RENEW
    step = plan_one("MZP1", "a", idx(pending_since=d(310).isoformat()), d(320), 60)
    assert step.action is Action.SUBMIT and "10 days ago" in step.reason
    step = plan_one("MZP1", "a", idx(pending_since=d(310).isoformat(), pending_submitted_at=d(311).isoformat()),
                    d(320), 60)
    assert step.action is Action.WAIT


def test_stage_of_a_csr_follows_the_conversation():
    from partnercerts.lifecycle import Stage, stage_of
    from partnercerts.store import Index
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.timezone.utc)
    day = dt.timedelta(days=1)

    def ago(d):
        return (now - d * day).isoformat()

    assert stage_of(None, now) is None and stage_of(Index(), now) is None
    assert stage_of(Index(serial="01"), now) is Stage.ISSUED
    assert stage_of(Index(serial="01", pending_since=ago(3)), now) is Stage.CREATED
    sent = Index(pending_since=ago(3), pending_submitted_at=ago(0.5))
    assert stage_of(sent, now) is Stage.SUBMITTED
    sent.pending_submitted_at = ago(2)
    assert stage_of(sent, now) is Stage.WAITING
    sent.pending_sent_at = ago(0.2)  # resent today: submitted again
    assert stage_of(sent, now) is Stage.SUBMITTED
    sent.pending_reminded_at = ago(0)
    assert stage_of(sent, now) is Stage.REMINDED
    sent.pending_attention = "2026-12-01: Re: CSR"  # the authority's answer outranks the reminders
    assert stage_of(sent, now) is Stage.NEEDS_ATTENTION
