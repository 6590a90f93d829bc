"""History back-fill: weeks of realistic telemetry written straight into the telemetry store (``WriteBatch``).

``lianfang sim backfill --weeks N`` (devices/sim_cli.py) and the demo's first start (lianfang/demo.py) use it so that
the reports (vehicles, energy, coverage, scorecard) have history to show. The generator is pure (no I/O, no
clock): :func:`generate` yields one ``WriteBatch`` per Beijing day for [start, end); :func:`backfill` writes them.
Each device draws from its own ``random.Random`` seeded with ``(seed, device id)``, so the history of a device is
the same for a given seed whatever other devices are back-filled with it.

Behaviour (Beijing time; working days are the official calendar with its make-up working days, the simulator's
``WorkCalendar``):

- gates: a roster of people per gate (``roster_size``); on a working day each comes in around their own arrival
  time (08:00-09:30) and leaves around their own time (17:00-18:30), some by the exit button; a few visitors
  during the day; a few denied attempts. On a non-working day only a few (about 4 %) come in. Telemetry
  ``door_open`` / ``occupancy`` every ``heartbeat_s``.
- vehicles: parked at their depot (their region's coordinates) at night; on working days outings between 08:30
  and 17:00 to one to three of the other buildings and agencies of their city (or elsewhere in it) and back,
  with ``ignition_on`` / ``ignition_off`` (and sometimes ``driver_login``) events and positions every 30-60 s
  while moving; a parked position every ``heartbeat_s``. Usage differs: agencies in sorted order ``i % 5 == 1``
  are under-used (x0.3), ``i % 5 == 3`` busy (x1.8); one vehicle in ten is hardly used (x0.15). A few trips
  after hours on working days.
- energy meters: ``power_kw`` on the simulator's hour-of-week load shape (``load_share``), ``energy_kwh``
  integrating it (never decreasing), every ``meter_interval_s``. Waste patterns: about 12 % of meters keep a high
  night base load (equipment left on, +25 % of nominal 20:00-07:00), about 8 % run on non-working days like on a
  working day. A meter with sub-meters (attribute ``parent_meter`` on the subs) reads the sum of its subs.
- sensors: ``temperature_c`` / ``humidity_pct`` with a daily cycle every ``heartbeat_s``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from core.protocol import Event, Reading, Status
from core.store import WriteBatch
from devices.simulator import _WEEKDAY_FACTOR, BEIJING, SimDevice, Site, WorkCalendar, _km, load_share
from joint.risk import RegionNode, RiskItem, RiskWeights, compute
from joint.risk_store import HistoryPoint

DAY_MS = 86_400_000
MINUTE_MS = 60_000

# Usage factors of vehicles (see the module docstring).
UNDER_USED_AGENCY = 0.3
BUSY_AGENCY = 1.8
IDLE_VEHICLE = 0.15
TRIPS_PER_WORKING_DAY = 3.0
TRIPS_PER_OFF_DAY = 0.1
AFTER_HOURS_TRIP_P = 0.03
ELSEWHERE_P = 0.4
# Meter waste patterns.
NIGHT_WASTE_P = 0.12
NIGHT_WASTE_SHARE = 0.25
WEEKEND_WASTE_P = 0.08
# Gates.
PRESENT_WORKING_P = 0.93
PRESENT_OFF_P = 0.04
EXIT_BUTTON_P = 0.35
DENIED_P = 0.03


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    seed: int = 1
    meter_interval_s: int = 900  # 15-minute readings (E8 looks at 15-minute demand)
    heartbeat_s: int = 3600  # gates, sensors, parked vehicles
    roster_size: int = 30  # people per gate, on average (2/3 to 4/3 of it)
    move_interval_s: tuple[int, int] = (30, 60)  # vehicle positions while moving


@dataclass(slots=True)
class BackfillCounts:
    days: int = 0
    readings: int = 0
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Person:
    person_id: str
    credential: str
    arrive_min: float
    leave_min: float


@dataclass(slots=True)
class _Dev:
    dev: SimDevice
    rng: random.Random
    # gates
    roster: list[_Person] = field(default_factory=list)
    # vehicles
    usage: float = 1.0
    lat: float = 0.0
    lon: float = 0.0
    odometer: float = 0.0
    fuel: float = 80.0
    drivers: tuple[str, ...] = ()
    # meters
    nominal_kw: float = 50.0
    energy: float = 0.0
    night_waste: bool = False
    weekend_waste: bool = False
    subs: list[_Dev] = field(default_factory=list)
    parent: str | None = None


def _ms(local: datetime) -> int:
    return int(local.timestamp() * 1000)


def _new_state(dev: SimDevice, seed: int, usage: float, parent: str | None, roster_size: int) -> _Dev:
    rng = random.Random(f"{seed}:{dev.id}")
    st = _Dev(dev, rng, parent=parent)
    if dev.type == "gate":
        st.roster = [
            _Person(
                f"p-{dev.id}-{k:03d}",
                f"card-{rng.getrandbits(32):08x}",
                rng.uniform(8 * 60, 9 * 60 + 30),
                rng.uniform(17 * 60, 18 * 60 + 30),
            )
            for k in range(rng.randint(max(1, roster_size * 2 // 3), max(1, roster_size * 4 // 3)))
        ]
    elif dev.type == "vehicle":
        st.usage = usage * (IDLE_VEHICLE if rng.random() < 0.1 else 1.0)
        st.lat, st.lon = dev.lat, dev.lon
        st.odometer = round(rng.uniform(5_000, 80_000), 1)
        st.drivers = tuple(f"drv-{dev.id}-{k}" for k in range(rng.randint(1, 3)))
    elif dev.type == "energy_meter":
        st.nominal_kw = dev.nominal_kw if dev.nominal_kw is not None else rng.uniform(20, 200)
        st.energy = round(rng.uniform(1_000, 50_000), 3)
        st.night_waste = rng.random() < NIGHT_WASTE_P
        st.weekend_waste = rng.random() < WEEKEND_WASTE_P
    return st


def agency_usage(region_ids: Sequence[str]) -> dict[str, float]:
    """Usage factor per vehicle region: in sorted order, ``i % 5 == 1`` under-used, ``i % 5 == 3`` busy."""
    out: dict[str, float] = {}
    for i, rid in enumerate(sorted(set(region_ids))):
        out[rid] = UNDER_USED_AGENCY if i % 5 == 1 else BUSY_AGENCY if i % 5 == 3 else 1.0
    return out


def _states(devices: Sequence[SimDevice], parents: Mapping[str, str], opts: BackfillOptions) -> list[_Dev]:
    usage = agency_usage([d.region_id for d in devices if d.type == "vehicle"])
    states = [
        _new_state(d, opts.seed, usage.get(d.region_id, 1.0), parents.get(d.id), opts.roster_size) for d in devices
    ]
    by_id = {s.dev.id: s for s in states}
    for s in states:
        if s.parent is not None and s.dev.type == "energy_meter":
            parent = by_id.get(s.parent)
            if parent is not None and parent.dev.type == "energy_meter" and parent.parent is None:
                parent.subs.append(s)
            else:
                s.parent = None  # its parent is not back-filled: it reads on its own
    for s in states:
        if s.subs:  # the parent reads the sum of its subs: start from their sum
            s.energy = round(sum(x.energy for x in s.subs), 3)
    return states


class _Day:
    """What one day of one device produces."""

    def __init__(self, st: _Dev, day: date, working: bool, out: WriteBatch, end_ms: int) -> None:
        self.st = st
        self.day = day
        self.working = working
        self.out = out
        self.end_ms = end_ms
        self.midnight = _ms(datetime.combine(day, time(0), BEIJING))
        self.series: list[tuple[float, float]] = []  # a meter's (power, energy) of the day, for its parent's sum
        self.readings = 0
        self.events = 0
        self._event_ts: set[tuple[int, str]] = set()

    def at(self, minute: float) -> int:
        return self.midnight + int(minute * MINUTE_MS)

    def reading(self, ts: int, fields: dict[str, float | bool]) -> None:
        if ts >= self.end_ms:
            return
        d = self.st.dev
        self.out.readings.append(Reading(d.id, d.region_id, d.type, ts, None, fields))
        self.readings += 1

    def event(self, ts: int, etype: str, data: dict[str, object]) -> None:
        while (ts, etype) in self._event_ts:  # events are unique on device + time + type
            ts += 1
        if ts >= self.end_ms:
            return
        self._event_ts.add((ts, etype))
        d = self.st.dev
        self.out.events.append(Event(d.id, d.region_id, d.type, ts, None, etype, data))
        self.events += 1


# --- gates ----------------------------------------------------------------------------------------------------


def _gate_day(g: _Day, opts: BackfillOptions) -> None:
    rng = g.st.rng
    passes: list[tuple[int, str, _Person | None]] = []  # (ts, direction, person)
    for p in g.st.roster:
        if g.working:
            if rng.random() >= PRESENT_WORKING_P:
                continue
            t_in, t_out = p.arrive_min + rng.gauss(0, 12), p.leave_min + rng.gauss(0, 20)
        else:
            if rng.random() >= PRESENT_OFF_P:
                continue
            t_in, t_out = rng.uniform(9 * 60, 11 * 60), rng.uniform(14 * 60, 17 * 60)
        t_in, t_out = max(6 * 60.0, t_in), min(23 * 60.0, max(t_in + 30, t_out))
        passes += [(g.at(t_in), "in", p), (g.at(t_out), "out", p)]
    visitors = sum(1 for _ in range(len(g.st.roster) // 5) if rng.random() < 0.5) if g.working else 0
    for _ in range(visitors):
        t_in = rng.uniform(9 * 60 + 30, 16 * 60)
        passes += [(g.at(t_in), "in", None), (g.at(t_in + rng.uniform(15, 120)), "out", None)]
    passes.sort(key=lambda x: (x[0], x[1]))
    occupancy, hourly, k = 0, [], 0
    for ts, direction, person in passes:
        if rng.random() < DENIED_P:
            g.event(
                ts - rng.randint(5_000, 30_000),
                "access",
                {"credential": f"card-{rng.getrandbits(32):08x}", "direction": direction, "result": "denied"},
            )
        if direction == "out" and rng.random() < EXIT_BUTTON_P:
            g.event(ts, "request_to_exit", {})
        else:
            cred = person.credential if person is not None else f"visitor-{rng.getrandbits(24):06x}"
            data: dict[str, object] = {"credential": cred, "direction": direction, "result": "granted"}
            data["method"] = "card" if rng.random() < 0.6 else "face"
            if person is not None:
                data["person_id"] = person.person_id
            g.event(ts, "access", data)
        occupancy = occupancy + 1 if direction == "in" else max(0, occupancy - 1)
        hourly.append((ts, occupancy))
    for ts in range(g.midnight, g.midnight + DAY_MS, opts.heartbeat_s * 1000):
        while k < len(hourly) and hourly[k][0] <= ts:
            k += 1
        g.reading(ts, {"door_open": False, "occupancy": hourly[k - 1][1] if k else 0})


# --- vehicles -------------------------------------------------------------------------------------------------


def _poisson(rng: random.Random, lam: float) -> int:
    n, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return n
        n += 1


class _Drive:
    """One vehicle's day in time order: parked beats fill the time between legs."""

    def __init__(self, g: _Day, opts: BackfillOptions) -> None:
        self.g, self.opts, self.st = g, opts, g.st
        self.step = opts.heartbeat_s * 1000
        self.next_beat = g.midnight

    def fields(
        self, speed: float, heading: float, ignition: bool, lat: float, lon: float, odo: float, fuel: float
    ) -> dict[str, float | bool]:
        return {
            "lat": round(lat, 6),
            "lon": round(lon, 6),
            "speed_kmh": round(speed, 1),
            "heading_deg": round(heading, 1),
            "ignition": ignition,
            "odometer_km": round(odo, 1),
            "fuel_pct": round(fuel, 1),
        }

    def park_until(self, t_ms: int) -> None:
        st = self.st
        while self.next_beat < t_ms:
            self.g.reading(self.next_beat, self.fields(0.0, 0.0, False, st.lat, st.lon, st.odometer, st.fuel))
            self.next_beat += self.step

    def leg(self, t_ms: int, dst: tuple[float, float]) -> int:
        """Drive from where the vehicle is to ``dst`` starting at ``t_ms``; returns the arrival time."""
        self.park_until(t_ms)
        g, st, rng = self.g, self.st, self.st.rng
        src = (st.lat, st.lon)
        km = _km(src[0], src[1], dst[0], dst[1]) * 1.3  # roads are not straight
        speed = rng.uniform(20, 35)  # city traffic
        duration = int(km / speed * 3_600_000) + 2 * MINUTE_MS
        heading = math.degrees(math.atan2(dst[1] - src[1], dst[0] - src[0])) % 360.0
        g.event(t_ms, "ignition_on", {})
        if rng.random() < 0.5:
            g.event(t_ms, "driver_login", {"driver_id": rng.choice(st.drivers)})
        odo0, fuel0 = st.odometer, st.fuel
        g.reading(t_ms, self.fields(0.0, heading, True, src[0], src[1], odo0, fuel0))
        lo, hi = self.opts.move_interval_s
        t = t_ms + rng.randint(lo, hi) * 1000
        while t < t_ms + duration:
            f = (t - t_ms) / duration
            lat, lon = src[0] + (dst[0] - src[0]) * f, src[1] + (dst[1] - src[1]) * f
            v = speed * rng.uniform(0.6, 1.4)
            g.reading(t, self.fields(v, heading, True, lat, lon, odo0 + km * f, fuel0 - km * f * 0.08))
            t += rng.randint(lo, hi) * 1000
        arrive = t_ms + duration
        st.odometer += km
        st.fuel = max(5.0, st.fuel - km * 0.08)
        if st.fuel < 20:
            st.fuel = 95.0  # refuelled
        st.lat, st.lon = dst
        g.event(arrive, "ignition_off", {})
        g.reading(arrive, self.fields(0.0, heading, False, dst[0], dst[1], st.odometer, st.fuel))
        self.next_beat = max(self.next_beat, arrive + 1)
        self.next_beat += (-(self.next_beat - g.midnight)) % self.step  # back on the beat grid
        return arrive

    def round_trip(self, t_ms: int) -> int:
        """Out to one to three other sites with a stay at each, and back to the depot; returns when it is back."""
        rng = self.st.rng
        t = t_ms
        for _ in range(rng.randint(1, 3)):
            t = self.leg(t, _destination(self.st)) + rng.randint(10, 60) * MINUTE_MS
        return self.leg(t, (self.st.dev.lat, self.st.dev.lon))


