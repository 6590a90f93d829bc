"""The correlator with a fixed ``now``: each X pattern's firing case and near miss, windows, scopes, muting,
resolution, tasks and their escalation, restore."""

from __future__ import annotations

import json

from alerts.types import Severity
from joint.models import IncidentState, ScopeLevel, TaskState
from tests.joint.helpers import T0, correlator, fact, kinds, s


def _fire(c, f, at=None):  # type: ignore[no-untyped-def]
    return c.observe("created", f, at or f.at)


# --- X4: many devices of one building offline together ---------------------------------------------------------


def test_x4_five_devices_offline_within_2_min_open_one_incident_and_mute_them() -> None:
    c = correlator()
    facts = [fact("G11.offline", f"g{i}", "gz-a1-b1", T0 + s(20 * i)) for i in range(5)]
    out = []
    for f in facts[:4]:
        out += _fire(c, f)
    assert "opened" not in kinds(out)
    out = _fire(c, facts[4])
    assert kinds(out)[0] == "opened"
    [inc] = c.open_incidents()
    assert (inc.pattern_id, inc.scope_level, inc.region_id) == ("X4", ScopeLevel.BUILDING, "gz-a1-b1")
    assert inc.member_ids == [f.alert_id for f in facts] and inc.muted_ids == inc.member_ids
    assert all(c.held(f.alert_id) for f in facts)
    # a sixth joins, muted; a device in another building does not
    sixth = fact("E5.offline", "m1", "gz-a1-b1", T0 + s(200), device_type="energy_meter")
    other = fact("G11.offline", "x1", "gz-a1-b2", T0 + s(200))
    assert kinds(_fire(c, sixth)) == ["member_added", "muted"]
    assert _fire(c, other) == []
    assert c.held(sixth.alert_id) and not c.held(other.alert_id)
    assert [t.department for t in c.tasks_of(inc.id)] == ["it", "energy"]


def test_x4_near_miss_spread_over_more_than_2_min_or_4_devices() -> None:
    c = correlator()
    for i in range(5):  # 5 devices, 40 s apart: never 5 inside 120 s
        assert _fire(c, fact("G11.offline", f"g{i}", "gz-a1-b1", T0 + s(40 * i))) == []
    c = correlator()
    for i in range(4):
        assert _fire(c, fact("G11.offline", f"g{i}", "gz-a1-b1", T0 + s(i))) == []
    # not offline alerts: a storm of forced doors is not an outage
    c = correlator()
    for i in range(6):
        out = _fire(c, fact("G2", f"g{i}", "gz-a1-b1", T0 + s(i), severity=Severity.WARNING))
        assert "X4" not in [ch.incident.pattern_id for ch in out]


def test_x4_members_come_back_unmuted_and_the_incident_resolves() -> None:
    c = correlator()
    facts = [fact("G11.offline", f"g{i}", "gz-a1-b1", T0 + s(i)) for i in range(5)]
    for f in facts:
        _fire(c, f)
    [_inc] = c.open_incidents()
    c.begin_batch()
    out = c.observe("resolved", facts[0], T0 + s(300))
    assert kinds(out) == ["member_resolved"]
    assert c.held(facts[1].alert_id)  # still offline: still muted
    assert c.held(facts[0].alert_id)  # its resolution is held back in this batch (nobody was told it fired)
    c.begin_batch()
    assert not c.held(facts[0].alert_id)
    for f in facts[1:]:
        out = c.observe("resolved", f, T0 + s(310))
    assert "resolved" in kinds(out)
    assert c.open_incidents() == []
    c.begin_batch()
    assert not any(c.held(f.alert_id) for f in facts)
    incs, tasks, _entries = c.take_dirty()
    assert incs[-1].state is IncidentState.RESOLVED  # tasks still open: resolved, not closed
    assert [t.state for t in tasks] == [TaskState.OPEN, TaskState.OPEN]


# --- X2: intrusion ------------------------------------------------------------------------------------------------


