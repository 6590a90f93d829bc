"""A simulated fleet that behaves like the real one: gates, official vehicles, energy meters, sensors.

Pure: no I/O, no clock. A :class:`Fleet` is built from :class:`SimDevice` rows, a ``random.Random`` (seed it for
a deterministic run) and optional scripted :class:`Incident` s; ``fleet.advance(now)`` returns the protocol-v1
messages (topic ``lf/v1/{id}/telemetry|event|status``, JSON payload bytes) that fell due up to ``now``.

Everything that happens is an action on one time-ordered agenda (heartbeats, candidate gate arrivals, door
openings and closings, trip ends, incident starts and ends). Actions run in (time, insertion) order and draw
from the one random generator in that order, so for a given seed, device list, start and incident list, the
messages are the same however the time between ``start`` and ``now`` is sliced into calls of ``advance``.

Behaviour (times are Beijing time, UTC+8; "working day" is the official Chinese calendar of
``holidays.China()``, make-up working days included):

- gates: heartbeat telemetry (``door_open``, ``occupancy``); ``access`` events as an inhomogeneous Poisson
  process, busy 08:00-09:30 (mostly ``in``) and 17:30-19:00 (mostly ``out``) on working days, few at night and
  on non-working days; some exits use the ``request_to_exit`` button. A granted access or exit request opens the
  door 0.3-2.5 s later (telemetry ``door_open: true``), then a ``door_closed`` event and ``door_open: false``.
- vehicles: parked at their depot; on working days between 08:30 and 16:30 they start trips to other sites of
  their region (``ignition_on``, ``driver_login``, positions along the way, ``ignition_off``), dwell there and
  drive back; by the evening every vehicle is parked at its depot.
- energy meters: ``power_kw`` follows an hour-of-week load shape (working and non-working days apart),
  ``energy_kwh`` integrates it and never decreases; ``voltage_v``, ``current_a``, ``power_factor``.
- sensors: ``temperature_c`` and ``humidity_pct`` with a daily cycle.
- status: retained ``online`` at start; a device that goes silent publishes its Last Will (retained
  ``offline``).

Incidents: ``door_forced`` (the door opens with no access before it: the gate has no access in the 15 s before,
``QUIET_BEFORE_FORCED_MS``, so a normal entry can neither hold the door open nor excuse it), ``night_vehicle``
(ignition on and a trip to a site at least 2 km away when the region has one, whatever the hour),
``energy_spike`` (power x ``factor`` for ``duration_s``), ``silent`` (the device stops publishing, its Last Will
is sent; with ``duration_s`` it comes back online afterwards).

More incidents, for the rules the normal behaviour never drives: ``tamper`` (a gate or meter sends one
``tamper`` event), ``power_cut`` (a vehicle sends one ``power_cut`` event), ``door_forced_event`` (like
``door_forced``, and the reader also reports a ``door_forced`` event), ``denied_burst`` (``factor`` denied
``access`` events, default 3, for one unknown credential spread over ``duration_s``, default 60 s),
``overspeed`` (the vehicle drives at ``factor`` km/h, default 90, for ``duration_s``), ``idling`` (ignition
on, speed 0, for ``duration_s``), ``meter_reset_drop`` (``energy_kwh`` restarts from 0 with no ``reset``
event) and ``meter_flat`` (``energy_kwh`` stops increasing for ``duration_s`` while the meter still reports).

Restarts: ``Fleet(resume={device_id: last values})`` continues meters' ``energy_kwh`` and vehicles' ``odometer_km``
/ ``fuel_pct`` from stored values (``devices.sim_cli.stored_last_values`` reads them from the telemetry store), so a
restarted simulation never sends a counter below the stored one. ``SimDevice.nominal_kw`` pins a meter's nominal
power (else drawn from 20-200 kW).

Clock incidents, for data-quality rules (E5.skew): ``clock_skew`` (the device's clock runs ``factor`` seconds
ahead, default 240, for ``duration_s`` or for good; ingest rejects a ``ts`` more than 5 minutes ahead) and
``clock_lag`` (``factor`` seconds behind, default 600). Only the ``ts`` in the payloads moves; the message is
still sent (``SimMessage.ts_ms``) at the true time.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import holidays

from core.errors import UserError
from core.protocol import DEFAULT_INTERVAL_S, DEVICE_ID_RE, DEVICE_TYPES, topic_for

BEIJING = timezone(timedelta(hours=8), "CST")
FIRMWARE = "1.4.2"
OFFLINE_PAYLOAD = b'{"state":"offline"}'

# Where a device sits when neither its region nor any ancestor has coordinates (Guangzhou).
DEFAULT_LAT, DEFAULT_LON = 23.1291, 113.2644


# --- calendar ------------------------------------------------------------------------------------------------


class WorkCalendar:
    """The official Chinese working calendar (statutory holidays, substituted days off, make-up working days)."""

    def __init__(self) -> None:
        self._cn = holidays.country_holidays("CN")
        self._cache: dict[date, bool] = {}

    def is_working_day(self, day: date) -> bool:
        known = self._cache.get(day)
        if known is None:
            known = bool(self._cn.is_working_day(day))
            self._cache[day] = known
        return known


def to_ms(now: datetime) -> int:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return int(now.timestamp() * 1000)


def beijing(t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, BEIJING)


# --- inputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    region_id: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated device. ``lat``/``lon`` come from its region (building or agency); for a vehicle they are
    its depot, and ``sites`` are the other places of its region that its trips go to."""

    id: str
    type: str
    region_id: str
    lat: float
    lon: float
    interval_s: float = 60.0
    sites: tuple[Site, ...] = ()
    nominal_kw: float | None = None  # energy meters: the nominal power (None: drawn from 20-200 kW)


