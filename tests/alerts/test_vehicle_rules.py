"""V2 (movement without dispatch), V8 (utilisation, on V9's trips) and V13 (parked off-site overnight).

Pure tests of alerts/kinds_vehicle.py, then the pack rules against the simulator (tests/alerts/test_pack_scenarios.py
``simulate``: a firing scenario and a near miss each), the places read from the registry attributes, and the
dispatch book read from the database.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.calendar import Calendar
from alerts.engine import Env, Subject, evaluate, new_state, state_dumps, state_loads
from alerts.kinds_vehicle import (
    DepotExitState,
    DispatchBook,
    OvernightLotState,
    UtilisationState,
    Watch,
    day_of,
    depot_exit_position,
    next_check_ms,
    overnight_position,
    overnight_tick,
    parse_depot,
    parse_lot,
    place_problems,
    utilisation_position,
    utilisation_tick,
)
from alerts.rules import PACKS_DIR, DepotExitParams, OvernightLotParams, RuleSet, UtilisationParams
from core.db import make_engine, migrate
from core.protocol import Reading, Record
from core.trips import Fix, TripParams, engine_seconds, segment
from devices.dispatch import DispatchConflict, DispatchStore, seed_demo_dispatches
from devices.imports import ImportProblems, import_devices
from devices.registry import Registry
from devices.simulator import Incident
from tests.alerts.test_pack_scenarios import GZ, MONDAY, REGIONS, SATURDAY, Dev, at, eng_ms, simulate

LOT = [
    [GZ[0] - 0.001, GZ[1] - 0.001],
    [GZ[0] + 0.001, GZ[1] - 0.001],
    [GZ[0] + 0.001, GZ[1] + 0.001],
    [GZ[0] - 0.001, GZ[1] + 0.001],
]
PLACES = {"depot": {"lat": GZ[0], "lon": GZ[1], "radius_m": 50}, "lot": LOT}
CAR = Dev("car-v-0001", "vehicle", "gz-b1", attributes=PLACES)


@pytest.fixture
def reg(sqlite_registry: Registry) -> Registry:
    return sqlite_registry


# --- places and the dispatch book ----------------------------------------------------------------------------------


def test_places_parse_and_report_problems() -> None:
    assert parse_depot({"lat": 23.1, "lon": 113.2}) == (23.1, 113.2, 50.0)
    assert parse_depot({"lat": 23.1, "lon": 113.2, "radius_m": 120}) == (23.1, 113.2, 120.0)
    assert parse_depot({"lat": 95, "lon": 113.2}) is None
    assert parse_depot({"lat": 23.1, "lon": 113.2, "radius_m": True}) is None
    assert parse_lot(LOT) is not None and parse_lot(LOT[:2]) is None
    assert parse_lot([[23.1, 113.2], [23.2, "x"], [23.3, 113.3]]) is None
    assert place_problems(PLACES) == []
    assert len(place_problems({"depot": {"lat": 1}, "lot": [[0, 0]]})) == 2
    assert place_problems({"colour": "white"}) == []


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 5_000)), max_size=6),
    st.integers(-1000, 20_000),
    st.integers(0, 500),
    st.integers(0, 500),
)
def test_dispatch_book_covers_exactly_the_widened_windows(
    raw: list[tuple[int, int]], ts: int, early: int, late: int
) -> None:
    windows = tuple(sorted((a, a + d) for a, d in raw))
    book = DispatchBook({"car": windows})
    expected = any(a - early <= ts <= b + late for a, b in windows)
    assert book.covers("car", ts, early, late) == expected
    assert not book.covers("other", ts, early, late)


# --- V13 pure --------------------------------------------------------------------------------------------------


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def test_v13_checks_at_22_and_06_beijing() -> None:
    p = OvernightLotParams()
    assert next_check_ms(p, _ms(at(MONDAY, 12))) == _ms(at(MONDAY, 22))
    assert next_check_ms(p, _ms(at(MONDAY, 22))) == _ms(at(MONDAY, 30))  # 06:00 Tuesday


def test_v13_judges_the_position_before_the_check_and_clears_back_in_the_lot() -> None:
    p, lot = OvernightLotParams(), parse_lot(LOT)
    assert lot is not None
    state, w = OvernightLotState(), Watch(p, lot, DispatchBook(), "car", Calendar(), ())
    away = (GZ[0] + 0.05, GZ[1])

    def pos(where: tuple[float, float], t: datetime) -> list[bool]:
        return [c.firing for c in overnight_position(w, state, where[0], where[1], _ms(t))]

    assert pos(GZ, at(MONDAY, 18)) == []
    assert pos(away, at(MONDAY, 21, 50)) == []
    assert pos(away, at(MONDAY, 22, 10)) == [True]  # at 22:00 it was (still) away
    assert pos(GZ, at(MONDAY, 23)) == [False]  # back in its lot
    # a silent night: the engine's clock judges the check on the last known position
    assert [c.firing for c in overnight_tick(w, state, _ms(at(MONDAY, 30)))] == []


def test_v13_an_approved_dispatch_covers_a_night_away() -> None:
    p, lot = OvernightLotParams(), parse_lot(LOT)
    assert lot is not None
    away = (GZ[0] + 0.05, GZ[1])
    book = DispatchBook({"car": ((_ms(at(MONDAY, 14)), _ms(at(MONDAY, 40))),)})
    covered, state = Watch(p, lot, book, "car", Calendar(), ()), OvernightLotState()
    overnight_position(covered, state, *away, _ms(at(MONDAY, 20)))
    assert overnight_tick(covered, state, _ms(at(MONDAY, 22))) == []
    bare, no_book = Watch(p, lot, DispatchBook(), "car", Calendar(), ()), OvernightLotState()
    overnight_position(bare, no_book, *away, _ms(at(MONDAY, 20)))
    assert [c.firing for c in overnight_tick(bare, no_book, _ms(at(MONDAY, 22)))] == [True]


# --- V8 pure ---------------------------------------------------------------------------------------------------


def _drive_day(state: UtilisationState, p: UtilisationParams, day: datetime, km: float, trips: int) -> list[Fix]:
    """``trips`` out-and-back drives of ``km`` / 2 each way between 09:00 and 17:00; returns the fixes fed."""
    fixes: list[Fix] = []
    t = day + timedelta(hours=9)
    for _ in range(trips):
        for leg in (1, -1):
            steps = 30
            for i in range(steps + 1):
                frac = i / steps if leg == 1 else 1 - i / steps
                fixes.append(Fix(_ms(t), GZ[0] + frac * km / 2 / 111.195, GZ[1], ignition=i < steps))
                t += timedelta(seconds=30)
            for _ in range(20):  # 10 min parked
                fixes.append(Fix(_ms(t), fixes[-1].lat, GZ[1], ignition=False))
                t += timedelta(seconds=30)
    for f in fixes:
        utilisation_position(p, state, TripParams(), f.ts_ms, f.lat, f.lon, f.ignition)
    return fixes


def test_v8_counts_trips_km_and_engine_hours_per_day_as_the_batch_segmenter() -> None:
    p = UtilisationParams(windows=[1], target_km_per_day=10, target_trips_per_day=4, target_engine_h_per_day=2)
    state = UtilisationState()
    fixes = _drive_day(state, p, MONDAY, km=10, trips=2)
    utilisation_position(p, state, TripParams(), _ms(at(MONDAY, 23)), GZ[0], GZ[1], False)
    trips = [s for s in segment(fixes) if s.kind == "trip"]
    assert len(trips) == 4  # out and back, twice
    km, n, engine_s = state.days[str(day_of(_ms(MONDAY)))]
    assert n == 4 and km == pytest.approx(sum(s.distance_m for s in trips) / 1000) and km == pytest.approx(20, 0.01)
    assert engine_s == 4 * 30 * 30  # 30 intervals of 30 s with the ignition on per leg
    changes = utilisation_tick(p, state, Calendar(), (), _ms(at(MONDAY, 24, 1)))
    # 20 km / 10 = 2.0 > 1.1: over-used on km (trips 4 / 4 = 1.0, engine 1 h / 2 = 0.5)
    assert [(c.firing, c.detail["direction"]) for c in changes] == [(True, "over")]
    assert changes[0].detail["utilisation"] == {"km": 2.0, "trips": 1.0, "engine_h": 0.5}


def test_v8_under_use_needs_every_measure_low_and_a_whole_window_observed() -> None:
    p = UtilisationParams(windows=[2], target_km_per_day=100, target_trips_per_day=2, target_engine_h_per_day=2)
    state = UtilisationState()
    _drive_day(state, p, MONDAY, km=10, trips=1)  # 10 km, 2 trips, 0.5 h on Monday
    assert utilisation_tick(p, state, Calendar(), (), _ms(at(MONDAY, 24, 1))) == []  # only 1 of 2 days seen
    changes = utilisation_tick(p, state, Calendar(), (), _ms(at(MONDAY, 48, 1)))
    # Mon+Tue (2 working days): 5 km/day (0.05), 1 trip/day (0.5), 0.25 h/day (0.125): trips are not < 0.35
    assert changes == []
    state2 = UtilisationState()
    utilisation_position(p, state2, TripParams(), _ms(at(MONDAY, 9)), GZ[0], GZ[1], False)
    changes = utilisation_tick(p, state2, Calendar(), (), _ms(at(MONDAY, 48, 1)))
    assert [(c.firing, c.detail["direction"], c.detail["working_days"]) for c in changes] == [(True, "under", 2)]


# --- scenarios through the engine (simulated fleet) ------------------------------------------------------------


@pytest.mark.parametrize("dispatched", [False, True])
def test_v2_leaves_its_depot_without_a_dispatch(reg: Registry, tmp_path: Path, dispatched: bool) -> None:
    trip = Incident("night_vehicle", CAR.id, at(MONDAY, 10, 15))
    window = (eng_ms(at(MONDAY, 10)), eng_ms(at(MONDAY, 12)))
    book = DispatchBook({CAR.id: (window,)} if dispatched else {})
    run = simulate(
        reg,
        tmp_path,
        "V2",
        [CAR],
        start=at(MONDAY, 10),
        hours=1.5,
        incidents=[trip],
        step_s=300,
        dispatches=lambda now_ms: book,
    )
    assert any(isinstance(r, Reading) and r.fields.get("speed_kmh", 0) > 5 for r in run.records)  # it did drive
    assert run.alerts == ([] if dispatched else [("V2", CAR.id)])
    if not dispatched:
        assert run.resolved[0] is not None  # back in the depot: resolved


def test_v2_needs_a_depot(reg: Registry, tmp_path: Path) -> None:
    car = Dev("car-v-0002", "vehicle", "gz-b1")
    trip = Incident("night_vehicle", car.id, at(MONDAY, 10, 15))
    run = simulate(reg, tmp_path, "V2", [car], start=at(MONDAY, 10), hours=1.5, incidents=[trip], step_s=300)
    assert run.alerts == []


@pytest.mark.parametrize(("minute", "fires"), [(55, True), (0, False)])
def test_v13_out_at_22(reg: Registry, tmp_path: Path, minute: int, fires: bool) -> None:
    # a night drive starting at 21:55 is still out at 22:00; one starting at 21:00 is back by then
    trip = Incident("night_vehicle", CAR.id, at(MONDAY, 21, minute))
    run = simulate(reg, tmp_path, "V13", [CAR], start=at(MONDAY, 20), hours=3, incidents=[trip], step_s=300)
    assert run.alerts == ([("V13", CAR.id)] if fires else [])
    if fires:
        assert run.fired[0] == at(MONDAY, 22) and run.resolved[0] is not None


def test_v8_weekend_under_use_and_a_working_week_near_miss(reg: Registry, tmp_path: Path) -> None:
    window = "  - {rule: V8, params: {windows: [2]}}\n"
    idle = simulate(reg, tmp_path, "V8", [CAR], start=SATURDAY, hours=49, step_s=1800, extra_yaml=window)
    assert idle.alerts == [("V8", CAR.id)]  # parked all weekend: nothing used


@pytest.mark.parametrize(("share", "fires"), [(0.5, True), (1.0, False)])
def test_v8_working_day_against_targets(reg: Registry, tmp_path: Path, share: float, fires: bool) -> None:
    """Monday's km, trips and engine hours computed by hand from the simulated positions (the batch segmenter):
    targets at half of them is over-use (2.0 > 1.1); targets equal to them is the near miss (1.0)."""
    probe = Registry(make_engine(f"sqlite:///{tmp_path}/probe.db"))
    migrate(probe.engine)
    seen = simulate(probe, tmp_path, "V8", [CAR], start=MONDAY, hours=25, step_s=1800)
    monday = [f for f in _fixes(seen.records) if f.ts_ms < eng_ms(MONDAY + timedelta(days=1))]
    trips = [s for s in segment(monday) if s.kind == "trip"]
    assert len(trips) >= 2, "the simulated car drove on Monday"
    km = sum(s.distance_m for s in trips) / 1000
    engine_h = engine_seconds(monday) / 3600
    targets = f"target_km_per_day: {km * share}, target_trips_per_day: {len(trips) * share}, "
    targets += f"target_engine_h_per_day: {engine_h * share}"
    extra = f"  - {{rule: V8, params: {{windows: [1], {targets}}}}}\n"
    run = simulate(reg, tmp_path, "V8", [CAR], start=MONDAY, hours=25, step_s=1800, extra_yaml=extra)
    assert run.alerts == ([("V8", CAR.id)] if fires else [])
    if fires:
        assert run.fired[0] == MONDAY + timedelta(days=1)  # judged at midnight


def _fixes(records: Sequence[Record]) -> list[Fix]:
    out = []
    for r in records:
        if isinstance(r, Reading) and "lat" in r.fields:
            ign = r.fields.get("ignition")
            out.append(Fix(r.ts_ms, float(r.fields["lat"]), float(r.fields["lon"]), ignition=ign is True))
    return out


def test_dispatch_book_from_the_database(reg: Registry) -> None:
    store = DispatchStore(reg.engine)
    now = eng_ms(at(MONDAY, 9))
    hour = 3_600_000
    d = store.create(
        vehicle_id="car-1",
        region_id="gz",
        driver="张三",
        purpose="会议",
        requested_by="alice",
        planned_start_ms=now,
        planned_end_ms=now + 2 * hour,
        now_ms=now,
    )
    assert store.book(now).windows == {}  # pending: not in the book
    store.approve(d.id, approver="bob", now_ms=now)
    assert store.book(now).covers("car-1", now + hour)
    store.close(d.id, now_ms=now + hour)
    book = store.book(now + hour)
    assert book.covers("car-1", now + hour) and not book.covers("car-1", now + hour + 1)
    assert store.book(now + 5 * 86_400_000).windows == {}  # long past


def test_dispatch_store_on_both_databases(registry: Registry) -> None:
    """Migration 0015 and the store on SQLite and PostgreSQL: filters, paging, conflicts, the book."""
    store = DispatchStore(registry.engine)
    t0, hour = eng_ms(at(MONDAY, 8)), 3_600_000
    made = [
        store.create(
            vehicle_id=f"car-{i % 2}",
            region_id="gz" if i % 2 else "sz",
            driver="李四",
            purpose="调研",
            requested_by="op",
            planned_start_ms=t0 + i * hour,
            planned_end_ms=t0 + (i + 1) * hour,
            now_ms=t0,
        )
        for i in range(5)
    ]
    page, total = store.list(region_ids=["gz"], limit=1)
    assert total == 2 and [d.id for d in page] == [made[3].id]  # newest planned start first
    assert store.list(start_ms=t0 + 4 * hour + 1)[1] == 1  # plans overlapping the range
    store.approve(made[0].id, approver="chief", now_ms=t0)
    with pytest.raises(DispatchConflict):
        store.approve(made[0].id, approver="chief", now_ms=t0)
    with pytest.raises(DispatchConflict):
        store.approve(made[1].id, approver="op", now_ms=t0)  # the requester
    store.close(made[2].id, now_ms=t0)  # a pending one closed: cancelled
    assert [d.status for d in store.list(status="approved")[0]] == ["approved"]
    assert store.list(status="closed")[0][0].id == made[2].id
    assert store.book(t0).windows == {"car-0": ((t0, t0 + hour),)}


def test_demo_dispatches_cover_the_working_day_and_leave_one_car_out(reg: Registry) -> None:
    store = DispatchStore(reg.engine)
    cars = [("car-a", "gz"), ("car-b", "gz"), ("car-c", "sz")]
    now = eng_ms(at(MONDAY, 6))
    assert seed_demo_dispatches(store, cars, now, days=2) == 4
    assert seed_demo_dispatches(store, cars, now, days=3) == 2  # a restart adds only the new day
    book = store.book(now)
    assert not book.covers("car-a", eng_ms(at(MONDAY, 10)))  # left out: V2 shows it
    assert book.covers("car-b", eng_ms(at(MONDAY, 10))) and book.covers("car-c", eng_ms(at(MONDAY, 34)))
    assert not book.covers("car-b", eng_ms(at(MONDAY, 20)))


@pytest.mark.parametrize("kind", ["depot_exit", "utilisation", "overnight_lot"])
def test_vehicle_states_survive_a_restart_as_json(reg: Registry, tmp_path: Path, kind: str) -> None:
    """The service snapshots rule states as JSON and restores them: the same state comes back, and goes on alike."""
    rules = RuleSet.load([PACKS_DIR])
    rid = {"depot_exit": "V2", "utilisation": "V8", "overnight_lot": "V13"}[kind]
    subj = Subject("car-1", "vehicle", "gz", ("gz",), depot=parse_depot(PLACES["depot"]), lot=parse_lot(PLACES["lot"]))
    rule = next(r for r in rules.for_device("car-1", "vehicle", ("gz",)) if r.rule_id == rid)
    env = Env(rules.calendar)
    state = new_state(rule, now=MONDAY)
    for i in range(40):
        t = at(MONDAY, 9) + timedelta(minutes=i)
        lat = GZ[0] + (0.02 * i / 40 if i < 30 else 0.02)
        evaluate(
            rule,
            state,
            subj,
            Reading("car-1", "gz", "vehicle", _ms(t), None, {"lat": lat, "lon": GZ[1], "ignition": True}),
            now=t,
            env=env,
        )
    back = state_loads(kind, state_dumps(state))
    assert back == state


def test_v8_judges_each_window_on_its_own() -> None:
    p = UtilisationParams(windows=[1, 2], target_km_per_day=10, target_trips_per_day=2, target_engine_h_per_day=1)
    state = UtilisationState()
    _drive_day(state, p, MONDAY, km=10, trips=1)  # Monday: 10 km, 2 trips, 0.5 h; Tuesday parked
    assert utilisation_tick(p, state, Calendar(), (), _ms(at(MONDAY, 24, 1))) == []  # Monday alone: 1.0, 1.0, 0.5
    changes = utilisation_tick(p, state, Calendar(), (), _ms(at(MONDAY, 48, 1)))
    # Tuesday alone: nothing used (under); Monday + Tuesday: 0.5, 0.5, 0.25 (not every measure under 0.35)
    assert [(c.firing, c.group, c.detail["direction"]) for c in changes] == [(True, "1d", "under")]
    assert state.firing == {"1d": "under"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 120), st.booleans()), min_size=1, max_size=40),
    st.booleans(),
)
def test_v2_fires_exactly_when_out_uncovered_for_min_outside(steps: list[tuple[int, bool]], covered: bool) -> None:
    """Positions every few seconds, each in or out of the depot: V2 fires at the first position that has been out
    (with no dispatch) for min_outside_s since the first out position of the run, never when a dispatch covers."""
    p = DepotExitParams(min_outside_s=300, early_s=0, late_s=0)
    depot = (GZ[0], GZ[1], 50.0)
    book = DispatchBook({"car": ((0, 2**62),)} if covered else {})
    state = DepotExitState()
    t, since, firing = eng_ms(MONDAY), None, False
    for dt_s, out in steps:
        t += dt_s * 1000
        lat = GZ[0] + (0.01 if out else 0.0)
        got = depot_exit_position(p, state, depot, book, "car", lat, GZ[1], t, t)
        expect: list[bool] = []
        if not out or covered:
            expect = [False] if firing else []
            since, firing = None, False
        else:
            since = t if since is None else since
            if not firing and t - since >= 300_000:
                expect, firing = [True], True
        assert [c.firing for c in got] == expect


def test_depot_and_lot_from_a_device_csv_reach_the_engine(reg: Registry, tmp_path: Path) -> None:
    """`lianfang devices import` takes depot / lot as JSON cells, checks them, and the registry's snapshot (what
    the alert service builds subjects from) carries them."""
    reg.upsert_regions(REGIONS, now=MONDAY)
    depot, lot = json.dumps(PLACES["depot"]), json.dumps(PLACES["lot"])
    good = tmp_path / "good.csv"
    with good.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "type", "region_id", "depot", "lot"])
        w.writerow(["car-i-0001", "vehicle", "gz-b1", depot, lot])
    import_devices(reg, good, now=MONDAY)
    info = reg.snapshot()["car-i-0001"]
    assert info.attributes == {"depot": PLACES["depot"], "lot": PLACES["lot"]}
    bad = tmp_path / "bad.csv"
    with bad.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "type", "region_id", "depot", "lot"])
        w.writerow(["meter-i-0001", "energy_meter", "gz-b1", depot, ""])  # not a vehicle
        w.writerow(["car-i-0002", "vehicle", "gz-b1", '{"lat": 95, "lon": 113}', ""])  # not WGS-84
        w.writerow(["car-i-0003", "vehicle", "gz-b1", "", "[[23.1, 113.2]"])  # not JSON
    with pytest.raises(ImportProblems) as err:
        import_devices(reg, bad, now=MONDAY)
    text = str(err.value)
    assert "vehicles only" in text and "WGS-84" in text and "must be JSON" in text