def test_x2_forced_door_and_another_door_within_60_s_is_a_critical_intrusion() -> None:
    c = correlator()
    g1 = fact("G1", "door-1", "gz-a1-b1", T0)
    g2 = fact("G2", "door-2", "gz-a1-b1", T0 + s(45), severity=Severity.WARNING)
    assert _fire(c, g1) == []
    out = _fire(c, g2)
    assert kinds(out) == ["opened", "task_created"]
    inc = out[0].incident
    assert (inc.pattern_id, inc.type, inc.severity) == ("X2", "intrusion", Severity.CRITICAL)
    assert inc.member_ids == sorted([g1.alert_id, g2.alert_id])
    assert out[1].task is not None and out[1].task.department == "security"
    assert out[1].task.deadline == T0 + s(45) + s(600)


def test_x2_near_misses_same_door_other_building_too_late() -> None:
    c = correlator()
    _fire(c, fact("G1", "door-1", "gz-a1-b1", T0))
    assert _fire(c, fact("G2", "door-1", "gz-a1-b1", T0 + s(10))) == []  # the same door
    assert _fire(c, fact("G2", "door-9", "gz-a1-b2", T0 + s(10))) == []  # another building
    assert _fire(c, fact("G2", "door-2", "gz-a1-b1", T0 + s(61))) == []  # 61 s later
    # the other alert first, then the forced door: order any
    c = correlator()
    _fire(c, fact("G6", "door-2", "gz-a1-b1", T0, severity=Severity.WARNING))
    assert kinds(_fire(c, fact("G1", "door-1", "gz-a1-b1", T0 + s(30))))[0] == "opened"


# --- X5: regional cluster -----------------------------------------------------------------------------------------


def test_x5_five_alerts_of_one_rule_in_three_buildings_make_a_city_incident_escalated_to_the_province() -> None:
    c = correlator()
    where = ["gz-a1-b1", "gz-a1-b2", "gz-a2-b1", "gz-a1-b1", "gz-a2-b2"]
    out = []
    for i, b in enumerate(where):
        out = _fire(c, fact("G6", f"d{i}", b, T0 + s(300 * i), severity=Severity.WARNING))
    assert kinds(out)[0] == "opened"
    inc = out[0].incident
    assert (inc.pattern_id, inc.scope_level, inc.region_id) == ("X5", ScopeLevel.CITY, "gz")
    assert len(inc.members) == 5 and inc.detail["buildings"] == 4
    opened = T0 + s(1200)
    assert c.tick(opened + s(1799)) == []
    out = c.tick(opened + s(1800))
    assert kinds(out) == ["escalated"]
    assert (out[0].incident.scope_level, out[0].incident.region_id) == (ScopeLevel.PROVINCE, "gd")
    assert out[0].incident.escalation_level == 1


def test_x5_near_misses_two_buildings_mixed_rules_other_city_outside_window() -> None:
    c = correlator()
    for i in range(6):  # 6 alerts but only 2 buildings
        assert _fire(c, fact("G6", f"d{i}", f"gz-a1-b{1 + i % 2}", T0 + s(i), severity=Severity.WARNING)) == []
    c = correlator()
    rules = ["G6", "G2", "G6", "G2", "G6"]  # 5 alerts in 3+ buildings, but of two rules
    for i, r in enumerate(rules):
        assert _fire(c, fact(r, f"d{i}", f"gz-a1-b{1 + i % 4}", T0 + s(i), severity=Severity.WARNING)) == []
    c = correlator()
    where = ["gz-a1-b1", "gz-a1-b2", "sz-a1-b1", "gz-a1-b1", "sz-a1-b1"]  # two cities
    for i, b in enumerate(where):
        assert _fire(c, fact("G6", f"d{i}", b, T0 + s(i), severity=Severity.WARNING)) == []
    c = correlator()
    for i in range(5):  # 3 buildings but spread over more than 30 min
        assert _fire(c, fact("G6", f"d{i}", f"gz-a1-b{1 + i % 3}", T0 + s(500 * i), severity=Severity.WARNING)) == []


