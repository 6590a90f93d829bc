"""Escalation up the region tree: pure tests with a fixed `now`, and an integration test with short timers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from alerts.escalation import (
    Escalation,
    EscalationPolicies,
    EscalationPolicy,
    Escalator,
    PolicyOverride,
    due_escalations,
    next_escalation_at,
)
from alerts.notify import DeliveryLog, Dispatcher, Notification, NotificationKind, parse_notify_config
from alerts.types import Alert, AlertState, Severity
from core import clock
from core.db import make_engine, migrate
from tests.alerts.notify_fixtures import (
    DINGTALK_SECRET,
    DINGTALK_TOKEN,
    FEISHU_SECRET,
    FEISHU_TOKEN,
    T0,
    WECOM_KEY,
    Receiver,
    ancestors_of,
    make_alert,
    receiver,  # noqa: F401  (fixture)
)
from tests.helpers import wait_until

MIN = timedelta(minutes=1)
POLICIES = EscalationPolicies(EscalationPolicy(after=(15 * MIN, 30 * MIN)))


def test_not_due_before_the_first_delay() -> None:
    assert due_escalations([make_alert(1)], POLICIES, ancestors_of, T0 + 15 * MIN - timedelta(seconds=1)) == []


def test_due_to_the_parent_region_after_the_first_delay() -> None:
    [esc] = due_escalations([make_alert(1)], POLICIES, ancestors_of, T0 + 15 * MIN)
    assert esc == Escalation(1, "G1:dev-1", 0, 1, "agency-1", T0 + 15 * MIN)


def test_next_levels_use_the_next_delays_and_the_last_repeats() -> None:
    a = make_alert(1, level=1, escalation_from=T0 + 15 * MIN)  # level 1 reached 15 min after the start
    assert due_escalations([a], POLICIES, ancestors_of, T0 + 44 * MIN) == []
    [esc] = due_escalations([a], POLICIES, ancestors_of, T0 + 45 * MIN)
    assert (esc.level, esc.target_region_id) == (2, "city-1")
    [esc] = due_escalations(
        [replace(a, escalation_level=2, escalation_from=T0 + 45 * MIN)], POLICIES, ancestors_of, T0 + 75 * MIN
    )
    assert (esc.level, esc.target_region_id, esc.due_at) == (3, "prov", T0 + 75 * MIN)


def test_after_downtime_jumps_to_the_due_level_once() -> None:
    [esc] = due_escalations([make_alert(1)], POLICIES, ancestors_of, T0 + 50 * MIN)
    assert (esc.from_level, esc.level, esc.target_region_id) == (0, 2, "city-1")


def test_stops_at_the_top_of_the_tree() -> None:
    top = make_alert(1, level=3)
    assert due_escalations([top], POLICIES, ancestors_of, T0 + timedelta(days=2)) == []
    short = make_alert(2, region="bldg-9")  # prov > city-2 > bldg-9
    [esc] = due_escalations([short], POLICIES, ancestors_of, T0 + timedelta(days=2))
    assert (esc.level, esc.target_region_id) == (2, "prov")


@pytest.mark.parametrize("state", [AlertState.ACKNOWLEDGED, AlertState.RESOLVED])
def test_acknowledged_or_resolved_alerts_do_not_escalate(state: AlertState) -> None:
    assert due_escalations([make_alert(1, state=state)], POLICIES, ancestors_of, T0 + timedelta(days=1)) == []


def test_policy_is_inherited_down_the_tree_and_overridden_per_region() -> None:
    policies = EscalationPolicies(
        EscalationPolicy(after=(15 * MIN,)),
        {
            "city-1": PolicyOverride(after=(5 * MIN,), max_levels=2),
            "bldg-2": PolicyOverride(enabled=False),
            "city-2": PolicyOverride(min_severity=Severity.CRITICAL),
        },
    )
    assert policies.effective(ancestors_of("bldg-1")) == EscalationPolicy(after=(5 * MIN,), max_levels=2)
    assert policies.effective(ancestors_of("prov")) == EscalationPolicy(after=(15 * MIN,))
    later = T0 + timedelta(hours=3)
    got = due_escalations(
        [
            make_alert(1, region="bldg-1"),
            make_alert(2, region="bldg-2"),
            make_alert(3, region="bldg-9", severity=Severity.MAJOR),
            make_alert(4, region="bldg-9", severity=Severity.CRITICAL),
        ],
        policies,
        ancestors_of,
        later,
    )
    assert [(e.alert_id, e.level, e.target_region_id) for e in got] == [(1, 2, "city-1"), (4, 2, "prov")]
    assert due_escalations([make_alert(5, region="bldg-1")], policies, ancestors_of, T0 + 5 * MIN)[0].level == 1


def test_escalation_counts_from_when_the_platform_learned_not_the_device_time() -> None:
    # stamped two hours before the platform received it (a replayed backlog): not due at once, due 15 min later
    backdated = make_alert(1, started_at=T0 - timedelta(hours=2), escalation_from=T0)
    assert due_escalations([backdated], POLICIES, ancestors_of, T0 + timedelta(seconds=3)) == []
    assert next_escalation_at([backdated], POLICIES, ancestors_of) == T0 + 15 * MIN
    [esc] = due_escalations([backdated], POLICIES, ancestors_of, T0 + 15 * MIN)
    assert (esc.level, esc.due_at) == (1, T0 + 15 * MIN)


def test_silenced_or_never_told_alerts_do_not_escalate() -> None:
    later = T0 + timedelta(days=1)
    silenced = make_alert(1, silenced=True)
    assert due_escalations([silenced], POLICIES, ancestors_of, later) == []
    assert next_escalation_at([silenced], POLICIES, ancestors_of) is None
    never_told = replace(make_alert(2), escalation_from=None)  # raised under a silence, not re-notified
    assert due_escalations([never_told], POLICIES, ancestors_of, later) == []
    # the silence ended at `later`: the clock starts again there, no catching up on the silenced day
    unsilenced = make_alert(3, escalation_from=later)
    assert due_escalations([unsilenced], POLICIES, ancestors_of, later + 14 * MIN) == []
    assert [e.level for e in due_escalations([unsilenced], POLICIES, ancestors_of, later + 15 * MIN)] == [1]


def test_info_alerts_do_not_escalate_by_default() -> None:
    assert due_escalations([make_alert(1, severity=Severity.INFO)], POLICIES, ancestors_of, T0 + MIN * 999) == []


def test_next_escalation_at_is_the_earliest_due_time() -> None:
    alerts = [
        make_alert(1, level=1, escalation_from=T0 + 15 * MIN),
        make_alert(2, started_at=T0 + 20 * MIN),
        make_alert(3, level=3),
    ]
    assert next_escalation_at(alerts, POLICIES, ancestors_of) == T0 + 35 * MIN
    assert next_escalation_at([make_alert(3, level=3)], POLICIES, ancestors_of) is None


class AlertBook:
    """A stand-in for the alert service's store: what the Escalator's callables talk to."""

    def __init__(self, alerts: list[Alert]) -> None:
        self.alerts = {a.id: a for a in alerts}
        self.lock = threading.Lock()

    def open_alerts(self) -> list[Alert]:
        with self.lock:
            return [replace(a) for a in self.alerts.values() if a.state == AlertState.FIRING]

    def record(self, esc: Escalation, now: datetime) -> Alert | None:
        with self.lock:
            a = self.alerts[esc.alert_id]
            if a.state != AlertState.FIRING or a.escalation_level >= esc.level:
                return None
            a.escalation_level = esc.level
            a.escalation_from = esc.due_at
            a.updated_at = now
            return replace(a)

    def set_state(self, alert_id: int, state: AlertState) -> Alert:
        with self.lock:
            a = self.alerts[alert_id]
            a.state = state
            return replace(a)


def test_escalator_records_before_notifying_and_skips_acknowledged() -> None:
    book = AlertBook([make_alert(1), make_alert(2)])
    sent: list[Notification] = []
    esc = Escalator(POLICIES, ancestors_of, book.open_alerts, book.record, sent.append)
    assert esc.tick(T0 + 14 * MIN) == []
    book.set_state(2, AlertState.ACKNOWLEDGED)
    done = esc.tick(T0 + 15 * MIN)
    assert [e.alert_id for e in done] == [1]
    assert [(x.kind, x.alert.id, x.target, x.level, x.alert.escalation_level) for x in sent] == [
        (NotificationKind.ESCALATED, 1, "agency-1", 1, 1)
    ]
    assert esc.tick(T0 + 16 * MIN) == []  # level 1 is persisted: a second tick (or a restart) does not repeat it
    assert esc.next_at() == T0 + 45 * MIN


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DeliveryLog]:
    engine = make_engine(f"sqlite:///{tmp_path}/alerts.db")
    migrate(engine)
    yield DeliveryLog(engine)
    engine.dispose()


def test_escalation_with_short_timers_reaches_each_level_until_acknowledged(
    receiver: Receiver,  # noqa: F811
    log: DeliveryLog,
) -> None:
    base = receiver.base
    config = parse_notify_config(
        {
            "channels": [
                {"name": "bldg", "type": "wecom", "url": f"{base}/wecom/send", "key": WECOM_KEY, "group_window_s": 0},
                {
                    "name": "city",
                    "type": "dingtalk",
                    "url": f"{base}/dingtalk/send",
                    "access_token": DINGTALK_TOKEN,
                    "secret": DINGTALK_SECRET,
                    "group_window_s": 0,
                },
                {
                    "name": "prov",
                    "type": "feishu",
                    "url": f"{base}/feishu/hook",
                    "hook_token": FEISHU_TOKEN,
                    "secret": FEISHU_SECRET,
                    "group_window_s": 0,
                },
            ],
            "routes": [
                {"name": "building", "regions": ["bldg-1", "bldg-9"], "channels": ["bldg"]},
                {"name": "city duty", "regions": ["city-1"], "include_subtree": False, "channels": ["city"]},
                {"name": "province duty", "regions": ["prov"], "include_subtree": False, "channels": ["prov"]},
            ],
            # bldg-1 > agency-1 > city-1 > prov: agency has no route, so level 2 (city) is the first heard, 1.2 s
            # after the start; the province would be an hour later. bldg-9 > city-2 > prov: prov at 1.2 s.
            "escalation": {"default": {"after_s": [0.6, 0.6, 3600]}},
        }
    )
    started = clock.now()
    started_mono = time.monotonic()
    acked = make_alert(1, region="bldg-1", started_at=started)
    unacked = make_alert(2, region="bldg-9", started_at=started)  # bldg-9 > city-2 > prov
    book = AlertBook([acked, unacked])
    with Dispatcher(config, log, ancestors_of, idle_wait_s=0.05) as dispatcher:
        escalator = Escalator(
            config.escalation.to_policies(), ancestors_of, book.open_alerts, book.record, dispatcher.notify
        )
        dispatcher.notify(Notification(NotificationKind.FIRING, acked, started))
        dispatcher.notify(Notification(NotificationKind.FIRING, unacked, started))
        scheduler = BackgroundScheduler()
        scheduler.add_job(lambda: escalator.tick(clock.now()), "interval", seconds=0.05)
        scheduler.start()
        try:
            wait_until(lambda: receiver.accepted("/dingtalk"), 10, what="escalation to the city")
            book.set_state(1, AlertState.ACKNOWLEDGED)
            wait_until(lambda: receiver.accepted("/feishu"), 10, what="alert 2 escalated to the province")
        finally:
            scheduler.shutdown(wait=True)
        # acknowledged: no more levels, however late; the other reached the top of its tree and stops there
        assert escalator.tick(clock.now() + timedelta(hours=2)) == []
        resolved = book.set_state(2, AlertState.RESOLVED)
        dispatcher.notify(Notification(NotificationKind.RESOLVED, resolved, clock.now()))
        wait_until(lambda: len(receiver.accepted("/feishu")) == 2, 5, what="resolution told to the province")
    assert book.alerts[1].escalation_level == 2 and book.alerts[2].escalation_level == 2
    city = receiver.accepted("/dingtalk")
    assert len(city) == 1 and city[0].alert_ids() == [1]
    assert "告警升级" in city[0].text() and "第 2 级" in city[0].text()
    # each level was told only after its delays: two steps of 0.6 s since the alerts started
    assert city[0].at - started_mono >= 1.2
    prov = receiver.accepted("/feishu")
    assert prov[0].at - started_mono >= 1.2
    assert [r.alert_ids() for r in prov] == [[2], [2]]
    assert "告警升级" in prov[0].text() and "告警已恢复" in prov[1].text()
    # the building heard the firing of both and the resolution of alert 2
    # (one message or two: the router may log both firings in one batch, and the channel groups them)
    bldg = receiver.accepted("/wecom")
    fired = [i for r in bldg if "新告警" in r.text() for i in r.alert_ids()]
    assert sorted(fired) == [1, 2] and sum("告警已恢复" in r.text() for r in bldg) == 1
    rows = log.rows(alert_ids=[1, 2])
    escalated = sorted(
        (r.alert_id, r.level, r.target_region_id, r.channel or "", r.status) for r in rows if r.kind == "escalated"
    )
    assert [e for e in escalated if e[4] != "unrouted"] == [
        (1, 2, "city-1", "city", "sent"),
        (2, 2, "prov", "prov", "sent"),
    ]
    # level 1 (agency-1, city-2) has no route: logged as unrouted so the gap is visible (unless a late tick
    # jumped straight to level 2, which is the catch-up behaviour)
    assert {e for e in escalated if e[4] == "unrouted"} <= {
        (1, 1, "agency-1", "", "unrouted"),
        (2, 1, "city-2", "", "unrouted"),
    }
    assert all(r.status == "sent" for r in rows if r.channel is not None)
