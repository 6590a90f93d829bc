"""The pure fleet model: fixed start times and seeds, exact outcomes."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.errors import UserError
from core.protocol import DeviceInfo, Event, Reading, Status, decode
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.sim_cli import stored_last_values
from devices.simulator import (
    BEIJING,
    Fleet,
    Incident,
    RegionPoint,
    SimDevice,
    SimMessage,
    Site,
    fleet_from_registry,
    incident_from_dict,
    parse_incident,
    synthetic_fleet,
)

GZ = (23.1291, 113.2644)
SITES = (Site("gz-a02", 23.1350, 113.3200), Site("gz-a03", 23.1000, 113.2500), Site("gz-a04", 23.1600, 113.2800))


def _bj(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BEIJING)


def gate(i: int = 1) -> SimDevice:
    return SimDevice(f"gate-gz-{i:04d}", "gate", "gz-a01-b1", *GZ, 60)


def car(i: int = 1) -> SimDevice:
    return SimDevice(f"car-gz-{i:04d}", "vehicle", "gz-a01", *GZ, 30, SITES)


def meter(i: int = 1) -> SimDevice:
    return SimDevice(f"meter-gz-{i:04d}", "energy_meter", "gz-a01-b1", *GZ, 60)


def sensor(i: int = 1) -> SimDevice:
    return SimDevice(f"sensor-gz-{i:04d}", "sensor", "gz-a01-b1", *GZ, 300)


def run(devices: list[SimDevice], start: datetime, hours: float, *, seed: int = 7, **kw: object) -> list[SimMessage]:
    fleet = Fleet(devices, rng=random.Random(seed), start=start, **kw)  # type: ignore[arg-type]
    return fleet.advance(start + timedelta(hours=hours))


def events(msgs: list[SimMessage], etype: str, device: str | None = None) -> list[SimMessage]:
    return [
        m for m in msgs if m.kind == "event" and m.doc()["type"] == etype and (device is None or m.device_id == device)
    ]


def telemetry(msgs: list[SimMessage], device: str) -> list[dict[str, object]]:
    return [m.doc() for m in msgs if m.kind == "telemetry" and m.device_id == device]


def door_openings(msgs: list[SimMessage], device: str) -> list[int]:
    """Times the door went from closed to open (telemetry door_open true after false)."""
    out, was_open = [], False
    for m in msgs:
        if m.device_id == device and m.kind == "telemetry":
            now_open = bool(m.doc()["door_open"])
            if now_open and not was_open:
                out.append(m.ts_ms)
            was_open = now_open
    return out


def opened_by(msgs: list[SimMessage], device: str, t_open: int) -> bool:
    """A granted access or an exit request within 3 s before the door opened."""
    for m in msgs:
        if m.device_id != device or m.kind != "event" or not t_open - 3000 <= m.ts_ms <= t_open:
            continue
        doc = m.doc()
        if doc["type"] == "request_to_exit" or (doc["type"] == "access" and doc["result"] == "granted"):
            return True
    return False


# --- protocol ---------------------------------------------------------------------------------------------------


def test_fleet_messages_decode_per_protocol_for_their_device_type() -> None:
    devices = [gate(1), gate(2), car(1), meter(1), sensor(1)]
    start = _bj(2026, 3, 2, 7, 0)  # a Monday: trips, peaks and meters all active
    msgs = run(devices, start, 12)
    info = {d.id: DeviceInfo(d.id, d.type, d.region_id) for d in devices}
    kinds: Counter[str] = Counter()
    for m in msgs:
        assert m.topic == f"lf/v1/{m.device_id}/{m.kind}"
        records, errors = decode(m.kind, m.payload, info[m.device_id], m.ts_ms)
        assert errors == [] and len(records) == 1
        kinds[type(records[0]).__name__] += 1
        if m.kind != "status":
            assert records[0].ts_ms == m.ts_ms
    assert kinds["Status"] == 5 and kinds["Reading"] > 1000 and kinds["Event"] > 100
    types = {m.doc()["type"] for m in msgs if m.kind == "event"}
    assert {"access", "door_closed", "request_to_exit", "ignition_on", "ignition_off"} <= types


def test_fleet_seq_increases_per_device_and_status_is_retained_online_first() -> None:
    msgs = run([gate(1), car(1), meter(1)], _bj(2026, 3, 2, 8, 0), 2)
    by_device: dict[str, list[SimMessage]] = {}
    for m in msgs:
        by_device.setdefault(m.device_id, []).append(m)
    for device_msgs in by_device.values():
        first = device_msgs[0]
        assert first.kind == "status" and first.retain and first.doc()["state"] == "online"
        seqs = [m.seq for m in device_msgs if m.kind != "status"]
        assert seqs == list(range(len(seqs)))
        ts = [m.ts_ms for m in device_msgs]
        assert ts == sorted(ts)


def test_fleet_same_seed_same_messages_however_time_is_sliced() -> None:
    devices = [gate(1), car(1), meter(1), sensor(1)]
    start = _bj(2026, 3, 2, 8, 0)
    whole = run(devices, start, 1, seed=42)
    fleet = Fleet(devices, rng=random.Random(42), start=start)
    sliced: list[SimMessage] = []
    for s in range(1, 3601, 7):
        sliced += fleet.advance(start + timedelta(seconds=s))
    sliced += fleet.advance(start + timedelta(hours=1))
    assert sliced == whole
    assert run(devices, start, 1, seed=43) != whole


# --- gates and the calendar -------------------------------------------------------------------------------------


def _peak_accesses(day: datetime) -> int:
    gates = [gate(i) for i in range(10)]
    return len(events(run(gates, day.replace(hour=8), 1.5), "access"))


def test_gate_access_volume_follows_the_official_calendar() -> None:
    working = _peak_accesses(_bj(2026, 3, 2))  # Monday
    saturday = _peak_accesses(_bj(2026, 3, 7))
    holiday = _peak_accesses(_bj(2026, 10, 1))  # National Day, a Thursday
    makeup = _peak_accesses(_bj(2026, 2, 14))  # Saturday, make-up working day for the Spring Festival
    assert working > 10 * max(saturday, holiday, 1)
    assert makeup > 10 * max(saturday, holiday, 1)
    # About 80 attempts per gate-hour at the morning peak, of which ~20 % are exit-button presses.
    assert 700 < working < 1300 and 700 < makeup < 1300


def test_gate_busy_at_peaks_quiet_at_night_mostly_in_in_the_morning() -> None:
    gates = [gate(i) for i in range(5)]
    msgs = run(gates, _bj(2026, 3, 3, 0, 0), 24)
    hours = Counter(_hour(m) for m in events(msgs, "access"))
    assert hours[8] > 20 * max(1, hours[2] + hours[3])
    assert hours[18] > 5 * hours[21]
    morning = [m.doc() for m in events(msgs, "access") if _hour(m) == 8]
    assert Counter(d["direction"] for d in morning)["in"] > 0.7 * len(morning)
    results = Counter(m.doc()["result"] for m in events(msgs, "access"))
    assert results["denied"] > 0 and results["granted"] > 10 * results["denied"]


def test_gate_every_door_opening_follows_an_access_within_3s_then_closes() -> None:
    msgs = run([gate(1), gate(2)], _bj(2026, 3, 2, 7, 30), 3)
    for device in ("gate-gz-0001", "gate-gz-0002"):
        openings = door_openings(msgs, device)
        assert len(openings) > 50
        assert all(opened_by(msgs, device, t) for t in openings)
        assert len(events(msgs, "door_closed", device)) == len(openings)


def test_gate_door_forced_opens_with_no_access_before() -> None:
    start = _bj(2026, 3, 3, 1, 0)
    forced_at = _bj(2026, 3, 3, 2, 0)
    g = gate(1)
    msgs = run([g], start, 2, incidents=[Incident("door_forced", g.id, forced_at, duration_s=45)])
    t_forced = int(forced_at.timestamp() * 1000)
    openings = door_openings(msgs, g.id)
    assert t_forced in openings
    assert not opened_by(msgs, g.id, t_forced)
    closed = [m.ts_ms for m in events(msgs, "door_closed", g.id) if m.ts_ms > t_forced]
    assert closed[0] == t_forced + 45_000
    # Without the incident the same seed has no opening at that moment.
    assert t_forced not in door_openings(run([g], start, 2), g.id)


# --- vehicles ---------------------------------------------------------------------------------------------------


def test_vehicle_trips_move_between_sites_and_park_at_the_depot_at_night() -> None:
    cars = [car(i) for i in range(3)]
    msgs = run(cars, _bj(2026, 3, 2, 6, 0), 18)  # Monday 06:00 to midnight
    for c in cars:
        rows = telemetry(msgs, c.id)
        on, off = events(msgs, "ignition_on", c.id), events(msgs, "ignition_off", c.id)
        assert len(on) >= 2 and len(on) == len(off)
        places = {(r["lat"], r["lon"]) for r in rows if r["speed_kmh"] == 0}
        assert {(round(s.lat, 6), round(s.lon, 6)) for s in SITES} & places
        moving = [r for r in rows if r["ignition"]]
        # Ignition on: moving, except the report at the moment the engine starts.
        assert sum(float(str(r["speed_kmh"])) > 0 for r in moving) >= len(moving) - len(on)
        odometer = [float(str(r["odometer_km"])) for r in rows]
        assert odometer == sorted(odometer) and odometer[-1] > odometer[0] + 1
        night = [r for m, r in zip(_car_msgs(msgs, c.id), rows, strict=True) if _hour(m) >= 20]
        assert night and all(r["ignition"] is False and (r["lat"], r["lon"]) == GZ for r in night)
        assert not [m for m in on if not 8 <= _hour(m) < 17]


def _car_msgs(msgs: list[SimMessage], device: str) -> list[SimMessage]:
    return [m for m in msgs if m.kind == "telemetry" and m.device_id == device]


def _hour(m: SimMessage) -> int:
    return datetime.fromtimestamp(m.ts_ms / 1000, BEIJING).hour


def test_vehicle_parked_on_a_holiday_and_night_incident_drives_at_2am() -> None:
    c = car(1)
    start = _bj(2026, 10, 1, 0, 0)
    assert events(run([c], start, 24), "ignition_on") == []
    incident = Incident("night_vehicle", c.id, _bj(2026, 10, 1, 2, 0))
    msgs = run([c], start, 4, incidents=[incident])
    ignition_on = events(msgs, "ignition_on", c.id)
    assert ignition_on[0].ts_ms == int(incident.start.timestamp() * 1000)
    moving = [r for m, r in zip(_car_msgs(msgs, c.id), telemetry(msgs, c.id), strict=True) if _hour(m) == 2]
    assert any(r["ignition"] is True and float(str(r["speed_kmh"])) > 5 for r in moving)
    last = telemetry(msgs, c.id)[-1]
    assert (last["lat"], last["lon"]) == GZ and last["ignition"] is False  # back at the depot by 04:00


# --- meters and sensors -----------------------------------------------------------------------------------------


def test_meter_energy_never_decreases_and_load_follows_the_working_day() -> None:
    m = meter(1)
    msgs = run([m], _bj(2026, 3, 6, 0, 0), 48)  # Friday (working) and Saturday
    rows = telemetry(msgs, m.id)
    energy = [float(str(r["energy_kwh"])) for r in rows]
    assert all(b >= a for a, b in itertools.pairwise(energy)) and energy[-1] > energy[0]

    def mean_power(day: int, hour: int) -> float:
        sel = [
            float(str(r["power_kw"]))
            for msg, r in zip(_car_msgs(msgs, m.id), rows, strict=True)
            if datetime.fromtimestamp(msg.ts_ms / 1000, BEIJING).day == day and _hour(msg) == hour
        ]
        return sum(sel) / len(sel)

    assert mean_power(6, 10) > 2.5 * mean_power(6, 3)  # working day: office hours vs night
    assert mean_power(7, 10) < 1.5 * mean_power(7, 3)  # Saturday: flat
    for r in rows:
        assert 0 < float(str(r["power_factor"])) <= 1 and 220 < float(str(r["voltage_v"])) < 240


def test_meter_energy_spike_multiplies_power_for_its_duration() -> None:
    m = meter(1)
    start = _bj(2026, 3, 7, 0, 0)  # a Saturday: flat load
    spike = Incident("energy_spike", m.id, _bj(2026, 3, 7, 2, 0), duration_s=600, factor=4)
    base = telemetry(run([m], start, 3), m.id)
    msgs = run([m], start, 3, incidents=[spike])
    rows = telemetry(msgs, m.id)
    t0 = int(spike.start.timestamp() * 1000)
    times = [msg.ts_ms for msg in _car_msgs(msgs, m.id)]
    for t, r, b in zip(times, rows, base, strict=True):
        ratio = float(str(r["power_kw"])) / float(str(b["power_kw"]))
        assert ratio == pytest.approx(4 if t0 <= t < t0 + 600_000 else 1, rel=1e-3)
    energy = [float(str(r["energy_kwh"])) for r in rows]
    assert all(b >= a for a, b in itertools.pairwise(energy))
    assert energy[-1] - energy[0] > float(str(base[-1]["energy_kwh"])) - float(str(base[0]["energy_kwh"]))


def test_sensor_reports_temperature_and_humidity() -> None:
    s = sensor(1)
    rows = telemetry(run([s], _bj(2026, 3, 2, 0, 0), 24), s.id)
    assert len(rows) == 288
    assert all(10 < float(str(r["temperature_c"])) < 35 and 0 <= float(str(r["humidity_pct"])) <= 100 for r in rows)


# --- silence ----------------------------------------------------------------------------------------------------


def test_silent_device_sends_its_will_stops_and_comes_back() -> None:
    g, m = gate(1), meter(1)
    start = _bj(2026, 3, 2, 9, 0)
    silent_at = _bj(2026, 3, 2, 9, 10)
    msgs = run([g, m], start, 1, incidents=[Incident("silent", m.id, silent_at, duration_s=1200)])
    t_silent, t_back = int(silent_at.timestamp() * 1000), int(silent_at.timestamp() * 1000) + 1_200_000
    mine = [x for x in msgs if x.device_id == m.id]
    will = [x for x in mine if x.will]
    assert len(will) == 1 and will[0].ts_ms == t_silent and will[0].retain
    info = DeviceInfo(m.id, "energy_meter", m.region_id)
    status = decode("status", will[0].payload, info, t_silent)[0][0]
    assert isinstance(status, Status) and status.state == "offline"
    assert not [x for x in mine if t_silent < x.ts_ms < t_back]
    back = [x for x in mine if x.ts_ms >= t_back]
    assert back[0].kind == "status" and back[0].doc()["state"] == "online" and len(back) > 10
    seqs = [x.seq for x in mine if x.seq is not None]
    assert seqs == list(range(len(seqs)))  # no gap: a silent device sent nothing
    assert len([x for x in msgs if x.device_id == g.id and t_silent < x.ts_ms < t_back]) > 10


# --- inputs -----------------------------------------------------------------------------------------------------


def test_parse_incident_from_cli_and_dict() -> None:
    t0 = _bj(2026, 3, 2, 9, 0)
    inc = parse_incident("energy_spike:meter-gz-0001:30:120", t0)
    assert (inc.kind, inc.device_id, inc.start, inc.duration) == (
        "energy_spike",
        "meter-gz-0001",
        t0.replace(second=30),
        120,
    )
    assert parse_incident("silent:gate-gz-0001:0", t0).duration is None
    doc = {"kind": "door_forced", "device": "gate-gz-0001", "start_offset_s": 60}
    assert incident_from_dict(doc, t0).start == t0.replace(minute=1)
    for bad in ("door_forced:gate-gz-0001", "meteor:gate-gz-0001:0", "silent:Gate!:0", "silent:gate-gz-0001:x"):
        with pytest.raises(UserError):
            parse_incident(bad, t0)
    with pytest.raises(UserError, match="missing field 'device'"):
        incident_from_dict({"kind": "silent"}, t0, "incidents.yaml[0]")


def test_fleet_rejects_incident_for_unknown_or_wrong_device() -> None:
    t0 = _bj(2026, 3, 2, 9, 0)
    with pytest.raises(UserError, match="not in the simulated fleet"):
        Fleet([gate(1)], rng=random.Random(1), start=t0, incidents=[Incident("silent", "gate-gz-0099", t0)])
    with pytest.raises(UserError, match="is a gate"):
        Fleet([gate(1)], rng=random.Random(1), start=t0, incidents=[Incident("energy_spike", "gate-gz-0001", t0)])


def test_fleet_from_registry_places_devices_and_finds_vehicle_sites() -> None:
    regions = [
        RegionPoint("gd", None, "province", None, None),
        RegionPoint("gz", "gd", "city", 23.13, 113.26),
        RegionPoint("gz-a01", "gz", "agency", 23.14, 113.30),
        RegionPoint("gz-a01-b1", "gz-a01", "building", 23.16, 113.31),
        RegionPoint("gz-a01-b2", "gz-a01", "building", None, None),
        RegionPoint("gz-a02", "gz", "agency", 23.10, 113.20),
        RegionPoint("sz", "gd", "city", 22.54, 114.06),
        RegionPoint("sz-a01", "sz", "agency", 22.55, 114.07),
    ]
    rows = [
        ("gate-0001", "gate", "gz-a01-b2", None),
        ("car-0001", "vehicle", "gz-a01", 15),
        ("meter-0001", "energy_meter", "gz-a01-b1", None),
    ]
    devices = {d.id: d for d in fleet_from_registry(rows, regions)}
    assert (devices["gate-0001"].lat, devices["gate-0001"].lon) == (23.14, 113.30)  # nearest located ancestor
    assert devices["gate-0001"].interval_s == 60 and devices["car-0001"].interval_s == 15
    assert {s.region_id for s in devices["car-0001"].sites} == {"gz-a01-b1", "gz-a02"}  # same city only


def test_synthetic_fleet_mixes_types_with_valid_ids() -> None:
    fleet = synthetic_fleet(50)
    assert len({d.id for d in fleet}) == 50
    assert Counter(d.type for d in fleet) == {"gate": 20, "vehicle": 10, "energy_meter": 15, "sensor": 5}
    msgs = Fleet(fleet, rng=random.Random(1), start=_bj(2026, 3, 2, 9, 0)).advance(_bj(2026, 3, 2, 9, 10))
    info = {d.id: DeviceInfo(d.id, d.type, d.region_id) for d in fleet}
    decoded = [decode(m.kind, m.payload, info[m.device_id], m.ts_ms)[0][0] for m in msgs]
    assert {type(r) for r in decoded} == {Reading, Event, Status}


# --- incidents for the rules normal behaviour never drives -----------------------------------------------------


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _decodes(msgs: list[SimMessage], devices: list[SimDevice]) -> None:
    info = {d.id: DeviceInfo(d.id, d.type, d.region_id) for d in devices}
    for m in msgs:
        records, errors = decode(m.kind, m.payload, info[m.device_id], m.ts_ms)
        assert errors == [] and len(records) == 1


def test_tamper_and_power_cut_send_one_event_each() -> None:
    g, m, c = gate(1), meter(1), car(1)
    start, at = _bj(2026, 3, 3, 1, 0), _bj(2026, 3, 3, 1, 20)
    incidents = [Incident("tamper", g.id, at), Incident("tamper", m.id, at), Incident("power_cut", c.id, at)]
    msgs = run([g, m, c], start, 1, incidents=incidents)
    _decodes(msgs, [g, m, c])
    assert [x.ts_ms for x in events(msgs, "tamper", g.id)] == [_ms(at)]
    assert [x.ts_ms for x in events(msgs, "tamper", m.id)] == [_ms(at)]
    assert [x.ts_ms for x in events(msgs, "power_cut", c.id)] == [_ms(at)]
    assert events(run([g, m, c], start, 1), "tamper") == []
    with pytest.raises(UserError, match="is a vehicle"):
        Fleet([c], rng=random.Random(1), start=start, incidents=[Incident("tamper", c.id, at)])
    with pytest.raises(UserError, match="is a gate"):
        Fleet([g], rng=random.Random(1), start=start, incidents=[Incident("power_cut", g.id, at)])


def test_door_forced_event_reports_the_event_and_opens_the_door() -> None:
    g = gate(1)
    start, forced_at = _bj(2026, 3, 3, 1, 0), _bj(2026, 3, 3, 2, 0)
    msgs = run([g], start, 2, incidents=[Incident("door_forced_event", g.id, forced_at, duration_s=30)])
    _decodes(msgs, [g])
    t = _ms(forced_at)
    assert [x.ts_ms for x in events(msgs, "door_forced", g.id)] == [t]
    assert t in door_openings(msgs, g.id) and not opened_by(msgs, g.id, t)
    assert next(x.ts_ms for x in events(msgs, "door_closed", g.id) if x.ts_ms > t) == t + 30_000
    plain = run([g], start, 2, incidents=[Incident("door_forced", g.id, forced_at, duration_s=30)])
    assert events(plain, "door_forced") == []


def test_denied_burst_denies_one_credential_n_times_within_a_minute() -> None:
    g = gate(1)
    start, at = _bj(2026, 3, 3, 1, 0), _bj(2026, 3, 3, 1, 30)
    msgs = run([g], start, 1, incidents=[Incident("denied_burst", g.id, at, factor=5)])
    _decodes(msgs, [g])
    burst = [x for x in events(msgs, "access", g.id) if _ms(at) <= x.ts_ms < _ms(at) + 60_000]
    assert len(burst) == 5
    assert {x.doc()["result"] for x in burst} == {"denied"} and len({x.doc()["credential"] for x in burst}) == 1
    default = run([g], start, 1, incidents=[Incident("denied_burst", g.id, at)])
    assert len([x for x in events(default, "access", g.id) if _ms(at) <= x.ts_ms < _ms(at) + 60_000]) == 3


def test_overspeed_drives_at_the_given_speed_then_switches_off() -> None:
    c = car(1)
    start, at = _bj(2026, 3, 3, 1, 0), _bj(2026, 3, 3, 1, 30)  # parked at night
    msgs = run([c], start, 1, incidents=[Incident("overspeed", c.id, at, duration_s=120, factor=95)])
    _decodes(msgs, [c])
    during = [x.doc() for x in msgs if x.kind == "telemetry" and _ms(at) <= x.ts_ms < _ms(at) + 120_000]
    assert len(during) >= 4 and all(d["speed_kmh"] == 95 and d["ignition"] is True for d in during)
    assert len({(d["lat"], d["lon"]) for d in during}) == len(during)  # it does move
    assert next(x.ts_ms for x in events(msgs, "ignition_on", c.id)) == _ms(at)
    assert _ms(at) + 120_000 in [x.ts_ms for x in events(msgs, "ignition_off", c.id)]
    assert max(float(str(d["speed_kmh"])) for d in telemetry(run([c], start, 1), c.id)) == 0


def test_idling_keeps_the_ignition_on_at_speed_zero() -> None:
    c = car(1)
    start, at = _bj(2026, 3, 3, 1, 0), _bj(2026, 3, 3, 1, 10)
    msgs = run([c], start, 1, incidents=[Incident("idling", c.id, at, duration_s=900)])
    _decodes(msgs, [c])
    during = [x.doc() for x in msgs if x.kind == "telemetry" and _ms(at) <= x.ts_ms < _ms(at) + 900_000]
    assert len(during) >= 30 and all(d["speed_kmh"] == 0 and d["ignition"] is True for d in during)
    after = [x.doc() for x in msgs if x.kind == "telemetry" and x.ts_ms >= _ms(at) + 900_000]
    assert after and all(d["ignition"] is False for d in after)
    assert len({(d["lat"], d["lon"]) for d in during}) == 1


def test_meter_reset_drop_and_flat_counter() -> None:
    m = meter(1)
    start = _bj(2026, 3, 2, 8, 0)
    drop_at, flat_at = _bj(2026, 3, 2, 9, 0), _bj(2026, 3, 2, 10, 0)
    incidents = [Incident("meter_reset_drop", m.id, drop_at), Incident("meter_flat", m.id, flat_at, duration_s=3600)]
    msgs = run([m], start, 4, incidents=incidents)
    _decodes(msgs, [m])
    assert events(msgs, "reset") == []
    rows = [(x.ts_ms, float(str(x.doc()["energy_kwh"]))) for x in msgs if x.kind == "telemetry"]
    drops = [(a, b) for (_, a), (t, b) in itertools.pairwise(rows) if b < a]
    assert len(drops) == 1 and drops[0][1] < 5  # once, down to (nearly) zero
    flat = [e for t, e in rows if _ms(flat_at) <= t < _ms(flat_at) + 3_600_000]
    assert len(flat) >= 59 and len(set(flat)) == 1
    later = [e for t, e in rows if t >= _ms(flat_at) + 3_600_000]
    assert later[-1] > flat[0] and all(b >= a for a, b in itertools.pairwise(later))
    powers = [float(str(x.doc()["power_kw"])) for x in msgs if x.kind == "telemetry"]
    assert powers == [float(str(r["power_kw"])) for r in telemetry(run([m], start, 4), m.id)]


def test_parse_incident_accepts_a_factor_and_new_kinds() -> None:
    t0 = _bj(2026, 3, 2, 9, 0)
    inc = parse_incident("overspeed:car-gz-0001:10::80", t0)
    assert (inc.kind, inc.duration, inc.amount) == ("overspeed", 120, 80)
    assert parse_incident("denied_burst:gate-gz-0001:0", t0).amount == 3
    assert parse_incident("energy_spike:meter-gz-0001:0:60", t0).amount == 4
    assert incident_from_dict({"kind": "idling", "device": "car-gz-0001", "factor": 2}, t0).amount == 2
    for bad in ("overspeed:car-gz-0001:0:60:fast", "overspeed:car-gz-0001:0:60:-5", "meter_flat:meter-gz-0001:0:0"):
        with pytest.raises(UserError):
            parse_incident(bad, t0)


def test_clock_skew_and_lag_shift_only_the_reported_ts() -> None:
    g, m = gate(1), meter(1)
    start = _bj(2026, 3, 2, 9, 0)
    skew_at, lag_at = _bj(2026, 3, 2, 9, 30), _bj(2026, 3, 2, 10, 0)
    incidents = [
        Incident("clock_skew", m.id, skew_at, duration_s=600),  # 240 s ahead (default factor) for 10 min
        Incident("clock_lag", g.id, lag_at, factor=400),  # 400 s behind for good
    ]
    msgs = run([g, m], start, 2, incidents=incidents)
    plain = run([g, m], start, 2)
    # the same messages at the same (true) send times; only the payload's ts moves
    assert [(x.device_id, x.kind, x.ts_ms, x.seq) for x in msgs] == [
        (x.device_id, x.kind, x.ts_ms, x.seq) for x in plain
    ]
    offsets = {(x.device_id, int(str(x.doc()["ts"])) - x.ts_ms, x.ts_ms) for x in msgs if "ts" in x.doc()}
    meter_off = {o for d, o, t in offsets if d == m.id and _ms(skew_at) <= t < _ms(skew_at) + 600_000}
    assert meter_off == {240_000}
    assert {o for d, o, t in offsets if d == m.id and not _ms(skew_at) <= t < _ms(skew_at) + 600_000} == {0}
    assert {o for d, o, t in offsets if d == g.id and t >= _ms(lag_at)} == {-400_000}
    assert {o for d, o, t in offsets if d == g.id and t < _ms(lag_at)} == {0}
    _decodes(msgs, [g, m])
    assert parse_incident("clock_lag:gate-gz-0001:0", start).amount == 600


def test_door_forced_in_the_rush_hour_has_no_access_in_the_15s_before_and_opens_a_closed_door() -> None:
    start = _bj(2026, 3, 2, 17, 50)  # evening rush: about 70 attempts an hour per gate
    gates = [gate(i) for i in range(1, 4)]
    for k in range(20):  # many forced doors, so the rush had every chance to come close to one
        at = start + timedelta(minutes=3 * k + 1, seconds=17)
        msgs = run(gates, start, 1.1, seed=k, incidents=[Incident("door_forced", "gate-gz-0002", at)])
        at_ms = int(at.timestamp() * 1000)
        near = [
            m
            for m in msgs
            if m.device_id == "gate-gz-0002"
            and m.kind == "event"
            and m.doc()["type"] in ("access", "request_to_exit")
            and at_ms - 15_000 <= m.ts_ms <= at_ms
        ]
        assert near == [], (k, [m.doc() for m in near])
        opened = [m for m in msgs if m.device_id == "gate-gz-0002" and m.kind == "telemetry" and m.ts_ms == at_ms]
        assert [m.doc()["door_open"] for m in opened] == [True], k  # the door was closed: the opening is seen
    # The other gates keep their traffic.
    rush = run(gates, start, 1.1, incidents=[Incident("door_forced", "gate-gz-0002", start + timedelta(minutes=5))])
    assert len(events(rush, "access", "gate-gz-0001")) > 20


def test_resume_continues_meter_and_odometer_from_stored_values_and_never_goes_back() -> None:
    start = _bj(2026, 3, 2, 10)
    stored = {"meter-gz-0001": {"energy_kwh": 987_654.321}, "car-gz-0001": {"odometer_km": 250_000.5, "fuel_pct": 33.0}}
    msgs = run([meter(), car(), meter(2)], start, 0.5, resume=stored)
    energy = [m.doc()["energy_kwh"] for m in msgs if m.device_id == "meter-gz-0001" and m.kind == "telemetry"]
    assert energy and energy[0] >= 987_654.321 and energy == sorted(energy)
    odo = [m.doc()["odometer_km"] for m in msgs if m.device_id == "car-gz-0001" and m.kind == "telemetry"]
    assert odo and odo[0] >= 250_000.5
    fresh = [m.doc()["energy_kwh"] for m in msgs if m.device_id == "meter-gz-0002" and m.kind == "telemetry"]
    assert fresh[0] < 500_000  # a meter without stored values starts from its drawn reading


def test_stored_last_values_reads_the_counters_from_the_telemetry_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "telemetry.db")
    try:
        ms = int(_bj(2026, 3, 2, 10).timestamp() * 1000)
        store.write(
            WriteBatch(
                readings=[
                    Reading("meter-gz-0001", "gz-a01-b1", "energy_meter", ms, 1, {"energy_kwh": 10.0, "power_kw": 3.0}),
                    Reading("meter-gz-0001", "gz-a01-b1", "energy_meter", ms + 60_000, 2, {"energy_kwh": 12.5}),
                    Reading("car-gz-0001", "gz-a01", "vehicle", ms, 1, {"odometer_km": 42.0, "speed_kmh": 30.0}),
                    Reading("gate-gz-0001", "gz-a01-b1", "gate", ms, 1, {"door_open": False}),
                ]
            )
        )
        last = stored_last_values(store, [meter(), meter(2), car(), gate()])
    finally:
        store.close()
    assert last == {"meter-gz-0001": {"energy_kwh": 12.5}, "car-gz-0001": {"odometer_km": 42.0}}


def test_simulate_reads_the_dev_password_from_the_data_dir_or_says_where_it_comes_from(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from core.settings import load_settings
    from lianfang import commands  # noqa: F401  (registers the sub-apps)
    from lianfang.cli import app
    from lianfang.runtime import BrokerSecrets, broker_secrets_path

    data = tmp_path / "var"
    env = {
        "LIANFANG_DATA_DIR": str(data),
        "LIANFANG_DATABASE_URL": f"sqlite:///{data / 'registry.db'}",
        "LIANFANG_MQTT__BROKER_DIR": str(data / "mosquitto"),
        "LIANFANG_SIM_PASSWORD": "",
        "LIANFANG_CONFIG": "",
    }
    missing = CliRunner().invoke(app, ["simulate", "--duration", "1"], env=env)
    assert missing.exit_code == 1 and "DATA_DIR/broker-secrets.json" in missing.stderr
    settings = load_settings(None, data_dir=str(data), mqtt={"broker_dir": str(data / "mosquitto")})
    made = BrokerSecrets.load_or_create(broker_secrets_path(settings))
    from devices.sim_cli import dev_sim_password

    assert dev_sim_password(settings) == made.sim
    prod = load_settings(None, env="prod", data_dir=str(data), mqtt={"password": "real-secret"})
    assert dev_sim_password(prod) is None  # the shared simulator account exists only in dev