def test_x5_leaves_ordinary_after_hours_entries_out() -> None:
    # On a weekend every granted access is a G5: five entries in five buildings are routine, not a city incident.
    c = correlator()
    where = ["gz-a1-b1", "gz-a1-b2", "gz-a2-b1", "gz-a2-b2", "gz-a1-b1", "gz-a1-b2"]
    for i, b in enumerate(where):
        out = _fire(c, fact("G5", f"d{i}", b, T0 + s(60 * i), severity=Severity.WARNING))
        assert [o.incident.pattern_id for o in out if o.incident.pattern_id == "X5"] == []


# --- X9: alarm storm from one device ------------------------------------------------------------------------------


def test_x9_more_than_10_fires_an_hour_from_one_device_is_one_device_fault_ticket() -> None:
    c = correlator()
    out = []
    for i in range(11):
        f = fact("G2", "door-1", "gz-a1-b1", T0 + s(300 * i), severity=Severity.WARNING)
        out = _fire(c, f)
        if i < 10:
            assert "opened" not in kinds(out)
    assert kinds(out)[:1] == ["opened"]
    inc = out[0].incident
    assert (inc.pattern_id, inc.type, inc.region_id) == ("X9", "device_fault", "gz-a1")
    assert inc.detail["fires"] == 11 and inc.muted_ids == inc.member_ids
    # repeats of one alert count as fires too
    c = correlator()
    f = fact("G2", "door-1", "gz-a1-b1", T0, severity=Severity.WARNING)
    for i in range(10):
        out = c.observe("repeated" if i else "created", f, T0 + s(i))
    assert out == []  # 10 fires: not more than 10
    assert kinds(c.observe("repeated", f, T0 + s(11)))[0] == "opened"


def test_x9_near_miss_ten_an_hour_or_spread_over_two_devices() -> None:
    c = correlator()
    for i in range(12):  # 12 fires, one every 6 min 1 s: at most 10 within any hour
        out = _fire(c, fact("G2", "door-1", "gz-a1-b1", T0 + s(361 * i), severity=Severity.WARNING))
        assert "X9" not in [ch.incident.pattern_id for ch in out]
    c = correlator()
    for i in range(12):
        out = _fire(c, fact("G2", f"door-{i % 2}", "gz-a1-b1", T0 + s(i), severity=Severity.WARNING))
        assert "X9" not in [ch.incident.pattern_id for ch in out]


# --- X1: after-hours entry, then load above baseline --------------------------------------------------------------


def test_x1_after_hours_entry_then_energy_above_baseline_raises_one_level() -> None:
    c = correlator()
    assert _fire(c, fact("G5", "door-1", "gz-a1-b1", T0, severity=Severity.WARNING)) == []
    out = _fire(
        c, fact("E1", "meter-1", "gz-a1-b1", T0 + s(40 * 60), device_type="energy_meter", severity=Severity.WARNING)
    )
    assert kinds(out)[0] == "opened"
    inc = out[0].incident
    assert (inc.pattern_id, inc.severity) == ("X1", Severity.MAJOR)  # warning members, raised one level
    assert sorted({t.department for t in c.tasks_of(inc.id)}) == ["energy", "security"]


def test_x1_near_misses_load_first_too_late_other_building() -> None:
    c = correlator()
    _fire(c, fact("E1", "meter-1", "gz-a1-b1", T0, device_type="energy_meter"))
    assert _fire(c, fact("G5", "door-1", "gz-a1-b1", T0 + s(60))) == []  # entry after the load: not X1
    c = correlator()
    _fire(c, fact("G5", "door-1", "gz-a1-b1", T0))
    assert _fire(c, fact("E1", "meter-1", "gz-a1-b1", T0 + s(3601), device_type="energy_meter")) == []
    assert _fire(c, fact("E1", "meter-2", "gz-a1-b2", T0 + s(60), device_type="energy_meter")) == []


