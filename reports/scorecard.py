"""The region scorecard (weekly, monthly; issue 13): how a region and each of its children did, against its sibling
regions and against the previous period.

Figures, each over a region's whole subtree (docs/reports.md "Scorecard" says the same):

- **alert / incident response**: alerts raised in the period (``joint/risk_store.alert_records``, summarised by
  ``joint/stats.py``): count, time to acknowledge and to resolve (p50 / p90, minutes), still open; incidents
  likewise (acknowledged when their first department task was);
- **coverage**: enabled devices of the registry (created before the period's end) and the share of them with data
  in the period (a reading of their type's main field: ``occupancy``, ``lat``, ``energy_kwh``,
  ``temperature_c``). Read per period, so the previous period is comparable (the coverage report's "reporting"
  looks at the last data only);
- **risk**: the mean over the period's days of each day's highest risk score (``region_risk_history``; a day
  without a snapshot counts 0: the snapshotter writes hot regions only);
- **energy**: kWh per day of the main meters (no ``parent_meter`` attribute: sub-meters would count twice): each
  meter's last counter in the period minus its first, over the days between the two readings (a meter that
  reported only part of the period is not diluted; under half of the period is no figure); against the
  baseline = the previous period's kWh per day of the same meters (``vs baseline`` = 100 x this / baseline);
- **fleet**: share of working time in use = vehicles' ignition-on time inside working hours of working days
  (official calendar, make-up days included) / the working time from each vehicle's first data in the period to
  its end, over the vehicles with data in the period.

Previous period: the calendar month before when the period is a calendar month (Beijing time), else the same
length just before. Ranks: 1 is best (lowest response times, risk and energy against baseline; highest coverage
and use) among the siblings that have the figure. Pure except reading through ``source``; ``request.now`` is the
only clock (a period still running is read up to ``now``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.calendar import WorkingHours, beijing
from core.errors import UserError
from core.store import TelemetryStore
from devices.models import Device, Region
from joint.risk_store import RiskHistory, alert_records, incident_records
from joint.stats import GroupStats, Record, summarise
from reports.model import Cell, Chart, Column, Finding, Report, ReportRequest, ReportSource, Table
from reports.vehicle_stats import available_working_s, split_time

DAY_MS = 86_400_000
PRIMARY_FIELD: dict[str, str] = {
    "gate": "occupancy",
    "vehicle": "lat",
    "energy_meter": "energy_kwh",
    "sensor": "temperature_c",
}
MAX_RECORDS = 500_000  # alerts (and incidents) read per period
MAX_EVENTS = 2_000_000  # ignition events per period
MAX_RISK_POINTS = 100_000
# A meter's kWh per day counts when its first and last readings span at least this share of the period (a baseline
# from two days of a month that had no data before is no baseline).
MIN_METER_SPAN = 0.5
# Findings thresholds.
LOW_COVERAGE_PCT = 95.0
ENERGY_UP_PCT = 105.0
LOW_USE_PCT = 25.0
RISK_UP = 5.0


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def previous_period(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The calendar month before a calendar-month period (Beijing time); else the same length just before."""
    a, b = beijing(start), beijing(end)
    whole_month = (a.day, a.hour, a.minute, a.second, b.day, b.hour, b.minute, b.second) == (1, 0, 0, 0, 1, 0, 0, 0)
    if whole_month and (b.year * 12 + b.month) - (a.year * 12 + a.month) == 1:
        prev = (a - timedelta(days=1)).replace(day=1)
        return prev, a
    return start - (end - start), start


# --- per device facts -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dev:
    id: str
    type: str
    region_id: str
    chain: tuple[str, ...]  # region ids from the root to its region
    main_meter: bool = False


@dataclass(slots=True)
class DevFacts:
    reporting: bool = False
    first_ms: int | None = None  # its first reading of its type's main field in the period
    kwh_per_day: float | None = None  # main meters: counter delta / the days between the two readings
    in_use_s: float = 0.0  # vehicles: ignition-on time inside working time
    available_s: float = 0.0  # vehicles: working time of the period