def _destination(st: _Dev) -> tuple[float, float]:
    """Another building or agency of the city; one stop in ``ELSEWHERE_P`` is elsewhere in the city (a meeting,
    an inspection: 3-12 km away), as is every stop of a vehicle whose city has no other located site."""
    sites: Sequence[Site] = st.dev.sites
    if sites and st.rng.random() >= ELSEWHERE_P:
        s = st.rng.choice(sites)
        return s.lat, s.lon
    km, angle = st.rng.uniform(3, 12), st.rng.uniform(0, 2 * math.pi)
    lat = st.dev.lat + km * math.cos(angle) / 111.0
    return lat, st.dev.lon + km * math.sin(angle) / (111.0 * max(0.2, math.cos(math.radians(st.dev.lat))))


def _vehicle_day(g: _Day, opts: BackfillOptions) -> None:
    st, rng = g.st, g.st.rng
    drive = _Drive(g, opts)
    lam = (TRIPS_PER_WORKING_DAY if g.working else TRIPS_PER_OFF_DAY) * st.usage
    t = g.at(8 * 60 + 30 + rng.uniform(0, 90))
    for _ in range(_poisson(rng, lam)):
        if t >= g.at(16 * 60):
            break
        home = drive.round_trip(t)
        t = home + rng.randint(20, 120) * MINUTE_MS
    if g.working and rng.random() < AFTER_HOURS_TRIP_P * st.usage:
        drive.round_trip(max(t, g.at(rng.uniform(19 * 60, 21 * 60))))
    drive.park_until(g.midnight + DAY_MS)


