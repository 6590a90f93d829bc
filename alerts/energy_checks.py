"""E6 submeter balance and E7 quota: energy rules judged over whole days and months, not per message.

Both need many meters at once (a parent and its children; every meter of an agency) and whole periods, so the
stream engine routes them nothing (``alerts.engine._Periodic``); ``EnergyChecks`` judges them from the telemetry
store's hourly buckets of the ``energy_kwh`` counter instead, once per poll, for the last complete Beijing day (E6)
and the last complete calendar month (E7), and hands the changes to the ordinary alert lifecycle, like the platform
alerts. The energy report (reports/energy.py) uses the same pure functions for its balance and ranking tables.

Pure parts (no I/O, ``now`` passed in): ``hourly_kwh``, ``submeter_balance``, ``quota_rows``, ``balance_changes``,
``quota_changes``.
"""

from __future__ import annotations

import calendar as _cal
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from alerts.calendar import BEIJING, beijing_midnight_ms
from alerts.rules import EffectiveRule, QuotaParams, RuleSet, SubmeterBalanceParams
from alerts.types import AlertChange
from core import clock
from core.store import Bucket, TelemetryStore
from devices.models import Device, Region
from devices.region_attrs import inherited

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
MAX_SPREAD_H = 24  # a counter step across a longer gap is not spread over the hours (unknown when it was used)
QUOTA_DEVICE = "energy-quota"  # the pseudo device of E7 alerts (an agency has no meter of its own)


# --- counters to hourly use ------------------------------------------------------------------------------------


def hourly_kwh(buckets: Sequence[Bucket], start_ms: int, end_ms: int) -> dict[int, float]:
    """kWh used in each hour (its start, epoch ms) of [start, end), from hourly buckets of a cumulative counter
    holding each hour's last reading (``aggregate(..., bucket_ms=HOUR_MS, agg="last")`` from an hour before
    ``start``). An hour's use is its last reading minus the previous hour's; a step across missing hours is spread
    evenly over them (up to ``MAX_SPREAD_H``); a counter that went backwards (a reset) adds nothing."""
    out: dict[int, float] = {}
    prev: Bucket | None = None
    for b in buckets:
        if b.value is None:
            continue
        if prev is not None and prev.value is not None:
            hours = (b.ts_ms - prev.ts_ms) // HOUR_MS
            delta = b.value - prev.value
            if 0 < hours <= MAX_SPREAD_H and delta >= 0:
                share = delta / hours
                for k in range(1, hours + 1):
                    t = prev.ts_ms + k * HOUR_MS
                    if start_ms <= t < end_ms:
                        out[t] = share
        prev = b
    return out


def meter_hours(
    store: TelemetryStore, meter_ids: Iterable[str], start_ms: int, end_ms: int
) -> dict[str, dict[int, float]]:
    """Hourly kWh of each meter over [start, end) (see ``hourly_kwh``), one aggregate query per meter."""
    out: dict[str, dict[int, float]] = {}
    limit = (end_ms - start_ms) // HOUR_MS + 2
    for meter in meter_ids:
        buckets = store.aggregate(meter, "energy_kwh", start_ms - HOUR_MS, end_ms, HOUR_MS, "last", limit)
        out[meter] = hourly_kwh(buckets, start_ms, end_ms)
    return out


# --- E6 submeter balance -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    parent: str
    parent_kwh: float
    children_kwh: float
    children: tuple[str, ...]
    missing: tuple[str, ...]  # children with no data in the period: not judged

    @property
    def diff_kwh(self) -> float:
        return self.parent_kwh - self.children_kwh

    @property
    def share(self) -> float | None:
        """(parent - children) / parent; None when the parent used nothing."""
        return None if self.parent_kwh <= 0 else self.diff_kwh / self.parent_kwh