def meter_delta(store: TelemetryStore, device_id: str, start_ms: int, end_ms: int) -> tuple[float, float] | None:
    """(kWh, days): the last counter (``energy_kwh``) in [start, end) minus the first, and the days between the two
    readings; None without two readings."""
    first = store.raw(device_id, "energy_kwh", start_ms, end_ms, 1)
    if not first:
        return None
    last: list[tuple[int, float]] = []
    for window in (3_600_000, DAY_MS):
        last = store.raw(device_id, "energy_kwh", max(start_ms, end_ms - window), end_ms, 10_000)
        if last:
            break
    if not last:  # the newest day with a reading, then its readings (a bucket's time is the bucket's start)
        days = (end_ms - start_ms) // DAY_MS + 2
        buckets = [
            b for b in store.aggregate(device_id, "energy_kwh", start_ms, end_ms, DAY_MS, "count", days) if b.count
        ]
        if buckets:
            day = buckets[-1].ts_ms
            last = store.raw(device_id, "energy_kwh", max(start_ms, day), min(end_ms, day + DAY_MS), 100_000)
    if not last or last[-1][0] <= first[0][0]:
        return None
    return max(0.0, last[-1][1] - first[0][1]), (last[-1][0] - first[0][0]) / DAY_MS


def ignition_intervals(
    events: Iterable[tuple[str, int, str]], start_ms: int, end_ms: int
) -> dict[str, list[tuple[int, int]]]:
    """(device, ts, ignition_on|ignition_off) in any order -> per device the [on, off) intervals inside the period
    (an ``off`` first means on since the start; an ``on`` last means on until the end)."""
    by_dev: dict[str, list[tuple[int, str]]] = {}
    for dev, ts, kind in events:
        by_dev.setdefault(dev, []).append((ts, kind))
    out: dict[str, list[tuple[int, int]]] = {}
    for dev, evs in by_dev.items():
        evs.sort()
        on: int | None = start_ms if evs[0][1] == "ignition_off" else None
        spans: list[tuple[int, int]] = []
        for ts, kind in evs:
            if kind == "ignition_on":
                on = ts if on is None else on
            elif on is not None:
                spans.append((max(on, start_ms), min(ts, end_ms)))
                on = None
        if on is not None:
            spans.append((max(on, start_ms), end_ms))
        out[dev] = [(a, b) for a, b in spans if b > a]
    return out


def device_facts(
    source: ReportSource,
    devices: Sequence[Dev],
    start: datetime,
    end: datetime,
    hours: WorkingHours,
) -> dict[str, DevFacts]:
    """What each device did in [start, end) (``end`` already clamped to ``now``)."""
    store, calendar = source.telemetry, source.calendar
    start_ms, end_ms = _ms(start), _ms(end)
    out = {d.id: DevFacts() for d in devices}
    if end_ms <= start_ms:
        return out
    for d in devices:
        f = out[d.id]
        fld = PRIMARY_FIELD.get(d.type)
        first = store.raw(d.id, fld, start_ms, end_ms, 1) if fld is not None else []
        f.reporting = bool(first)
        f.first_ms = first[0][0] if first else None
        if d.main_meter and f.reporting:
            delta = meter_delta(store, d.id, start_ms, end_ms)
            if delta is not None and delta[1] >= MIN_METER_SPAN * (end_ms - start_ms) / DAY_MS:
                f.kwh_per_day = delta[0] / delta[1]
    vehicles = [d for d in devices if d.type == "vehicle"]
    if vehicles:
        events = store.events([v.id for v in vehicles], start_ms, end_ms, ["ignition_on", "ignition_off"], MAX_EVENTS)
        spans = ignition_intervals(((e.device_id, e.ts_ms, e.type) for e in events), start_ms, end_ms)
        available: dict[tuple[tuple[str, ...], int], float] = {}
        for v in vehicles:
            # observed from its first data in the period (a vehicle whose history starts late is not idle before)
            since = max(start_ms, out[v.id].first_ms or end_ms)
            if (v.chain, since) not in available:
                available[(v.chain, since)] = available_working_s(since, end_ms, calendar, hours, v.chain)[0]
            f = out[v.id]
            f.available_s = available[(v.chain, since)]
            f.in_use_s = sum(
                (b - a) / 1000
                for s, e in spans.get(v.id, [])
                for a, b, _cell, cls, _hol in split_time(s, e, calendar, hours, v.chain)
                if cls == "working"
            )
    return out