# --- meters and sensors ---------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _shares(working: bool, step_s: int) -> tuple[float, ...]:
    """The load shape's share at each reading of a day (the weekday factor aside), every ``step_s`` from 00:00."""
    day = datetime(2026, 1, 5, tzinfo=BEIJING)  # a Monday: load_share's weekday factor is 1.03 on Mondays
    monday = 1.03 if working else 1.0
    return tuple(load_share(day + timedelta(seconds=k), working) / monday for k in range(0, 86_400, step_s))


def _meter_day(g: _Day, opts: BackfillOptions, subs: Sequence[_Day]) -> None:
    """A meter's readings; a parent meter's power and energy are the sums of its subs' (already generated)."""
    st = g.st
    step = opts.meter_interval_s * 1000
    if st.subs:
        for k, points in enumerate(zip(*(s.series for s in subs), strict=True)):
            power, energy = sum(p for p, _ in points), sum(e for _, e in points)
            g.reading(g.midnight + k * step, {"energy_kwh": round(energy, 3), "power_kw": round(power, 3)})
        return
    shape_working = g.working or st.weekend_waste
    weekday = _WEEKDAY_FACTOR[g.day.weekday()] if g.working else 1.0
    scale = st.nominal_kw * weekday * (0.8 if shape_working and not g.working else 1.0)
    night = st.nominal_kw * NIGHT_WASTE_SHARE if st.night_waste else 0.0
    gauss, hours = st.rng.gauss, step / 3_600_000
    for k, share in enumerate(_shares(shape_working, opts.meter_interval_s)):
        ts = g.midnight + k * step
        if ts >= g.end_ms:
            break
        hour = k * opts.meter_interval_s // 3600
        base = scale * share + (night if hour >= 20 or hour < 7 else 0.0)
        power = max(0.0, base * (1 + gauss(0, 0.03)))
        st.energy += power * hours
        power, energy = round(power, 3), round(st.energy, 3)
        g.series.append((power, energy))
        g.reading(ts, {"energy_kwh": energy, "power_kw": power})


