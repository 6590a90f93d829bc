"""The vehicles report (issue 13, rules V8/V9): utilisation, hour-of-week heatmap, after-hours and holiday use,
allocation advice. ``build(source, request) -> Report``.

Thin reader, pure figures: the vehicles and their agency and city come from the registry (one query each for the
regions and the vehicles of the subtree); positions come from the telemetry store (``lat`` and ``lon`` in windows
of ``CHUNK_MS``, at most ``CHUNK_POINTS`` points a query) and are fed to ``core.trips.TripTracker`` as they are read,
so a vehicle's history is never held whole. Everything else is reports/vehicle_stats.py.

Reading only what is needed (option ``trips``):

- ``positions``: V9 trips segmented from positions. When a vehicle's terminal sends ``ignition_on`` /
  ``ignition_off`` events in the period, only the windows around them (``IGNITION_PAD_MS`` either side) are read;
  the hours parked in between are not. A vehicle with no ignition events is read whole; ``positions="all"`` reads
  every vehicle whole.
- ``ignition``: a trip is an ignition-on span of at least ``min_trip_s``, its distance the vehicle's odometer
  kilometres over the period shared out by duration (no positions read: one events query for all vehicles and a
  few odometer points each). A vehicle without ignition events or odometer readings falls back to ``positions``.
- ``auto`` (default): ``positions`` while the windows to read hold at most ``POSITION_BUDGET_FIXES`` fixes,
  ``ignition`` above. The summary's ``trip_source`` says which was used.

Other options: ``working_hours="08:30-17:30"`` and the ``Policy`` fields (``target_hours_per_workday``,
``under_ratio``, ``over_ratio``, ``short_ratio``, ``margin_ratio``, ``margin_min``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.calendar import Calendar, WorkingHours
from core.errors import UserError
from core.protocol import DEFAULT_INTERVAL_S
from core.store import TelemetryStore
from core.trips import Fix, Segment, TripParams, TripTracker
from devices.models import Device, Region
from reports.model import Cell, Chart, Column, Finding, Report, ReportRequest, ReportSource, Table
from reports.vehicle_stats import (
    WEEKDAYS_EN,
    WEEKDAYS_ZH,
    GroupUsage,
    Policy,
    TripLike,
    Usage,
    Vehicle,
    clip,
    group_usage,
    hour_of_week_hours,
    is_short,
    moves,
    needed,
    vehicle_usage,
)

CHUNK_MS = 7 * 86_400_000
CHUNK_POINTS = 50_000
LEAD_MS = 2 * 3_600_000  # read this much before the period so a trip under way at its start is seen whole
# Reading and segmenting positions costs ~5 us a fix here: with "trips=auto", above this many fixes in the windows
# to read, vehicles with ignition events and an odometer get their trips from the ignition events instead.
POSITION_BUDGET_FIXES = 400_000
IGNITION_PAD_MS = 6 * 60_000  # > TripParams.min_stop_s, so the stops either side of a trip are confirmed
EVENT_LIMIT = 500_000  # per vehicle


# --- registry -------------------------------------------------------------------------------------------------


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def load_vehicles(source: ReportSource, region_id: str) -> tuple[str, list[Vehicle]]:
    """The region's name and its enabled vehicles, each with its agency and city (nearest ancestor of that level;
    the vehicle's own region when it has none)."""
    with Session(source.engine) as s:
        root = s.get(Region, region_id)
        if root is None:
            raise UserError(f"region {region_id!r} does not exist")
        root_name, root_path = root.name, root.path
        regions = {r.id: (r.name, r.level) for r in s.scalars(select(Region))}
        paths: dict[str, str] = {
            rid: path
            for rid, path in s.execute(select(Region.id, Region.path).where(Region.path.startswith(root_path)))
        }
        rows = s.execute(
            select(Device.id, Device.name, Device.region_id)
            .where(Device.type == "vehicle", Device.enabled.is_(True), Device.region_id.in_(list(paths)))
            .order_by(Device.id)
        )
        out = []
        for device_id, name, rid in rows:
            chain = tuple(p for p in paths[rid].split("/") if p)
            agency = next((r for r in reversed(chain) if regions[r][1] == "agency"), rid)
            city = next((r for r in reversed(chain) if regions[r][1] == "city"), chain[0])
            out.append(Vehicle(device_id, name or device_id, agency, regions[agency][0], city, regions[city][0], chain))
    return root_name, out


# --- telemetry --------------------------------------------------------------------------------------------------