# --- per region figures ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """One region's subtree in one period."""

    alerts: GroupStats = field(default_factory=lambda: GroupStats("alerts"))
    incidents: GroupStats = field(default_factory=lambda: GroupStats("incidents"))
    expected: int = 0
    reporting: int = 0
    risk: float | None = None
    kwh_per_day: float = 0.0
    meters: int = 0
    vehicles: int = 0
    in_use_s: float = 0.0
    available_s: float = 0.0

    @property
    def coverage_pct(self) -> float | None:
        return None if self.expected == 0 else 100.0 * self.reporting / self.expected

    @property
    def use_pct(self) -> float | None:
        return None if self.available_s <= 0 else 100.0 * self.in_use_s / self.available_s


def _minutes(g: GroupStats, which: str, q: str) -> float | None:
    d = g.tta if which == "tta" else g.ttr
    if d is None:
        return None
    return (d.p50_s if q == "p50" else d.p90_s) / 60.0


def by_unit(
    records: Iterable[Record], units: Iterable[str], chains: Mapping[str, tuple[str, ...]]
) -> dict[str, GroupStats]:
    """``joint.stats.summarise`` of the records per unit: the unit on the chain of the record's region (units are
    disjoint subtrees); records outside every unit are left out."""
    wanted = set(units)
    keyed = []
    for r in records:
        unit = next((u for u in chains.get(r.keys.get("region", ""), ()) if u in wanted), None)
        if unit is not None:
            keyed.append(Record({"unit": unit}, r.raised_at, r.acknowledged_at, r.resolved_at))
    groups, _ = summarise(keyed, "unit")
    return {g.key: g for g in groups}


def daily_peaks(points: Iterable[tuple[datetime, float]], start: datetime, end: datetime) -> list[float]:
    """Each Beijing day of [start, end): the highest score of its points, 0 without any."""
    first = beijing(start).date()
    days = max(1, math.ceil((end - start).total_seconds() / 86_400))
    peaks = [0.0] * days
    for at, score in points:
        k = (beijing(at).date() - first).days
        if 0 <= k < days:
            peaks[k] = max(peaks[k], score)
    return peaks


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime  # exclusive; the data end is min(end, now)
    data_end: datetime


def figures(
    units: Sequence[str],
    devices: Sequence[Dev],
    facts: Mapping[str, DevFacts],
    alerts: Mapping[str, GroupStats],
    incidents: Mapping[str, GroupStats],
    risk: Mapping[str, float | None],
) -> dict[str, Figures]:
    """Per unit: its devices' facts summed over its subtree, with its alert, incident and risk figures."""
    out = {u: Figures() for u in units}
    for u in units:
        fig = out[u]
        fig.alerts = alerts.get(u, GroupStats(u))
        fig.incidents = incidents.get(u, GroupStats(u))
        fig.risk = risk.get(u)
    for d in devices:
        f = facts[d.id]
        for u in d.chain:
            fig_u = out.get(u)
            if fig_u is None:
                continue
            fig_u.expected += 1
            fig_u.reporting += f.reporting
            if f.kwh_per_day is not None:
                fig_u.kwh_per_day += f.kwh_per_day
                fig_u.meters += 1
            if d.type == "vehicle" and f.reporting:  # a vehicle with no data says nothing about its use
                fig_u.vehicles += 1
                fig_u.in_use_s += f.in_use_s
                fig_u.available_s += f.available_s
    return out


def energy_vs_baseline(
    devices: Sequence[Dev], units: Sequence[str], cur: Mapping[str, DevFacts], prev: Mapping[str, DevFacts]
) -> dict[str, float | None]:
    """Per unit: 100 x kWh per day this period / kWh per day of the previous period, over the main meters that
    have both (None when there is no baseline)."""
    now: dict[str, float] = dict.fromkeys(units, 0.0)
    base: dict[str, float] = dict.fromkeys(units, 0.0)
    for d in devices:
        a, b = cur[d.id].kwh_per_day, prev[d.id].kwh_per_day
        if a is None or b is None:
            continue
        for u in d.chain:
            if u in now:
                now[u] += a
                base[u] += b
    out: dict[str, float | None] = {}
    for u in units:
        out[u] = None if base[u] <= 0 else 100.0 * now[u] / base[u]
    return out