def _sensor_day(g: _Day, opts: BackfillOptions) -> None:
    rng = g.st.rng
    for ts in range(g.midnight, g.midnight + DAY_MS, opts.heartbeat_s * 1000):
        local = datetime.fromtimestamp(ts / 1000, BEIJING)
        phase = 2 * math.pi * (local.hour + local.minute / 60 - 9) / 24
        temp = 22 + 3 * math.sin(phase) + rng.gauss(0, 0.2)
        hum = 55 - 8 * math.sin(phase) + rng.gauss(0, 1)
        g.reading(ts, {"temperature_c": round(temp, 2), "humidity_pct": round(min(100.0, max(0.0, hum)), 1)})


# --- the whole history ----------------------------------------------------------------------------------------


def generate(
    devices: Sequence[SimDevice],
    start: datetime,
    end: datetime,
    *,
    options: BackfillOptions | None = None,
    parents: Mapping[str, str] | None = None,
    calendar: WorkCalendar | None = None,
) -> Iterator[tuple[date, WriteBatch]]:
    """One batch per Beijing day from ``start``'s day up to ``end`` (exclusive; records at or after it are left
    out, records before ``start`` too). ``parents``: sub-meter id -> its parent meter's id."""
    opts = options or BackfillOptions()
    cal = calendar or WorkCalendar()
    states = _states(devices, parents or {}, opts)
    # sub-meters before their parents (a parent sums its subs' readings of the same day)
    order = sorted(states, key=lambda s: 1 if s.subs else 0)
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    day = start.astimezone(BEIJING).date()
    last = (end - timedelta(milliseconds=1)).astimezone(BEIJING).date()
    while day <= last:
        working = cal.is_working_day(day)
        batch = WriteBatch()
        days: dict[str, _Day] = {}
        for st in order:
            g = _Day(st, day, working, batch, end_ms)
            days[st.dev.id] = g
            t = st.dev.type
            if t == "gate":
                _gate_day(g, opts)
            elif t == "vehicle":
                _vehicle_day(g, opts)
            elif t == "energy_meter":
                _meter_day(g, opts, [days[s.dev.id] for s in st.subs])
            else:
                _sensor_day(g, opts)
        if start_ms > days_start_ms(day):
            batch.readings = [r for r in batch.readings if r.ts_ms >= start_ms]
            batch.events = [e for e in batch.events if e.ts_ms >= start_ms]
        _count(batch)
        yield day, batch
        day += timedelta(days=1)


