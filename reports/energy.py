"""The energy report: per building, actual use against the learned baseline, estimated waste in kWh and yuan, the
E7 quota ranking of agencies within their city and the E6 submeter balance, with findings in zh-CN and English.

Data: hourly buckets of each meter's ``energy_kwh`` counter (``alerts.energy_jobs.meter_hours``: one aggregate
query per meter, never raw points), over the period and ``baseline_days`` (default 28) before it.

- A building's use is the sum of its meters that are not submeters of another meter in the report
  (``parent_meter`` device attribute): a parent and its children are not counted twice.
- Baseline: the mean use of the same hour of the week on the same class of day (working / non-working, from the
  official calendar with its make-up working days and the region's own days) over the history; where that bin
  has fewer than 2 samples, the mean of the same hour of day over all days of the class (a make-up working
  Sunday gets the working-day profile, a public holiday on a Friday the non-working one). The same bins as the
  E1 rule (``alerts.engine.bin_expected``), as exact means.
- Waste: an hour whose use exceeds its baseline by more than ``tolerance`` (default 10 %) wastes its whole excess
  over the baseline: night base load for hours 00:00-05:00, non-working-day load for the other hours of
  non-working days, spikes for the other hours of working days.
- Yuan: each hour's kWh at the tariff price of its (Beijing) hour, the tariff inherited down the region tree
  (``devices.region_attrs``); minute-weighted where a time-of-use period changes inside an hour.
- Quota (E7): an agency's use per person and per m2 against its monthly quotas scaled to the period (days of the
  period / days of the month it starts in), ranked within its city by the larger ratio.
- Submeter balance (E6): each parent's use over the period against the sum of its children's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from alerts.calendar import BEIJING, Calendar
from alerts.energy_checks import (
    Balance,
    MeterInfo,
    QuotaRow,
    RegionInfo,
    agency_uses,
    attrs_chain,
    month_scale,
    nearest,
    quota_rows,
    submeter_balance,
)
from alerts.energy_jobs import load_tree, meter_hours
from alerts.engine import bin_expected, bin_learn
from core.errors import UserError
from devices.region_attrs import Tariff, inherited
from reports.model import Cell, Chart, Column, Finding, Report, ReportRequest, ReportSource, Table

NIGHT_END_HOUR = 5  # 00:00-05:00 is the night of the night base load
WORK_HOURS = (8, 18)  # [start, end) hour of the working-hours mean the night base load is compared with
MIN_BIN_SAMPLES = 2
DEFAULTS: dict[str, float] = {
    "baseline_days": 28,
    "tolerance": 0.10,
    "balance_tolerance": 0.08,
    "night_share_limit": 0.40,
}
LIMITS: dict[str, tuple[float, float]] = {
    "baseline_days": (7, 365),
    "tolerance": (0, 10),
    "balance_tolerance": (0, 1),
    "night_share_limit": (0, 2),
}


@dataclass(slots=True)
class BuildingFigures:
    id: str
    name: str
    meters: int = 0
    actual_kwh: float = 0.0
    expected_kwh: float = 0.0  # over the hours that have a baseline
    judged_kwh: float = 0.0  # actual over those same hours
    night_kwh: float = 0.0
    non_working_kwh: float = 0.0
    spike_kwh: float = 0.0
    waste_yuan: float | None = None
    cost_yuan: float | None = None
    night_share: float | None = None  # mean night (00:00-05:00) load / mean working-hours load
    night_excess_kwh: float = 0.0  # night use above night_share_limit x the working-hours mean
    night_excess_yuan: float | None = None
    daily: dict[str, list[float]] = field(default_factory=dict)  # local date -> [actual, expected]

    @property
    def waste_kwh(self) -> float:
        return self.night_kwh + self.non_working_kwh + self.spike_kwh

    @property
    def deviation(self) -> float | None:
        return None if self.expected_kwh <= 0 else (self.judged_kwh - self.expected_kwh) / self.expected_kwh


def _options(request: ReportRequest) -> dict[str, float]:
    out = dict(DEFAULTS)
    for key, value in request.options.items():
        if key not in DEFAULTS:
            continue
        lo, hi = LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise UserError(f"energy report option {key}: {value!r} must be a number in {lo:g}..{hi:g}")
        out[key] = float(value)
    return out


class _Hours:
    """Calendar facts of an hour (epoch ms) for a region path: (working day?, hour of week, hour of day, date).
    The local time of each hour is computed once for all buildings; the working day once per (date, path)."""

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar
        self._local: dict[int, tuple[int, int, date]] = {}
        self._working: dict[tuple[date, tuple[str, ...]], bool] = {}

    def __call__(self, t: int, path: tuple[str, ...]) -> tuple[bool, int, int, date]:
        local = self._local.get(t)
        if local is None:
            at = datetime.fromtimestamp(t / 1000, UTC).astimezone(BEIJING)
            local = self._local[t] = (at.weekday() * 24 + at.hour, at.hour, at.date())
        how, hour, day = local
        key = (day, path)
        working = self._working.get(key)
        if working is None:
            working = self._working[key] = self.calendar.is_working_day(day, path)
        return working, how, hour, day


def build(source: ReportSource, request: ReportRequest) -> Report:
    opts = _options(request)
    regions, meters = load_tree(source.engine, request.region_id)
    root = regions.get(request.region_id)
    if root is None:
        raise UserError(f"no region {request.region_id!r}")
    start_ms, end_ms = _ms(request.start), _ms(request.end)
    hist_ms = _ms(request.start - timedelta(days=opts["baseline_days"]))
    hours = meter_hours(source.telemetry, [m.id for m in meters], hist_ms, end_ms)
    cal = _Hours(source.calendar)

    ids = {m.id for m in meters}
    by_building: dict[str, list[MeterInfo]] = defaultdict(list)
    for m in meters:
        if m.parent_meter not in ids:
            b = nearest(regions, m.path, "building")
            by_building[b.id if b is not None else m.region_id].append(m)
    buildings = [
        _building(regions, bid, ms_, hours, cal, start_ms, end_ms, opts) for bid, ms_ in sorted(by_building.items())
    ]
    period_use: dict[str, float | None] = {}
    for m in meters:
        inside = [v for t, v in hours.get(m.id, {}).items() if start_ms <= t < end_ms]
        period_use[m.id] = sum(inside) if inside else None
    balances = submeter_balance({m.id: m.parent_meter for m in meters if m.parent_meter in ids}, period_use)
    # only agencies wholly inside the report's region: a building's report has no agency total to rank
    agencies = [a for a in agency_uses(regions, meters, period_use) if root.id in regions[a.agency_id].path]
    quotas = quota_rows(agencies, month_scale(request.start, request.end))
    return _report(request, root, buildings, quotas, balances, opts)


def _building(
    regions: Mapping[str, RegionInfo],
    bid: str,
    meters: Sequence[MeterInfo],
    hours: Mapping[str, Mapping[int, float]],
    cal: _Hours,
    start_ms: int,
    end_ms: int,
    opts: Mapping[str, float],
) -> BuildingFigures:
    region = regions.get(bid)
    path = region.path if region is not None else meters[0].path
    fig = BuildingFigures(bid, region.name if region is not None else bid, len(meters))
    total: dict[int, float] = defaultdict(float)
    for m in meters:
        for t, v in hours.get(m.id, {}).items():
            total[t] += v
    bins: dict[str, list[float]] = {}
    for t in sorted(t for t in total if t < start_ms):
        working, how, _, _ = cal(t, path)
        bin_learn(bins, working, how, total[t], 0.0)  # alpha 0: the exact mean
    tariff = tariff_for(regions, path)
    prices = Tariff.of(tariff).hourly_prices() if tariff is not None else None
    waste_yuan = cost_yuan = 0.0
    tol = opts["tolerance"]
    period = sorted(t for t in total if start_ms <= t < end_ms)
    nights: list[tuple[float, float]] = []  # (kWh, price) of the night hours
    work_sum = work_n = 0.0
    for t in period:
        x = total[t]
        working, how, hour, day = cal(t, path)
        price = prices[hour] if prices is not None else 0.0
        if hour < NIGHT_END_HOUR:
            nights.append((x, price))
        elif working and WORK_HOURS[0] <= hour < WORK_HOURS[1]:
            work_sum += x
            work_n += 1
        fig.actual_kwh += x
        cost_yuan += x * price
        day_row = fig.daily.setdefault(day.isoformat(), [0.0, 0.0])
        day_row[0] += x
        expected = bin_expected(bins, working, how, MIN_BIN_SAMPLES)
        if expected is None:
            continue
        day_row[1] += expected
        fig.expected_kwh += expected
        fig.judged_kwh += x
        if x <= expected * (1 + tol):
            continue
        excess = x - expected
        waste_yuan += excess * price
        if hour < NIGHT_END_HOUR:
            fig.night_kwh += excess
        elif not working:
            fig.non_working_kwh += excess
        else:
            fig.spike_kwh += excess
    excess_yuan = 0.0
    if work_n and nights and work_sum > 0:
        work_mean = work_sum / work_n
        fig.night_share = sum(x for x, _ in nights) / len(nights) / work_mean
        floor = opts["night_share_limit"] * work_mean
        for x, price in nights:
            if x > floor:
                fig.night_excess_kwh += x - floor
                excess_yuan += (x - floor) * price
    if prices is not None:
        fig.waste_yuan, fig.cost_yuan, fig.night_excess_yuan = waste_yuan, cost_yuan, excess_yuan
    return fig


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def _report(
    request: ReportRequest,
    root: RegionInfo,
    buildings: Sequence[BuildingFigures],
    quotas: Sequence[QuotaRow],
    balances: Sequence[Balance],
    opts: Mapping[str, float],
) -> Report:
    actual = sum(b.actual_kwh for b in buildings)
    expected = sum(b.expected_kwh for b in buildings)
    waste = sum(b.waste_kwh for b in buildings)
    priced = [b for b in buildings if b.waste_yuan is not None]
    summary: dict[str, Cell] = {
        "buildings": len(buildings),
        "meters": sum(b.meters for b in buildings),
        "actual_kwh": _r(actual),
        "expected_kwh": _r(expected),
        "waste_kwh": _r(waste),
        "waste_yuan": _r(sum(b.waste_yuan or 0.0 for b in priced), 2) if priced else None,
        "cost_yuan": _r(sum(b.cost_yuan or 0.0 for b in priced), 2) if priced else None,
        "over_quota": sum(1 for q in quotas if q.over()),
        "imbalanced": sum(1 for b in balances if _imbalanced(b, opts)),
    }
    labels = {
        "buildings": ("楼宇数", "Buildings"),
        "meters": ("计量电表数", "Meters counted"),
        "actual_kwh": ("实际用电 (kWh)", "Actual use (kWh)"),
        "expected_kwh": ("基线用电 (kWh)", "Baseline use (kWh)"),
        "waste_kwh": ("估计浪费 (kWh)", "Estimated waste (kWh)"),
        "waste_yuan": ("估计浪费 (元)", "Estimated waste (yuan)"),
        "cost_yuan": ("电费 (元)", "Energy cost (yuan)"),
        "over_quota": ("超定额单位数", "Agencies over quota"),
        "imbalanced": ("分表不平衡总表数", "Unbalanced parent meters"),
    }
    return Report(
        kind="energy",
        region_id=root.id,
        region_name=root.name,
        start=request.start,
        end=request.end,
        generated_at=request.now,
        title_zh=f"{root.name}能耗分析报告",
        title_en=f"Energy report: {root.name}",
        summary=summary,
        summary_labels=labels,
        tables=(_building_table(buildings), _quota_table(quotas), _balance_table(balances, opts)),
        charts=(_daily_chart(buildings),),
        findings=tuple(_findings(buildings, quotas, balances, opts)),
    )


def _imbalanced(b: Balance, opts: Mapping[str, float]) -> bool:
    return not b.missing and b.share is not None and abs(b.share) > opts["balance_tolerance"]


def _building_table(buildings: Sequence[BuildingFigures]) -> Table:
    cols = (
        Column("building", "楼宇", "Building"),
        Column("name", "名称", "Name"),
        Column("actual_kwh", "实际", "Actual", "kWh"),
        Column("expected_kwh", "基线", "Baseline", "kWh"),
        Column("deviation_pct", "偏差", "Deviation", "%"),
        Column("night_kwh", "夜间基础负荷浪费", "Night base load waste", "kWh"),
        Column("non_working_kwh", "非工作日浪费", "Non-working-day waste", "kWh"),
        Column("spike_kwh", "尖峰浪费", "Spike waste", "kWh"),
        Column("waste_kwh", "浪费合计", "Total waste", "kWh"),
        Column("waste_yuan", "浪费金额", "Waste cost", "元"),
        Column("cost_yuan", "电费", "Energy cost", "元"),
        Column("night_share_pct", "夜间负荷/工作时段负荷", "Night load / working-hours load", "%"),
        Column("night_excess_kwh", "夜间基础负荷超限", "Night base load above the limit", "kWh"),
        Column("night_excess_yuan", "夜间超限金额", "Night excess cost", "元"),
    )
    rows = tuple(
        {
            "building": b.id,
            "name": b.name,
            "actual_kwh": _r(b.actual_kwh),
            "expected_kwh": _r(b.expected_kwh),
            "deviation_pct": _pct(b.deviation),
            "night_kwh": _r(b.night_kwh),
            "non_working_kwh": _r(b.non_working_kwh),
            "spike_kwh": _r(b.spike_kwh),
            "waste_kwh": _r(b.waste_kwh),
            "waste_yuan": _r(b.waste_yuan, 2),
            "cost_yuan": _r(b.cost_yuan, 2),
            "night_share_pct": _pct(b.night_share),
            "night_excess_kwh": _r(b.night_excess_kwh),
            "night_excess_yuan": _r(b.night_excess_yuan, 2),
        }
        for b in sorted(buildings, key=lambda b: (-b.waste_kwh, b.id))
    )
    return Table("buildings", "楼宇能耗与浪费", "Buildings: use, baseline and waste", cols, rows)


def _quota_table(quotas: Sequence[QuotaRow]) -> Table:
    cols = (
        Column("city", "城市", "City"),
        Column("rank", "排名", "Rank"),
        Column("agency", "单位", "Agency"),
        Column("name", "名称", "Name"),
        Column("kwh", "用电", "Use", "kWh"),
        Column("headcount", "人数", "Headcount"),
        Column("per_capita", "人均", "Per capita", "kWh"),
        Column("quota_per_capita", "人均定额", "Quota per capita", "kWh"),
        Column("floor_area_m2", "面积", "Floor area", "m2"),
        Column("per_m2", "单位面积", "Per m2", "kWh"),
        Column("quota_per_m2", "单位面积定额", "Quota per m2", "kWh"),
        Column("ratio_pct", "定额占比", "Of quota", "%"),
        Column("over", "超定额", "Over quota"),
    )
    rows = tuple(
        {
            "city": q.city_name or q.city_id,
            "rank": q.rank,
            "agency": q.agency_id,
            "name": q.name,
            "kwh": _r(q.kwh),
            "headcount": q.headcount,
            "per_capita": _r(q.per_capita, 2),
            "quota_per_capita": _r(q.quota_per_capita, 2),
            "floor_area_m2": q.floor_area_m2,
            "per_m2": _r(q.per_m2, 3),
            "quota_per_m2": _r(q.quota_per_m2, 3),
            "ratio_pct": _pct(q.ratio),
            "over": q.over(),
        }
        for q in quotas
    )
    return Table("quota", "单位能耗定额排名（按城市）", "Quota ranking of agencies within each city (E7)", cols, rows)


def _balance_table(balances: Sequence[Balance], opts: Mapping[str, float]) -> Table:
    cols = (
        Column("parent", "总表", "Parent meter"),
        Column("parent_kwh", "总表用电", "Parent use", "kWh"),
        Column("children_kwh", "分表合计", "Children total", "kWh"),
        Column("diff_kwh", "差额", "Difference", "kWh"),
        Column("diff_pct", "差额占比", "Difference", "%"),
        Column("children", "分表", "Children"),
        Column("missing", "无数据分表", "Children without data"),
        Column("imbalanced", "超出容差", "Beyond tolerance"),
    )
    rows = tuple(
        {
            "parent": b.parent,
            "parent_kwh": _r(b.parent_kwh),
            "children_kwh": _r(b.children_kwh),
            "diff_kwh": _r(b.diff_kwh),
            "diff_pct": _pct(b.share),
            "children": ", ".join(b.children),
            "missing": ", ".join(b.missing),
            "imbalanced": _imbalanced(b, opts),
        }
        for b in balances
    )
    return Table("balance", "分表平衡（E6）", "Submeter balance (E6)", cols, rows)


def _daily_chart(buildings: Sequence[BuildingFigures]) -> Chart:
    days: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for b in buildings:
        for day, (a, e) in b.daily.items():
            days[day][0] += a
            days[day][1] += e
    x = tuple(sorted(days))
    return Chart(
        "daily",
        "每日用电：实际与基线",
        "Daily use: actual and baseline",
        "line",
        x,
        {"actual": tuple(round(days[d][0], 1) for d in x), "baseline": tuple(round(days[d][1], 1) for d in x)},
        "kWh",
    )


def _findings(
    buildings: Sequence[BuildingFigures],
    quotas: Sequence[QuotaRow],
    balances: Sequence[Balance],
    opts: Mapping[str, float],
) -> list[Finding]:
    out: list[Finding] = []
    for b in sorted(buildings, key=lambda b: (-b.waste_kwh, b.id)):
        if b.waste_kwh <= 0:
            continue
        dev = b.deviation
        yuan_zh = f"（约 {b.waste_yuan:.2f} 元）" if b.waste_yuan is not None else ""
        yuan_en = f" (about {b.waste_yuan:.2f} yuan)" if b.waste_yuan is not None else ""
        dev_zh = dev_en = ""
        if dev is not None:
            word_zh, word_en = ("高", "above") if dev >= 0 else ("低", "below")
            dev_zh = f"，比基线 {b.expected_kwh:.1f} kWh {word_zh} {abs(dev) * 100:.1f}%"
            dev_en = f", {abs(dev) * 100:.1f} % {word_en} its baseline of {b.expected_kwh:.1f} kWh"
        out.append(
            Finding(
                f"waste:{b.id}",
                f"{b.name}估计浪费 {b.waste_kwh:.1f} kWh{yuan_zh}：夜间基础负荷 {b.night_kwh:.1f}、非工作日 "
                f"{b.non_working_kwh:.1f}、尖峰 {b.spike_kwh:.1f} kWh；实际用电 {b.judged_kwh:.1f} kWh{dev_zh}。",
                f"{b.name} wasted an estimated {b.waste_kwh:.1f} kWh{yuan_en}: night base load {b.night_kwh:.1f}, "
                f"non-working days {b.non_working_kwh:.1f}, spikes {b.spike_kwh:.1f} kWh; it used "
                f"{b.judged_kwh:.1f} kWh{dev_en}.",
                {
                    "building": b.id,
                    "waste_kwh": _r(b.waste_kwh),
                    "waste_yuan": _r(b.waste_yuan, 2),
                    "night_kwh": _r(b.night_kwh),
                    "non_working_kwh": _r(b.non_working_kwh),
                    "spike_kwh": _r(b.spike_kwh),
                },
            )
        )
    limit = opts["night_share_limit"]
    for b in sorted(buildings, key=lambda b: (-b.night_excess_kwh, b.id)):
        if b.night_share is None or b.night_share <= limit:
            continue
        yuan_zh = f"（约 {b.night_excess_yuan:.2f} 元）" if b.night_excess_yuan is not None else ""
        yuan_en = f" (about {b.night_excess_yuan:.2f} yuan)" if b.night_excess_yuan is not None else ""
        out.append(
            Finding(
                f"night:{b.id}",
                f"{b.name}夜间（0-5 时）平均负荷为工作时段的 {b.night_share * 100:.1f}%，高于 {limit * 100:.0f}%："
                f"超出部分 {b.night_excess_kwh:.1f} kWh{yuan_zh}，请检查夜间未关闭的设备。",
                f"{b.name}'s night load (00:00-05:00) is {b.night_share * 100:.1f} % of its working-hours load, above "
                f"{limit * 100:.0f} %: {b.night_excess_kwh:.1f} kWh above that{yuan_en}; check for equipment left on.",
                {"building": b.id, "night_share_pct": _pct(b.night_share), "night_excess_kwh": _r(b.night_excess_kwh)},
            )
        )
    for q in quotas:
        if not q.over() or q.ratio is None:
            continue
        basis_zh, basis_en, use, quota = (
            ("人均", "per person", q.per_capita, q.quota_per_capita)
            if q.ratio_capita is not None and q.ratio == q.ratio_capita
            else ("每平方米", "per m2", q.per_m2, q.quota_per_m2)
        )
        out.append(
            Finding(
                f"quota:{q.agency_id}",
                f"{q.name}{basis_zh}用电 {use:.2f} kWh，超出定额 {quota:.2f} kWh 的 {(q.ratio - 1) * 100:.1f}%，"
                f"在{q.city_name or q.city_id}排第 {q.rank}/{q.of} 名。",
                f"{q.name} used {use:.2f} kWh {basis_en}, {(q.ratio - 1) * 100:.1f} % over its quota of "
                f"{quota:.2f} kWh; rank {q.rank} of {q.of} in {q.city_name or q.city_id}.",
                {"agency": q.agency_id, "ratio_pct": _pct(q.ratio), "rank": q.rank, "of": q.of},
            )
        )
    for bal in balances:
        if not _imbalanced(bal, opts) or bal.share is None:
            continue
        tol = opts["balance_tolerance"] * 100
        out.append(
            Finding(
                f"balance:{bal.parent}",
                f"总表 {bal.parent} 用电 {bal.parent_kwh:.1f} kWh，分表合计 {bal.children_kwh:.1f} kWh，相差 "
                f"{bal.diff_kwh:.1f} kWh（{bal.share * 100:.1f}%），超出 {tol:.0f}% 容差："
                "请检查漏计的分表、线损或窃电。",
                f"Parent meter {bal.parent} used {bal.parent_kwh:.1f} kWh, its submeters {bal.children_kwh:.1f} kWh: "
                f"{bal.diff_kwh:.1f} kWh ({bal.share * 100:.1f} %) apart, beyond the {tol:.0f} % tolerance; check "
                f"for an unmetered circuit, losses or theft.",
                {"parent": bal.parent, "diff_kwh": _r(bal.diff_kwh), "diff_pct": _pct(bal.share)},
            )
        )
    return out


def tariff_for(regions: Mapping[str, RegionInfo], path: Sequence[str]) -> Any:
    """The tariff attribute nearest ``path``'s end (inherited down the tree), or None."""
    return inherited("tariff", attrs_chain(regions, path))