def read_fixes(store: TelemetryStore, device_id: str, start_ms: int, end_ms: int) -> Iterator[list[Fix]]:
    """A vehicle's positions in [start, end), oldest first, in chunks (``lat`` and ``lon`` joined on time)."""
    t = start_ms
    while t < end_ms:
        hi = min(t + CHUNK_MS, end_ms)
        lats = store.raw(device_id, "lat", t, hi, CHUNK_POINTS)
        if len(lats) == CHUNK_POINTS:
            hi = lats[-1][0] + 1
        lons = dict(store.raw(device_id, "lon", t, hi, CHUNK_POINTS))
        chunk = [Fix(ts, lat, lons[ts]) for ts, lat in lats if ts in lons]
        if chunk:
            yield chunk
        t = hi


def ignition_spans(
    store: TelemetryStore, device_ids: list[str], start_ms: int, end_ms: int
) -> dict[str, list[tuple[int, int]]]:
    """Per vehicle with ignition events in [start, end): each ``ignition_on`` to the next ``ignition_off`` (the
    period's edges when one is missing). One query per vehicle (faster than one for all: each is a range of the
    store's (device, time) index, with no sort of everything); a vehicle with ``EVENT_LIMIT`` events or more is
    left out (its positions are read)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for device_id in device_ids:
        events = store.events([device_id], start_ms, end_ms, ["ignition_on", "ignition_off"], EVENT_LIMIT)
        if not events or len(events) >= EVENT_LIMIT:
            continue
        events.reverse()  # oldest first
        spans: list[tuple[int, int]] = []
        on: int | None = start_ms if events[0].type == "ignition_off" else None
        for e in events:
            if e.type == "ignition_on":
                on = e.ts_ms if on is None else on
            elif on is not None:
                spans.append((on, e.ts_ms))
                on = None
        if on is not None:
            spans.append((on, end_ms))
        out[device_id] = spans
    return out


def padded(spans: Sequence[tuple[int, int]], start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """``spans`` widened by ``IGNITION_PAD_MS`` either side (within the period), overlaps merged."""
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        a, b = max(start_ms, a - IGNITION_PAD_MS), min(end_ms, b + IGNITION_PAD_MS)
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def ignition_windows(
    store: TelemetryStore, device_ids: list[str], start_ms: int, end_ms: int
) -> dict[str, list[tuple[int, int]]]:
    """Per vehicle with ignition events: the windows of positions worth reading (``padded`` ignition spans)."""
    spans = ignition_spans(store, device_ids, start_ms, end_ms)
    return {d: padded(s, start_ms, end_ms) for d, s in spans.items()}


def _last_point(store: TelemetryStore, device_id: str, fld: str, lo: int, hi: int) -> tuple[int, float] | None:
    last = None
    while True:
        rows = store.raw(device_id, fld, lo, hi, CHUNK_POINTS)
        if rows:
            last = rows[-1]
        if len(rows) < CHUNK_POINTS:
            return last
        lo = rows[-1][0] + 1


def odometer_km(store: TelemetryStore, device_id: str, start_ms: int, end_ms: int) -> float | None:
    """Kilometres on the odometer from its first reading in [start, end) to its last (looked for an hour before
    the end, then a day, a week, the whole period); None without two readings. A terminal whose newest messages
    carry no odometer is taken to have none (so the period's rows are not searched for one)."""
    if "odometer_km" not in store.last_values(device_id):
        return None
    first = store.raw(device_id, "odometer_km", start_ms, end_ms, 1)
    if not first:
        return None
    t0, km0 = first[0]
    for back in (3_600_000, 86_400_000, 7 * 86_400_000, end_ms - t0):
        last = _last_point(store, device_id, "odometer_km", max(t0, end_ms - back), end_ms)
        if last is not None:
            break
    if last is None or last[0] <= t0:
        return None
    return max(0.0, last[1] - km0)


class IgnitionTrip(NamedTuple):
    """A trip from the ignition events (the fast path): its distance is the vehicle's odometer kilometres over the
    period shared out by duration. (A NamedTuple: a hundred thousand of them are made for a large report.)"""

    start_ms: int
    end_ms: int
    distance_m: float
    kind: str = "trip"


def ignition_trips(spans: Sequence[tuple[int, int]], km: float, params: TripParams) -> list[IgnitionTrip]:
    """Ignition spans of at least ``min_trip_s``, sharing ``km`` by duration."""
    kept = [(a, b) for a, b in spans if (b - a) / 1000 >= params.min_trip_s]
    total = sum(b - a for a, b in kept)
    return [IgnitionTrip(a, b, 1000 * km * (b - a) / total if total else 0.0) for a, b in kept]


def vehicle_trips(
    store: TelemetryStore,
    device_id: str,
    windows: Sequence[tuple[int, int]],
    params: TripParams,
) -> list[Segment]:
    """Trips of one vehicle over ``windows`` (each segmented on its own: nothing is assumed between them)."""
    trips: list[Segment] = []
    for a, b in windows:
        tracker = TripTracker(params)
        for chunk in read_fixes(store, device_id, a, b):
            for fix in chunk:
                trips.extend(s for s in tracker.feed(fix) if s.kind == "trip")
        trips.extend(s for s in tracker.finish() if s.kind == "trip")
    return trips


# --- the report -------------------------------------------------------------------------------------------------


# Bounds of the policy options (inclusive); the API's schema mirrors them.
POLICY_BOUNDS: dict[str, tuple[float, float]] = {
    "target_hours_per_workday": (0.1, 24),
    "under_ratio": (0, 10),
    "over_ratio": (0, 10),
    "short_ratio": (0.01, 1),
    "margin_ratio": (0, 10),
    "margin_min": (0, 1000),
}


def policy_from(options: dict[str, Any]) -> Policy:
    """The ``Policy`` of a request's options; UserError naming the option when one is out of bounds."""
    kwargs: dict[str, Any] = {}
    default = Policy()
    for name, (lo, hi) in POLICY_BOUNDS.items():
        if name not in options:
            continue
        try:
            value = type(getattr(default, name))(options[name])
        except (TypeError, ValueError) as exc:
            raise UserError(f"option {name}={options[name]!r}: {exc}") from exc
        if not lo <= value <= hi:
            raise UserError(f"option {name}={value}: must be within {lo:g}-{hi:g}")
        kwargs[name] = value
    if "working_hours" in options:
        try:
            kwargs["hours"] = WorkingHours.parse(str(options["working_hours"]))
        except ValueError as exc:
            raise UserError(f"option working_hours={options['working_hours']!r}: {exc}") from exc
    return Policy(**kwargs)


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything the report shows, computed (pure) from the vehicles and their trips."""

    usages: list[Usage]
    agencies: list[GroupUsage]
    cities: list[GroupUsage]


def compute(
    vehicles: Sequence[Vehicle],
    trips: Mapping[str, Sequence[TripLike]],
    start_ms: int,
    end_ms: int,
    calendar: Calendar,
    policy: Policy,
) -> Figures:
    """Per vehicle, agency (with its heatmap) and city."""
    cell_hours = hour_of_week_hours(start_ms, end_ms)
    heat: dict[str, list[float]] = defaultdict(lambda: [0.0] * 168)
    usages: list[Usage] = []
    intervals: dict[str, list[tuple[int, int]]] = {}
    for v in vehicles:
        clipped = clip(trips.get(v.id, ()), start_ms, end_ms)
        usages.append(vehicle_usage(v, clipped, start_ms, end_ms, calendar, policy, heat[v.agency_id]))
        intervals[v.id] = [(a, b) for a, b, _, _ in clipped]
    by_agency: dict[str, list[Usage]] = defaultdict(list)
    by_city: dict[str, list[Usage]] = defaultdict(list)
    for u in usages:
        by_agency[u.vehicle.agency_id].append(u)
        by_city[u.vehicle.city_id].append(u)
    agencies = [
        group_usage(a, us[0].vehicle.agency_name, us, intervals, heat[a], cell_hours)
        for a, us in sorted(by_agency.items())
    ]
    cities = [group_usage(c, us[0].vehicle.city_name, us, intervals, None, None) for c, us in sorted(by_city.items())]
    return Figures(usages, agencies, cities)


def _h(seconds: float) -> float:
    return round(seconds / 3600, 1)


def _pct(ratio: float) -> float:
    return round(100 * ratio, 1)


USE_COLUMNS = (
    Column("trips", "出车次数", "Trips"),
    Column("km", "里程", "Distance", "km"),
    Column("engine_h", "行驶时长", "Engine hours", "h"),
    Column("use_share", "工作时间使用率", "Share of working hours in use", "%"),
    Column("target_ratio", "目标完成率", "Use against target", "%"),
)
OFF_HOURS_COLUMNS = (
    Column("after_hours_h", "工作日非工作时间", "After hours (working days)", "h"),
    Column("non_working_h", "非工作日", "Non-working days", "h"),
    Column("holiday_h", "法定节假日", "Public holidays", "h"),
)
VEHICLE_COLUMNS = (
    Column("vehicle", "车辆", "Vehicle"),
    Column("agency", "单位", "Agency"),
    *USE_COLUMNS,
    *OFF_HOURS_COLUMNS,
    Column("off_hours_trips", "非工作时间出车", "Trips off hours"),
)
GROUP_COLUMNS = (
    Column("name", "名称", "Name"),
    Column("fleet", "车辆数", "Vehicles"),
    *USE_COLUMNS,
    Column("peak", "最大同时用车", "Peak concurrent use"),
    Column("saturated_h", "全部车辆在用时长", "Time with every vehicle out", "h"),
    Column("needed", "同等服务所需车辆", "Vehicles needed at the same service level"),
    *OFF_HOURS_COLUMNS,
)


def _use_cells(g: GroupUsage) -> dict[str, Cell]:
    """The USE_COLUMNS and OFF_HOURS_COLUMNS cells of a group (a vehicle is a group of one)."""
    return {
        "trips": int(g.total("trips")),
        "km": round(g.total("km"), 1),
        "engine_h": _h(g.total("engine_s")),
        "use_share": _pct(g.use_share),
        "target_ratio": _pct(g.target_ratio),
        "after_hours_h": _h(g.total("after_hours_s")),
        "non_working_h": _h(g.total("non_working_s")),
        "holiday_h": _h(g.total("holiday_s")),
    }


def _vehicle_row(u: Usage) -> dict[str, Cell]:
    alone = GroupUsage(u.vehicle.id, u.vehicle.name, [u])
    cells = {"vehicle": u.vehicle.name, "agency": u.vehicle.agency_name, **_use_cells(alone)}
    return {**cells, "off_hours_trips": u.off_hours_trips}


def _group_row(g: GroupUsage, policy: Policy) -> dict[str, Cell]:
    extra: dict[str, Cell] = {"peak": g.peak, "saturated_h": _h(g.saturated_s), "needed": needed(g.peak, policy)}
    return {"name": g.name, "fleet": g.fleet, **_use_cells(g), **extra}


def findings(fig: Figures, policy: Policy) -> list[Finding]:
    """The allocation advice and the off-hours summary, each with the numbers behind it."""
    out: list[Finding] = []
    target_h = policy.target_hours_per_workday
    for u in sorted(fig.usages, key=lambda u: (u.target_ratio, u.vehicle.id)):
        if u.target_s <= 0:
            continue
        nums: dict[str, Cell] = {
            "vehicle": u.vehicle.id,
            "agency": u.vehicle.agency_id,
            "in_use_working_h": _h(u.working_s),
            "target_h": _h(u.target_s),
            "target_ratio_pct": _pct(u.target_ratio),
            "trips": u.trips,
            "km": round(u.km, 1),
        }
        pct = _pct(u.target_ratio)
        named = u.vehicle.agency_name in u.vehicle.name  # "某局 公务车 苏A001" already says whose it is
        who_zh = u.vehicle.name if named else f"{u.vehicle.agency_name}的{u.vehicle.name}"
        who_en = u.vehicle.name if named else f"{u.vehicle.name} ({u.vehicle.agency_name})"
        if u.target_ratio < policy.under_ratio:
            out.append(
                Finding(
                    "under_used",
                    f"{who_zh}使用不足:工作时间在用 {_h(u.working_s)} 小时,仅为目标"
                    f"({u.working_days} 个工作日 × {target_h:g} 小时)的 {pct}%,可调剂或处置。",
                    f"{who_en} is under-used: {_h(u.working_s)} h in use in working hours, {pct}% of its "
                    f"target ({u.working_days} working days x {target_h:g} h); reallocate or dispose of it.",
                    nums,
                )
            )
        elif u.target_ratio > policy.over_ratio:
            out.append(
                Finding(
                    "over_used",
                    f"{who_zh}使用强度高:工作时间在用 {_h(u.working_s)} 小时,为目标的 {pct}%。",
                    f"{who_en} is over-used: {_h(u.working_s)} h in use in working hours, {pct}% of target.",
                    nums,
                )
            )
    for g in fig.agencies:
        if is_short(g, policy):
            out.append(
                Finding(
                    "short",
                    f"{g.name}用车紧张:最多同时在用 {g.peak} 辆,共有 {g.fleet} 辆,"
                    f"全部车辆同时在用累计 {_h(g.saturated_s)} 小时。",
                    f"{g.name} is short of vehicles: peak concurrent use {g.peak} of {g.fleet}, every vehicle out "
                    f"for {_h(g.saturated_s)} h in total.",
                    {"agency": g.id, "peak": g.peak, "fleet": g.fleet, "saturated_h": _h(g.saturated_s)},
                )
            )
    names = {g.id: g.name for g in fig.agencies}
    for city in fig.cities:
        in_city = [g for g in fig.agencies if g.vehicles and g.vehicles[0].vehicle.city_id == city.id]
        for m in moves(city.id, in_city, policy):
            out.append(
                Finding(
                    "move",
                    f"建议将 {m.vehicle_id} 从{names[m.from_agency]}(目标完成率 {_pct(m.from_target_ratio)}%)"
                    f"调配至{names[m.to_agency]}(最多同时在用 {m.to_peak}/{m.to_fleet} 辆)。",
                    f"Move {m.vehicle_id} from {names[m.from_agency]} ({_pct(m.from_target_ratio)}% of target) to "
                    f"{names[m.to_agency]} (peak concurrent use {m.to_peak} of {m.to_fleet}).",
                    {
                        "city": city.id,
                        "vehicle": m.vehicle_id,
                        "from_agency": m.from_agency,
                        "to_agency": m.to_agency,
                        "from_target_ratio_pct": _pct(m.from_target_ratio),
                        "to_peak": m.to_peak,
                        "to_fleet": m.to_fleet,
                        "to_saturated_h": _h(m.to_saturated_s),
                    },
                )
            )
        need = needed(city.peak, policy)
        if city.fleet > need and city.peak > 0:  # no use at all is a data question before a fleet one
            margin = need - city.peak
            out.append(
                Finding(
                    "retire",
                    f"{city.name}共有 {city.fleet} 辆车,期间最多同时在用 {city.peak} 辆;保留 {need} 辆"
                    f"(含余量 {margin} 辆)即可保持同等服务水平,可压减 {city.fleet - need} 辆。",
                    f"{city.name} has {city.fleet} vehicles and at most {city.peak} were out at once; {need} "
                    f"(a margin of {margin}) keep the same service level: {city.fleet - need} could be retired.",
                    {
                        "city": city.id,
                        "fleet": city.fleet,
                        "peak": city.peak,
                        "margin": margin,
                        "needed": need,
                        "retire": city.fleet - need,
                    },
                )
            )
    off = [u for u in fig.usages if u.off_hours_trips]
    if off:
        trips = sum(u.off_hours_trips for u in off)
        holiday_km = round(sum(u.holiday_km for u in off), 1)
        out.append(
            Finding(
                "off_hours",
                f"{len(off)} 辆车有 {trips} 次出车在非工作时间或非工作日"
                f"{f'(其中法定节假日行驶 {holiday_km} 公里)' if holiday_km else ''},请核对派车记录。",
                f"{len(off)} vehicles made {trips} trips after hours or on non-working days"
                f"{f' ({holiday_km} km on public holidays)' if holiday_km else ''}: check them against the dispatch "
                f"records.",
                {
                    "vehicles": len(off),
                    "trips": trips,
                    "after_hours_h": _h(sum(u.after_hours_s for u in off)),
                    "non_working_h": _h(sum(u.non_working_s for u in off)),
                    "holiday_h": _h(sum(u.holiday_s for u in off)),
                    "holiday_km": holiday_km,
                },
            )
        )
    return out


def heatmaps(fig: Figures) -> list[Chart]:
    return [
        Chart(
            f"heatmap:{g.id}",
            f"{g.name} 用车时段分布(北京时间,车辆在用比例)",
            f"{g.name}: share of the fleet in use by hour of week (Beijing time)",
            "heatmap",
            tuple(f"{h:02d}" for h in range(24)),
            {f"{WEEKDAYS_ZH[d]} {WEEKDAYS_EN[d]}": tuple(g.heatmap[d]) for d in range(7)},
            "%",
        )
        for g in fig.agencies
    ]


SUMMARY_LABELS: dict[str, tuple[str, str]] = {
    "vehicles": ("车辆数", "Vehicles"),
    "trip_source": ("行程来源(定位/点火)", "Trips from (positions / ignition)"),
    "trips": ("出车次数", "Trips"),
    "km": ("总里程(公里)", "Distance (km)"),
    "engine_h": ("行驶时长(小时)", "Engine hours"),
    "use_share_pct": ("工作时间使用率(%)", "Share of working hours in use (%)"),
    "off_hours_trips": ("非工作时间出车次数", "Trips off hours"),
    "holiday_h": ("法定节假日用车(小时)", "Use on public holidays (h)"),
    "under_used": ("使用不足车辆", "Under-used vehicles"),
    "short_agencies": ("用车紧张单位", "Agencies short of vehicles"),
    "retire": ("可压减车辆", "Vehicles that could be retired"),
}


TripSource = Literal["positions", "ignition"]


def read_trips(
    store: TelemetryStore, ids: Sequence[str], start_ms: int, end_ms: int, options: dict[str, Any]
) -> tuple[dict[str, list[TripLike]], dict[str, TripSource]]:
    """Each vehicle's trips over [start - LEAD_MS, end) and where they came from (module doc: "trips")."""
    mode = str(options.get("trips", "auto"))
    if mode not in ("auto", "positions", "ignition"):
        raise UserError(f"option trips={mode!r}: one of auto, positions, ignition")
    params = TripParams()
    lead = start_ms - LEAD_MS
    spans = {} if options.get("positions") == "all" else ignition_spans(store, list(ids), lead, end_ms)
    windows = {d: padded(s, lead, end_ms) for d, s in spans.items()}
    if mode == "auto":
        interval = DEFAULT_INTERVAL_S["vehicle"] * 1000
        span_ms = sum(sum(b - a for a, b in windows.get(d, [(lead, end_ms)])) for d in ids)
        mode = "positions" if span_ms / interval <= POSITION_BUDGET_FIXES else "ignition"
    trips: dict[str, list[TripLike]] = {}
    sources: dict[str, TripSource] = {}
    for d in ids:
        km = odometer_km(store, d, start_ms, end_ms) if mode == "ignition" and d in spans else None
        if km is not None:
            trips[d], sources[d] = list(ignition_trips(spans[d], km, params)), "ignition"
        else:
            trips[d], sources[d] = list(vehicle_trips(store, d, windows.get(d, [(lead, end_ms)]), params)), "positions"
    return trips, sources


def build(source: ReportSource, request: ReportRequest) -> Report:
    policy = policy_from(request.options)
    start_ms, end_ms = _ms(request.start), _ms(min(request.end, request.now))
    region_name, vehicles = load_vehicles(source, request.region_id)
    trips, sources = read_trips(source.telemetry, [v.id for v in vehicles], start_ms, end_ms, request.options)
    fig = compute(vehicles, trips, start_ms, end_ms, source.calendar, policy)
    advice = findings(fig, policy)
    everyone = GroupUsage("", "", fig.usages)
    summary: dict[str, Cell] = {
        "vehicles": len(vehicles),
        "trip_source": "+".join(sorted(set(sources.values()))) or "positions",
        "trips": int(everyone.total("trips")),
        "km": round(everyone.total("km"), 1),
        "engine_h": _h(everyone.total("engine_s")),
        "use_share_pct": _pct(everyone.use_share),
        "off_hours_trips": int(everyone.total("off_hours_trips")),
        "holiday_h": _h(everyone.total("holiday_s")),
        "under_used": sum(f.key == "under_used" for f in advice),
        "short_agencies": sum(f.key == "short" for f in advice),
        "retire": sum(int(f.numbers["retire"] or 0) for f in advice if f.key == "retire"),
    }
    return Report(
        kind="vehicles",
        region_id=request.region_id,
        region_name=region_name,
        start=request.start,
        end=request.end,
        generated_at=request.now,
        title_zh="公务用车使用与配置分析",
        title_en="Official vehicle use and allocation",
        summary=summary,
        summary_labels=SUMMARY_LABELS,
        tables=(
            Table("vehicles", "车辆使用情况", "Use per vehicle", VEHICLE_COLUMNS, tuple(map(_vehicle_row, fig.usages))),
            Table(
                "agencies",
                "单位用车情况",
                "Use per agency",
                GROUP_COLUMNS,
                tuple(_group_row(g, policy) for g in fig.agencies),
            ),
            Table(
                "cities",
                "城市用车情况",
                "Use per city",
                GROUP_COLUMNS,
                tuple(_group_row(g, policy) for g in fig.cities),
            ),
        ),
        charts=tuple(heatmaps(fig)),
        findings=tuple(advice),
    )