def ranks(values: Mapping[str, float | None], *, higher_is_better: bool) -> dict[str, int | None]:
    """1 = best; equal values share a rank; None values get no rank."""
    have = sorted((v if not higher_is_better else -v, k) for k, v in values.items() if v is not None)
    out: dict[str, int | None] = dict.fromkeys(values)
    prev_v: float | None = None
    rank = 0
    for i, (v, k) in enumerate(have, 1):
        if prev_v is None or v != prev_v:
            rank, prev_v = i, v
        out[k] = rank
    return out


# --- reading ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tree:
    target: Region
    regions: dict[str, Region]
    chains: dict[str, tuple[str, ...]]
    children: list[str]
    siblings: list[str]  # the target's parent's children (the target included); [target] at the root
    scope: str  # the parent, or the target at the root


def read_tree(s: Session, region_id: str) -> Tree:
    target = s.get(Region, region_id)
    if target is None:
        raise UserError(f"region {region_id!r} does not exist")
    regions = {r.id: r for r in s.scalars(select(Region))}
    chains = {r.id: tuple(p for p in r.path.split("/") if p) for r in regions.values()}
    children = sorted(r.id for r in regions.values() if r.parent_id == target.id)
    if target.parent_id is not None and target.parent_id in regions:
        siblings = sorted(r.id for r in regions.values() if r.parent_id == target.parent_id)
        scope = target.parent_id
    else:
        siblings, scope = [target.id], target.id
    return Tree(target, regions, chains, children, siblings, scope)


def read_devices(s: Session, tree: Tree, end: datetime) -> list[Dev]:
    scope_path = tree.regions[tree.scope].path
    ids = [rid for rid, r in tree.regions.items() if r.path.startswith(scope_path)]
    q = select(Device.id, Device.type, Device.region_id, Device.attributes, Device.created_at).where(
        Device.region_id.in_(ids), Device.enabled.is_(True)
    )
    out = []
    for dev_id, dtype, rid, attrs, created in s.execute(q.order_by(Device.id)).all():
        if created is not None and (created if created.tzinfo else created.replace(tzinfo=UTC)) >= end:
            continue
        main = dtype == "energy_meter" and not (attrs or {}).get("parent_meter")
        out.append(Dev(dev_id, dtype, rid, tree.chains[rid], main))
    return out


@dataclass(slots=True)
class PeriodData:
    period: Period
    facts: dict[str, DevFacts]
    alerts: list[Record]
    incidents: list[Record]
    risk_series: dict[str, list[float]]  # unit -> daily peaks
    truncated: bool = False


def read_period(
    source: ReportSource, tree: Tree, devices: Sequence[Dev], units: Sequence[str], period: Period, hours: WorkingHours
) -> PeriodData:
    engine = source.engine
    a, b = period.start, period.data_end
    facts = device_facts(source, devices, a, b, hours)
    alerts, cut_a = alert_records(engine, a, b, within=tree.scope, limit=MAX_RECORDS)
    incidents, cut_i = incident_records(engine, a, b, within=tree.scope, limit=MAX_RECORDS)
    history = RiskHistory(engine)
    series: dict[str, list[float]] = {}
    cut_r = False
    for u in units:
        points, cut = history.series(u, a, b, limit=MAX_RISK_POINTS)
        cut_r |= cut
        series[u] = daily_peaks(((p.at, p.score) for p in points), a, b)
    return PeriodData(period, facts, alerts, incidents, series, cut_a or cut_i or cut_r)


