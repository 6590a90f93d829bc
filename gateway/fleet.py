"""Device counts for the region tree and the overview, kept in memory and fed by the same batches as the live stream.

Per region (the region a device is registered in) and device type the index keeps: total, online, disabled and
(vehicles) in use; per region and Beijing calendar day the energy meters' kWh. A request rolls these up over the
regions of its scope (a few thousand at most), never over the devices, so ``/api/v1/regions`` and
``/api/v1/overview`` cost the same with 1,000 or 100,000 devices.

Online is the one rule of ``devices.liveness.is_online`` (fresh data within 2.5 expected intervals, no ``offline``
status after it), applied at the request's ``now``: each online device has a deadline (last seen + 2.5 intervals)
in a heap, and ``advance(now_ms)`` turns exactly the devices whose deadline has passed offline. A clock that goes
backwards by more than a second (tests with fixed clocks) re-evaluates every device once; less (concurrent
requests) is taken as the index's own time.

Sources:

* every durable write batch (``on_batch``, a ``Broadcaster`` listener): last seen, status, vehicles' ignition and
  speed, meters' ``energy_kwh``;
* ``Registry.snapshot()``, at most once a second (``check_registry``): it is incremental (the same dict while no
  device changed, unchanged ``DeviceInfo`` objects kept), so only devices added, moved, enabled or disabled (by
  the API, or by the CLI in another process) are looked at;
* ``TelemetryStore.device_states()`` and the region tree every ``resync_s`` (60) seconds in a background thread
  (``maybe_resync``), as a safety net for store writes that did not pass through this process.

Vehicles "in use": enabled, online, and their newest word on it says so: a reading with ``ignition`` true or
``speed_kmh`` > 0 (false / 0 says not in use; a reading with neither field says nothing), or an ``ignition_on`` /
``ignition_off`` event, whichever is newest.

Energy "today": per meter, the increase of ``energy_kwh`` since its last reading before 00:00 Beijing time (after a
``reset`` the counter restarts, so a lower value counts from zero); meters that have not reported today count 0.
When the index is built (and for a device new to it), a meter's figure is its newest value minus its last value
in the hour before midnight (or its first value today), read from the store next to its last data; a reset
earlier that day is not seen then. The baseline is the mean, over the previous four same weekdays that have data, of
the same meters' consumption from 00:00 to the same time of day (hourly profile, interpolated), computed from the
store once a day in a background thread (null until it is ready, or when there is no history).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, HTTPException, Request, Response, status

from alerts.calendar import BEIJING_OFFSET_MS
from core import gcpolicy
from core.protocol import DeviceInfo
from core.store import DeviceState, TelemetryStore, WriteBatch
from devices.liveness import GRACE_FACTOR, is_online, online_at
from devices.models import Region
from devices.registry import Registry
from gateway.views import region_json

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
BASELINE_WEEKS = 4

VEHICLE = "vehicle"
METER = "energy_meter"

# Requests read the clock before they reach the index, in any order: a time this little before the index's own is
# taken as the index's time (online state is that much later); further back, every device is judged again.
CLOCK_SLACK_MS = 1000

# total, online, disabled, in use
_TOTAL, _ONLINE, _DISABLED, _IN_USE = range(4)


def beijing_day(ts_ms: int) -> int:
    """The Beijing calendar day of an instant, as days since 1970-01-01 (Beijing). Pure."""
    return (ts_ms + BEIJING_OFFSET_MS) // DAY_MS


def day_start_ms(day: int) -> int:
    """00:00 Beijing time of ``day`` (``beijing_day``) in epoch ms. Pure."""
    return day * DAY_MS - BEIJING_OFFSET_MS


def moving_of(fields: dict[str, Any]) -> bool | None:
    """What a vehicle reading says about being in use: True (ignition on or moving), False, or None (nothing)."""
    ignition, speed = fields.get("ignition"), fields.get("speed_kmh")
    said: bool | None = None
    if isinstance(ignition, bool):
        said = ignition
    if isinstance(speed, int | float) and not isinstance(speed, bool):
        said = bool(said) or speed > 0
    return said


@dataclass(frozen=True, slots=True)
class VehiclePos:
    """A vehicle's newest position (``lat``/``lon`` of one reading, ``ts_ms`` its time) with the speed, ignition
    and heading known at that time (the same reading's, else the newest before it; None: never said)."""

    ts_ms: int
    lat: float
    lon: float
    speed_kmh: float | None = None
    ignition: bool | None = None
    heading_deg: float | None = None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def next_pos(old: VehiclePos | None, ts_ms: int, fields: dict[str, Any]) -> VehiclePos | None:
    """The position after a vehicle reading: a newer reading with ``lat`` and ``lon`` moves it (speed, ignition
    and heading from that reading, else kept); one without them, or older, changes nothing. Pure."""
    lat, lon = _num(fields.get("lat")), _num(fields.get("lon"))
    if lat is None or lon is None or (old is not None and ts_ms < old.ts_ms):
        return old
    speed, heading, ignition = _num(fields.get("speed_kmh")), _num(fields.get("heading_deg")), fields.get("ignition")
    return VehiclePos(
        ts_ms,
        lat,
        lon,
        speed if speed is not None else (old.speed_kmh if old else None),
        ignition if isinstance(ignition, bool) else (old.ignition if old else None),
        heading if heading is not None else (old.heading_deg if old else None),
    )


@dataclass(slots=True)
class _Dev:
    id: str
    type: str
    region_id: str
    enabled: bool
    interval_s: int
    last_seen_ms: int | None = None
    status: str | None = None
    status_ms: int | None = None
    online: bool = False  # as counted (enabled and online at the index's ``now``)
    in_heap: bool = False
    moving: bool = False  # vehicles: the newest word on ignition / speed
    moving_ts: int = -1
    kwh_last: float | None = None  # meters: the newest energy_kwh and its time
    kwh_ts: int = -1
    kwh_day: int = -1  # the Beijing day of ``kwh_used``
    kwh_used: float = 0.0
    pos: VehiclePos | None = None  # vehicles: the newest position and what came with it

    def state(self) -> DeviceState:
        return DeviceState(self.id, self.last_seen_ms, self.status, self.status_ms, None, 0, 0, 0, 0, 0)

    def deadline(self) -> float | None:
        if self.last_seen_ms is None:
            return None
        return self.last_seen_ms + GRACE_FACTOR * self.interval_s * 1000


# What a device counts as: region, type, enabled, online, moving, the Beijing day of its kWh and the kWh.
_Counted = tuple[str, str, bool, bool, bool, int, float]


def _counted(d: _Dev) -> _Counted:
    return (d.region_id, d.type, d.enabled, d.online, d.moving, d.kwh_day, d.kwh_used)


@dataclass(frozen=True, slots=True)
class RegionRow:
    """A region as the tree shows it, read once from the registry (plain values: no ORM access per request)."""

    id: str
    parent_id: str | None
    path: tuple[str, ...]  # root first, the region itself last
    json: dict[str, Any]  # gateway.views.region_json

    @staticmethod
    def of(region: Region) -> RegionRow:
        path = tuple(p for p in region.path.split("/") if p)
        return RegionRow(region.id, region.parent_id, path, region_json(region))


@dataclass(frozen=True, slots=True)
class VehicleRow:
    """A vehicle as the map shows it (``FleetIndex.vehicles``)."""

    id: str
    region_id: str
    enabled: bool
    online: bool
    in_use: bool
    last_seen_ms: int | None
    pos: VehiclePos | None


@dataclass(slots=True)
class Rollup:
    """Counts of a set of regions: per device type, vehicles in use, today's kWh and its baseline."""

    by_type: dict[str, list[int]] = field(default_factory=dict)
    today_kwh: float = 0.0
    baseline_kwh: float | None = None


class FleetIndex:
    """See the module docstring. Thread-safe: the writer thread feeds it, request threads read it."""

    def __init__(
        self,
        registry: Registry,
        store: TelemetryStore,
        clock: Callable[[], datetime],
        *,
        resync_s: float = 60.0,
        registry_check_s: float = 1.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock
        self.resync_s = resync_s
        self._lock = threading.RLock()
        self._devs: dict[str, _Dev] = {}
        self._counts: dict[str, dict[str, list[int]]] = {}
        self._energy: dict[str, dict[int, float]] = {}
        self._heap: list[tuple[float, str]] = []
        self._now_ms = 0
        self._regions: list[RegionRow] = []
        self._paths: dict[str, tuple[str, ...]] = {}
        self._synced_at = 0.0
        self._syncing = False
        self.registry_check_s = registry_check_s
        self._snapshot: dict[str, DeviceInfo] = {}
        self._registry_checked = 0.0
        self._checking = threading.Lock()
        # baseline: Beijing day -> region -> week -> hourly cumulative kWh (25 points), computed in the background
        self._baseline_day: int | None = None
        self._baseline: dict[str, list[list[float] | None]] | None = None
        self._baseline_thread: threading.Thread | None = None
        # bumped by every change of the region tree or of a device's region, enabled flag or online state (what
        # ``subtree_counts`` sums): the tree's counts and answers are cached per version (``current``,
        # ``subtree_counts``, the region tree's bytes in gateway/routes/regions.py)
        self._version = 0
        self._subtree_cache: tuple[int, dict[str, tuple[int, int, int]]] | None = None

    # --- build and resync -----------------------------------------------------------------------------------------

    def build(self) -> None:
        """Read the registry and the store (synchronously)."""
        now_ms = _ms(self.clock())
        with self._lock:
            self._now_ms = max(self._now_ms, now_ms)
        self._sync(initial=True)

    def maybe_resync(self) -> None:
        """Start a background resync when the last one is older than ``resync_s``; never blocks."""
        with self._lock:
            if self._syncing or time.monotonic() - self._synced_at < self.resync_s:
                return
            self._syncing = True
        threading.Thread(target=self._resync_thread, name="fleet-resync", daemon=True).start()

    def _resync_thread(self) -> None:
        try:
            self._sync(initial=False)
        except Exception:
            logger.exception("fleet index: resync failed")
        finally:
            with self._lock:
                self._syncing = False
                self._synced_at = time.monotonic()

    def _sync(self, *, initial: bool) -> None:
        regions = self.registry.regions()
        snapshot = self.registry.snapshot()
        states = self.store.device_states(None)
        # What differs is found without the lock (a batch may change a device meanwhile: ``_upsert`` judges again
        # under the lock), so requests wait only for the few devices that changed.
        todo = [(info, states.get(i)) for i, info in snapshot.items() if self._differs(info, states.get(i))]
        gone = [i for i in list(self._devs) if i not in snapshot]
        details = self._details([info for info, _ in todo if info.device_id not in self._devs], states)
        rows = [RegionRow.of(r) for r in regions]
        paths = {r.id: r.path for r in rows}
        with self._lock:
            self._regions, self._paths, self._snapshot = rows, paths, snapshot
            self._version += 1
            for info, state in todo:
                self._upsert(info, state, details.get(info.device_id))
            for dev_id in gone:
                if dev_id in self._devs:
                    self._remove(self._devs.pop(dev_id))
                    self._version += 1
            self._synced_at = time.monotonic()
        if initial:
            logger.info("fleet index: %d devices in %d regions", len(snapshot), len(regions))

    def _differs(self, info: DeviceInfo, state: DeviceState | None) -> bool:
        d = self._devs.get(info.device_id)
        if d is None or (d.type, d.region_id, d.enabled, d.interval_s) != (
            info.device_type,
            info.region_id,
            info.enabled,
            info.expected_interval_s,
        ):
            return True
        return state is not None and (
            (state.last_seen_ms or 0) > (d.last_seen_ms or 0) or (state.status_ms or 0) > (d.status_ms or 0)
        )

    def check_registry(self) -> None:
        """Apply the registry's changes (at most once every ``registry_check_s``): ``Registry.snapshot()`` is
        incremental and answers the same dict while nothing changed, and keeps the ``DeviceInfo`` of every device
        that did not change, so only the changed ones are looked at (a device added, moved, enabled or disabled
        through the API or the CLI is counted within a second)."""
        now = time.monotonic()
        if now - self._registry_checked < self.registry_check_s or not self._checking.acquire(blocking=False):
            return
        try:
            self._registry_checked = now
            snapshot = self.registry.snapshot()
            old = self._snapshot
            if snapshot is old:
                return
            changed = [info for i, info in snapshot.items() if old.get(i) is not info]
            gone = [i for i in old if i not in snapshot]
            new = [info for info in changed if info.device_id not in self._devs]
            details = self._details(new, self.store.device_states([i.device_id for i in new]) if new else {})
            regions = None
            if any(info.region_id not in self._paths for info in changed):
                regions = self.registry.regions()
            with self._lock:
                if regions is not None:
                    self._regions = [RegionRow.of(r) for r in regions]
                    self._version += 1
                    self._paths = {r.id: r.path for r in self._regions}
                for info in changed:
                    self._upsert(info, None, details.get(info.device_id))
                for dev_id in gone:
                    if dev_id in self._devs:
                        self._remove(self._devs.pop(dev_id))
                        self._version += 1
                self._snapshot = snapshot
        finally:
            self._checking.release()

    def _details(self, infos: Sequence[DeviceInfo], states: dict[str, DeviceState]) -> dict[str, dict[str, Any]]:
        """Vehicles' newest ignition / speed and meters' energy today, from the store (devices new to the index).
        Only windows next to each device's last data are read: a vehicle offline now cannot be in use, a meter
        not seen today has used nothing today that the index could know of."""
        out: dict[str, dict[str, Any]] = {}
        today = beijing_day(self._now_ms)
        start = day_start_ms(today)
        for info in infos:
            state = states.get(info.device_id)
            seen = state.last_seen_ms if state is not None else None
            if seen is None:
                continue
            grace = int(GRACE_FACTOR * info.expected_interval_s * 1000)
            if info.device_type == VEHICLE:
                out[info.device_id] = self._vehicle_detail(info.device_id, seen, grace)
            elif info.device_type == METER and seen >= start:
                found = self._meter_today(info.device_id, start, seen, grace)
                if found is not None:
                    out[info.device_id] = found
        return out

    def _vehicle_detail(self, device_id: str, seen: int, grace: int) -> dict[str, Any]:
        """One read of a vehicle's newest values: its position (for the map), and, while it is online, whether it
        is in use (the newest ignition / speed within its grace before its last data)."""
        last = self.store.last_values(device_id)
        out: dict[str, Any] = {}
        if "lat" in last and "lon" in last:
            ts = min(last["lat"][0], last["lon"][0])
            out["pos"] = next_pos(None, ts, {k: v for k, (_, v) in last.items()})
        if seen >= self._now_ms - grace:
            said: tuple[int, bool] | None = None
            for key in ("ignition", "speed_kmh"):
                if key in last and last[key][0] >= seen - grace:
                    ts, v = last[key]
                    m = moving_of({key: bool(v) if key == "ignition" else v})
                    if m is not None and (said is None or ts > said[0] or (ts == said[0] and m)):
                        said = (ts, m)
            if said is not None:
                out["moving"], out["moving_ts"] = said[1], said[0]
        return out

    def _meter_today(self, device_id: str, start: int, seen: int, grace: int) -> dict[str, Any] | None:
        """Today's use of one meter: its newest ``energy_kwh`` minus its last value in the hour before midnight (or
        its first value today). A reset earlier today is not seen here (the newest value is then too low)."""
        newest = self.store.raw(device_id, "energy_kwh", max(start, seen - grace), seen + 1, 100)
        if not newest:
            buckets = self.store.aggregate(device_id, "energy_kwh", start, seen + 1, DAY_MS, "last", 2)
            newest = [(seen, b.value) for b in buckets if b.value is not None][-1:]
        if not newest:
            return None
        before = self.store.aggregate(device_id, "energy_kwh", start - HOUR_MS, start, HOUR_MS, "last", 2)
        ref = before[-1].value if before else None
        if ref is None:
            first = self.store.raw(device_id, "energy_kwh", start, seen + 1, 1)
            ref = first[0][1] if first else newest[-1][1]
        ts, value = newest[-1]
        return {"kwh_last": value, "kwh_ts": ts, "kwh_day": beijing_day(start), "kwh_used": max(0.0, value - ref)}

    def _upsert(self, info: DeviceInfo, state: DeviceState | None, detail: dict[str, Any] | None) -> None:
        self._version += 1
        d = self._devs.get(info.device_id)
        if d is None:
            d = _Dev(info.device_id, info.device_type, info.region_id, info.enabled, info.expected_interval_s)
            for key, value in (detail or {}).items():
                setattr(d, key, value)
            self._take_state(d, state)
            self._devs[d.id] = d
            self._add(d)
            return
        changed = (d.type, d.region_id, d.enabled, d.interval_s) != (
            info.device_type,
            info.region_id,
            info.enabled,
            info.expected_interval_s,
        )
        newer = state is not None and (
            (state.last_seen_ms or 0) > (d.last_seen_ms or 0) or (state.status_ms or 0) > (d.status_ms or 0)
        )
        if not changed and not newer:
            return
        self._remove(d)
        d.type, d.region_id, d.enabled, d.interval_s = (
            info.device_type,
            info.region_id,
            info.enabled,
            info.expected_interval_s,
        )
        self._take_state(d, state)
        self._add(d)

    @staticmethod
    def _take_state(d: _Dev, state: DeviceState | None) -> None:
        if state is None:
            return
        if state.last_seen_ms is not None and (d.last_seen_ms is None or state.last_seen_ms > d.last_seen_ms):
            d.last_seen_ms = state.last_seen_ms
        if state.status_ms is not None and (d.status_ms is None or state.status_ms > d.status_ms):
            d.status, d.status_ms = state.status, state.status_ms

    # --- counting ---------------------------------------------------------------------------------------------

    def _add(self, d: _Dev) -> None:
        d.online = d.enabled and is_online(d.state(), d.interval_s, self._now_ms)
        if d.online and not d.in_heap:
            deadline = d.deadline()
            if deadline is not None:
                heapq.heappush(self._heap, (deadline, d.id))
                d.in_heap = True
        self._count(d, 1)

    def _remove(self, d: _Dev) -> None:
        self._count(d, -1)

    def _count(self, d: _Dev, sign: int) -> None:
        self._count_key(_counted(d), sign)

    def _count_key(self, key: _Counted, sign: int) -> None:
        region_id, dev_type, enabled, online, moving, kwh_day, kwh_used = key
        c = self._counts.setdefault(region_id, {}).setdefault(dev_type, [0, 0, 0, 0])
        c[_TOTAL] += sign
        if not enabled:
            c[_DISABLED] += sign
        if online:
            c[_ONLINE] += sign
            if dev_type == VEHICLE and moving:
                c[_IN_USE] += sign
        if dev_type == METER and kwh_day >= 0 and kwh_used:
            days = self._energy.setdefault(region_id, {})
            days[kwh_day] = days.get(kwh_day, 0.0) + sign * kwh_used

    def recount(self) -> tuple[dict[str, dict[str, list[int]]], dict[str, dict[int, float]]]:
        """The counts and energy sums computed afresh from every device (what the incremental ones must equal)."""
        fresh = FleetIndex.__new__(FleetIndex)
        fresh._counts, fresh._energy = {}, {}
        with self._lock:
            for d in self._devs.values():
                fresh._count(d, 1)
        return fresh._counts, fresh._energy

    def advance(self, now_ms: int) -> None:
        """Bring the online flags to ``now_ms``: only devices whose deadline passed are looked at."""
        with self._lock:
            if now_ms < self._now_ms - CLOCK_SLACK_MS:  # the clock went back (tests): every device once
                self._version += 1
                self._now_ms = now_ms
                self._heap = []
                for d in self._devs.values():
                    self._remove(d)
                    d.in_heap = False
                    self._add(d)
                return
            if now_ms <= self._now_ms:  # concurrent requests read the clock in any order: already there
                return
            self._now_ms = now_ms
            heap = self._heap
            while heap and heap[0][0] < now_ms:
                _, dev_id = heapq.heappop(heap)
                due = self._devs.get(dev_id)
                if due is None:
                    continue
                due.in_heap = False
                was = due.online
                self._remove(due)
                self._add(due)  # offline now, or pushed again with its newer deadline
                if due.online != was:
                    self._version += 1

    # --- batches --------------------------------------------------------------------------------------------------

    def on_batch(self, batch: WriteBatch) -> None:
        """Broadcaster listener: apply a durable batch. Never raises."""
        try:
            self._apply(batch)
        except Exception:
            logger.exception("fleet index: applying a batch failed")

    def _apply(self, batch: WriteBatch) -> None:
        if not self._devs:
            return
        with self._lock:
            # what each touched device counted as before the batch; its counts change only if that changes (most
            # batches only move an online device's last-seen time: no recount, no version bump)
            before: dict[str, tuple[_Dev, _Counted]] = {}

            def take(dev_id: str) -> _Dev | None:
                seen = before.get(dev_id)
                if seen is not None:
                    return seen[0]
                d = self._devs.get(dev_id)
                if d is None:
                    return None
                before[dev_id] = (d, _counted(d))
                return d

            for dev_id, counters in batch.counters.items():
                seen = counters.last_seen_ms
                if seen and (d := take(dev_id)) is not None and (d.last_seen_ms is None or seen > d.last_seen_ms):
                    d.last_seen_ms = seen
            if not batch.counters and (batch.readings or batch.events):
                # a part forwarded to the engine role (ingest/forward.py) carries no counters: the records' own
                # times (never later than now) stand in for "last seen", else the index would learn that a device
                # came online only from the store's resync
                now_ms = _ms(self.clock())
                times = [(r.device_id, r.ts_ms) for r in batch.readings]
                times += [(e.device_id, e.ts_ms) for e in batch.events]
                for dev_id, ts in times:
                    seen = min(ts, now_ms)
                    if (d := take(dev_id)) is not None and (d.last_seen_ms is None or seen > d.last_seen_ms):
                        d.last_seen_ms = seen
            for s in batch.statuses:
                if (d := take(s.device_id)) is not None and (d.status_ms is None or s.ts_ms >= d.status_ms):
                    d.status, d.status_ms = s.state, s.ts_ms
            for r in batch.readings:
                if r.device_type == VEHICLE:
                    if "lat" in r.fields and (p := self._devs.get(r.device_id)) is not None:
                        p.pos = next_pos(p.pos, r.ts_ms, r.fields)
                    said = moving_of(r.fields)
                    if said is not None and (d := take(r.device_id)) is not None and r.ts_ms >= d.moving_ts:
                        d.moving, d.moving_ts = said, r.ts_ms
                elif r.device_type == METER:
                    v = r.fields.get("energy_kwh")
                    if isinstance(v, int | float) and not isinstance(v, bool) and (d := take(r.device_id)):
                        _meter_reading(d, r.ts_ms, float(v))
            for e in batch.events:
                ignition = e.type in ("ignition_on", "ignition_off")
                if ignition and (d := take(e.device_id)) is not None and e.ts_ms >= d.moving_ts:
                    d.moving, d.moving_ts = e.type == "ignition_on", e.ts_ms
            now_ms = self._now_ms
            for d, was in before.values():
                d.online = d.enabled and online_at(d.last_seen_ms, d.status, d.status_ms, d.interval_s, now_ms)
                if d.online and not d.in_heap:
                    deadline = d.deadline()
                    if deadline is not None:
                        heapq.heappush(self._heap, (deadline, d.id))
                        d.in_heap = True
                now = _counted(d)
                if now != was:
                    self._count_key(was, -1)
                    self._count_key(now, 1)
                    if now[:4] != was[:4]:  # region, type, enabled, online: what the tree's counts show
                        self._version += 1

    # --- reading ----------------------------------------------------------------------------------------------

    def regions(self) -> list[RegionRow]:
        """The region tree as last read from the registry, ordered by path."""
        with self._lock:
            return list(self._regions)

    def subtree_counts(self, now_ms: int) -> dict[str, tuple[int, int, int]]:
        """Per region, (total, online, disabled) over its whole subtree, at ``now_ms``: each region's own counters
        added to itself and its ancestors (regions x depth, not devices)."""
        self.check_registry()
        self.advance(now_ms)
        self.maybe_resync()
        out: dict[str, list[int]] = {}
        with self._lock:
            cached = self._subtree_cache
            if cached is not None and cached[0] == self._version:
                return cached[1]
            version = self._version
            paths = self._paths
            for rid, by_type in self._counts.items():
                total = online = disabled = 0
                for c in by_type.values():
                    total += c[_TOTAL]
                    online += c[_ONLINE]
                    disabled += c[_DISABLED]
                if not total:
                    continue
                for anc in paths.get(rid, ()):
                    acc = out.get(anc)
                    if acc is None:
                        out[anc] = [total, online, disabled]
                    else:
                        acc[0] += total
                        acc[1] += online
                        acc[2] += disabled
        result = {rid: (a[0], a[1], a[2]) for rid, a in out.items()}
        with self._lock:
            self._subtree_cache = (version, result)
        return result

    def current(self, now_ms: int) -> int:
        """The index brought to ``now_ms`` (registry changes, online deadlines, resync) and its version: equal
        versions mean equal counts and region tree, so an answer built from them may be reused."""
        self.check_registry()
        self.advance(now_ms)
        self.maybe_resync()
        with self._lock:
            return self._version

    def vehicles(self, region_ids: Iterable[str] | None, now_ms: int) -> list[VehicleRow]:
        """Every vehicle registered in ``region_ids`` (None: all), sorted by id, with its online state at
        ``now_ms``, in-use flag, last seen time and newest position: from memory, no store read."""
        self.check_registry()
        self.advance(now_ms)
        self.maybe_resync()
        wanted = None if region_ids is None else set(region_ids)
        with self._lock:
            rows = [
                VehicleRow(d.id, d.region_id, d.enabled, d.online, d.online and d.moving, d.last_seen_ms, d.pos)
                for d in self._devs.values()
                if d.type == VEHICLE and (wanted is None or d.region_id in wanted)
            ]
        rows.sort(key=lambda v: v.id)
        return rows

    def knows_region(self, region_id: str) -> bool:
        with self._lock:
            return region_id in self._paths

    def rollup(self, region_ids: Iterable[str] | None, now_ms: int) -> Rollup:
        """The counts of the devices registered in ``region_ids`` (None: every region), at ``now_ms``."""
        self.check_registry()
        self.advance(now_ms)
        self.maybe_resync()
        today = beijing_day(now_ms)
        out = Rollup()
        with self._lock:
            ids: Iterable[str] = self._counts.keys() if region_ids is None else region_ids
            wanted = list(ids)
            for rid in wanted:
                for dtype, c in self._counts.get(rid, {}).items():
                    acc = out.by_type.setdefault(dtype, [0, 0, 0, 0])
                    for i in range(4):
                        acc[i] += c[i]
                out.today_kwh += self._energy.get(rid, {}).get(today, 0.0)
            profiles = self._baseline if self._baseline_day == today else None
        if profiles is None:
            self._start_baseline(today)
        else:
            out.baseline_kwh = baseline_at(profiles, wanted, now_ms - day_start_ms(today))
        return out

    # --- baseline ---------------------------------------------------------------------------------------------

    def _start_baseline(self, day: int) -> None:
        with self._lock:
            if self._baseline_thread is not None and self._baseline_thread.is_alive():
                return
            thread = threading.Thread(target=self._compute_baseline, args=(day,), name="fleet-baseline", daemon=True)
            self._baseline_thread = thread
        thread.start()

    def _compute_baseline(self, day: int) -> None:
        try:
            with self._lock:
                meters = [(d.id, d.region_id) for d in self._devs.values() if d.type == METER]
            profiles: dict[str, list[list[float] | None]] = {}
            for dev_id, region_id in meters:
                weeks = profiles.setdefault(region_id, [None] * BASELINE_WEEKS)
                for k in range(BASELINE_WEEKS):
                    prof = self._meter_profile(dev_id, day_start_ms(day - 7 * (k + 1)))
                    if prof is None:
                        continue
                    acc = weeks[k]
                    weeks[k] = prof if acc is None else [a + b for a, b in zip(acc, prof, strict=True)]
            with self._lock:
                self._baseline_day, self._baseline = day, profiles
        except Exception:
            logger.exception("fleet index: computing the energy baseline failed")

    def _meter_profile(self, device_id: str, start: int) -> list[float] | None:
        """Cumulative kWh from 00:00 at each full hour 0..24 of the day starting at ``start``; None without data."""
        # the hour before 00:00 for the value at midnight, then the day: at most 25 rows of hourly ``last``
        buckets = self.store.aggregate(device_id, "energy_kwh", start - HOUR_MS, start + DAY_MS, HOUR_MS, "last", 26)
        return hourly_profile([(b.ts_ms, b.value) for b in buckets if b.value is not None], start)


def _meter_reading(d: _Dev, ts_ms: int, value: float) -> None:
    """A meter's new ``energy_kwh``: add its increase to the day's use (a lower value: the counter was reset)."""
    if ts_ms <= d.kwh_ts:
        return
    day = beijing_day(ts_ms)
    if day != d.kwh_day:
        d.kwh_day, d.kwh_used = day, 0.0
    if d.kwh_last is not None:
        d.kwh_used += value - d.kwh_last if value >= d.kwh_last else value
    d.kwh_last, d.kwh_ts = value, ts_ms


def hourly_profile(buckets: Sequence[tuple[int, float]], start: int) -> list[float] | None:
    """From hourly ``last`` buckets (epoch-aligned, [start - 1 h, start + 1 day)): the cumulative use at 00:00,
    01:00, ..., 24:00 of the day starting at ``start``; None when the day has no reading. Pure."""
    points = sorted(buckets)
    if not any(start <= ts < start + DAY_MS for ts, _ in points):
        return None
    before = [v for ts, v in points if ts < start]
    ref = before[-1] if before else next(v for ts, v in points if ts >= start)
    out: list[float] = []
    used, last, i = 0.0, ref, 0
    for h in range(25):
        edge = start + h * HOUR_MS
        while i < len(points) and points[i][0] + HOUR_MS <= edge:
            ts, v = points[i]
            if ts >= start:
                used += v - last if v >= last else v
                last = v
            i += 1
        out.append(used)
    return out


def baseline_at(
    profiles: dict[str, list[list[float] | None]], region_ids: Iterable[str], elapsed_ms: int
) -> float | None:
    """Mean over the weeks with data of the regions' summed profile at ``elapsed_ms`` after 00:00. Pure."""
    totals: list[float | None] = [None] * BASELINE_WEEKS
    h, frac = divmod(max(0, min(elapsed_ms, DAY_MS)), HOUR_MS)
    for rid in region_ids:
        for k, prof in enumerate(profiles.get(rid, ())):
            if prof is None:
                continue
            value = prof[h] if h >= 24 else prof[h] + (prof[h + 1] - prof[h]) * frac / HOUR_MS
            totals[k] = (totals[k] or 0.0) + value
    weeks = [t for t in totals if t is not None]
    return sum(weeks) / len(weeks) if weeks else None


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def json_response(content: Any) -> Response:
    """``content`` serialised by orjson, skipping FastAPI's own encoder (which walks every value of a large tree
    once more in Python). For answers made only of JSON types."""
    return Response(orjson.dumps(content), media_type="application/json")


# How long a request that arrives while the start-up build runs waits for it before answering 503 (Retry-After).
WARM_WAIT_S = 5.0


def _make_index(state: Any) -> FleetIndex:
    ctx = state.ctx
    index = FleetIndex(ctx.registry, ctx.store, ctx.clock)
    ctx.broadcaster.add_listener(index.on_batch)
    index.build()
    # a record per device lives as long as the process: out of the full collections (core/gcpolicy.py),
    # which would otherwise walk them every few hundred requests
    gcpolicy.settle("fleet index built")
    return index


def start_fleet(state: Any) -> threading.Thread:
    """Build the app's index in a background thread now (``serve`` at start-up, ``GatewayContext.warm_fleet``), so
    the first ``/api/v1/overview`` or ``/api/v1/regions`` finds it ready instead of reading every device itself.
    The energy baseline is started too (it is the other cold read)."""

    def run() -> None:
        try:
            with _BUILD_LOCK:
                if getattr(state, "fleet", None) is None:
                    index = _make_index(state)
                    state.fleet = index
                    index._start_baseline(beijing_day(index._now_ms))
        except Exception:
            logger.exception("fleet index: the start-up build failed (the first request builds it)")
        finally:
            state.fleet_warming = None

    thread = threading.Thread(target=run, name="fleet-build", daemon=True)
    state.fleet_warming = thread
    thread.start()
    return thread


def get_fleet(request: Request) -> FleetIndex:
    """The app's index. Built at start-up in the background when the app was asked to (``start_fleet``): a request
    arriving during that build waits for it up to ``WARM_WAIT_S`` (then 503 with Retry-After), it never scans the
    devices itself. Without a start-up build, the first request builds it (and waits). Fed by the live stream's
    batches either way."""
    state = request.app.state
    index: FleetIndex | None = getattr(state, "fleet", None)
    if index is not None:
        return index
    warming: threading.Thread | None = getattr(state, "fleet_warming", None)
    if warming is not None:
        warming.join(WARM_WAIT_S)
        built: FleetIndex | None = getattr(state, "fleet", None)
        if built is not None:
            return built
        if warming.is_alive():
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail="counting the devices after start-up, retry in a few seconds",
                headers={"Retry-After": "2"},
            )
    with _BUILD_LOCK:
        index = getattr(state, "fleet", None)
        if index is None:
            index = _make_index(state)
            state.fleet = index
    return index


_BUILD_LOCK = threading.Lock()
FleetDep = Annotated[FleetIndex, Depends(get_fleet)]