def days_start_ms(day: date) -> int:
    return _ms(datetime.combine(day, time(0), BEIJING))


def _count(batch: WriteBatch) -> None:
    for r in batch.readings:
        c = batch.counter(r.device_id)
        c.messages += 1
        c.last_seen_ms = max(c.last_seen_ms, r.ts_ms)
    for e in batch.events:
        c = batch.counter(e.device_id)
        c.messages += 1
        c.last_seen_ms = max(c.last_seen_ms, e.ts_ms)


class BatchWriter(Protocol):
    """What back-fill needs of a telemetry store."""

    def write(self, batch: WriteBatch) -> None: ...


def backfill(
    store: BatchWriter,
    devices: Sequence[SimDevice],
    start: datetime,
    end: datetime,
    *,
    options: BackfillOptions | None = None,
    parents: Mapping[str, str] | None = None,
    progress: Callable[[date, BackfillCounts], None] | None = None,
    max_batch: int = 200_000,
) -> BackfillCounts:
    """Generate and write the history of [start, end) day by day (several days per write while a batch stays
    under ``max_batch`` records); returns what was written. Each device also gets an ``online`` status at its
    first record."""
    counts = BackfillCounts()
    pending = WriteBatch()
    first = True
    for day, batch in generate(devices, start, end, options=options, parents=parents):
        if first:
            seen: set[str] = set()
            for dev_id, region_id, ts in [(x.device_id, x.region_id, x.ts_ms) for x in batch.readings + batch.events]:
                if dev_id not in seen:
                    seen.add(dev_id)
                    batch.statuses.append(Status(dev_id, region_id, ts, "online"))
            first = False
        counts.days += 1
        counts.readings += len(batch.readings)
        counts.events += len(batch.events)
        for rd in batch.readings:
            counts.by_type[rd.device_type] = counts.by_type.get(rd.device_type, 0) + 1
        pending.extend(batch)
        if len(pending) >= max_batch:
            store.write(pending)
            pending = WriteBatch()
        if progress is not None:
            progress(day, counts)
    if len(pending):
        store.write(pending)
    return counts


class StoredLastValues(Protocol):
    def last_values(self, device_id: str) -> dict[str, tuple[int, float | bool]]: ...


class HistoryStore(BatchWriter, StoredLastValues, Protocol):
    """A telemetry store as :func:`backfill_once` needs it."""


def history_present(store: StoredLastValues, devices: Sequence[SimDevice]) -> bool:
    """Whether the store already holds data of these devices (the first device of each type is asked)."""
    probes: dict[str, str] = {}
    for d in devices:
        probes.setdefault(d.type, d.id)
    return any(store.last_values(device_id) for device_id in probes.values())