def period_figures(data: PeriodData, tree: Tree, devices: Sequence[Dev], units: Sequence[str]) -> dict[str, Figures]:
    alerts = {**by_unit(data.alerts, tree.siblings, tree.chains), **by_unit(data.alerts, tree.children, tree.chains)}
    incidents = {
        **by_unit(data.incidents, tree.siblings, tree.chains),
        **by_unit(data.incidents, tree.children, tree.chains),
    }
    risk = {u: (sum(s) / len(s) if s else None) for u, s in data.risk_series.items()}
    return figures(units, devices, data.facts, alerts, incidents, risk)


# --- the report ------------------------------------------------------------------------------------------------


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _delta(a: float | None, b: float | None, nd: int = 1) -> float | None:
    return None if a is None or b is None else round(a - b, nd)


METRICS: tuple[tuple[str, str, str, str | None, bool], ...] = (
    # key, zh, en, unit, higher is better
    ("alerts", "告警数", "Alerts", None, False),
    ("alert_tta_p50", "告警确认用时中位数", "Alert time to acknowledge p50", "min", False),
    ("alert_tta_p90", "告警确认用时P90", "Alert time to acknowledge p90", "min", False),
    ("alert_ttr_p50", "告警处置用时中位数", "Alert time to resolve p50", "min", False),
    ("alert_ttr_p90", "告警处置用时P90", "Alert time to resolve p90", "min", False),
    ("alerts_open", "未处置告警", "Alerts still open", None, False),
    ("incidents", "事件数", "Incidents", None, False),
    ("incident_tta_p50", "事件响应用时中位数", "Incident time to acknowledge p50", "min", False),
    ("incident_ttr_p50", "事件处置用时中位数", "Incident time to resolve p50", "min", False),
    ("expected", "应报设备", "Devices expected", None, True),
    ("coverage_pct", "数据覆盖率", "Coverage", "%", True),
    ("risk", "日均风险峰值", "Risk (mean daily peak)", None, False),
    ("kwh_per_day", "日均用电", "Energy per day", "kWh", False),
    ("energy_vs_baseline_pct", "用电对比基线", "Energy vs baseline", "%", False),
    ("use_pct", "公务车工作时间使用率", "Vehicles: share of working time in use", "%", True),
)
METRIC_NAMES = {k: (zh, en) for k, zh, en, _u, _h in METRICS}
HIGHER_BETTER = {k: h for k, _zh, _en, _u, h in METRICS}
RANKED = ("alert_tta_p50", "alert_ttr_p50", "coverage_pct", "risk", "energy_vs_baseline_pct", "use_pct")


def metric_values(fig: Figures, vs_baseline: float | None) -> dict[str, float | None]:
    return {
        "alerts": float(fig.alerts.count),
        "alert_tta_p50": _r(_minutes(fig.alerts, "tta", "p50")),
        "alert_tta_p90": _r(_minutes(fig.alerts, "tta", "p90")),
        "alert_ttr_p50": _r(_minutes(fig.alerts, "ttr", "p50")),
        "alert_ttr_p90": _r(_minutes(fig.alerts, "ttr", "p90")),
        "alerts_open": float(fig.alerts.open),
        "incidents": float(fig.incidents.count),
        "incident_tta_p50": _r(_minutes(fig.incidents, "tta", "p50")),
        "incident_ttr_p50": _r(_minutes(fig.incidents, "ttr", "p50")),
        "expected": float(fig.expected),
        "coverage_pct": _r(fig.coverage_pct),
        "risk": _r(fig.risk, 2),
        "kwh_per_day": _r(fig.kwh_per_day) if fig.meters else None,
        "energy_vs_baseline_pct": _r(vs_baseline),
        "use_pct": _r(fig.use_pct),
    }


def _cell(v: float | None) -> Cell:
    if v is None:
        return None
    return int(v) if float(v).is_integer() and abs(v) < 1e15 else v


@dataclass(frozen=True, slots=True)
class Scores:
    """Every unit's metric values in the current and the previous period."""

    cur: dict[str, dict[str, float | None]]
    prev: dict[str, dict[str, float | None]]


