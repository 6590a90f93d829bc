"""The dispatcher end to end: real local HTTP receiver, real SQL delivery log (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from alerts.notify import DeliveryLog, Dispatcher, Notification, NotificationKind, parse_notify_config
from alerts.notify.routing import RetryPolicy
from core import clock
from devices.registry import Registry
from tests.alerts.notify_fixtures import (
    WEBHOOK_SECRET,
    WECOM_KEY,
    Receiver,
    ancestors_of,
    make_alert,
    receiver,  # noqa: F401  (fixture)
    windows_exceeding,
)
from tests.helpers import wait_until

FAST_RETRY = RetryPolicy(max_attempts=4, base=timedelta(seconds=0.1), factor=2, max_delay=timedelta(seconds=1))


@pytest.fixture
def any_log(registry: Registry) -> DeliveryLog:
    """The delivery log on SQLite and on PostgreSQL (the migrated database of the ``registry`` fixture)."""
    return DeliveryLog(registry.engine)


@pytest.fixture
def log(sqlite_registry: Registry) -> DeliveryLog:
    return DeliveryLog(sqlite_registry.engine)


def webhook_config(base: str, secret: str = WEBHOOK_SECRET, **channel: Any) -> Any:
    return parse_notify_config(
        {
            "channels": [
                {"name": "hook", "type": "webhook", "url": f"{base}/hook", "secret": secret, "group_window_s": 0}
                | channel
            ],
            "routes": [{"name": "city 1", "regions": ["city-1"], "channels": ["hook"]}],
        }
    )


def sent_kinds(rcv: Receiver) -> list[str]:
    return [n["kind"] for r in rcv.accepted("/hook") for n in r.json()["notifications"]]


def firing(alert_id: int, **kw: Any) -> Notification:
    return Notification(NotificationKind.FIRING, make_alert(alert_id, **kw), clock.now())


def dispatcher(config: Any, log: DeliveryLog, **kw: Any) -> Dispatcher:
    return Dispatcher(config, log, ancestors_of, retry=FAST_RETRY, idle_wait_s=0.05, stop_timeout_s=2, **kw)


def test_retries_after_two_server_errors_and_logs_every_attempt(
    receiver: Receiver,  # noqa: F811
    any_log: DeliveryLog,
) -> None:
    log = any_log
    receiver.fail("/hook", [500, 500])
    with dispatcher(webhook_config(receiver.base), log) as d:
        d.notify(firing(1))
        wait_until(lambda: receiver.accepted("/hook"), 10, what="delivered after retries")
    reqs = receiver.received("/hook")
    assert [r.status for r in reqs] == [500, 500, 200]
    assert len({r.headers["x-lianfang-delivery"] for r in reqs}) == 1  # the same message each time
    # exponential backoff: 0.1 s, then 0.2 s
    assert reqs[1].at - reqs[0].at >= 0.1 and reqs[2].at - reqs[1].at >= 0.2
    [row] = log.rows(alert_ids=[1])
    assert (row.channel, row.status, row.attempts, row.group_size, row.last_error) == ("hook", "sent", 3, 1, None)
    assert row.sent_at is not None
    attempts = log.attempts_of([row.message_id or ""])
    assert [(a.attempt, a.ok, a.status_code) for a in attempts] == [(1, False, 500), (2, False, 500), (3, True, None)]


def test_gives_up_after_the_last_attempt(receiver: Receiver, log: DeliveryLog) -> None:  # noqa: F811
    receiver.fail("/hook", [503] * 10)
    with dispatcher(webhook_config(receiver.base), log) as d:
        d.notify(firing(1))
        wait_until(lambda: log.rows() and log.rows()[0].status == "failed", 10, what="given up")
    assert len(receiver.received("/hook")) == FAST_RETRY.max_attempts
    [row] = log.rows()
    assert (row.attempts, row.last_error) == (4, "hook: HTTP 503")


def test_a_refused_message_is_not_retried(receiver: Receiver, log: DeliveryLog) -> None:  # noqa: F811
    with dispatcher(webhook_config(receiver.base, secret="wrong-secret"), log) as d:
        d.notify(firing(1))
        wait_until(lambda: log.rows() and log.rows()[0].status == "failed", 10, what="refused")
    assert len(receiver.received("/hook")) == 1
    assert log.rows()[0].attempts == 1


def test_burst_of_30_to_a_robot_stays_within_its_rate_and_loses_nothing(
    receiver: Receiver,  # noqa: F811
    log: DeliveryLog,
) -> None:
    # A WeCom robot allowing 20 messages per 2 s here (20 per minute in production: same code, `per_s: 60`).
    config = parse_notify_config(
        {
            "channels": [
                {
                    "name": "robot",
                    "type": "wecom",
                    "url": f"{receiver.base}/wecom/send",
                    "key": WECOM_KEY,
                    "group_window_s": 0,
                    "rate_limit": {"messages": 20, "per_s": 2.0},
                }
            ],
            "routes": [{"name": "all", "channels": ["robot"]}],
        }
    )
    with dispatcher(config, log) as d:
        for i in range(1, 31):
            d.notify(firing(i))
        wait_until(
            lambda: sorted(i for r in receiver.accepted("/wecom") for i in r.alert_ids()) == list(range(1, 31)),
            10,
            what="all 30 alerts delivered",
        )
    msgs = receiver.accepted("/wecom")
    assert len(msgs) == len(receiver.received())  # nothing refused by the robot
    ids = [i for r in msgs for i in r.alert_ids()]
    assert sorted(ids) == list(range(1, 31))  # each alert exactly once
    assert len(msgs) <= 21  # up to 20 at once, the rest grouped into what the limit allows next
    assert windows_exceeding([r.at for r in msgs], 20, timedelta(seconds=1.95)) == 0
    assert max(len(r.alert_ids()) for r in msgs) > 1  # later messages carry the rest
    rows = log.rows()
    assert len(rows) == 30 and all(r.status == "sent" for r in rows)


def test_alerts_within_the_group_window_go_out_as_one_message(
    receiver: Receiver,  # noqa: F811
    log: DeliveryLog,
) -> None:
    with dispatcher(webhook_config(receiver.base, group_window_s=0.5), log) as d:
        for i in range(1, 6):
            d.notify(firing(i))
        wait_until(lambda: receiver.accepted("/hook"), 10, what="grouped message")
    [msg] = receiver.accepted("/hook")
    doc = msg.json()
    assert [n["alert"]["id"] for n in doc["notifications"]] == [1, 2, 3, 4, 5]
    assert doc["title"] == "【联防】5 条告警通知"
    rows = log.rows()
    assert {r.message_id for r in rows} == {doc["message_id"]} and {r.group_size for r in rows} == {5}


def test_routes_by_region_and_logs_unrouted(receiver: Receiver, log: DeliveryLog) -> None:  # noqa: F811
    with dispatcher(webhook_config(receiver.base), log) as d:
        d.notify(firing(1, region="bldg-1"))  # city-1 subtree
        d.notify(firing(2, region="bldg-9"))  # city-2: no route
        wait_until(lambda: len(log.rows()) == 2 and receiver.accepted("/hook"), 10, what="routed")
    assert [r.alert_ids() for r in receiver.accepted("/hook")] == [[1]]
    by_alert = {r.alert_id: (r.channel, r.status) for r in log.rows()}
    assert by_alert == {1: ("hook", "sent"), 2: (None, "unrouted")}


def test_a_replayed_hand_off_is_sent_once(receiver: Receiver, log: DeliveryLog) -> None:  # noqa: F811
    n = firing(1)
    with dispatcher(webhook_config(receiver.base), log) as d:
        d.notify(n)
        d.notify(n)
        d.notify(Notification(NotificationKind.RESOLVED, n.alert, clock.now()))
        # one message or two, depending on whether the router took all three hand-offs in one batch
        wait_until(lambda: len(sent_kinds(receiver)) >= 2, 10, what="firing and resolved")
    assert sent_kinds(receiver) == ["firing", "resolved"]
    assert len(log.rows()) == 2


def test_stop_flushes_a_pending_group_at_once(receiver: Receiver, log: DeliveryLog) -> None:  # noqa: F811
    d = dispatcher(webhook_config(receiver.base, group_window_s=600), log)
    d.start()
    d.notify(firing(1))
    d.notify(firing(2))
    wait_until(lambda: len(log.rows()) == 2, 10, what="queued")
    started = time.monotonic()
    d.stop()
    assert time.monotonic() - started < 2
    [msg] = receiver.accepted("/hook")
    assert msg.alert_ids() == [1, 2]


def test_unsent_deliveries_resume_after_restart(receiver: Receiver, any_log: DeliveryLog) -> None:  # noqa: F811
    log = any_log
    receiver.fail("/hook", [503] * 100)
    d = Dispatcher(
        webhook_config(receiver.base), log, ancestors_of, retry=FAST_RETRY, idle_wait_s=0.05, stop_timeout_s=0.3
    )
    d.start()
    d.notify(firing(1))
    wait_until(lambda: receiver.received("/hook"), 10, what="first attempt")
    d.stop()
    assert log.rows()[0].status in ("pending", "retrying")
    receiver.fail("/hook", [])  # the endpoint is back
    with dispatcher(webhook_config(receiver.base), log):
        wait_until(lambda: receiver.accepted("/hook"), 10, what="resumed delivery")
    assert receiver.accepted("/hook")[0].alert_ids() == [1]
    [row] = log.rows()
    assert row.status == "sent"


def test_a_burst_is_logged_in_few_transactions(receiver: Receiver, log: DeliveryLog) -> None:  # noqa: F811
    calls: list[int] = []
    record = log.record

    def counting(planned: Any, now: Any) -> Any:
        calls.append(len(planned))
        return record(planned, now)

    log.record = counting  # type: ignore[method-assign]
    d = dispatcher(webhook_config(receiver.base), log)
    for i in range(1, 41):  # handed over before the router runs: one burst
        d.notify(firing(i))
    with d:
        wait_until(lambda: len(log.rows()) == 40, 10, what="all logged")
    assert calls == [40]
    assert sorted(r.alert_id for r in log.rows()) == list(range(1, 41))