@dataclass(frozen=True, slots=True)
class RegionPoint:
    """What the simulator needs of a region (e.g. from ``Registry.regions()``)."""

    id: str
    parent_id: str | None
    level: str
    lat: float | None
    lon: float | None


INCIDENT_TARGETS: dict[str, str | None] = {
    "door_forced": "gate",
    "night_vehicle": "vehicle",
    "energy_spike": "energy_meter",
    "silent": None,  # any device type
    "tamper": None,  # a gate or an energy meter (INCIDENT_TARGET_TYPES)
    "power_cut": "vehicle",
    "door_forced_event": "gate",
    "denied_burst": "gate",
    "overspeed": "vehicle",
    "idling": "vehicle",
    "meter_reset_drop": "energy_meter",
    "meter_flat": "energy_meter",
    "clock_skew": None,  # any device type
    "clock_lag": None,
    "visit": "gate",  # a card enters (and leaves after duration_s; None: never): G10 and its near miss
    "passback": "gate",  # a card enters twice with no exit between, then leaves (G3)
}
# Kinds that fit more than one device type.
INCIDENT_TARGET_TYPES: dict[str, tuple[str, ...]] = {"tamper": ("gate", "energy_meter")}
DEFAULT_DURATION_S: dict[str, float | None] = {
    "door_forced": 20.0,  # how long the forced door stays open
    "night_vehicle": None,  # the trip takes as long as the distance needs
    "energy_spike": 900.0,
    "silent": None,  # forever
    "tamper": None,
    "power_cut": None,
    "door_forced_event": 20.0,
    "denied_burst": 60.0,  # the denials are spread over this
    "overspeed": 120.0,
    "idling": 900.0,
    "meter_reset_drop": None,
    "meter_flat": 7 * 3600.0,
    "clock_skew": None,  # for good
    "clock_lag": None,
    "visit": None,  # stays inside
    "passback": 120.0,  # in, in again after half of it, out at its end
}
# A gate with a scripted forced door has no access in this long before it (open delay 2.5 s + hold 9 s at most,
# plus G1's 3 s window): a normal entry can neither hold the door open nor excuse the forced opening.
QUIET_BEFORE_FORCED_MS = 15_000
FORCED_KINDS = ("door_forced", "door_forced_event")
# A night_vehicle incident drives to a site at least this far away, when its region has one.
NIGHT_TRIP_MIN_KM = 2.0
# What a resumed device takes over from its stored last values (``Fleet(resume=...)``): counters never go back.
RESUMED_FIELDS: dict[str, tuple[str, ...]] = {
    "energy_meter": ("energy_kwh",),
    "vehicle": ("odometer_km", "fuel_pct"),
}

# What ``factor`` means when it is not given: a power multiplier, a number of denials, a speed in km/h.
DEFAULT_FACTOR: dict[str, float] = {
    "energy_spike": 4.0,
    "denied_burst": 3.0,
    "overspeed": 90.0,
    "clock_skew": 240.0,  # seconds ahead (ingest rejects a ts more than 5 min in the future)
    "clock_lag": 600.0,  # seconds behind
}


@dataclass(frozen=True, slots=True)
class Incident:
    """A scripted incident: ``kind`` happens to ``device_id`` at ``start``."""

    kind: str
    device_id: str
    start: datetime
    duration_s: float | None = None
    factor: float | None = None  # None: DEFAULT_FACTOR of the kind (see ``amount``)
    credential: str | None = None  # visit / passback: the card used (None: a new one); the same card at other gates

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_TARGETS:
            raise UserError(f"incident kind {self.kind!r} is not one of {', '.join(INCIDENT_TARGETS)}")
        if not DEVICE_ID_RE.match(self.device_id):
            raise UserError(f"incident device {self.device_id!r} is not a valid device id")
        if self.start.tzinfo is None:
            raise UserError("incident start must carry a UTC offset")
        if self.duration_s is not None and self.duration_s <= 0:
            raise UserError("incident duration_s must be positive")
        if self.factor is not None and self.factor <= 0:
            raise UserError("incident factor must be positive")

    @property
    def duration(self) -> float | None:
        return self.duration_s if self.duration_s is not None else DEFAULT_DURATION_S[self.kind]

    @property
    def amount(self) -> float:
        """``factor``, or the kind's default: power multiplier, number of denials, speed in km/h or clock offset
        in seconds."""
        return self.factor if self.factor is not None else DEFAULT_FACTOR.get(self.kind, 4.0)


def parse_incident(text: str, t0: datetime) -> Incident:
    """``KIND:DEVICE:START_OFFSET_S[:DURATION_S[:FACTOR]]``, the offset counted from ``t0`` (the simulation
    start); an empty DURATION_S keeps the kind's default."""
    parts = text.split(":")
    if len(parts) not in (3, 4, 5):
        raise UserError(f"--incident {text!r}: expected KIND:DEVICE:START_OFFSET_S[:DURATION_S[:FACTOR]]")
    try:
        offset = float(parts[2])
        duration = float(parts[3]) if len(parts) >= 4 and parts[3] != "" else None
        factor = float(parts[4]) if len(parts) == 5 else None
    except ValueError as exc:
        raise UserError(f"--incident {text!r}: offset, duration and factor must be numbers") from exc
    try:
        return Incident(parts[0], parts[1], t0 + timedelta(seconds=offset), duration, factor)
    except UserError as exc:
        raise UserError(f"--incident {text!r}: {exc}") from exc