# --- X3: vehicle used with no after-hours gate entry at its agency ------------------------------------------------


def test_x3_vehicle_use_without_gate_entry_opens_after_15_min() -> None:
    c = correlator()
    v1 = fact("V1", "car-1", "gz-a1", T0, device_type="vehicle")
    assert _fire(c, v1) == []
    assert c.tick(T0 + s(899)) == []
    out = c.tick(T0 + s(900))
    assert kinds(out)[0] == "opened"
    assert (out[0].incident.pattern_id, out[0].incident.region_id) == ("X3", "gz-a1")
    assert sorted(t.department for t in c.tasks_of(out[0].incident.id)) == ["security", "vehicles"]


def test_x3_near_miss_a_gate_entry_at_the_agency_within_15_min() -> None:
    c = correlator()
    _fire(c, fact("G5", "door-1", "gz-a1-b2", T0 - s(600)))  # before the departure
    _fire(c, fact("V1", "car-1", "gz-a1", T0, device_type="vehicle"))
    assert c.tick(T0 + s(901)) == []
    c = correlator()
    _fire(c, fact("V1", "car-1", "gz-a1", T0, device_type="vehicle"))
    _fire(c, fact("G5", "door-1", "gz-a1-b1", T0 + s(800)))  # after it
    assert c.tick(T0 + s(901)) == []
    c = correlator()  # an entry at another agency does not count
    _fire(c, fact("V1", "car-1", "gz-a1", T0, device_type="vehicle"))
    _fire(c, fact("G5", "door-1", "gz-a2-b1", T0 + s(60)))
    assert kinds(c.tick(T0 + s(901)))[0] == "opened"


# --- X6: a credential at agencies of different cities -------------------------------------------------------------


def test_x6_impossible_travel_between_cities_is_an_incident_not_within_one_city() -> None:
    c = correlator()
    out = _fire(c, fact("G7", "door-sz", "sz-a1-b1", T0, related="gz-a1-b1"))
    assert kinds(out)[0] == "opened"
    inc = out[0].incident
    assert (inc.pattern_id, inc.scope_level, inc.region_id) == ("X6", ScopeLevel.PROVINCE, "gd")
    assert inc.detail["here"] == "sz" and inc.detail["there"] == "gz"
    assert _fire(c, fact("G7", "door-x", "gz-a2-b1", T0, related="gz-a1-b1")) == []  # same city
    assert _fire(c, fact("G7", "door-y", "gz-a2-b1", T0)) == []  # no other site known


# --- X8: load in an empty building --------------------------------------------------------------------------------


def test_x8_night_load_with_no_after_hours_entry_that_day() -> None:
    c = correlator()
    out = _fire(c, fact("E2", "meter-1", "gz-a1-b1", T0, device_type="energy_meter", severity=Severity.WARNING))
    assert kinds(out)[0] == "opened" and out[0].incident.pattern_id == "X8"
    c = correlator()
    _fire(c, fact("G5", "door-1", "gz-a1-b1", T0 - s(3 * 3600)))  # someone came in 3 h before: occupied
    assert _fire(c, fact("E2", "meter-1", "gz-a1-b1", T0, device_type="energy_meter")) == []


# --- tasks, closing, restore --------------------------------------------------------------------------------------


