"""The alert lifecycle state machine: fixed times, no sleeping."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from alerts.lifecycle import AlertBook, AlertNotFound, LifecycleConfig
from alerts.repository import jsonable
from alerts.types import AlertChange, AlertState, Severity
from core.errors import UserError

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
PATH = ("gd", "gz", "b1")


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def ch(t: float, firing: bool = True, rule: str = "T1", device: str = "dev-1", **kw: object) -> AlertChange:
    base = AlertChange(
        rule_id=rule,
        dedup_key=f"{rule}:{device}",
        device_id=device,
        region_id=PATH[-1],
        severity=Severity.MAJOR,
        firing=firing,
        at=at(t),
        title_zh="温度过高",
        title_en="Temperature high",
        region_path=PATH,
        inhibitable=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def offline(t: float, firing: bool = True, device: str = "dev-1") -> AlertChange:
    return ch(t, firing, "OFF", device, offline_signal=True, inhibitable=False, kind="absence")


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.kind for e in events]


def test_lifecycle_fire_creates_alert_and_clear_resolves_it() -> None:
    book = AlertBook()
    (ev,) = book.apply(ch(0))
    assert ev.kind == "created" and ev.notify and ev.alert.id == 1 and ev.alert.state is AlertState.FIRING
    (ev,) = book.apply(ch(60, firing=False))
    assert ev.kind == "resolved" and ev.alert.resolved_by == "system" and ev.alert.resolved_at == at(60)
    assert book.open_alerts() == []


def test_lifecycle_duplicate_fire_never_creates_second_alert() -> None:
    book = AlertBook()
    book.apply(ch(0))
    (ev,) = book.apply(ch(0))  # a replay of the same change
    (ev2,) = book.apply(ch(5))
    assert kinds([ev, ev2]) == ["repeated", "repeated"] and not ev.notify
    assert len(book.open_alerts()) == 1 and book.open_alerts()[0].count == 3


def test_lifecycle_custom_dedup_key_separates_alerts() -> None:
    book = AlertBook()
    book.apply(ch(0, dedup_key="G6:gate-1:a"))
    book.apply(ch(0, dedup_key="G6:gate-1:b"))
    assert len(book.open_alerts()) == 2


def test_lifecycle_acknowledge_then_auto_resolve() -> None:
    book = AlertBook()
    book.apply(ch(0))
    (ev,) = book.acknowledge(1, "zhang", "on my way", now=at(10))
    assert ev.alert.state is AlertState.ACKNOWLEDGED and ev.alert.acknowledged_by == "zhang"
    assert ev.comment is not None and ev.comment.kind == "ack" and ev.comment.text == "on my way"
    with pytest.raises(UserError, match="already acknowledged"):
        book.acknowledge(1, "li", "me too", now=at(11))
    (ev,) = book.apply(ch(60, firing=False))
    assert ev.kind == "resolved" and ev.alert.acknowledged_by == "zhang"


def test_lifecycle_resolve_by_hand_needs_reason_then_new_fire_is_new_alert() -> None:
    book = AlertBook(LifecycleConfig(flap_threshold=99))
    book.apply(ch(0))
    with pytest.raises(UserError, match="reason"):
        book.resolve(1, "zhang", " ", now=at(5))
    (ev,) = book.resolve(1, "zhang", "sensor replaced", now=at(5))
    assert ev.alert.state is AlertState.RESOLVED and ev.alert.resolve_reason == "sensor replaced"
    assert book.apply(ch(6, firing=False)) == []  # the rule clears later: nothing left to resolve
    (ev,) = book.apply(ch(100))
    assert ev.kind == "created" and ev.alert.id == 2
    with pytest.raises(AlertNotFound):
        book.resolve(1, "zhang", "again", now=at(101))


def test_lifecycle_comments_and_assignment_are_recorded() -> None:
    book = AlertBook()
    book.apply(ch(0))
    book.take_dirty()
    (ev,) = book.comment(1, "wang", "camera shows nobody", now=at(3))
    assert ev.comment is not None and ev.comment.author == "wang"
    (ev,) = book.assign(1, "wang", "li", now=at(4))
    assert ev.alert.assignee == "li" and ev.notify
    alerts, _, comments = book.take_dirty()
    assert [a.assignee for a in alerts] == ["li"]
    assert [(c.kind, c.text) for c in comments] == [("comment", "camera shows nobody"), ("assign", "assigned to li")]


def test_lifecycle_flapping_becomes_one_alert() -> None:
    book = AlertBook(LifecycleConfig(flap_window_s=600, flap_threshold=3, flap_quiet_s=300))
    events = []
    for i in range(6):  # fires and clears every 20 s
        events += book.apply(ch(i * 40))
        events += book.apply(ch(i * 40 + 20, firing=False))
    assert kinds(events)[:5] == ["created", "resolved", "created", "resolved", "flapping"]
    ids = {e.alert.id for e in events}
    assert ids == {1, 2}  # the third fire reopened alert 2 as the flapping alert
    (flap,) = book.open_alerts()
    assert flap.flapping and flap.id == 2 and not flap.active
    assert [e.notify for e in events[:5]] == [True] * 5
    assert not any(e.notify for e in events[5:])  # further fires and clears are absorbed quietly
    # quiet for flap_quiet_s: the flapping alert ends, resolved as the condition is clear
    last = 5 * 40 + 20
    assert book.tick(now=at(last + 299)) == []
    (ev,) = book.tick(now=at(last + 300))
    assert ev.kind == "resolved" and not ev.alert.flapping and book.open_alerts() == []


def test_lifecycle_flapping_ends_while_firing_keeps_alert() -> None:
    book = AlertBook(LifecycleConfig(flap_window_s=600, flap_threshold=2, flap_quiet_s=300))
    book.apply(ch(0))
    book.apply(ch(10, firing=False))
    book.apply(ch(20))  # reopens as flapping
    (ev,) = book.tick(now=at(320))
    assert ev.kind == "flapping_ended" and ev.alert.state is AlertState.FIRING


def test_lifecycle_inhibition_offline_device_holds_stale_alerts_back() -> None:
    book = AlertBook()
    book.apply(offline(0))
    (ev,) = book.apply(ch(10))
    assert ev.kind == "inhibited" and not ev.notify
    assert [a.rule_id for a in book.open_alerts()] == ["OFF"]
    # a non-inhibitable rule (e.g. tamper) on the same device still fires
    assert kinds(book.apply(ch(11, rule="TAMPER", inhibitable=False))) == ["created"]
    # the device comes back and the stale-value condition still holds: now it becomes an alert
    events = book.apply(offline(100, firing=False))
    assert kinds(events) == ["resolved", "created"] and events[1].alert.rule_id == "T1"


def test_lifecycle_inhibited_alert_that_cleared_meanwhile_is_dropped() -> None:
    book = AlertBook()
    book.apply(offline(0))
    book.apply(ch(10))
    book.apply(ch(20, firing=False))
    assert kinds(book.apply(offline(100, firing=False))) == ["resolved"]
    assert book.open_alerts() == []


def test_lifecycle_inhibition_is_per_device() -> None:
    book = AlertBook()
    book.apply(offline(0, device="dev-2"))
    assert kinds(book.apply(ch(10))) == ["created"]


def test_lifecycle_silence_scope_region_subtree_device_rule() -> None:
    book = AlertBook()
    s = book.add_silence(
        reason="维护", creator="admin", starts_at=at(0), ends_at=at(3600), now=at(0), region_id="gz", rule_id="T1"
    )
    (ev,) = book.apply(ch(10))
    assert ev.kind == "created" and not ev.notify and ev.alert.silenced
    (other_rule,) = book.apply(ch(10, rule="T2"))
    assert other_rule.notify
    (other_region,) = book.apply(ch(10, device="dev-9", region_path=("gd", "sz", "b9"), region_id="b9"))
    assert other_region.notify
    assert s.covers(book.get(1)) and not s.covers(book.get(2))


def test_lifecycle_silence_end_renotifies_still_firing_alert() -> None:
    book = AlertBook()
    book.add_silence(
        reason="maintenance", creator="admin", starts_at=at(0), ends_at=at(600), now=at(0), device_id="dev-1"
    )
    book.apply(ch(10))
    book.apply(ch(10, rule="T2"))
    book.apply(ch(20, rule="T2", firing=False))  # resolved quietly during the window
    assert book.next_deadline() == at(600)
    assert book.tick(now=at(599)) == []
    (ev,) = book.tick(now=at(600))
    assert ev.kind == "renotify" and ev.notify and ev.alert.rule_id == "T1" and not ev.alert.silenced
    assert book.tick(now=at(700)) == []  # only once


def test_lifecycle_silence_without_renotify_and_future_start() -> None:
    book = AlertBook()
    book.apply(ch(0))
    book.add_silence(
        reason="r", creator="c", starts_at=at(100), ends_at=at(200), now=at(0), device_id="dev-1", renotify=False
    )
    assert not book.get(1).silenced
    assert book.next_deadline() == at(100)  # the start is a deadline too
    book.tick(now=at(100))
    assert book.next_deadline() == at(200)
    assert book.get(1).silenced
    (ev,) = book.tick(now=at(200))
    assert ev.kind == "unsilenced" and not ev.notify


def test_lifecycle_silence_validation() -> None:
    book = AlertBook()
    with pytest.raises(UserError, match="reason"):
        book.add_silence(reason="", creator="c", starts_at=at(0), ends_at=at(1), now=at(0), device_id="d")
    with pytest.raises(UserError, match="after"):
        book.add_silence(reason="r", creator="c", starts_at=at(1), ends_at=at(0), now=at(0), device_id="d")
    with pytest.raises(UserError, match="scope"):
        book.add_silence(reason="r", creator="c", starts_at=at(0), ends_at=at(1), now=at(0))


def test_lifecycle_end_silence_early() -> None:
    book = AlertBook()
    s = book.add_silence(reason="r", creator="c", starts_at=at(0), ends_at=at(600), now=at(0), device_id="dev-1")
    book.apply(ch(1))
    (ev,) = book.end_silence(s.id, now=at(30))
    assert ev.kind == "renotify"


def test_lifecycle_aux_state_round_trip_keeps_inhibition_and_flap_history() -> None:
    book = AlertBook(LifecycleConfig(flap_threshold=2))
    book.apply(offline(0))
    book.apply(ch(10))  # held
    book.apply(ch(20, rule="T3", inhibitable=False))
    book.apply(ch(30, rule="T3", inhibitable=False, firing=False))
    stored = jsonable(book.aux_to_json())  # what the alert repository writes

    fresh = AlertBook(LifecycleConfig(flap_threshold=2))
    fresh.restore(list(book.alerts.values()), [], stored, next_id=book.next_id, next_silence_id=1)
    assert kinds(fresh.apply(ch(40, rule="T3", inhibitable=False))) == ["flapping"]
    assert kinds(fresh.apply(offline(50, firing=False))) == ["resolved", "created"]
    assert fresh.next_id == 4 and max(a.id for a in fresh.alerts.values()) == 3


def test_lifecycle_resolve_by_hand_is_told_with_who_and_why() -> None:
    book = AlertBook()
    book.apply(ch(0))
    (ev,) = book.resolve(1, "zhang", "sensor replaced", now=at(5))
    assert ev.kind == "resolved" and ev.notify
    assert (ev.alert.resolved_by, ev.alert.resolve_reason) == ("zhang", "sensor replaced")
    assert ev.comment is not None and ev.comment.kind == "resolve"


def test_lifecycle_resolution_under_a_silence_or_of_an_alert_nobody_heard_of_is_not_told() -> None:
    book = AlertBook()
    book.add_silence(reason="maintenance", creator="admin", starts_at=at(0), ends_at=at(600), now=at(0), rule_id="T1")
    book.apply(ch(10))
    (ev,) = book.resolve(1, "zhang", "done", now=at(20))
    assert not ev.notify  # silenced: nothing at all is sent
    # raised under a silence that ends without re-notification: nobody heard of it, nobody hears it ended
    book.add_silence(
        reason="r", creator="c", starts_at=at(0), ends_at=at(700), now=at(30), device_id="dev-2", renotify=False
    )
    book.apply(ch(40, rule="T2", device="dev-2"))
    assert [e.kind for e in book.tick(now=at(700))] == ["unsilenced"]
    assert book.get(2).escalation_from is None and not book.get(2).silenced
    (ev,) = book.resolve(2, "zhang", "done", now=at(710))
    assert not ev.notify


def test_lifecycle_automatic_and_flapping_end_resolutions_are_told() -> None:
    book = AlertBook(LifecycleConfig(flap_window_s=600, flap_threshold=2, flap_quiet_s=300))
    book.apply(ch(0))
    (ev,) = book.apply(ch(10, firing=False))
    assert ev.kind == "resolved" and ev.notify
    (ev,) = book.apply(ch(20))
    assert ev.kind == "flapping" and ev.notify
    book.apply(ch(30, firing=False))
    (ev,) = book.tick(now=at(30 + 300))
    assert ev.kind == "resolved" and ev.notify  # those told of the flapping alert hear that it ended


def test_lifecycle_learned_at_is_the_platform_time_not_the_device_time() -> None:
    book = AlertBook()
    (ev,) = book.apply(ch(0), now=at(7200))  # stamped two hours before the platform received it
    assert ev.alert.started_at == at(0)
    assert ev.alert.learned_at == at(7200) and ev.alert.escalation_from == at(7200)
    book.apply(ch(7300))  # repeated: the clock does not move
    assert book.get(1).escalation_from == at(7200) and book.get(1).count == 2


def test_lifecycle_silence_holds_the_escalation_clock_and_restarts_it_when_it_ends() -> None:
    book = AlertBook()
    # a backdated record received during the window is silenced: the window is the platform's time
    book.add_silence(reason="m", creator="c", starts_at=at(100), ends_at=at(200), now=at(0), device_id="dev-1")
    book.tick(now=at(100))
    (ev,) = book.apply(ch(50), now=at(150))
    assert ev.kind == "created" and not ev.notify and ev.alert.silenced and ev.alert.escalation_from is None
    assert [(s.id, s.reason) for s in book.silences_of(book.get(1), at(150))] == [(1, "m")]
    (ev,) = book.tick(now=at(200))
    assert ev.kind == "renotify" and ev.notify and ev.alert.escalation_from == at(200)
    assert book.silences_of(book.get(1), at(200)) == []
    # told, then silenced without re-notification: the clock restarts at the end, no catching up
    book.apply(ch(300, device="dev-3"), now=at(300))
    book.add_silence(
        reason="m2", creator="c", starts_at=at(400), ends_at=at(900), now=at(300), device_id="dev-3", renotify=False
    )
    book.tick(now=at(400))
    (ev,) = book.tick(now=at(900))
    assert ev.kind == "unsilenced" and not ev.notify and book.get(2).escalation_from == at(900)