def incident_from_dict(doc: Mapping[str, Any], t0: datetime, where: str = "incident") -> Incident:
    """A YAML-able spec: ``{kind, device, start_offset_s | start (RFC 3339), duration_s?, factor?}``."""
    try:
        if "start" in doc:
            start = doc["start"] if isinstance(doc["start"], datetime) else datetime.fromisoformat(str(doc["start"]))
        else:
            start = t0 + timedelta(seconds=float(doc.get("start_offset_s", 0)))
        duration = doc.get("duration_s")
        factor = doc.get("factor")
        return Incident(
            str(doc["kind"]),
            str(doc["device"]),
            start,
            float(duration) if duration is not None else None,
            float(factor) if factor is not None else None,
        )
    except KeyError as exc:
        raise UserError(f"{where}: missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from exc
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc


# --- building a fleet -----------------------------------------------------------------------------------------


def _position(region_id: str, by_id: Mapping[str, RegionPoint]) -> tuple[float, float]:
    seen: set[str] = set()
    current: str | None = region_id
    while current is not None and current not in seen:
        seen.add(current)
        region = by_id.get(current)
        if region is None:
            break
        if region.lat is not None and region.lon is not None:
            return region.lat, region.lon
        current = region.parent_id
    return DEFAULT_LAT, DEFAULT_LON


def _sites_for(region_id: str, depot: tuple[float, float], by_id: Mapping[str, RegionPoint]) -> tuple[Site, ...]:
    """The places a vehicle of ``region_id`` drives to: located regions under the same city (or the same root)."""
    chain: list[RegionPoint] = []
    current = by_id.get(region_id)
    while current is not None and current not in chain:
        chain.append(current)
        current = by_id.get(current.parent_id) if current.parent_id else None
    anchor = next((r for r in chain if r.level == "city"), chain[-1] if chain else None)
    if anchor is None:
        return ()
    children: dict[str, list[RegionPoint]] = {}
    for r in by_id.values():
        if r.parent_id is not None:
            children.setdefault(r.parent_id, []).append(r)
    sites: list[Site] = []
    stack = [anchor]
    while stack:
        r = stack.pop()
        stack.extend(sorted(children.get(r.id, []), key=lambda x: x.id, reverse=True))
        if r.lat is None or r.lon is None or r.level not in ("agency", "building"):
            continue
        if _km(depot[0], depot[1], r.lat, r.lon) < 0.2:
            continue
        if any(_km(s.lat, s.lon, r.lat, r.lon) < 0.05 for s in sites):
            continue
        sites.append(Site(r.id, r.lat, r.lon))
    return tuple(sites)


def fleet_from_registry(
    devices: Sequence[tuple[str, str, str, int | None]], regions: Sequence[RegionPoint]
) -> list[SimDevice]:
    """SimDevices from registry rows ``(id, type, region_id, expected_interval_s)`` and the region tree.

    A device sits at its region's coordinates (or the nearest located ancestor's); a vehicle's sites are the
    other located agencies and buildings of its city.
    """
    by_id = {r.id: r for r in regions}
    out: list[SimDevice] = []
    for device_id, dtype, region_id, interval in devices:
        if dtype not in DEVICE_TYPES:
            continue
        lat, lon = _position(region_id, by_id)
        sites = _sites_for(region_id, (lat, lon), by_id) if dtype == "vehicle" else ()
        every = float(interval or DEFAULT_INTERVAL_S.get(dtype, 60))
        out.append(SimDevice(device_id, dtype, region_id, lat, lon, every, sites))
    return out


def synthetic_fleet(
    n: int,
    *,
    region_id: str = "sim-region",
    lat: float = DEFAULT_LAT,
    lon: float = DEFAULT_LON,
    prefix: str = "sim",
    mix: Mapping[str, float] | None = None,
) -> list[SimDevice]:
    """``n`` devices of mixed types (default 40 % gates, 20 % vehicles, 30 % meters, 10 % sensors) in one
    region, ids ``{prefix}-{type}-{i:05d}``; for benchmarks that register their own devices."""
    shares = dict(mix or {"gate": 0.4, "vehicle": 0.2, "energy_meter": 0.3, "sensor": 0.1})
    total = sum(shares.values())
    types: list[str] = []
    for dtype, share in shares.items():
        types += [dtype] * round(n * share / total)
    types = (types + ["gate"] * n)[:n]
    sites = tuple(
        Site(f"{region_id}-site{k}", lat + 0.03 * math.sin(k * 2.1), lon + 0.03 * math.cos(k * 2.1)) for k in range(4)
    )
    short = {"gate": "gate", "vehicle": "car", "energy_meter": "meter", "sensor": "sensor"}
    return [
        SimDevice(
            f"{prefix}-{short[t]}-{i:05d}",
            t,
            region_id,
            lat,
            lon,
            float(DEFAULT_INTERVAL_S[t]),
            sites if t == "vehicle" else (),
        )
        for i, t in enumerate(types)
    ]


# --- outputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message. ``will`` marks the Last Will of a device going silent: a publisher holding a
    connection per device disconnects that device so the broker sends the Will; a shared connection publishes
    it itself."""

    device_id: str
    kind: str  # telemetry | event | status
    payload: bytes
    ts_ms: int
    seq: int | None = None
    retain: bool = False
    will: bool = False

    @property
    def topic(self) -> str:
        return topic_for(self.device_id, self.kind)

    def doc(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.payload)
        return value


# --- geometry -------------------------------------------------------------------------------------------------

_EARTH_KM = 6371.0088


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def _bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


# --- load shapes ----------------------------------------------------------------------------------------------

# Per gate, access attempts per hour at each half hour of a working day (index = half hours since midnight).
_GATE_WORKING = (
    [0.3] * 13 + [8, 25, 40] + [80, 80, 80] + [15] * 4 + [25] * 4 + [15] * 8 + [70, 70, 70] + [5] * 6 + [1] * 4
)
_GATE_OFF = [0.3] * 12 + [2.0] * 28 + [0.3] * 8
_GATE_PEAK = 90.0
assert len(_GATE_WORKING) == 48 and len(_GATE_OFF) == 48

# Share of a meter's nominal power at each hour, working and non-working days.
_LOAD_WORKING = [0.30, 0.28, 0.28, 0.28, 0.28, 0.30, 0.35, 0.55, 0.85, 1.0, 1.0, 0.98]
_LOAD_WORKING += [0.85, 0.90, 1.0, 1.0, 0.98, 0.90, 0.65, 0.45, 0.38, 0.35, 0.32, 0.31]
_LOAD_OFF = [0.30, 0.28, 0.28, 0.28, 0.28, 0.28, 0.29, 0.30, 0.33, 0.35, 0.36, 0.36]
_LOAD_OFF += [0.35, 0.35, 0.35, 0.35, 0.34, 0.33, 0.32, 0.32, 0.31, 0.31, 0.30, 0.30]
_WEEKDAY_FACTOR = [1.03, 1.0, 1.0, 1.0, 0.96, 0.95, 0.95]  # Monday first; make-up weekend days run lighter

_METHODS = ("card", "face", "qr", "password")
_METHOD_WEIGHTS = (55, 35, 7, 3)


def gate_rate_per_hour(local: datetime, working: bool) -> float:
    """Expected access attempts per hour at one gate."""
    table = _GATE_WORKING if working else _GATE_OFF
    return table[local.hour * 2 + local.minute // 30]


def load_share(local: datetime, working: bool) -> float:
    """A meter's power as a share of its nominal power (hour-of-week shape, linear between hours)."""
    table = _LOAD_WORKING if working else _LOAD_OFF
    h = local.hour + local.minute / 60
    lo = table[int(h) % 24]
    hi = table[(int(h) + 1) % 24]
    share = lo + (hi - lo) * (h - int(h))
    return share * (_WEEKDAY_FACTOR[local.weekday()] if working else 1.0)


# --- per-device state -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    dev: SimDevice
    interval_ms: int
    seq: int = 0
    silent: bool = False
    clock_offset_ms: int = 0  # clock_skew / clock_lag incidents: added to the ts the device reports
    clock_token: int = 0


@dataclass(slots=True)
class _Gate(_State):
    door_open: bool = False
    occupancy: int = 0
    close_at: int = 0
    close_token: int = 0
    locked: bool = False  # a linkage ``lock`` command (joint/actions.py): no access is granted until ``unlock``


@dataclass(slots=True)
class _Trip:
    from_lat: float
    from_lon: float
    to_lat: float
    to_lon: float
    depart_ms: int
    arrive_ms: int
    km: float
    to_depot: bool
    speed_kmh: float


@dataclass(slots=True)
class _Vehicle(_State):
    lat: float = 0.0
    lon: float = 0.0
    heading: float = 0.0
    odometer: float = 0.0
    fuel: float = 80.0
    at_depot: bool = True
    trip: _Trip | None = None
    travelled: float = 0.0
    dwell_until: int = 0
    drivers: tuple[str, ...] = ()
    drive_until: int = 0  # overspeed / idling incident: beats report drive_speed with ignition on until then
    drive_speed: float = 0.0
    drive_token: int = 0
    incident_engine: bool = False  # the incident, not a trip, switched the ignition on


@dataclass(slots=True)
class _Meter(_State):
    nominal_kw: float = 50.0
    energy: float = 0.0
    last_power: float | None = None
    last_t: int = 0
    pf: float = 0.93
    spike_until: int = 0
    spike_factor: float = 1.0
    flat_until: int = 0  # meter_flat incident: energy_kwh does not move until then


@dataclass(slots=True)
class _Sensor(_State):
    temp_offset: float = 0.0
    hum_offset: float = 0.0


@dataclass(slots=True)
class _Person:
    person_id: str
    credential: str


# Agenda actions
_ONLINE, _BEAT, _ARRIVE, _OPEN, _CLOSE, _TRIP_END, _INCIDENT, _INCIDENT_END, _DENY, _DRIVE_END = range(10)
_CLOCK_END = 10
_BADGE_IN, _BADGE_OUT = 11, 12  # visit / passback incidents: their card at the reader (arg: the incident index)
_OPEN_OUT, _OPEN_IN, _OPEN_FORCED = 0, 1, 2


@dataclass(slots=True)
class FleetCounts:
    messages: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Fleet:
    """The simulated fleet; see the module docstring."""

    def __init__(
        self,
        devices: Sequence[SimDevice],
        *,
        rng: random.Random,
        start: datetime,
        incidents: Sequence[Incident] = (),
        rate_multiplier: float = 1.0,
        calendar: WorkCalendar | None = None,
        firmware: str = FIRMWARE,
        resume: Mapping[str, Mapping[str, float | bool]] | None = None,
    ) -> None:
        """``resume``: stored last values per device id (e.g. from the telemetry store): a meter's ``energy_kwh``
        and a vehicle's ``odometer_km`` / ``fuel_pct`` continue from them, so a restarted simulation never sends a
        counter lower than the one already stored (RESUMED_FIELDS)."""
        if rate_multiplier <= 0:
            raise UserError("rate multiplier must be positive")
        ids = [d.id for d in devices]
        if len(set(ids)) != len(ids):
            raise UserError("the fleet lists a device twice")
        self.rng = rng
        self.rate = rate_multiplier
        self.calendar = calendar or WorkCalendar()
        self.firmware = firmware
        self.start_ms = to_ms(start)
        self.counts = FleetCounts()
        self._agenda: list[tuple[int, int, int, int, int]] = []
        self._order = 0
        self._out: list[SimMessage] = []
        self._states: list[_State] = []
        self._index: dict[str, int] = {}
        self._people: dict[str, list[_Person]] = {}
        self._burst_credentials: dict[int, str] = {}  # denied_burst incident index -> its credential
        self._incident_cards: dict[int, str] = {}  # visit / passback incident index -> its card
        self._arrival_rate_ms = _GATE_PEAK * self.rate / 3_600_000
        self._forced_at: dict[int, list[int]] = {}  # gate index -> times of its scripted forced doors
        resume = resume or {}
        for i, dev in enumerate(devices):
            if dev.type not in DEVICE_TYPES:
                raise UserError(f"device {dev.id}: type {dev.type!r} is not one of {', '.join(DEVICE_TYPES)}")
            self._index[dev.id] = i
            self._states.append(self._resumed(self._new_state(dev), resume.get(dev.id)))
            self._push(self.start_ms, i, _ONLINE)
        for i, st in enumerate(self._states):
            self._push(self.start_ms + int(self.rng.random() * st.interval_ms), i, _BEAT)
            if st.dev.type == "gate":
                self._push(self._next_arrival(self.start_ms), i, _ARRIVE)
        self.incidents = list(incidents)
        for k, inc in enumerate(self.incidents):
            idx = self._index.get(inc.device_id)
            if idx is None:
                raise UserError(f"incident {inc.kind}: device {inc.device_id!r} is not in the simulated fleet")
            wanted = INCIDENT_TARGETS[inc.kind]
            allowed = INCIDENT_TARGET_TYPES.get(inc.kind)
            dtype = self._states[idx].dev.type
            if (wanted is not None and dtype != wanted) or (allowed is not None and dtype not in allowed):
                raise UserError(f"incident {inc.kind}: device {inc.device_id} is a {self._states[idx].dev.type}")
            at = max(to_ms(inc.start), self.start_ms)
            self._push(at, idx, _INCIDENT, k)
            if inc.kind in FORCED_KINDS:
                self._forced_at.setdefault(idx, []).append(at)

    # --- public -----------------------------------------------------------------------------------------------

    def advance(self, now: datetime) -> list[SimMessage]:
        """Run every action due up to ``now``; return the messages in time order."""
        return self.advance_ms(to_ms(now))

    def advance_ms(self, now_ms: int) -> list[SimMessage]:
        agenda = self._agenda
        while agenda and agenda[0][0] <= now_ms:
            t, _, idx, action, arg = heapq.heappop(agenda)
            self._run(t, self._states[idx], idx, action, arg)
        out, self._out = self._out, []
        self.counts.messages += len(out)
        for m in out:
            self.counts.by_kind[m.kind] = self.counts.by_kind.get(m.kind, 0) + 1
        return out

    @property
    def next_due_ms(self) -> int | None:
        return self._agenda[0][0] if self._agenda else None

    @property
    def device_ids(self) -> list[str]:
        return [st.dev.id for st in self._states]

    def set_locked(self, device_id: str, locked: bool) -> bool:
        """A gate's ``lock`` / ``unlock`` command: a locked gate grants no access (every request is denied, no
        exit button opens it). False when the device is not a simulated gate."""
        idx = self._index.get(device_id)
        st = self._states[idx] if idx is not None else None
        if not isinstance(st, _Gate):
            return False
        st.locked = locked
        return True

    # --- set-up -----------------------------------------------------------------------------------------------

    def _new_state(self, dev: SimDevice) -> _State:
        rng = self.rng
        interval_ms = max(100, int(dev.interval_s * 1000 / self.rate))
        if dev.type == "gate":
            if dev.region_id not in self._people:
                self._people[dev.region_id] = [
                    _Person(f"p-{rng.getrandbits(24):06x}", f"card-{rng.getrandbits(32):08x}")
                    for _ in range(rng.randint(60, 300))
                ]
            return _Gate(dev, interval_ms)
        if dev.type == "vehicle":
            drivers = tuple(f"d-{rng.getrandbits(20):05x}" for _ in range(rng.randint(1, 3)))
            return _Vehicle(
                dev,
                interval_ms,
                lat=dev.lat,
                lon=dev.lon,
                heading=round(rng.uniform(0, 359), 1),
                odometer=round(rng.uniform(5_000, 180_000), 1),
                fuel=round(rng.uniform(40, 95), 1),
                drivers=drivers,
            )
        if dev.type == "energy_meter":
            drawn = rng.uniform(20, 200)
            return _Meter(
                dev,
                interval_ms,
                nominal_kw=dev.nominal_kw if dev.nominal_kw is not None else drawn,
                energy=round(rng.uniform(10_000, 500_000), 3),
                pf=rng.uniform(0.88, 0.97),
            )
        return _Sensor(dev, interval_ms, temp_offset=rng.uniform(-2, 2), hum_offset=rng.uniform(-8, 8))

    @staticmethod
    def _resumed(st: _State, last: Mapping[str, float | bool] | None) -> _State:
        """Continue the device's counters from its stored last values (never below them)."""
        if not last:
            return st

        def number(name: str) -> float | None:
            v = last.get(name)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None

        if isinstance(st, _Meter) and (energy := number("energy_kwh")) is not None:
            st.energy = max(0.0, energy)
        elif isinstance(st, _Vehicle):
            if (odometer := number("odometer_km")) is not None:
                st.odometer = max(0.0, odometer)
            if (fuel := number("fuel_pct")) is not None:
                st.fuel = min(100.0, max(0.0, fuel))
        return st

    def _quiet(self, idx: int, t_ms: int) -> bool:
        """Is gate ``idx`` kept free of accesses at ``t_ms`` (just before a scripted forced door)?"""
        forced = self._forced_at.get(idx)
        return forced is not None and any(f - QUIET_BEFORE_FORCED_MS <= t_ms <= f for f in forced)

    def _push(self, t_ms: int, idx: int, action: int, arg: int = 0) -> None:
        self._order += 1
        heapq.heappush(self._agenda, (t_ms, self._order, idx, action, arg))

    def _next_arrival(self, t_ms: int) -> int:
        return t_ms + 1 + int(self.rng.expovariate(self._arrival_rate_ms))

    def _working(self, local: datetime) -> bool:
        return self.calendar.is_working_day(local.date())

    # --- emitting ---------------------------------------------------------------------------------------------

    def _emit(self, st: _State, t_ms: int, kind: str, body: dict[str, Any]) -> None:
        if st.silent:
            return
        doc = {"ts": t_ms + st.clock_offset_ms, "seq": st.seq, **body}
        self._out.append(SimMessage(st.dev.id, kind, _dumps(doc), t_ms, st.seq))
        st.seq += 1

    def _status(self, st: _State, t_ms: int, online: bool) -> None:
        if online:
            payload = _dumps({"state": "online", "ts": t_ms + st.clock_offset_ms, "fw": self.firmware})
            self._out.append(SimMessage(st.dev.id, "status", payload, t_ms, None, retain=True))
        else:
            self._out.append(SimMessage(st.dev.id, "status", OFFLINE_PAYLOAD, t_ms, None, retain=True, will=True))

    # --- actions ----------------------------------------------------------------------------------------------

    def _run(self, t: int, st: _State, idx: int, action: int, arg: int) -> None:
        if action == _BEAT:
            self._push(t + st.interval_ms, idx, _BEAT)
            if isinstance(st, _Gate):
                self._emit(st, t, "telemetry", {"door_open": st.door_open, "occupancy": st.occupancy})
            elif isinstance(st, _Vehicle):
                self._vehicle_beat(t, st, idx)
            elif isinstance(st, _Meter):
                self._meter_beat(t, st)
            elif isinstance(st, _Sensor):
                self._sensor_beat(t, st)
        elif action == _ARRIVE:
            assert isinstance(st, _Gate)
            self._push(self._next_arrival(t), idx, _ARRIVE)
            local = beijing(t)
            attempt = self.rng.random() * _GATE_PEAK < gate_rate_per_hour(local, self._working(local))
            if attempt and not self._quiet(idx, t):  # no access just before a scripted forced door
                self._access(t, st, idx, local)
        elif action == _OPEN:
            assert isinstance(st, _Gate)
            self._open(t, st, idx, arg)
        elif action == _CLOSE:
            assert isinstance(st, _Gate)
            if arg == st.close_token and st.door_open:
                st.door_open = False
                self._emit(st, t, "event", {"type": "door_closed"})
                self._emit(st, t, "telemetry", {"door_open": False, "occupancy": st.occupancy})
        elif action == _TRIP_END:
            assert isinstance(st, _Vehicle)
            self._trip_end(t, st)
        elif action == _ONLINE:
            self._status(st, t, online=True)
        elif action == _INCIDENT:
            self._incident(t, st, idx, self.incidents[arg], arg)
        elif action == _DENY:
            assert isinstance(st, _Gate)
            body = {"type": "access", "credential": self._burst_credentials[arg], "direction": "in"}
            self._emit(st, t, "event", {**body, "result": "denied", "method": "card"})
        elif action == _DRIVE_END:
            assert isinstance(st, _Vehicle)
            if arg == st.drive_token and st.incident_engine and st.trip is None:
                st.incident_engine = False
                self._emit(st, t, "event", {"type": "ignition_off"})
                self._emit(st, t, "telemetry", self._vehicle_fields(st, 0.0, False))
        elif action == _INCIDENT_END and st.silent:
            st.silent = False
            self._status(st, t, online=True)
        elif action in (_BADGE_IN, _BADGE_OUT):
            assert isinstance(st, _Gate)
            self._badge(t, st, idx, self._incident_cards[arg], "in" if action == _BADGE_IN else "out")
        elif action == _CLOCK_END and arg == st.clock_token:
            st.clock_offset_ms = 0

    def _incident(self, t: int, st: _State, idx: int, inc: Incident, k: int) -> None:
        duration_ms = int((inc.duration or 0) * 1000)
        if inc.kind == "door_forced":
            assert isinstance(st, _Gate)
            self._open(t, st, idx, _OPEN_FORCED, hold_ms=duration_ms)
        elif inc.kind == "night_vehicle":
            assert isinstance(st, _Vehicle)
            if st.trip is None:  # a real trip: not to the building next door (V1 needs 500 m of movement)
                self._start_trip(t, st, idx, self._pick_site(st, NIGHT_TRIP_MIN_KM), to_depot=False)
        elif inc.kind == "energy_spike":
            assert isinstance(st, _Meter)
            st.spike_until, st.spike_factor = t + duration_ms, inc.amount
        elif inc.kind == "silent" and not st.silent:
            self._status(st, t, online=False)
            st.silent = True
            if inc.duration is not None:
                self._push(t + duration_ms, idx, _INCIDENT_END)
        elif inc.kind == "tamper":
            self._emit(st, t, "event", {"type": "tamper"})
        elif inc.kind == "power_cut":
            self._emit(st, t, "event", {"type": "power_cut"})
        elif inc.kind == "door_forced_event":
            assert isinstance(st, _Gate)
            self._emit(st, t, "event", {"type": "door_forced"})
            self._open(t, st, idx, _OPEN_FORCED, hold_ms=duration_ms)
        elif inc.kind == "denied_burst":
            assert isinstance(st, _Gate)
            self._burst_credentials[k] = f"card-{self.rng.getrandbits(32):08x}"
            n = max(1, int(inc.amount))
            for i in range(n):
                self._push(t + i * duration_ms // n, idx, _DENY, k)
        elif inc.kind in ("overspeed", "idling"):
            assert isinstance(st, _Vehicle)
            st.drive_until = t + duration_ms
            st.drive_speed = inc.amount if inc.kind == "overspeed" else 0.0
            st.drive_token += 1
            self._push(t + duration_ms, idx, _DRIVE_END, st.drive_token)
            self._incident_drive(t, st, 0)
        elif inc.kind == "meter_reset_drop":
            assert isinstance(st, _Meter)
            st.energy = 0.0
        elif inc.kind == "meter_flat":
            assert isinstance(st, _Meter)
            st.flat_until = t + duration_ms
        elif inc.kind in ("visit", "passback"):
            assert isinstance(st, _Gate)
            self._incident_cards[k] = inc.credential or f"card-{self.rng.getrandbits(32):08x}"
            self._badge(t, st, idx, self._incident_cards[k], "in")
            if inc.kind == "passback":
                self._push(t + duration_ms // 2, idx, _BADGE_IN, k)
            if inc.duration is not None:
                self._push(t + duration_ms, idx, _BADGE_OUT, k)
        elif inc.kind in ("clock_skew", "clock_lag"):
            sign = 1 if inc.kind == "clock_skew" else -1
            st.clock_offset_ms = sign * int(inc.amount * 1000)
            st.clock_token += 1
            if inc.duration is not None:
                self._push(t + duration_ms, idx, _CLOCK_END, st.clock_token)

    # --- gates ------------------------------------------------------------------------------------------------

    def _access(self, t: int, st: _Gate, idx: int, local: datetime) -> None:
        rng = self.rng
        working = self._working(local)
        minute = local.hour * 60 + local.minute
        if working and 6 * 60 <= minute < 11 * 60:
            p_in = 0.85
        elif working and 17 * 60 <= minute < 20 * 60:
            p_in = 0.15
        else:
            p_in = 0.5
        direction = "in" if rng.random() < p_in else "out"
        if direction == "out" and rng.random() < 0.35 and not st.locked:
            self._emit(st, t, "event", {"type": "request_to_exit"})
            granted = True
        else:
            day = working and 7 * 60 <= minute < 20 * 60
            granted = rng.random() >= (0.04 if day else 0.15) and not st.locked
            person = rng.choice(self._people[st.dev.region_id])
            credential = person.credential if granted or rng.random() < 0.5 else f"card-{rng.getrandbits(32):08x}"
            method = rng.choices(_METHODS, _METHOD_WEIGHTS)[0]
            body: dict[str, Any] = {
                "type": "access",
                "credential": credential,
                "direction": direction,
                "result": "granted" if granted else "denied",
                "method": method,
            }
            if credential == person.credential:
                body["person_id"] = person.person_id
            self._emit(st, t, "event", body)
        if granted:
            self._push(t + rng.randint(300, 2500), idx, _OPEN, _OPEN_IN if direction == "in" else _OPEN_OUT)

    def _badge(self, t: int, st: _Gate, idx: int, credential: str, direction: str) -> None:
        """A scripted card at the reader: granted, the door opens a second later."""
        body = {"type": "access", "credential": credential, "direction": direction, "result": "granted"}
        self._emit(st, t, "event", {**body, "method": "card"})
        self._push(t + 1000, idx, _OPEN, _OPEN_IN if direction == "in" else _OPEN_OUT)

    def _open(self, t: int, st: _Gate, idx: int, how: int, hold_ms: int = 0) -> None:
        if how == _OPEN_IN:
            st.occupancy += 1
        elif how == _OPEN_OUT:
            st.occupancy = max(0, st.occupancy - 1)
        if how != _OPEN_FORCED:
            hold_ms = self.rng.randint(3000, 9000)
        close_at = max(st.close_at, t + hold_ms) if st.door_open else t + hold_ms
        if not st.door_open:
            st.door_open = True
            self._emit(st, t, "telemetry", {"door_open": True, "occupancy": st.occupancy})
        st.close_at = close_at
        st.close_token += 1
        self._push(close_at, idx, _CLOSE, st.close_token)

    # --- vehicles ---------------------------------------------------------------------------------------------

    def _pick_site(self, st: _Vehicle, min_km: float = 0.0) -> Site:
        """Another site of the vehicle's region (at least ``min_km`` away when there is one)."""
        sites = [x for x in st.dev.sites if _km(st.lat, st.lon, x.lat, x.lon) >= min_km] or list(st.dev.sites)
        if sites:
            return self.rng.choice(sites)
        # No other located site in the region: somewhere 2-8 km away.
        km = self.rng.uniform(2, 8)
        angle = self.rng.uniform(0, 2 * math.pi)
        dlat = km * math.cos(angle) / 111.0
        dlon = km * math.sin(angle) / (111.0 * max(0.2, math.cos(math.radians(st.dev.lat))))
        return Site(st.dev.region_id, st.dev.lat + dlat, st.dev.lon + dlon)

    def _start_trip(self, t: int, st: _Vehicle, idx: int, dest: Site, *, to_depot: bool) -> None:
        rng = self.rng
        km = _km(st.lat, st.lon, dest.lat, dest.lon) * 1.3  # roads are not straight
        speed = rng.uniform(25, 45)
        duration_ms = int(km / speed * 3_600_000) + 60_000
        st.trip = _Trip(st.lat, st.lon, dest.lat, dest.lon, t, t + duration_ms, km, to_depot, speed)
        st.travelled = 0.0
        st.heading = round(_bearing(st.lat, st.lon, dest.lat, dest.lon), 1)
        st.at_depot = False
        self._emit(st, t, "event", {"type": "ignition_on"})
        if rng.random() < 0.5:
            self._emit(st, t, "event", {"type": "driver_login", "driver_id": rng.choice(st.drivers)})
        self._emit(st, t, "telemetry", self._vehicle_fields(st, 0.0, True))
        self._push(t + duration_ms, idx, _TRIP_END)

    def _trip_end(self, t: int, st: _Vehicle) -> None:
        trip = st.trip
        assert trip is not None
        st.odometer += max(0.0, trip.km - st.travelled)
        st.fuel = max(0.0, st.fuel - trip.km * 0.08)
        st.lat, st.lon = trip.to_lat, trip.to_lon
        st.trip = None
        st.at_depot = trip.to_depot
        if st.at_depot and st.fuel < 20:
            st.fuel = 95.0
        st.dwell_until = t + self.rng.randint(10, 60) * 60_000
        self._emit(st, t, "event", {"type": "ignition_off"})
        self._emit(st, t, "telemetry", self._vehicle_fields(st, 0.0, False))

    def _incident_drive(self, t: int, st: _Vehicle, dt_ms: int) -> None:
        """A beat during an overspeed or idling incident: ignition on at ``drive_speed``, no random draw."""
        trip = st.trip
        if trip is not None:
            frac = min(1.0, (t - trip.depart_ms) / max(1, trip.arrive_ms - trip.depart_ms))
            done_km = trip.km * frac
            st.odometer += max(0.0, done_km - st.travelled)
            st.travelled = max(st.travelled, done_km)
            st.lat = trip.from_lat + (trip.to_lat - trip.from_lat) * frac
            st.lon = trip.from_lon + (trip.to_lon - trip.from_lon) * frac
        else:
            if not st.incident_engine:
                st.incident_engine = True
                self._emit(st, t, "event", {"type": "ignition_on"})
            km = st.drive_speed * dt_ms / 3_600_000
            if km > 0:
                heading = math.radians(st.heading)
                st.lat += km * math.cos(heading) / 111.0
                st.lon += km * math.sin(heading) / (111.0 * max(0.2, math.cos(math.radians(st.lat))))
                st.odometer += km
                st.at_depot = False
        self._emit(st, t, "telemetry", self._vehicle_fields(st, st.drive_speed, True))

    def _vehicle_beat(self, t: int, st: _Vehicle, idx: int) -> None:
        if t < st.drive_until:
            self._incident_drive(t, st, st.interval_ms)
            return
        trip = st.trip
        if trip is not None:
            frac = min(1.0, (t - trip.depart_ms) / max(1, trip.arrive_ms - trip.depart_ms))
            done_km = trip.km * frac
            st.odometer += max(0.0, done_km - st.travelled)
            st.travelled = max(st.travelled, done_km)
            st.lat = trip.from_lat + (trip.to_lat - trip.from_lat) * frac
            st.lon = trip.from_lon + (trip.to_lon - trip.from_lon) * frac
            speed = max(0.0, trip.speed_kmh * self.rng.uniform(0.6, 1.4))
            self._emit(st, t, "telemetry", self._vehicle_fields(st, speed, True))
            return
        local = beijing(t)
        minute = local.hour * 60 + local.minute
        working = self._working(local)
        if st.at_depot:
            # About one trip every 1.5 hours of working time, none that could not be back by the evening.
            per_beat = st.interval_ms * self.rate / 5_400_000
            if working and 8 * 60 + 30 <= minute < 16 * 60 + 30 and self.rng.random() < per_beat:
                self._start_trip(t, st, idx, self._pick_site(st), to_depot=False)
                return
        elif t >= st.dwell_until or not (working and 8 * 60 <= minute < 17 * 60 + 30):
            self._start_trip(t, st, idx, Site(st.dev.region_id, st.dev.lat, st.dev.lon), to_depot=True)
            return
        self._emit(st, t, "telemetry", self._vehicle_fields(st, 0.0, False))

    def _vehicle_fields(self, st: _Vehicle, speed: float, ignition: bool) -> dict[str, Any]:
        fuel = st.fuel
        if st.trip is not None:
            fuel = max(0.0, fuel - st.travelled * 0.08)
        return {
            "lat": round(st.lat, 6),
            "lon": round(st.lon, 6),
            "speed_kmh": round(speed, 1),
            "heading_deg": round(st.heading % 360.0, 1),
            "ignition": ignition,
            "odometer_km": round(st.odometer, 1),
            "fuel_pct": round(min(100.0, fuel), 1),
        }

    # --- meters and sensors -----------------------------------------------------------------------------------

    def _meter_beat(self, t: int, st: _Meter) -> None:
        local = beijing(t)
        power = st.nominal_kw * load_share(local, self._working(local)) * (1 + self.rng.gauss(0, 0.03))
        power = max(0.0, power)
        if t < st.spike_until:
            power *= st.spike_factor
        if st.last_power is not None and t >= st.flat_until:
            st.energy += (st.last_power + power) / 2 * (t - st.last_t) / 3_600_000
        st.last_power, st.last_t = power, t
        voltage = 230 + self.rng.gauss(0, 1.5)
        pf = min(1.0, max(0.0, st.pf + self.rng.gauss(0, 0.005)))
        current = power * 1000 / (3 * voltage * pf) if pf > 0 else 0.0
        self._emit(
            st,
            t,
            "telemetry",
            {
                "energy_kwh": round(st.energy, 3),
                "power_kw": round(power, 3),
                "voltage_v": round(voltage, 1),
                "current_a": round(current, 2),
                "power_factor": round(pf, 3),
            },
        )

    def _sensor_beat(self, t: int, st: _Sensor) -> None:
        local = beijing(t)
        phase = 2 * math.pi * (local.hour + local.minute / 60 - 9) / 24
        temp = 22 + st.temp_offset + 3 * math.sin(phase) + self.rng.gauss(0, 0.2)
        hum = 55 + st.hum_offset - 8 * math.sin(phase) + self.rng.gauss(0, 1)
        self._emit(
            st, t, "telemetry", {"temperature_c": round(temp, 2), "humidity_pct": round(min(100, max(0, hum)), 1)}
        )


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