def test_tasks_escalate_when_overdue_and_the_incident_closes_when_they_do() -> None:
    c = correlator()
    _fire(c, fact("G1", "door-1", "gz-a1-b1", T0))
    out = _fire(c, fact("G2", "door-2", "gz-a1-b1", T0 + s(1)))
    inc = out[0].incident
    [task] = c.tasks_of(inc.id)
    assert c.tick(T0 + s(600)) == []
    out = c.tick(T0 + s(601))
    assert kinds(out) == ["task_overdue"] and out[0].task is not None and out[0].task.escalation_level == 1
    assert kinds(c.tick(T0 + s(1201))) == ["task_overdue"]
    assert kinds(c.acknowledge_task(task.id, "li", T0 + s(1300))) == ["task_acknowledged"]
    assert c.tick(T0 + s(5000)) == []  # acknowledged: no longer escalated
    out = c.close_task(task.id, "li", T0 + s(5000), "checked, a cleaner")
    assert kinds(out) == ["task_closed", "closed"]
    assert out[-1].incident.state is IncidentState.CLOSED and out[-1].incident.cause_code == "tasks_closed"
    assert c.incidents == {} and c.open_by_key == {}
    incs, tasks, entries = c.take_dirty()
    assert incs[-1].state is IncidentState.CLOSED and tasks[-1].state is TaskState.CLOSED
    assert [e.kind.value for e in entries].count("task") >= 4


def test_restore_keeps_incidents_muting_and_windows() -> None:
    c = correlator()
    for i in range(5):
        _fire(c, fact("G11.offline", f"g{i}", "gz-a1-b1", T0 + s(i)))
    for i in range(3):  # a half-full X5 window
        _fire(c, fact("G6", f"d{i}", f"gz-a1-b{i + 1}", T0 + s(i), severity=Severity.WARNING))
    incs, tasks, _ = c.take_dirty()
    windows = json.loads(json.dumps(c.windows()))
    c2 = correlator()
    c2.restore(incs, tasks, windows, next_incident_id=c.next_incident_id, next_task_id=c.next_task_id)
    assert [i.id for i in c2.open_incidents()] == [i.id for i in c.open_incidents()]
    assert c2.muted == c.muted
    out = []
    for i in range(3, 5):
        out = _fire(c2, fact("G6", f"d{i}", "gz-a2-b1", T0 + s(10 + i), severity=Severity.WARNING))
    assert kinds(out)[0] == "opened" and out[0].incident.pattern_id == "X5"
    assert out[0].incident.id == c.next_incident_id


def test_after_an_incident_is_over_counting_starts_afresh_and_a_big_storm_stays_linear() -> None:
    c = correlator()
    facts = [fact("G11.offline", f"g{i}", "gz-a1-b1", T0 + s(i)) for i in range(5)]
    for f in facts:
        _fire(c, f)
    for f in facts:
        c.observe("resolved", f, T0 + s(30))
    assert c.open_incidents() == []
    assert _fire(c, fact("G11.offline", "g9", "gz-a1-b1", T0 + s(40))) == []  # one device: no new outage
    # 10,000 alerts of one rule across a city: one X5 incident, every later alert joins it (no re-counting)
    c = correlator()
    opened = 0
    for i in range(10_000):
        out = _fire(c, fact("G6", f"d{i}", f"gz-a1-b{1 + i % 4}", T0 + s(i / 10), severity=Severity.WARNING))
        opened += kinds(out).count("opened")
    x5 = [i for i in c.open_incidents() if i.pattern_id == "X5"]
    assert opened == 1 and len(x5) == 1 and len(x5[0].members) == 10_000


def test_timeline_texts_are_chinese_first_with_the_english_in_the_data() -> None:
    from joint.correlator import TEXTS, say

    c = correlator()
    t = T0
    c.observe("created", fact("G1", "gate-1", "gz-a1-b1", t), t)
    c.observe("created", fact("G2", "gate-2", "gz-a1-b1", t + s(5)), t + s(5))
    c.tick(t + s(3600))
    _incs, _tasks, entries = c.take_dirty()
    assert entries, "X2 opened an incident with its members and a task"
    for e in entries:
        assert any("\u4e00" <= ch <= "\u9fff" for ch in e.text), e.text
        assert e.data["text_en"] and e.data["text_en"].isascii(), e.data
    en = {e.data["text_en"].split(" ")[0] for e in entries}
    assert {"opened", "alert", "task"} <= en
    for key, (zh, _en) in TEXTS.items():
        assert zh != _en, key
    assert say("closed", cause="false_alarm") == ("已关闭：误报", "closed: false_alarm")
