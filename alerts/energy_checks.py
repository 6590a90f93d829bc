"""E6 submeter balance and E7 quota: energy rules judged over whole days and months, not per message. The pure part.

Both need many meters at once (a parent and its children; every meter of an agency) and whole periods, so the
stream engine routes them nothing (``alerts.engine._Periodic``); ``alerts.energy_jobs.EnergyChecks`` judges them from
the telemetry store's hourly buckets of the ``energy_kwh`` counter instead, once per poll, for the last complete
Beijing day (E6) and the last complete calendar month (E7), and hands the changes to the ordinary alert lifecycle,
like the platform alerts. The energy report (reports/energy.py) uses the same functions for its balance and ranking
tables.

Everything here is pure (no I/O, ``now`` passed in): ``hourly_kwh``, ``submeter_balance``, ``quota_rows``,
``balance_changes``, ``quota_changes``, ``agency_uses``. Reading the registry and the store is in
``alerts.energy_jobs``.
"""

from __future__ import annotations

import calendar as _cal
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from alerts.calendar import BEIJING
from alerts.rules import EffectiveRule, QuotaParams, SubmeterBalanceParams
from alerts.types import AlertChange
from core.store import Bucket
from devices.region_attrs import inherited

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


# --- regions and meters ------------------------------------------------------------------------------------------


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