def compute_scores(
    tree: Tree,
    devices: Sequence[Dev],
    units: Sequence[str],
    cur: PeriodData,
    prev: PeriodData,
    prev2: PeriodData | None,
) -> Scores:
    """``prev2``: the period before the previous one (the previous period's own baseline), when read."""
    fc, fp = period_figures(cur, tree, devices, units), period_figures(prev, tree, devices, units)
    vc = energy_vs_baseline(devices, units, cur.facts, prev.facts)
    vp: Mapping[str, float | None] = (
        energy_vs_baseline(devices, units, prev.facts, prev2.facts) if prev2 is not None else dict.fromkeys(units)
    )
    return Scores(
        {u: metric_values(fc[u], vc[u]) for u in units},
        {u: metric_values(fp[u], vp[u]) for u in units},
    )


def _columns(ranked: bool) -> tuple[Column, ...]:
    cols = [Column("region", "地区", "Region")]
    for k, zh, en, unit, _h in METRICS:
        cols.append(Column(k, zh, en, unit))
        if ranked and k in RANKED:
            cols.append(Column(f"rank_{k}", f"{zh}排名", f"{en}: rank"))
    return tuple(cols)


def _row(
    name: str, values: Mapping[str, float | None], rank: Mapping[str, Mapping[str, int | None]] | None, u: str
) -> dict[str, Cell]:
    row: dict[str, Cell] = {"region": name}
    for k, *_ in METRICS:
        row[k] = _cell(values[k])
        if rank is not None and k in RANKED:
            row[f"rank_{k}"] = rank[k][u]
    return row


