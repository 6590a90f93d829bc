"""Pure rule engine: every rule kind with a fixed ``now`` (no sleeping), restarts mid-window, default packs."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from alerts.calendar import BEIJING, Calendar, RosterEntry, SealingPeriod
from alerts.engine import Env, evaluate, interested, point_in_polygon
from tests.alerts.engine_helpers import T0, PackRun, Run, at, event, make_rule, reading, status, subject

# --- threshold -------------------------------------------------------------------------------------------------


def temp_rule(**params: object) -> Run:
    p: dict[str, object] = {"field": "temperature_c", "op": ">", "value": 30, **params}
    return Run(make_rule("threshold", p), subject())


def test_threshold_fires_on_crossing_and_clears() -> None:
    r = temp_rule()
    s = r.subj
    assert r.feed(reading(0, s, temperature_c=25)) == []
    (fire,) = r.feed(reading(10, s, temperature_c=31))
    assert fire.firing and fire.dedup_key == "R1:dev-1" and fire.detail["value"] == 31
    assert fire.region_path == ("gd", "gz", "b1") and fire.inhibitable
    assert r.feed(reading(20, s, temperature_c=35)) == []  # edge only: no second fire
    (clear,) = r.feed(reading(30, s, temperature_c=29))
    assert not clear.firing and clear.at == at(30)


def test_threshold_held_for_fires_only_after_period_on_message() -> None:
    r = temp_rule(for_s=60)
    s = r.subj
    r.feed(reading(0, s, temperature_c=31))
    r.feed(reading(59, s, temperature_c=32))
    assert r.changes == []
    (fire,) = r.feed(reading(60, s, temperature_c=33))
    assert fire.firing and fire.detail["since"] == int(T0.timestamp() * 1000)


def test_threshold_held_for_fires_on_tick_without_new_message() -> None:
    r = temp_rule(for_s=60)
    r.feed(reading(0, r.subj, temperature_c=31))
    assert r.deadline() == at(60)
    assert r.tick(59.9) == []
    (fire,) = r.tick(60)
    assert fire.firing and fire.at == at(60)
    assert r.deadline() is None


def test_threshold_held_for_interrupted_restarts_window() -> None:
    r = temp_rule(for_s=60)
    s = r.subj
    r.feed(reading(0, s, temperature_c=31))
    r.feed(reading(30, s, temperature_c=29))
    r.feed(reading(40, s, temperature_c=31))
    assert r.tick(61) == []
    assert r.deadline() == at(100)


def test_threshold_restart_mid_window_keeps_window() -> None:
    r = temp_rule(for_s=60)
    r.feed(reading(0, r.subj, temperature_c=31))
    r.restart()
    assert r.deadline() == at(60)
    assert [c.firing for c in r.tick(60)] == [True]


def test_threshold_n_in_a_row() -> None:
    r = temp_rule(count=3)
    s = r.subj
    r.feed(reading(0, s, temperature_c=31))
    r.feed(reading(1, s, temperature_c=31))
    r.feed(reading(2, s, temperature_c=20))  # streak broken
    r.feed(reading(3, s, temperature_c=31))
    r.feed(reading(4, s, temperature_c=31))
    assert r.changes == []
    (fire,) = r.feed(reading(5, s, temperature_c=31))
    assert fire.firing


def test_threshold_hysteresis_clears_only_past_clear_value() -> None:
    r = temp_rule(clear_value=25)
    s = r.subj
    r.feed(reading(0, s, temperature_c=31))
    assert r.feed(reading(1, s, temperature_c=28)) == []  # below value, above clear_value: still firing
    assert r.feed(reading(2, s, temperature_c=31)) == []
    (clear,) = r.feed(reading(3, s, temperature_c=24))
    assert not clear.firing
    assert r.firing() == [True, False]


def test_threshold_lower_bound_with_hysteresis() -> None:
    r = temp_rule(op="<", value=5, clear_value=8)
    s = r.subj
    r.feed(reading(0, s, temperature_c=4))
    r.feed(reading(1, s, temperature_c=7))
    r.feed(reading(2, s, temperature_c=9))
    assert r.firing() == [True, False]


def test_threshold_where_condition_and_its_change_clears() -> None:
    r = Run(
        make_rule(
            "threshold",
            {"field": "speed_kmh", "op": "<=", "value": 1, "for_s": 300, "where": {"ignition": True}},
            device_type="vehicle",
        ),
        subject(device_type="vehicle"),
    )
    s = r.subj
    r.feed(reading(0, s, speed_kmh=0, ignition=False, lat=23.1, lon=113.3))
    assert r.tick(400) == []  # ignition off: not idling
    r.feed(reading(400, s, speed_kmh=0, ignition=True, lat=23.1, lon=113.3))
    (fire,) = r.tick(700)
    assert fire.firing
    (clear,) = r.feed(reading(710, s, ignition=False))  # where-field alone ends it
    assert not clear.firing


def test_threshold_ignores_older_out_of_order_reading() -> None:
    r = temp_rule()
    s = r.subj
    r.feed(reading(10, s, temperature_c=25))
    assert r.feed(reading(5, s, temperature_c=40)) == []


def test_threshold_boolean_equality_door_held_open() -> None:
    r = Run(
        make_rule("threshold", {"field": "door_open", "op": "==", "value": True, "for_s": 45}, "gate"),
        subject(device_type="gate"),
    )
    s = r.subj
    r.feed(reading(0, s, door_open=True))
    r.feed(reading(44, s, door_open=True))
    assert r.changes == []
    r.tick(45)
    r.feed(reading(50, s, door_open=False))
    assert r.firing() == [True, False]


# --- delta -----------------------------------------------------------------------------------------------------


def meter_rule(**params: object) -> Run:
    return Run(make_rule("delta", {"field": "energy_kwh", **params}, "energy_meter"), subject("m-1", "energy_meter"))


def test_delta_meter_going_backwards_fires_and_next_normal_clears() -> None:
    r = meter_rule(min_delta=0)
    s = r.subj
    r.feed(reading(0, s, energy_kwh=100.0))
    r.feed(reading(60, s, energy_kwh=100.5))
    (fire,) = r.feed(reading(120, s, energy_kwh=99.0))
    assert fire.firing and fire.detail["delta"] == -1.5
    (clear,) = r.feed(reading(180, s, energy_kwh=99.2))
    assert not clear.firing


def test_delta_reset_event_is_not_a_negative_delta() -> None:
    r = meter_rule(min_delta=0)
    s = r.subj
    r.feed(reading(0, s, energy_kwh=100.0))
    r.feed(event(30, s, "reset"))
    r.feed(reading(60, s, energy_kwh=0.1))
    assert r.changes == []


def test_delta_max_rate_per_hour() -> None:
    r = meter_rule(max_delta=50, per_hour=True)
    s = r.subj
    r.feed(reading(0, s, energy_kwh=100.0))
    r.feed(reading(360, s, energy_kwh=104.0))  # 4 kWh in 6 min = 40 kW
    assert r.changes == []
    (fire,) = r.feed(reading(720, s, energy_kwh=110.0))  # 6 kWh in 6 min = 60 kW
    assert fire.firing and fire.detail["delta"] == 60.0


def test_delta_flat_line() -> None:
    r = meter_rule(flat_s=3600)
    s = r.subj
    for t in range(0, 3600, 600):
        r.feed(reading(t, s, energy_kwh=5.0))
    assert r.changes == []
    r.feed(reading(3600, s, energy_kwh=5.0))
    r.feed(reading(4200, s, energy_kwh=5.1))
    assert r.firing() == [True, False]


# --- absence ---------------------------------------------------------------------------------------------------


def test_absence_device_that_never_reported_is_caught() -> None:
    r = Run(make_rule("absence", {"factor": 2}), subject(expected_interval_s=60))
    assert r.deadline() == at(120)
    assert r.tick(119) == []
    (fire,) = r.tick(120)
    assert fire.firing and fire.detail["never_reported"] is True and fire.offline_signal


def test_absence_fires_after_silence_and_any_message_clears() -> None:
    r = Run(make_rule("absence", {"factor": 2.5}), subject(expected_interval_s=60))
    s = r.subj
    r.feed(reading(100, s, temperature_c=20))
    assert r.tick(249) == []
    (fire,) = r.tick(250)
    assert fire.firing and fire.detail["last_seen"] == int(at(100).timestamp() * 1000)
    assert r.tick(500) == []  # still offline: no second fire
    (clear,) = r.feed(event(600, s, "fault"))
    assert not clear.firing


def test_absence_interval_override_and_offline_status_does_not_count() -> None:
    r = Run(make_rule("absence", {"interval_s": 10, "factor": 1}), subject(expected_interval_s=600))
    s = r.subj
    r.feed(reading(0, s, temperature_c=20))
    r.feed(status(5, s, "offline"))
    assert r.deadline() == at(10)
    assert r.firing() == []
    r.tick(10)
    assert r.firing() == [True]


def test_absence_only_if_ignition_on() -> None:
    r = Run(
        make_rule("absence", {"interval_s": 600, "factor": 1, "only_if": {"ignition": True}}, "vehicle"),
        subject(device_type="vehicle"),
    )
    s = r.subj
    r.feed(reading(0, s, lat=23.0, lon=113.0, ignition=False))
    assert r.tick(5000) == []  # parked with the ignition off: silence is normal
    r.feed(reading(5000, s, lat=23.0, lon=113.0, ignition=True))
    assert r.tick(5599) == []
    assert [c.firing for c in r.tick(5600)] == [True]


# --- schedule --------------------------------------------------------------------------------------------------

G5 = {"match": {"event": "access", "where": {"result": "granted"}}, "hours": "08:30-17:30"}


def bj(y: int, m: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=BEIJING)


def test_schedule_after_hours_access_fires_outside_hours_only() -> None:
    rule = make_rule("schedule", G5, "gate")
    inside = Run(rule, subject(device_type="gate"), base=bj(2026, 3, 2, 10))
    inside.feed(event(0, inside.subj, "access", base=inside.base, credential="c1", result="granted"))
    assert inside.changes == []
    late = Run(rule, subject(device_type="gate"), base=bj(2026, 3, 2, 22))
    (fire,) = late.feed(event(0, late.subj, "access", base=late.base, credential="c1", result="granted"))
    assert fire.firing and fire.detail["who"] == {"credential": "c1"}
    late.feed(event(1, late.subj, "access", base=late.base, credential="c1", result="denied"))
    assert len(late.changes) == 1  # a denied access is not G5


def test_schedule_make_up_working_saturday_and_holiday_thursday() -> None:
    rule = make_rule("schedule", G5, "gate")
    sat = Run(rule, subject(device_type="gate"), base=bj(2026, 2, 14, 10))  # 调休: a working Saturday
    sat.feed(event(0, sat.subj, "access", base=sat.base, credential="c1", result="granted"))
    assert sat.changes == []
    holiday = Run(rule, subject(device_type="gate"), base=bj(2026, 10, 1, 10))  # National Day, a Thursday
    holiday.feed(event(0, holiday.subj, "access", base=holiday.base, credential="c1", result="granted"))
    assert holiday.firing() == [True]


def test_schedule_duty_roster_exempts() -> None:
    base = bj(2026, 10, 1, 22)
    cal = Calendar(rosters=[RosterEntry("gz", "c-duty", bj(2026, 10, 1, 0), bj(2026, 10, 2, 0))])
    r = Run(make_rule("schedule", G5, "gate"), subject(device_type="gate"), base=base, env=Env(cal))
    r.feed(event(0, r.subj, "access", base=base, credential="c-duty", result="granted"))
    assert r.changes == []
    r.feed(event(1, r.subj, "access", base=base, credential="c-other", result="granted"))
    assert r.firing() == [True]


def test_schedule_vehicle_grace_distance_and_clear_on_ignition_off() -> None:
    params = {"match": {"field": "ignition", "value": True}, "grace_s": 1800, "min_distance_m": 500}
    base = bj(2026, 3, 2, 17, 50)  # 20 min after the end of working hours: inside the 30 min grace
    r = Run(make_rule("schedule", params, "vehicle"), subject(device_type="vehicle"), base=base)
    s = r.subj
    r.feed(reading(0, s, base=base, ignition=True, lat=23.1000, lon=113.3000))
    r.feed(reading(300, s, base=base, ignition=True, lat=23.1200, lon=113.3000))  # moved 2.2 km, still grace
    assert r.changes == []
    r.feed(reading(1200, s, base=base, ignition=True, lat=23.1200, lon=113.3000))  # 18:10: anchor here
    r.feed(reading(1260, s, base=base, ignition=True, lat=23.1230, lon=113.3000))  # 330 m
    assert r.changes == []
    (fire,) = r.feed(reading(1320, s, base=base, ignition=True, lat=23.1260, lon=113.3000))  # 660 m
    assert fire.firing and 600 < float(str(fire.detail["moved_m"])) < 700
    (clear,) = r.feed(reading(1400, s, base=base, ignition=False, lat=23.1260, lon=113.3000))
    assert not clear.firing


def test_schedule_sealed_period_with_exempt_duty_vehicle() -> None:
    seal = SealingPeriod("gz", bj(2026, 10, 1, 0), bj(2026, 10, 8, 0), "国庆封存", frozenset({"car-duty"}))
    env = Env(Calendar(sealing=[seal]))
    rule = make_rule("schedule", {"match": {"field": "speed_kmh", "op": ">", "value": 5}, "mode": "sealed"}, "vehicle")
    base = bj(2026, 10, 3, 10)
    car = Run(rule, subject("car-1", "vehicle"), base=base, env=env)
    car.feed(reading(0, car.subj, base=base, speed_kmh=40, lat=23.1, lon=113.3))
    duty = Run(rule, subject("car-duty", "vehicle"), base=base, env=env)
    duty.feed(reading(0, duty.subj, base=base, speed_kmh=40, lat=23.1, lon=113.3))
    after = Run(rule, subject("car-1", "vehicle"), base=bj(2026, 10, 9, 10), env=env)
    after.feed(reading(0, after.subj, base=after.base, speed_kmh=40, lat=23.1, lon=113.3))
    assert (car.firing(), duty.firing(), after.firing()) == ([True], [], [])


def test_schedule_event_clear_after_quiet_time() -> None:
    r = Run(
        make_rule("schedule", {**G5, "clear_after_s": 600}, "gate"),
        subject(device_type="gate"),
        base=bj(2026, 3, 2, 22),
    )
    r.feed(event(0, r.subj, "access", base=r.base, credential="c1", result="granted"))
    assert r.tick(599) == []
    r.tick(600)
    assert r.firing() == [True, False]


# --- event count -------------------------------------------------------------------------------------------------

G6 = {
    "match": {"event": "access", "where": {"result": "denied"}},
    "count": 3,
    "window_s": 300,
    "group_by": "credential",
    "clear_after_s": 600,
}


def g6() -> Run:
    return Run(make_rule("event_count", G6, "gate", dedup_key="{rule}:{device}:{group}"), subject(device_type="gate"))


def test_event_count_burst_per_credential() -> None:
    r = g6()
    s = r.subj
    r.feed(event(0, s, "access", credential="a", result="denied"))
    r.feed(event(10, s, "access", credential="b", result="denied"))
    r.feed(event(20, s, "access", credential="a", result="denied"))
    r.feed(event(30, s, "access", credential="b", result="granted"))
    assert r.changes == []
    (fire,) = r.feed(event(40, s, "access", credential="a", result="denied"))
    assert fire.firing and fire.dedup_key == "R1:dev-1:a" and fire.detail["count"] == 3


def test_event_count_spread_beyond_window_does_not_fire() -> None:
    r = g6()
    for t in (0, 200, 400, 600):
        r.feed(event(t, r.subj, "access", credential="a", result="denied"))
    assert r.changes == []


def test_event_count_clears_after_quiet_time() -> None:
    r = g6()
    for t in (0, 1, 2):
        r.feed(event(t, r.subj, "access", credential="a", result="denied"))
    assert r.deadline() == at(602)
    assert r.tick(601) == []
    (clear,) = r.tick(602)
    assert not clear.firing and clear.dedup_key == "R1:dev-1:a"


# --- sequence (A without B within T) -------------------------------------------------------------------------------

G1 = {
    "trigger": {"field": "door_open", "value": True},
    "required": [{"event": "access", "where": {"result": "granted"}}, {"event": "request_to_exit"}],
    "before_s": 3,
    "settle_s": 2,
}


def g1() -> Run:
    return Run(make_rule("sequence", G1, "gate"), subject(device_type="gate"))


def test_sequence_door_open_after_granted_access_is_fine() -> None:
    r = g1()
    s = r.subj
    r.feed(event(0, s, "access", credential="c", result="granted"))
    r.feed(reading(2, s, door_open=True))
    r.tick(10)
    assert r.changes == []


def test_sequence_door_forced_fires_after_settle() -> None:
    r = g1()
    s = r.subj
    r.feed(event(0, s, "access", credential="c", result="denied"))
    r.feed(reading(2, s, door_open=True))
    assert r.changes == []
    assert r.deadline() == at(4)
    (fire,) = r.tick(4)
    assert fire.firing and fire.at == at(2)


def test_sequence_access_older_than_window_does_not_count() -> None:
    r = g1()
    s = r.subj
    r.feed(event(0, s, "access", credential="c", result="granted"))
    r.feed(reading(3.5, s, door_open=True))
    r.tick(6)
    assert r.firing() == [True]


def test_sequence_late_access_message_with_earlier_timestamp_cancels() -> None:
    r = g1()
    s = r.subj
    r.feed(reading(2, s, door_open=True))
    r.feed(event(1, s, "request_to_exit"), now_s=2.5)  # arrives after the door reading, stamped before it
    r.tick(10)
    assert r.changes == []


def test_sequence_only_rising_edge_triggers() -> None:
    r = g1()
    s = r.subj
    r.feed(event(0, s, "access", credential="c", result="granted"))
    r.feed(reading(1, s, door_open=True))
    r.feed(reading(10, s, door_open=True))  # still open: not a new opening
    r.tick(20)
    assert r.changes == []
    r.feed(reading(21, s, door_open=False))
    r.feed(reading(30, s, door_open=True))
    r.tick(40)
    assert r.firing() == [True]


def test_sequence_restart_keeps_pending_trigger() -> None:
    r = g1()
    r.feed(reading(2, r.subj, door_open=True))
    r.restart()
    assert [c.firing for c in r.tick(4)] == [True]


# --- geofence ------------------------------------------------------------------------------------------------------

SQUARE = [[23.0, 113.0], [23.2, 113.0], [23.2, 113.4], [23.0, 113.4]]


def test_point_in_polygon() -> None:
    assert point_in_polygon(23.1, 113.2, SQUARE)
    assert not point_in_polygon(23.3, 113.2, SQUARE)


def test_geofence_minimum_time_outside() -> None:
    r = Run(
        make_rule("geofence", {"polygons": [SQUARE], "min_outside_s": 60}, "vehicle"), subject(device_type="vehicle")
    )
    s = r.subj
    r.feed(reading(0, s, lat=23.1, lon=113.2))
    r.feed(reading(10, s, lat=23.3, lon=113.2))
    r.feed(reading(40, s, lat=23.1, lon=113.2))  # back after 30 s: near miss
    r.feed(reading(50, s, lat=23.3, lon=113.2))
    assert r.changes == []
    (fire,) = r.tick(110)
    assert fire.firing
    (clear,) = r.feed(reading(200, s, lat=23.1, lon=113.2))
    assert not clear.firing


def test_geofence_prohibited_polygon() -> None:
    r = Run(
        make_rule("geofence", {"polygons": [SQUARE], "mode": "stay_outside", "min_outside_s": 0}, "vehicle"),
        subject(device_type="vehicle"),
    )
    r.feed(reading(0, r.subj, lat=23.3, lon=113.2))
    r.feed(reading(1, r.subj, lat=23.1, lon=113.2))
    assert r.firing() == [True]


# --- baseline ------------------------------------------------------------------------------------------------------

BASE_P = {"field": "power_kw", "relative": 0.2, "absolute": 5, "for_s": 3600, "min_samples": 4}
WEEKS = 4  # Mondays 2 .. 23 March 2026 learn; 30 March is judged (6 April is Qingming, not a working day)


def learn(r: Run, weeks: int = WEEKS, kw: float = 20.0) -> None:
    """One reading per week at Monday 10:00-10:59 (the same hour-of-week bin)."""
    for w in range(weeks):
        r.feed(reading(w * 7 * 86400, r.subj, base=r.base, power_kw=kw))


def test_baseline_learns_then_fires_on_relative_and_absolute_and_duration() -> None:
    base = T0  # a Monday, 10:00 Beijing
    r = Run(make_rule("baseline", BASE_P, "energy_meter"), subject("m-1", "energy_meter"), base=base)
    learn(r)
    wk = WEEKS * 7 * 86400
    r.feed(reading(wk, r.subj, base=base, power_kw=30))  # +50 % and +10 kW: condition starts
    assert r.changes == [] and r.deadline() == at(wk + 3600, base)
    (fire,) = r.tick(wk + 3600)
    assert fire.firing and fire.detail["baseline"] == 20.0
    (clear,) = r.feed(reading(wk + 3700, r.subj, base=base, power_kw=21))
    assert not clear.firing


def test_baseline_relative_without_absolute_is_a_near_miss() -> None:
    r = Run(make_rule("baseline", BASE_P, "energy_meter"), subject("m-1", "energy_meter"))
    learn(r, kw=10.0)
    wk = WEEKS * 7 * 86400
    r.feed(reading(wk, r.subj, power_kw=14.5))  # +45 % but only +4.5 kW
    r.tick(wk + 7200)
    assert r.changes == []


def test_baseline_no_judgement_before_enough_samples() -> None:
    r = Run(make_rule("baseline", BASE_P, "energy_meter"), subject("m-1", "energy_meter"))
    learn(r, weeks=3)
    r.feed(reading(3 * 7 * 86400 + 60, r.subj, power_kw=500))
    r.tick(3 * 7 * 86400 + 7200)
    assert r.changes == []


def test_baseline_working_and_non_working_days_apart() -> None:
    r = Run(make_rule("baseline", {**BASE_P, "for_s": 0}, "energy_meter"), subject("m-1", "energy_meter"))
    learn(r, kw=50.0)  # working Mondays 10:00: 50 kW
    # Sunday 10:00 learns 10 kW for 4 weeks, so 30 kW on a Sunday is anomalous although it is below Monday's.
    sunday = T0.replace(day=8)
    sun = Run(r.rule, r.subj, base=sunday)
    sun.state = r.state
    sun.state.last_ts_ms = 0  # type: ignore[union-attr]  # the Sunday series starts before the Monday one ended
    for w in range(WEEKS):
        sun.feed(reading(w * 7 * 86400, sun.subj, base=sunday, power_kw=10.0))
    assert sun.changes == []
    sun.feed(reading(WEEKS * 7 * 86400, sun.subj, base=sunday, power_kw=30.0))
    assert sun.firing() == [True]


def test_baseline_rate_from_cumulative_counter() -> None:
    p = {**BASE_P, "field": "energy_kwh", "source": "rate_per_hour", "for_s": 0, "min_samples": 3}
    r = Run(make_rule("baseline", p, "energy_meter"), subject("m-1", "energy_meter"))
    kwh = 0.0
    for i in range(4):  # 15-minute readings at 20 kW (5 kWh each), all within the 10:00 hour
        kwh += 5
        r.feed(reading(i * 900, r.subj, energy_kwh=kwh))
    assert r.changes == [] and r.state.baseline is None  # type: ignore[union-attr]  # 2 samples < 3
    r.feed(reading(3000, r.subj, energy_kwh=kwh + 1.5))  # 1.5 kWh in 5 min = 18 kW: normal, third sample
    (fire,) = r.feed(reading(3540, r.subj, energy_kwh=kwh + 6.0))  # 4.5 kWh in 9 min = 30 kW
    assert fire.firing and fire.detail["value"] == 30.0


# --- impossible travel ----------------------------------------------------------------------------------------------


def test_travel_same_credential_two_sites_too_fast() -> None:
    rule = make_rule("travel", {"max_speed_kmh": 120}, "gate", dedup_key="{rule}:{group}")
    gz = subject("gate-gz", "gate", site=(23.13, 113.26))
    sz = subject("gate-sz", "gate", site=(22.54, 114.06))  # ~104 km away
    r = Run(rule, gz)
    r.feed(event(0, gz, "access", credential="c1", result="granted"))
    r.subj = sz
    (fire,) = r.feed(event(1800, sz, "access", credential="c1", result="granted"))  # 30 min: ~208 km/h
    assert fire.firing and fire.dedup_key == "R1:c1" and fire.detail["from_device"] == "gate-gz"
    r.feed(event(1800 + 4 * 3600, gz, "access", credential="c1", result="granted"))  # 4 h later: plausible
    assert r.firing() == [True]


# --- pre-filter --------------------------------------------------------------------------------------------------


def test_interested_filters_unrelated_records() -> None:
    rule = make_rule("threshold", {"field": "temperature_c", "op": ">", "value": 1})
    s = subject()
    assert interested(rule, reading(0, s, temperature_c=2))
    assert not interested(rule, reading(0, s, humidity_pct=2))
    assert not interested(rule, event(0, s, "fault"))
    assert interested(make_rule("absence", {}), status(0, s, "online"))


# --- default packs: a scenario that fires each catalogue rule and a near miss that must not ------------------------


def gate(device_id: str = "gate-1", site: tuple[float, float] | None = (23.13, 113.26)) -> object:
    return subject(device_id, "gate", expected_interval_s=60, site=site)


def _g1(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s, door_open=False)])
    if not fire:
        p.feed([event(9, s, "access", credential="c", result="granted")])
    p.feed([reading(10, s, door_open=True), reading(12, s, door_open=False)])
    p.tick(20)


def _g2(p: PackRun, fire: bool) -> None:
    # Open for 60 s at 22:00 (locked) fires; the same at 10:00 on a working day (scheduled unlocked) does not.
    s = p.subj
    t = 12 * 3600 if fire else 0
    p.feed([event(t, s, "access", credential="c", result="granted"), reading(t + 1, s, door_open=True)])
    p.feed([reading(t + 30, s, door_open=True)])
    p.tick(t + 61)


def _g5(p: PackRun, fire: bool) -> None:
    s = p.subj
    t = 12 * 3600 if fire else 0  # 22:00 vs 10:00 Beijing on a Monday
    p.feed([event(t, s, "access", credential="c", result="granted")])


def _g6(p: PackRun, fire: bool) -> None:
    s = p.subj
    for i in range(3 if fire else 2):
        p.feed([event(i * 60, s, "access", credential="c", result="denied")])


def _g7(p: PackRun, fire: bool) -> None:
    p.feed([event(0, p.subj, "access", credential="c", result="granted")])
    far = subject("gate-2", "gate", site=(22.54, 114.06))
    p.subj = far
    p.feed([event(1800 if fire else 4 * 3600, far, "access", credential="c", result="granted")])


def _g11(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s)])
    if fire:
        p.feed([event(10, s, "tamper")])
    p.tick(100)


def _g11_offline(p: PackRun, fire: bool) -> None:
    p.feed([reading(0, p.subj)])
    p.tick(150 if fire else 140)


def vehicle() -> object:
    return subject("car-1", "vehicle")


def _v1(p: PackRun, fire: bool) -> None:
    s = p.subj
    t = 13 * 3600  # 23:00 Beijing
    p.feed([reading(t, s, ignition=True, lat=23.10, lon=113.3, speed_kmh=30)])
    p.feed([reading(t + 60, s, ignition=True, lat=23.11 if fire else 23.103, lon=113.3, speed_kmh=30)])


def _v3(p: PackRun, fire: bool) -> None:
    s = p.subj
    base = 0 if fire else 10 * 86400  # inside / after the sealing period of the scenario's calendar
    p.feed(
        [
            reading(base, s, speed_kmh=30, lat=23.10, lon=113.3),
            reading(base + 60, s, speed_kmh=30, lat=23.11, lon=113.3),
        ]
    )


def _v4(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s, lat=23.1, lon=113.3, speed_kmh=50), reading(10, s, lat=26.0, lon=113.3, speed_kmh=50)])
    p.feed([reading(80 if fire else 50, s, lat=26.0, lon=113.3, speed_kmh=50)])


def _v6(p: PackRun, fire: bool) -> None:
    s = p.subj
    speed = 80 if fire else 64  # limit 60 x 1.1 = 66
    p.feed([reading(t, s, lat=23.1, lon=113.3, speed_kmh=speed) for t in range(0, 40, 5)])


def _v7(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s, lat=23.1, lon=113.3, speed_kmh=0, ignition=True)])
    p.tick(600 if fire else 500)


def _v12(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s, lat=23.1, lon=113.3, ignition=fire)])
    p.tick(600)


def _v12_power(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s, lat=23.1, lon=113.3)])
    if fire:
        p.feed([event(5, s, "power_cut")])


def meter() -> object:
    return subject("m-1", "energy_meter", expected_interval_s=900)


PER_HOUR = 5  # a reading every 12 minutes: 4 weeks x 5 = the packs' 20 samples per hour-of-week bin


def _meter_history(p: PackRun, kw: float, hours: range, day: int) -> None:
    """Counter readings at ``kw`` for the given hours of one weekday (offset from Monday 10:00) for 4 weeks."""
    kwh = 1000.0
    for w in range(WEEKS):
        for h in hours:
            for q in range(PER_HOUR):
                kwh += kw / PER_HOUR
                t = w * 7 * 86400 + day * 86400 + h * 3600 + q * 3600 // PER_HOUR + 60
                p.feed([reading(t, p.subj, energy_kwh=kwh)])


def _energy_anomaly(p: PackRun, kw: float, day: int, hours: range) -> None:
    kwh = float(p.states["E5.negative"].last_value or 0)  # type: ignore[union-attr]
    for h in hours:
        for q in range(PER_HOUR):
            kwh += kw / PER_HOUR
            p.feed(
                [
                    reading(
                        WEEKS * 7 * 86400 + day * 86400 + h * 3600 + q * 3600 // PER_HOUR + 60, p.subj, energy_kwh=kwh
                    )
                ]
            )


def _e1(p: PackRun, fire: bool) -> None:
    # base is Monday 10:00 Beijing = 02:00 UTC; offsets are from there. Learn Mondays 10:00-12:59 at 20 kW.
    _meter_history(p, 20, range(0, 3), 0)
    _energy_anomaly(p, 40 if fire else 23, 0, range(0, 3))  # +100 % and +20 kW vs +15 % and +3 kW


def _e2(p: PackRun, fire: bool) -> None:
    # Nights 00:00-05:00 Beijing are offsets +14 h .. +19 h from Monday 10:00. Three high nights in a row fire
    # when the third ends; two high nights and a normal one do not.
    _meter_history(p, 4, range(14, 19), 0)
    for day, kw in enumerate([7.0, 7.0, 7.0 if fire else 4.0]):
        _energy_anomaly(p, kw, day, range(14, 19))
    p.tick(WEEKS * 7 * 86400 + 2 * 86400 + 19 * 3600)  # Friday 05:00, the end of the third night


def _e3(p: PackRun, fire: bool) -> None:
    # Sunday 10:00-13:59 Beijing is 6 days after the base.
    _meter_history(p, 5, range(0, 4), 6)
    _energy_anomaly(p, 9 if fire else 6, 6, range(0, 4))


def _meter_load(p: PackRun, start_s: int, end_s: int, kw: float, noise: random.Random | None = None) -> None:
    """Counter readings every 5 minutes from ``start_s`` to ``end_s`` at ``kw`` (x 2 % noise when given)."""
    kwh = float(p.states["E5.negative"].last_value or 1000.0)  # type: ignore[union-attr]
    for t in range(start_s, end_s, 300):
        kwh += kw * (1 + (noise.gauss(0, 0.02) if noise else 0)) / 12
        p.feed([reading(t, p.subj, energy_kwh=round(kwh, 4))])


def _e4(p: PackRun, fire: bool) -> None:
    # A day of 10 kW (from Monday 00:00, offset -10 h) teaches the 15-minute history; then a quarter hour at 45 kW
    # (above p99 x 1.2 = 12) fires, one at 11 kW does not.
    _meter_load(p, -10 * 3600, 24 * 3600, 10.0)
    _meter_load(p, 24 * 3600, 24 * 3600 + 900, 45.0 if fire else 11.0)
    _meter_load(p, 24 * 3600 + 900, 24 * 3600 + 3600, 10.0)


def _e4_step(p: PackRun, fire: bool) -> None:
    # A noisy day of 10 kW, then +6 % from Tuesday 10:00: for 2 h it is a step (CUSUM), for 15 minutes it is not.
    rng = random.Random(3)
    _meter_load(p, -10 * 3600, 24 * 3600, 10.0, rng)
    end = 24 * 3600 + (7200 if fire else 900)
    _meter_load(p, 24 * 3600, end, 10.6, rng)
    _meter_load(p, end, 28 * 3600, 10.0, rng)


def _e5(p: PackRun, fire: bool) -> None:
    s = p.subj
    p.feed([reading(0, s, energy_kwh=100.0), reading(900, s, energy_kwh=101.0)])
    if not fire:
        p.feed([event(1000, s, "reset")])
    p.feed([reading(1800, s, energy_kwh=0.5)])


def _e5_skew(p: PackRun, fire: bool) -> None:
    # The meter's clock 200 s ahead of the receive time (fires: more than 120 s for 10 min); 100 s ahead does not.
    for i in range(15):
        rec = reading(i * 60 + (200 if fire else 100), p.subj, energy_kwh=100.0 + i)
        for r in p.rules:
            p.changes.extend(evaluate(r, p.states[r.rule_id], p.subj, rec, now=at(i * 60), env=p.env))


def _e5_flat(p: PackRun, fire: bool) -> None:
    s = p.subj
    for i in range(26):
        p.feed([reading(i * 900, s, energy_kwh=100.0 if fire or i < 20 else 100.0 + i)])


SEAL = Calendar(sealing=[SealingPeriod("gz", T0, T0.replace(day=9), "两会封存")])
SCENARIOS = [
    ("G1", gate, _g1, None),
    ("G2", gate, _g2, None),
    ("G2.pre", gate, _g2, None),
    ("G5", gate, _g5, None),
    ("G6", gate, _g6, None),
    ("G7", gate, _g7, None),
    ("G11.tamper", gate, _g11, None),
    ("G11.offline", gate, _g11_offline, None),
    ("V1", vehicle, _v1, None),
    ("V3", vehicle, _v3, SEAL),
    ("V4", vehicle, _v4, None),
    ("V6", vehicle, _v6, None),
    ("V7", vehicle, _v7, None),
    ("V12.offline", vehicle, _v12, None),
    ("V12.power_cut", vehicle, _v12_power, None),
    ("E1", meter, _e1, None),
    ("E2", meter, _e2, None),
    ("E3", meter, _e3, None),
    ("E4", meter, _e4, None),
    ("E4.step", meter, _e4_step, None),
    ("E5.negative", meter, _e5, None),
    ("E5.flat", meter, _e5_flat, None),
    ("E5.skew", meter, _e5_skew, None),
]


@pytest.mark.parametrize(("rule_id", "make", "scenario", "cal"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_pack_scenario_fires_and_near_miss_does_not(rule_id: str, make: object, scenario: object, cal: object) -> None:
    fired = PackRun(make(), cal)  # type: ignore[operator,arg-type]
    scenario(fired, True)  # type: ignore[operator]
    assert rule_id in fired.fired(), fired.fired()
    near = PackRun(make(), cal)  # type: ignore[operator,arg-type]
    scenario(near, False)  # type: ignore[operator]
    assert rule_id not in near.fired(), near.fired()


def test_pack_time_is_monday_morning_beijing() -> None:
    assert T0.astimezone(BEIJING).hour == 10 and T0.astimezone(BEIJING).weekday() == 0
    assert T0.tzinfo is UTC
