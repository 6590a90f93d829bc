"""Pure tests: routes, grouping, rate limits, backoff (fixed `now`, no I/O)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts.notify.routing import (
    Batcher,
    Notification,
    NotificationKind,
    RetryPolicy,
    Route,
    TokenBucket,
    WindowLimiter,
    plan,
)
from alerts.types import Severity
from tests.alerts.notify_fixtures import T0, ancestors_of, make_alert

ALL = frozenset(NotificationKind)


def n(alert_id: int = 1, kind: NotificationKind = NotificationKind.FIRING, **kw: object) -> Notification:
    return Notification(kind, make_alert(alert_id, **kw), T0)  # type: ignore[arg-type]


def test_route_matches_region_subtree() -> None:
    route = Route("city", ("c",), regions=("city-1",))
    assert route.matches(n(region="bldg-1"), ancestors_of("bldg-1"))
    assert route.matches(n(region="city-1"), ancestors_of("city-1"))
    assert not route.matches(n(region="bldg-9"), ancestors_of("bldg-9"))


def test_route_without_subtree_matches_only_the_region_itself() -> None:
    route = Route("city-duty", ("c",), regions=("city-1",), include_subtree=False)
    assert not route.matches(n(region="bldg-1"), ancestors_of("bldg-1"))
    escalated = Notification(NotificationKind.ESCALATED, make_alert(1), T0, target_region_id="city-1", level=2)
    assert route.matches(escalated, ancestors_of("city-1"))


def test_route_filters_severity_rule_and_kind() -> None:
    route = Route(
        "r", ("c",), min_severity=Severity.MAJOR, rules=("G*", "V3"), kinds=frozenset({NotificationKind.FIRING})
    )
    anc = ancestors_of("bldg-1")
    assert route.matches(n(severity=Severity.MAJOR, rule="G11"), anc)
    assert route.matches(n(severity=Severity.CRITICAL, rule="V3"), anc)
    assert not route.matches(n(severity=Severity.WARNING, rule="G1"), anc)
    assert not route.matches(n(rule="V1"), anc)
    assert not route.matches(n(kind=NotificationKind.RESOLVED), anc)


def test_plan_sends_each_channel_once_and_skips_unmatched() -> None:
    routes = [
        Route("bldg", ("wecom", "mail"), regions=("bldg-1",)),
        Route("city", ("mail", "ding"), regions=("city-1",)),
        Route("other city", ("feishu",), regions=("city-2",)),
    ]
    out = plan(n(region="bldg-1"), routes, ancestors_of)
    assert [ch for ch, _ in out] == ["wecom", "mail", "ding"]


def test_plan_escalation_goes_to_the_target_region_routes() -> None:
    routes = [
        Route("bldg", ("wecom",), regions=("bldg-1",)),
        Route("city duty", ("ding",), regions=("city-1",), include_subtree=False),
    ]
    firing = plan(n(region="bldg-1"), routes, ancestors_of)
    assert [ch for ch, _ in firing] == ["wecom"]
    esc = Notification(NotificationKind.ESCALATED, make_alert(1, level=2), T0, target_region_id="city-1", level=2)
    out = plan(esc, routes, ancestors_of)
    assert [(ch, x.target, x.level) for ch, x in out] == [("ding", "city-1", 2)]


def test_plan_resolution_of_escalated_alert_reaches_every_level() -> None:
    routes = [
        Route("bldg", ("wecom",), regions=("bldg-1",), include_subtree=False),
        Route("agency", ("mail",), regions=("agency-1",), include_subtree=False),
        Route("city", ("ding",), regions=("city-1",), include_subtree=False),
        Route("prov", ("feishu",), regions=("prov",), include_subtree=False),
    ]
    resolved = Notification(NotificationKind.RESOLVED, make_alert(7, level=2), T0)
    out = plan(resolved, routes, ancestors_of)
    assert [(ch, x.target) for ch, x in out] == [("wecom", "bldg-1"), ("mail", "agency-1"), ("ding", "city-1")]


def test_batcher_groups_within_window_and_caps_size() -> None:
    b: Batcher[int] = Batcher(timedelta(seconds=5), max_items=3)
    b.add(1, T0)
    b.add(2, T0 + timedelta(seconds=2))
    assert b.take(T0 + timedelta(seconds=4)) == []
    assert b.ready_at() == T0 + timedelta(seconds=5)
    b.extend([3, 4, 5], T0 + timedelta(seconds=4))
    assert b.take(T0 + timedelta(seconds=5)) == [1, 2, 3]
    # the rest is ready at once (no new window), nothing is lost
    assert b.is_ready(T0 + timedelta(seconds=5))
    assert b.take(T0 + timedelta(seconds=5)) == [4, 5]
    assert len(b) == 0 and b.ready_at() is None


def test_batcher_force_flushes_early() -> None:
    b: Batcher[str] = Batcher(timedelta(seconds=30))
    b.add("a", T0)
    assert b.take(T0) == []
    assert b.take(T0, force=True) == ["a"]


def test_window_limiter_allows_20_a_minute() -> None:
    lim = WindowLimiter(20, timedelta(minutes=1))
    granted = [lim.try_acquire(T0 + timedelta(seconds=i)) for i in range(25)]
    assert granted == [True] * 20 + [False] * 5
    assert lim.next_free(T0 + timedelta(seconds=30)) == T0 + timedelta(minutes=1)
    assert lim.try_acquire(T0 + timedelta(minutes=1))
    assert not lim.try_acquire(T0 + timedelta(minutes=1))


def test_token_bucket_burst_then_refill() -> None:
    bucket = TokenBucket(capacity=3, rate_per_s=0.5, now=T0)
    assert [bucket.try_acquire(T0) for _ in range(4)] == [True, True, True, False]
    assert bucket.next_free(T0) == T0 + timedelta(seconds=2)
    assert not bucket.try_acquire(T0 + timedelta(seconds=1))
    assert bucket.try_acquire(T0 + timedelta(seconds=2))
    # it never holds more than its capacity
    later = T0 + timedelta(hours=1)
    assert [bucket.try_acquire(later) for _ in range(4)] == [True, True, True, False]


def test_retry_backoff_schedule() -> None:
    policy = RetryPolicy(max_attempts=8, base=timedelta(seconds=1), factor=2, max_delay=timedelta(seconds=30))
    assert [d.total_seconds() for d in policy.schedule()] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.next_attempt_at(3, T0) == T0 + timedelta(seconds=4)
    assert policy.next_attempt_at(8, T0) is None
    with pytest.raises(ValueError):
        policy.delay(0)


def test_burst_of_30_through_batcher_and_limiter_loses_nothing() -> None:
    """The dispatcher's per-channel loop, simulated with a fixed clock: 30 alerts at once to a robot."""
    batcher: Batcher[int] = Batcher(timedelta(0), max_items=20)
    limiter = WindowLimiter(20, timedelta(minutes=1))
    messages: list[tuple[float, list[int]]] = []
    now = T0
    for i in range(30):
        batcher.add(i, now)
        if limiter.try_acquire(now):  # each arrival sends at once while the limit allows
            messages.append(((now - T0).total_seconds(), batcher.take(now)))
    while len(batcher):
        now = max(now, limiter.next_free(now))
        assert limiter.try_acquire(now)
        messages.append(((now - T0).total_seconds(), batcher.take(now)))
    assert len(messages) == 21
    assert sorted(i for _, ids in messages for i in ids) == list(range(30))
    assert messages[-1] == (60.0, list(range(20, 30)))
    assert sum(1 for t, _ in messages if t < 60) == 20