def submeter_balance(parent_of: Mapping[str, str], use: Mapping[str, float | None]) -> list[Balance]:
    """Each parent meter against the sum of its children (``parent_of``: child -> parent); ``use`` is each meter's
    kWh over the period, None (or absent) when it has no data. Parents without data are left out."""
    children: dict[str, list[str]] = defaultdict(list)
    for child, parent in parent_of.items():
        children[parent].append(child)
    out: list[Balance] = []
    for parent in sorted(children):
        p = use.get(parent)
        if p is None:
            continue
        kids = sorted(children[parent])
        missing = tuple(k for k in kids if use.get(k) is None)
        total = sum(use.get(k) or 0.0 for k in kids)
        out.append(Balance(parent, p, total, tuple(kids), missing))
    return out


def balance_changes(
    balances: Sequence[Balance],
    rules: Mapping[str, EffectiveRule],
    regions: Mapping[str, tuple[str, ...]],
    known: Mapping[str, bool],
    *,
    day: date,
    now: datetime,
) -> list[AlertChange]:
    """E6 raise / resolve per parent meter for one day's balances. ``rules``: parent -> its effective E6 rule (a
    parent without one, e.g. disabled by an override, is skipped); ``regions``: parent -> its region path;
    ``known``: dedup key -> firing, what was last sent."""
    out: list[AlertChange] = []
    for b in balances:
        rule = rules.get(b.parent)
        if rule is None or b.missing:
            continue
        p: SubmeterBalanceParams = rule.params
        share = b.share
        if share is None or b.parent_kwh < p.min_kwh:
            continue
        firing = abs(share) > p.tolerance
        path = regions.get(b.parent, ())
        change = _change(
            rule,
            b.parent,
            path,
            firing,
            now,
            known,
            day=day.isoformat(),
            parent_kwh=round(b.parent_kwh, 2),
            children_kwh=round(b.children_kwh, 2),
            diff_kwh=round(b.diff_kwh, 2),
            share=round(share, 4),
            tolerance=p.tolerance,
            children=list(b.children),
        )
        if change is not None:
            out.append(change)
    return out


# --- E7 quota ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgencyUse:
    agency_id: str
    name: str
    city_id: str | None
    city_name: str
    kwh: float
    attributes: Mapping[str, Any]  # the agency's own region attributes with inherited quotas


@dataclass(frozen=True, slots=True)
class QuotaRow:
    agency_id: str
    name: str
    city_id: str | None
    city_name: str
    kwh: float
    headcount: int | None
    floor_area_m2: float | None
    per_capita: float | None
    per_m2: float | None
    quota_per_capita: float | None  # scaled to the period
    quota_per_m2: float | None
    ratio_capita: float | None  # use / quota
    ratio_m2: float | None
    rank: int  # within the city: 1 is the highest use against quota (per capita when no quota is set)
    of: int  # agencies ranked in the city

    @property
    def ratio(self) -> float | None:
        got = [r for r in (self.ratio_capita, self.ratio_m2) if r is not None]
        return max(got) if got else None

    def over(self, basis: str = "any", margin: float = 0.0) -> bool:
        limit = 1 + margin
        if basis == "per_capita":
            return self.ratio_capita is not None and self.ratio_capita > limit
        if basis == "per_m2":
            return self.ratio_m2 is not None and self.ratio_m2 > limit
        return self.ratio is not None and self.ratio > limit


def month_scale(start: datetime, end: datetime) -> float:
    """How many months of quota a period [start, end) is: its days over the days of the (Beijing) month it starts
    in; exactly 1 for a calendar month."""
    local = start.astimezone(BEIJING)
    days_in_month = _cal.monthrange(local.year, local.month)[1]
    return (end - start).total_seconds() / 86400 / days_in_month