def _fmt(v: float | None, unit: str | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    return text + ("%" if unit == "%" else f" {unit}" if unit else "")


def findings(tree: Tree, scores: Scores, rank: Mapping[str, Mapping[str, int | None]]) -> list[Finding]:
    """Sentences with the numbers behind them: response against the previous period and the siblings, coverage,
    risk, energy and fleet use, and the weakest child for each."""
    t = tree.target.id
    name = tree.target.name
    cur, prev = scores.cur[t], scores.prev[t]
    n_sib = len(tree.siblings)
    out: list[Finding] = []

    def names(u: str) -> str:
        return tree.regions[u].name

    a, b = cur["alert_ttr_p50"], prev["alert_ttr_p50"]
    if cur["alerts"]:
        r = rank["alert_ttr_p50"].get(t)
        where_zh = f"，在{n_sib}个同级地区中排第{r}" if r is not None and n_sib > 1 else ""
        where_en = f", rank {r} of {n_sib} sibling regions" if r is not None and n_sib > 1 else ""
        out.append(
            Finding(
                "response",
                f"{name}本期告警{_fmt(cur['alerts'])}条，确认用时中位数{_fmt(cur['alert_tta_p50'], '分钟')}，"
                f"处置用时中位数{_fmt(a, '分钟')}（上期{_fmt(b, '分钟')}）{where_zh}；"
                f"未处置{_fmt(cur['alerts_open'])}条。",
                f"{name}: {_fmt(cur['alerts'])} alerts this period, time to acknowledge p50 "
                f"{_fmt(cur['alert_tta_p50'], 'min')}, time to resolve p50 {_fmt(a, 'min')} (previous period "
                f"{_fmt(b, 'min')}){where_en}; {_fmt(cur['alerts_open'])} still open.",
                {
                    "alerts": _cell(cur["alerts"]),
                    "tta_p50_min": _cell(cur["alert_tta_p50"]),
                    "ttr_p50_min": _cell(a),
                    "ttr_p50_min_previous": _cell(b),
                    "rank": r,
                    "siblings": n_sib,
                },
            )
        )
    slow = [(scores.cur[c]["alert_ttr_p50"], c) for c in tree.children if scores.cur[c]["alert_ttr_p50"] is not None]
    if len(slow) > 1:
        v, c = max(slow, key=lambda x: (x[0] or 0.0, x[1]))
        out.append(
            Finding(
                "slowest_child",
                f"下级地区中{names(c)}告警处置最慢：处置用时中位数{_fmt(v, '分钟')}。",
                f"Among the children, {names(c)} resolves alerts slowest: p50 {_fmt(v, 'min')}.",
                {"region": c, "ttr_p50_min": _cell(v)},
            )
        )
    cov = cur["coverage_pct"]
    if cov is not None and cov < LOW_COVERAGE_PCT:
        worst = sorted(
            ((scores.cur[c]["coverage_pct"], c) for c in tree.children if scores.cur[c]["coverage_pct"] is not None),
            key=lambda x: (x[0] or 0.0, x[1]),
        )
        w_zh = f"，最低为{names(worst[0][1])}（{_fmt(worst[0][0], '%')}）" if worst else ""
        w_en = f"; lowest {names(worst[0][1])} ({_fmt(worst[0][0], '%')})" if worst else ""
        out.append(
            Finding(
                "coverage",
                f"数据覆盖率{_fmt(cov, '%')}（应报设备{_fmt(cur['expected'])}台，"
                f"上期{_fmt(prev['coverage_pct'], '%')}）{w_zh}。",
                f"Coverage {_fmt(cov, '%')} of {_fmt(cur['expected'])} expected devices (previous period "
                f"{_fmt(prev['coverage_pct'], '%')}){w_en}.",
                {"coverage_pct": cov, "expected": _cell(cur["expected"]), "previous_pct": prev["coverage_pct"]},
            )
        )
    rc, rp = cur["risk"], prev["risk"]
    if rc is not None and rp is not None and rc - rp >= RISK_UP:
        out.append(
            Finding(
                "risk_up",
                f"风险上升：日均风险峰值{_fmt(rc)}，上期{_fmt(rp)}。",
                f"Risk is rising: mean daily peak {_fmt(rc)}, previous period {_fmt(rp)}.",
                {"risk": rc, "previous": rp},
            )
        )
    e = cur["energy_vs_baseline_pct"]
    if e is not None and e >= ENERGY_UP_PCT:
        out.append(
            Finding(
                "energy_up",
                f"日均用电{_fmt(cur['kwh_per_day'], 'kWh')}，为基线（上期日均）的{_fmt(e, '%')}。",
                f"Energy {_fmt(cur['kwh_per_day'], 'kWh')} per day, {_fmt(e, '%')} of the baseline (the previous "
                "period per day).",
                {"kwh_per_day": cur["kwh_per_day"], "vs_baseline_pct": e},
            )
        )
    use = cur["use_pct"]
    if use is not None and use < LOW_USE_PCT:
        out.append(
            Finding(
                "fleet_low_use",
                f"公务车工作时间使用率仅{_fmt(use, '%')}（上期{_fmt(prev['use_pct'], '%')}），可考虑调剂或减少车辆。",
                f"Official vehicles are in use only {_fmt(use, '%')} of working time (previous period "
                f"{_fmt(prev['use_pct'], '%')}): consider reallocating or retiring vehicles.",
                {"use_pct": use, "previous_pct": prev["use_pct"]},
            )
        )
    return out


UNITS_ZH = {"min": "分钟", "%": "%", "kWh": "kWh"}
METRIC_UNITS = {k: u for k, _zh, _en, u, _h in METRICS}


def _with_unit(key: str) -> tuple[str, str]:
    """The metric's (zh, en) label with its unit: "告警处置用时中位数（分钟）"."""
    zh, en = METRIC_NAMES[key]
    unit = METRIC_UNITS[key]
    return (zh, en) if unit is None else (f"{zh}（{UNITS_ZH.get(unit, unit)}）", f"{en} ({unit})")


SUMMARY_KEYS = (
    "alerts",
    "alert_tta_p50",
    "alert_ttr_p50",
    "incidents",
    "coverage_pct",
    "risk",
    "energy_vs_baseline_pct",
    "use_pct",
)


def build(source: ReportSource, request: ReportRequest) -> Report:
    try:
        hours = WorkingHours.parse(str(request.options.get("working_hours", "08:30-17:30")))
    except ValueError as exc:
        raise UserError(f"option working_hours: {exc} (HH:MM-HH:MM)") from exc
    now = request.now
    with Session(source.engine) as s:
        tree = read_tree(s, request.region_id)
        devices = read_devices(s, tree, request.end)
    units = sorted({tree.target.id, *tree.children, *tree.siblings})

    def period(a: datetime, b: datetime) -> Period:
        return Period(a, b, max(a, min(b, now)))

    p_cur = period(request.start, request.end)
    p_prev = period(*previous_period(request.start, request.end))
    p_prev2 = period(*previous_period(p_prev.start, p_prev.end))

    def read(p: Period) -> PeriodData:
        return read_period(source, tree, devices, units, p, hours)

    cur, prev = read(p_cur), read(p_prev)
    # the previous period's energy baseline needs the meters of the period before it (two reads per meter)
    prev2 = PeriodData(
        p_prev2,
        device_facts(source, [d for d in devices if d.main_meter], p_prev2.start, p_prev2.data_end, hours),
        [],
        [],
        {},
    )
    prev2.facts = {d.id: prev2.facts.get(d.id, DevFacts()) for d in devices}
    scores = compute_scores(tree, devices, units, cur, prev, prev2)
    rank = {k: ranks({u: scores.cur[u][k] for u in tree.siblings}, higher_is_better=HIGHER_BETTER[k]) for k in RANKED}
    t = tree.target.id
    name = tree.target.name
    rows_regions = tuple(
        _row(name if u == t else tree.regions[u].name, scores.cur[u], None, u) for u in [t, *tree.children]
    )
    rows_siblings = tuple(_row(tree.regions[u].name, scores.cur[u], rank, u) for u in tree.siblings)
    prev_rows = tuple(
        {
            "metric": METRIC_NAMES[k][0] + " / " + METRIC_NAMES[k][1],
            "current": _cell(scores.cur[t][k]),
            "previous": _cell(scores.prev[t][k]),
            "delta": _cell(_delta(scores.cur[t][k], scores.prev[t][k], 2)),
        }
        for k, *_ in METRICS
    )
    first_day = beijing(p_cur.start).date()
    days = len(cur.risk_series.get(t, []))
    x = tuple((first_day + timedelta(days=k)).strftime("%m-%d") for k in range(days))
    charts = (
        Chart(
            "risk_trend",
            "风险趋势（日峰值）",
            "Risk trend (daily peak)",
            "line",
            x,
            {tree.regions[u].name: tuple(cur.risk_series.get(u, [0.0] * days)) for u in [t, *tree.children]},
        ),
        Chart(
            "coverage",
            "各下级地区数据覆盖率",
            "Coverage per child region",
            "bar",
            tuple(tree.regions[c].name for c in tree.children),
            {"覆盖率 / coverage": tuple(scores.cur[c]["coverage_pct"] or 0.0 for c in tree.children)},
            "%",
        ),
    )
    summary: dict[str, Cell] = {k: _cell(scores.cur[t][k]) for k in SUMMARY_KEYS}
    summary["siblings"] = len(tree.siblings)
    summary["rank_alert_ttr_p50"] = rank["alert_ttr_p50"].get(t)
    summary["rank_coverage_pct"] = rank["coverage_pct"].get(t)
    summary["truncated"] = cur.truncated or prev.truncated
    labels = {k: _with_unit(k) for k in SUMMARY_KEYS}
    labels.update(
        siblings=("同级地区数", "Sibling regions"),
        rank_alert_ttr_p50=("处置用时同级排名", "Rank: time to resolve"),
        rank_coverage_pct=("覆盖率同级排名", "Rank: coverage"),
        truncated=("数据截断", "Truncated"),
    )
    prev_cols = (
        Column("metric", "指标", "Metric"),
        Column("current", "本期", "This period"),
        Column("previous", "上期", "Previous period"),
        Column("delta", "变化", "Change"),
    )
    return Report(
        kind="scorecard",
        region_id=t,
        region_name=name,
        start=request.start,
        end=request.end,
        generated_at=now,
        title_zh=f"{name}综合评分卡",
        title_en=f"{name}: region scorecard",
        summary=summary,
        summary_labels=labels,
        tables=(
            Table("regions", "本地区及下级地区", "This region and its children", _columns(False), rows_regions),
            Table(
                "siblings",
                "同级地区对比与排名",
                "Against sibling regions (rank 1 = best)",
                _columns(True),
                rows_siblings,
            ),
            Table("previous", "与上期对比", "Against the previous period", prev_cols, prev_rows),
        ),
        charts=charts,
        findings=tuple(findings(tree, scores, rank)),
    )