def backfill_once(
    store: HistoryStore,
    devices: Sequence[SimDevice],
    start: datetime,
    end: datetime,
    *,
    options: BackfillOptions | None = None,
    parents: Mapping[str, str] | None = None,
) -> BackfillCounts | None:
    """:func:`backfill` unless the store already holds data of the devices (a demo that ran before: its meters
    and odometers must not go back); None when skipped."""
    if not devices or history_present(store, devices):
        return None
    return backfill(store, devices, start, end, options=options, parents=parents)


# --- alerts and risk history (optional) ---------------------------------------------------------------------------

# Rules of the default packs the alert history draws from, per device type, with their weights. Severity and titles
# come from the pack files (alert_templates), so the history never names a rule that does not exist.
ALERT_RULES: dict[str, tuple[tuple[str, int], ...]] = {
    "gate": (("G2", 5), ("G5", 2), ("G6", 2), ("G11.offline", 1)),
    "vehicle": (("V1", 3), ("V6", 3), ("V7", 2)),
    "energy_meter": (("E2", 2), ("E1", 2), ("E4", 1)),
}
# Alerts per device and day.
ALERT_RATE: dict[str, float] = {"gate": 0.012, "vehicle": 0.02, "energy_meter": 0.01}
# Median minutes to acknowledge per agency, in sorted order (i % 5): response differs between regions.
ACK_MEDIAN_MIN = (4.0, 8.0, 15.0, 30.0, 60.0)
AUTO_RESOLVE_P = 0.05  # resolved (the condition cleared) before anyone acknowledged
RISK_STEP = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class AlertTemplate:
    rule_id: str
    severity: str
    title_zh: str
    title_en: str


@dataclass(frozen=True, slots=True)
class PastAlert:
    rule: AlertTemplate
    device_id: str
    region_id: str
    raised_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime


class RegionLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def level(self) -> str: ...


def alert_templates(pack_docs: Iterable[Mapping[str, Any]]) -> dict[str, AlertTemplate]:
    """The ALERT_RULES' templates from the rule packs' parsed YAML (a missing rule is a KeyError)."""
    by_id = {str(r["id"]): r for doc in pack_docs for r in doc.get("rules", [])}
    out = {}
    for rules in ALERT_RULES.values():
        for rule_id, _w in rules:
            r = by_id[rule_id]
            out[rule_id] = AlertTemplate(rule_id, str(r["severity"]), str(r["title_zh"]), str(r["title_en"]))
    return out


def _agency_of(region_id: str, by_id: Mapping[str, RegionLike]) -> str:
    current = by_id.get(region_id)
    while current is not None and current.level != "agency" and current.parent_id is not None:
        current = by_id.get(current.parent_id)
    return current.id if current is not None and current.level == "agency" else region_id


def alert_history(
    devices: Sequence[SimDevice],
    regions: Sequence[RegionLike],
    templates: Mapping[str, AlertTemplate],
    start: datetime,
    end: datetime,
    *,
    seed: int = 1,
) -> list[PastAlert]:
    """Resolved alerts raised in [start, end) (resolved before ``end``), oldest first: per device and day with
    probability ALERT_RATE of its type, a rule of ALERT_RULES; acknowledged after a log-normal delay around its
    agency's median (ACK_MEDIAN_MIN, agencies in sorted order), resolved after a delay around three times that;
    AUTO_RESOLVE_P of them resolved with no acknowledgement."""
    by_id = {r.id: r for r in regions}
    agencies = sorted({_agency_of(d.region_id, by_id) for d in devices})
    median = {a: ACK_MEDIAN_MIN[i % len(ACK_MEDIAN_MIN)] for i, a in enumerate(agencies)}
    out: list[PastAlert] = []
    days = max(0, math.ceil((end - start).total_seconds() / 86_400))
    for d in devices:
        rules = ALERT_RULES.get(d.type)
        if not rules:
            continue
        rng = random.Random(f"{seed}:alerts:{d.id}")
        m = median[_agency_of(d.region_id, by_id)]
        for k in range(days):
            if rng.random() >= ALERT_RATE[d.type]:
                continue
            rule_id = rng.choices([r for r, _ in rules], [w for _, w in rules])[0]
            raised = start + timedelta(days=k, minutes=rng.uniform(7 * 60, 22 * 60))
            if rng.random() < AUTO_RESOLVE_P:
                ack, resolved = None, raised + timedelta(minutes=rng.uniform(10, 60))
            else:
                ack = raised + timedelta(minutes=rng.lognormvariate(math.log(m), 0.6))
                resolved = ack + timedelta(minutes=rng.lognormvariate(math.log(3 * m), 0.7))
            if raised >= start and resolved < end:
                out.append(PastAlert(templates[rule_id], d.id, d.region_id, raised, ack, resolved))
    out.sort(key=lambda a: (a.raised_at, a.device_id))
    return out