def quota_rows(agencies: Sequence[AgencyUse], scale: float) -> list[QuotaRow]:
    """Per-capita and per-m2 use against the monthly quotas x ``scale`` (``month_scale``), ranked within each city
    by the larger of the two ratios (agencies without a quota after those with one, by use per capita)."""
    rows: list[QuotaRow] = []
    for a in agencies:
        head = a.attributes.get("headcount")
        area = a.attributes.get("floor_area_m2")
        q_cap = a.attributes.get("quota_kwh_per_capita_month")
        q_m2 = a.attributes.get("quota_kwh_per_m2_month")
        per_cap = a.kwh / head if head else None
        per_m2 = a.kwh / area if area else None
        qc = q_cap * scale if q_cap is not None else None
        qm = q_m2 * scale if q_m2 is not None else None
        rc = per_cap / qc if per_cap is not None and qc else None
        rm = per_m2 / qm if per_m2 is not None and qm else None
        rows.append(
            QuotaRow(
                a.agency_id, a.name, a.city_id, a.city_name, a.kwh, head, area, per_cap, per_m2, qc, qm, rc, rm, 0, 0
            )
        )
    by_city: dict[str | None, list[QuotaRow]] = defaultdict(list)
    for r in rows:
        by_city[r.city_id].append(r)
    ranked: list[QuotaRow] = []
    for city in sorted(by_city, key=lambda c: c or ""):
        group = sorted(
            by_city[city],
            key=lambda r: (r.ratio is None, -(r.ratio or 0.0), -(r.per_capita or 0.0), r.agency_id),
        )
        for i, r in enumerate(group, 1):
            ranked.append(_with_rank(r, i, len(group)))
    return ranked


def _with_rank(r: QuotaRow, rank: int, of: int) -> QuotaRow:
    return replace(r, rank=rank, of=of)


def quota_changes(
    rows: Sequence[QuotaRow],
    rules: Mapping[str, EffectiveRule],
    regions: Mapping[str, tuple[str, ...]],
    known: Mapping[str, bool],
    *,
    month: str,
    now: datetime,
) -> list[AlertChange]:
    """E7 raise / resolve per agency for one complete month. ``rules``: agency -> the effective E7 rule of its
    meters; ``regions``: agency -> its region path."""
    out: list[AlertChange] = []
    for r in rows:
        rule = rules.get(r.agency_id)
        if rule is None or r.ratio is None:
            continue
        p: QuotaParams = rule.params
        change = _change(
            rule,
            QUOTA_DEVICE,
            regions.get(r.agency_id, (r.agency_id,)),
            r.over(p.basis, p.margin),
            now,
            known,
            group=r.agency_id,
            month=month,
            kwh=round(r.kwh, 1),
            per_capita=None if r.per_capita is None else round(r.per_capita, 2),
            quota_per_capita=r.quota_per_capita,
            per_m2=None if r.per_m2 is None else round(r.per_m2, 3),
            quota_per_m2=r.quota_per_m2,
            rank=r.rank,
            of=r.of,
        )
        if change is not None:
            out.append(change)
    return out


def _change(
    rule: EffectiveRule,
    device_id: str,
    path: tuple[str, ...],
    firing: bool,
    now: datetime,
    known: Mapping[str, bool],
    group: str = "",
    **detail: object,
) -> AlertChange | None:
    region = path[-1] if path else ""
    # E7's alerts all belong to one pseudo device: the agency stands in for it in the key
    subject = group or device_id
    key = rule.dedup_key.format(rule=rule.rule_id, device=subject, region=region, group=subject)
    if known.get(key) == firing:  # unknown: sent either way, so a restart resolves what the last run left open
        return None
    if group:
        detail["group"] = group
    return AlertChange(
        rule_id=rule.rule_id,
        dedup_key=key,
        device_id=device_id,
        region_id=region,
        severity=rule.severity,
        firing=firing,
        at=now,
        title_zh=rule.title_zh,
        title_en=rule.title_en,
        detail=detail,
        region_path=path,
        kind=rule.kind,
    )


# --- reading the registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterInfo:
    id: str
    region_id: str
    path: tuple[str, ...]  # region path, root first
    parent_meter: str | None


@dataclass(frozen=True, slots=True)
class RegionInfo:
    id: str
    name: str
    level: str
    parent_id: str | None
    path: tuple[str, ...]
    attributes: Mapping[str, Any]


def load_tree(engine: Engine, root: str | None = None) -> tuple[dict[str, RegionInfo], list[MeterInfo]]:
    """Regions (all of them: attributes inherit from above the root) and the enabled energy meters of ``root``'s
    subtree (everything when None)."""
    with engine.connect() as conn:
        regions = {
            rid: RegionInfo(rid, name, level, parent, tuple(p for p in path.split("/") if p), dict(attrs or {}))
            for rid, name, level, parent, path, attrs in conn.execute(
                select(Region.id, Region.name, Region.level, Region.parent_id, Region.path, Region.attributes)
            )
        }
        rows = conn.execute(
            select(Device.id, Device.region_id, Device.attributes).where(
                Device.type == "energy_meter", Device.enabled.is_(True)
            )
        ).all()
    meters: list[MeterInfo] = []
    for did, rid, attrs in rows:
        r = regions.get(rid)
        path = r.path if r is not None else (rid,)
        if root is not None and root not in path:
            continue
        parent = (attrs or {}).get("parent_meter")
        meters.append(MeterInfo(did, rid, path, parent if isinstance(parent, str) and parent else None))
    meters.sort(key=lambda m: m.id)
    return regions, meters


def attrs_chain(regions: Mapping[str, RegionInfo], path: Sequence[str]) -> list[Mapping[str, Any]]:
    """The attributes of the regions on ``path``, nearest first (for ``devices.region_attrs.inherited``)."""
    return [regions[r].attributes if r in regions else {} for r in reversed(path)]


def nearest(regions: Mapping[str, RegionInfo], path: Sequence[str], level: str) -> RegionInfo | None:
    for rid in reversed(path):
        r = regions.get(rid)
        if r is not None and r.level == level:
            return r
    return None


def agency_uses(
    regions: Mapping[str, RegionInfo], meters: Sequence[MeterInfo], use: Mapping[str, float | None]
) -> list[AgencyUse]:
    """Each agency's kWh: its meters that are not submeters of another meter in the set (no double counting);
    quota attributes inherited from above (a city-wide quota)."""
    ids = {m.id for m in meters}
    total: dict[str, float] = defaultdict(float)
    for m in meters:
        if m.parent_meter in ids:
            continue
        agency = nearest(regions, m.path, "agency")
        if agency is not None:
            total[agency.id] += use.get(m.id) or 0.0
    out: list[AgencyUse] = []
    for agency_id in sorted(total):
        a = regions[agency_id]
        city = nearest(regions, a.path, "city")
        chain = attrs_chain(regions, a.path)
        attrs = {
            k: inherited(k, chain)
            for k in ("headcount", "floor_area_m2", "quota_kwh_per_capita_month", "quota_kwh_per_m2_month")
        }
        attrs["headcount"] = a.attributes.get("headcount")  # headcount and area are the agency's own
        attrs["floor_area_m2"] = a.attributes.get("floor_area_m2")
        out.append(
            AgencyUse(
                agency_id,
                a.name,
                city.id if city else None,
                city.name if city else "",
                total[agency_id],
                {k: v for k, v in attrs.items() if v is not None},
            )
        )
    return out


# --- the job ---------------------------------------------------------------------------------------------------


def _day_start(day: date) -> datetime:
    return datetime.fromtimestamp(beijing_midnight_ms(day) / 1000, UTC)