def risk_history(
    alerts: Sequence[PastAlert],
    regions: Sequence[RegionLike],
    weights: RiskWeights,
    start: datetime,
    end: datetime,
    *,
    step: timedelta = RISK_STEP,
) -> list[HistoryPoint]:
    """The snapshots ``RiskSnapshotter`` would have written every ``step`` over these alerts: a point per region
    with a score above 0, and a 0 for each region that had one at the previous snapshot."""
    nodes = [RegionNode(r.id, r.parent_id, r.level) for r in regions]
    points: list[HistoryPoint] = []
    hot: set[str] = set()
    t, i = start, 0
    open_now: list[PastAlert] = []
    while t < end:
        while i < len(alerts) and alerts[i].raised_at <= t:
            open_now.append(alerts[i])
            i += 1
        open_now = [a for a in open_now if a.resolved_at > t]
        if open_now or hot:
            items = [
                RiskItem(
                    "alert",
                    n,
                    a.region_id,
                    a.rule.severity,
                    a.raised_at,
                    handled=a.acknowledged_at is not None and a.acknowledged_at <= t,
                    handled_at=a.acknowledged_at if a.acknowledged_at is not None and a.acknowledged_at <= t else None,
                    label=a.rule.rule_id,
                )
                for n, a in enumerate(open_now)
            ]
            picture = compute(nodes, items, weights, now=t, top_contributors=0)
            now_hot = {r.id for r in picture.regions.values() if r.score > 0}
            points += [
                HistoryPoint(r.id, t, r.score, r.own, r.subtree_alerts, r.subtree_incidents)
                for r in picture.regions.values()
                if r.score > 0
            ]
            points += [HistoryPoint(rid, t, 0.0, 0.0, 0, 0) for rid in sorted(hot - now_hot)]
            hot = now_hot
        t += step
    return points


def alert_rows(alerts: Sequence[PastAlert], paths: Mapping[str, str], first_id: int) -> list[dict[str, Any]]:
    """``alerts`` table rows (resolved, inactive), ids from ``first_id``."""
    rows = []
    for n, a in enumerate(alerts):
        i = first_id + n
        rows.append(
            {
                "id": i,
                "dedup_key": f"{a.rule.rule_id}|{a.device_id}|history-{i}",
                "open_key": None,
                "rule_id": a.rule.rule_id,
                "device_id": a.device_id,
                "region_id": a.region_id,
                "region_path": paths.get(a.region_id, f"/{a.region_id}/"),
                "severity": a.rule.severity,
                "state": "resolved",
                "title_zh": a.rule.title_zh,
                "title_en": a.rule.title_en,
                "started_at": a.raised_at.astimezone(UTC),
                "updated_at": a.resolved_at.astimezone(UTC),
                "detail": {"history": "simulated back-fill"},
                "acknowledged_by": None if a.acknowledged_at is None else "值班员 (simulated)",
                "acknowledged_at": None if a.acknowledged_at is None else a.acknowledged_at.astimezone(UTC),
                "resolved_at": a.resolved_at.astimezone(UTC),
                "resolved_by": "值班员 (simulated)" if a.acknowledged_at is not None else None,
                "resolve_reason": "模拟历史数据 / simulated history",
                "escalation_level": 0,
                "flapping": False,
                "count": 1,
                "silenced": False,
                "active": False,
                "learned_at": a.raised_at.astimezone(UTC),
            }
        )
    return rows


# Joint incidents the alert history opens (joint/packs/joint.yaml): anchor rule -> pattern; with this probability.
INCIDENT_PATTERNS: dict[str, str] = {"V1": "X3", "E2": "X8"}
INCIDENT_P = 0.8


def incident_rows(
    alerts: Sequence[PastAlert],
    alert_ids: Sequence[int],
    joint_doc: Mapping[str, Any],
    paths: Mapping[str, str],
    first_incident: int,
    first_task: int,
    *,
    seed: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``joint_incidents``, ``joint_tasks`` and ``joint_incident_members`` rows: INCIDENT_P of the alerts of an
    INCIDENT_PATTERNS rule opened that pattern's incident 30 s after the alert, with a task per department of its
    routing, acknowledged a minute after the alert was (never when it was not) and closed when it resolved."""
    patterns = {str(p["id"]): p for p in joint_doc.get("patterns", [])}
    routing = {str(r["type"]): r for r in joint_doc.get("routing", [])}
    rng = random.Random(f"{seed}:incidents")
    incidents: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    for a, alert_id in zip(alerts, alert_ids, strict=True):
        pattern_id = INCIDENT_PATTERNS.get(a.rule.rule_id)
        if pattern_id is None or rng.random() >= INCIDENT_P:
            continue
        pat = patterns[pattern_id]
        route = routing.get(str(pat["type"])) or routing["*"]
        i = first_incident + len(incidents)
        opened = (a.raised_at + timedelta(seconds=30)).astimezone(UTC)
        resolved = a.resolved_at.astimezone(UTC)
        incidents.append(
            {
                "id": i,
                "pattern_id": pattern_id,
                "type": str(pat["type"]),
                "title_zh": str(pat["title_zh"]),
                "title_en": str(pat["title_en"]),
                "severity": str(pat["severity"]),
                "state": "closed",
                "cause_code": None,
                "scope_level": str(pat["scope"]),
                "region_id": a.region_id,
                "region_path": paths.get(a.region_id, f"/{a.region_id}/"),
                "group_key": f"{pattern_id}|{a.region_id}|history-{i}",
                "open_key": None,
                "opened_at": opened,
                "updated_at": resolved,
                "resolved_at": resolved,
                "closed_at": resolved,
                "closed_by": "值班员 (simulated)",
                "escalation_level": 0,
                "detail": {"history": "simulated back-fill"},
            }
        )
        members.append(
            {
                "incident_id": i,
                "alert_id": alert_id,
                "added_at": opened,
                "rule_id": a.rule.rule_id,
                "device_id": a.device_id,
                "region_id": a.region_id,
                "muted": False,
                "resolved": True,
            }
        )
        ack = None if a.acknowledged_at is None else (a.acknowledged_at + timedelta(minutes=1)).astimezone(UTC)
        for dept in route["departments"]:
            tasks.append(
                {
                    "id": first_task + len(tasks),
                    "incident_id": i,
                    "department": str(dept),
                    "state": "closed",
                    "created_at": opened,
                    "deadline": opened + timedelta(seconds=float(route["deadline_s"])),
                    "acknowledged_by": None if ack is None else "值班员 (simulated)",
                    "acknowledged_at": None if ack is None else min(ack, resolved),
                    "closed_by": "值班员 (simulated)",
                    "closed_at": resolved,
                    "escalation_level": 0,
                    "note": None,
                }
            )
    return incidents, tasks, members


@dataclass(frozen=True, slots=True)
class HistoryCounts:
    alerts: int
    incidents: int
    risk_points: int


def write_alert_history(
    engine: Engine,
    devices: Sequence[SimDevice],
    regions: Sequence[RegionLike],
    paths: Mapping[str, str],
    start: datetime,
    end: datetime,
    *,
    seed: int = 1,
    weights: RiskWeights | None = None,
) -> HistoryCounts:
    """Write :func:`alert_history` (ids after the table's highest), the incidents it opens (:func:`incident_rows`)
    and its :func:`risk_history` into the SQL database. Only with the alert service stopped: a running engine
    allocates alert and incident ids from the highest it read at its start."""
    import yaml
    from sqlalchemy import func, insert, select

    from alerts.models import AlertRow
    from alerts.rules import PACKS_DIR
    from joint.models import IncidentMemberRow, IncidentRow, TaskRow
    from joint.patterns import PACKS_DIR as JOINT_PACKS_DIR
    from joint.risk_store import RiskHistory

    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) or {} for p in sorted(PACKS_DIR.glob("*.yaml"))]
    joint_doc = yaml.safe_load((JOINT_PACKS_DIR / "joint.yaml").read_text(encoding="utf-8")) or {}
    alerts = alert_history(devices, regions, alert_templates(docs), start, end, seed=seed)
    points = risk_history(alerts, regions, weights or RiskWeights(), start, end)
    with engine.begin() as conn:
        first = int(conn.execute(select(func.max(AlertRow.id))).scalar() or 0) + 1
        first_incident = int(conn.execute(select(func.max(IncidentRow.id))).scalar() or 0) + 1
        first_task = int(conn.execute(select(func.max(TaskRow.id))).scalar() or 0) + 1
        rows = alert_rows(alerts, paths, first)
        incidents, tasks, members = incident_rows(
            alerts, [r["id"] for r in rows], joint_doc, paths, first_incident, first_task, seed=seed
        )
        for table, batch in (
            (AlertRow, rows),
            (IncidentRow, incidents),
            (TaskRow, tasks),
            (IncidentMemberRow, members),
        ):
            for i in range(0, len(batch), 5_000):
                conn.execute(insert(table), batch[i : i + 5_000])
    RiskHistory(engine).write(points)
    return HistoryCounts(len(alerts), len(incidents), len(points))