def energy_check_changes(
    engine: Engine,
    store: TelemetryStore,
    rules: RuleSet,
    known: Mapping[str, bool],
    *,
    now: datetime,
    e6_due: bool = True,
    e7_due: bool = True,
) -> list[AlertChange]:
    """E6 for yesterday (Beijing) and E7 for last month, as changes against ``known`` (each only when due)."""
    regions, meters = load_tree(engine)
    e6: dict[str, EffectiveRule] = {}
    e7: dict[str, EffectiveRule] = {}
    for m in meters:
        for rule in rules.for_device(m.id, "energy_meter", m.path):
            if rule.kind == "submeter_balance":
                e6[m.id] = rule
            elif rule.kind == "quota":
                agency = nearest(regions, m.path, "agency")
                if agency is not None:
                    e7.setdefault(agency.id, rule)
    out: list[AlertChange] = []
    today = now.astimezone(BEIJING).date()
    if e6 and e6_due:
        day = today - timedelta(days=1)
        start, end = _day_start(day), _day_start(today)
        parent_of = {m.id: m.parent_meter for m in meters if m.parent_meter is not None}
        involved = set(parent_of) | set(parent_of.values())
        use = _totals(meter_hours(store, sorted(involved), _ms(start), _ms(end)))
        paths = {m.id: m.path for m in meters}
        out += balance_changes(submeter_balance(parent_of, use), e6, paths, known, day=day, now=now)
    if e7 and e7_due:
        first = today.replace(day=1)
        prev_first = (first - timedelta(days=1)).replace(day=1)
        start, end = _day_start(prev_first), _day_start(first)
        use = _totals(meter_hours(store, [m.id for m in meters], _ms(start), _ms(end)))
        rows = quota_rows(agency_uses(regions, meters, use), month_scale(start, end))
        paths = {r.id: r.path for r in regions.values()}
        out += quota_changes(rows, e7, paths, known, month=prev_first.strftime("%Y-%m"), now=now)
    return out


def _totals(hours: Mapping[str, Mapping[int, float]]) -> dict[str, float | None]:
    return {m: (sum(h.values()) if h else None) for m, h in hours.items()}


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class EnergyChecks:
    """Runs ``energy_check_changes`` every ``interval_s`` (default hourly; E6 is judged once a day, E7 once a
    month, again after the rules changed) as a scheduler's job (``poll_once``: ``serve`` runs it on its
    apscheduler, lianfang/runtime.py) and hands the changes to ``apply`` (the alert lifecycle, e.g.
    ``AlertsRuntime.apply_platform_changes``). ``rules`` returns the current rule set."""

    def __init__(
        self,
        engine: Engine,
        store: TelemetryStore,
        rules: Callable[[], RuleSet],
        apply: Callable[[list[AlertChange]], object],
        *,
        interval_s: float = 3600.0,
        clock_fn: Callable[[], datetime] = clock.now,
    ) -> None:
        self._engine, self._store, self._rules, self._apply = engine, store, rules, apply
        self.interval_s = interval_s
        self._clock = clock_fn
        self.known: dict[str, bool] = {}
        self._judged_day: tuple[date, RuleSet] | None = None  # what was last judged, with which rules
        self._judged_month: tuple[date, RuleSet] | None = None

    def poll_once(self) -> list[AlertChange]:
        """One pass; never raises (a failure is logged and retried at the next poll)."""
        try:
            now, rules = self._clock(), self._rules()
            day = now.astimezone(BEIJING).date()
            e6_due = (day, rules) != self._judged_day  # once per day (again after a rule change)
            e7_due = (day.replace(day=1), rules) != self._judged_month
            if not e6_due and not e7_due:
                return []
            changes = energy_check_changes(
                self._engine, self._store, rules, self.known, now=now, e6_due=e6_due, e7_due=e7_due
            )
            if changes:
                self._apply(changes)
        except Exception:
            logger.exception("energy checks (E6, E7) failed")
            return []
        self._judged_day, self._judged_month = (day, rules), (day.replace(day=1), rules)
        for ch in changes:
            self.known[ch.dedup_key] = ch.firing
        return changes
