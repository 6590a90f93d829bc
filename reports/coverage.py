"""The data coverage and quality report (issue 13): per region, its subtree rolled up, what each region admin must fix.

Figures (docs/reports.md "Data coverage and quality" says the same):

- **expected**: devices enabled in the registry and created before the period's end;
- **reporting**: expected devices with data in the period: their last data (``device_state.last_seen``) is inside
  it, or after it and the store holds a reading or an event of theirs inside it (``reported_between``);
  **never reported**: no data at all; **stale**: not online at the period's end (``devices/liveness.py``: no data
  for 2.5 expected intervals, or an ``offline`` status after the last data; a device with nothing in a past period
  is stale), never-reported ones included;
- **seq gaps**: missing seqs ingest detected (``device_state.gaps``, counted to date); **lost**: seqs that could not
  be recovered: the seq ranges of DQ1 alerts (``ingest/resend.py`` -> ``alerts/data_quality.py``), those raised
  in the period, and to date; **recovered** (to date) = gaps - lost to date, at least 0: resent by the device and
  stored later;
- **rejections** in the period by reason (the store's rejected messages, newest ``MAX_REJECTIONS`` at most: the
  table says when it was cut), **non-standard fields** (``device_state.nonstandard``, to date);
- **clock skew**: devices with a clock-skew alert (a rule of kind ``clock_skew``, e.g. E5.skew) open at any time
  in the period, and the largest skew seen (seconds, device time - receive time).

Findings: one per region and problem, naming up to ``NAMED`` devices, on the region that owns them (the admin who
can fix them). Pure except reading through ``source``; ``request.now`` is the only clock.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.calendar import beijing
from alerts.models import AlertRow
from core.errors import UserError
from core.protocol import DEFAULT_INTERVAL_S
from core.store import DeviceState, TelemetryStore
from devices.liveness import is_online
from devices.models import Device, Region
from reports.model import Cell, Chart, Column, Finding, Report, ReportRequest, ReportSource, Table

DQ_RULE = "DQ1"
MAX_REJECTIONS = 100_000
MAX_PROBES = 5_000  # devices asked whether they reported inside a past period; beyond: counted as reporting
PROBE_FIELDS = 3
MAX_DEVICE_ROWS = 500
NAMED = 5  # devices named in a finding

# ingest's rejection reasons (core/protocol.py InvalidMessage, ingest/pipeline.py), as the page names them
REJECTION_REASONS_ZH: dict[str, str] = {
    "not_json": "非 JSON",
    "not_object": "非对象",
    "too_large": "消息过大",
    "schema": "字段不合规",
    "bad_timestamp": "时间戳错误",
    "unknown_event": "未知事件",
    "forged_identity": "伪造身份",
    "unregistered_device": "未注册设备",
    "disabled_device": "已停用设备",
    "retained": "保留消息",
    "internal_error": "平台内部错误",
}


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def seq_count(group: str) -> int:
    """Seqs in a DQ1 range ("1001-1500" -> 500, "7" -> 1); 0 for anything else."""
    a, sep, b = group.strip().partition("-")
    try:
        first, last = int(a), int(b if sep else a)
    except ValueError:
        return 0
    return max(0, last - first + 1) if first >= 0 else 0


@dataclass
class DeviceFacts:
    device_id: str
    type: str
    region_id: str
    interval_s: int
    state: DeviceState | None = None
    reporting: bool = False
    never: bool = False
    stale: bool = False
    gaps: int = 0
    lost: int = 0  # in the period
    lost_to_date: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # in the period, by reason
    nonstandard: int = 0
    skew_s: float | None = None  # largest |skew| of a clock-skew alert open in the period

    @property
    def recovered(self) -> int:
        return max(0, self.gaps - self.lost_to_date)

    def issues(self) -> list[str]:
        out = []
        if self.never:
            out.append("never")
        elif self.stale:
            out.append("stale")
        if self.lost:
            out.append("lost")
        if self.rejected:
            out.append("rejected")
        if self.nonstandard:
            out.append("nonstandard")
        if self.skew_s is not None:
            out.append("clock_skew")
        return out


ISSUE_TITLES: dict[str, tuple[str, str]] = {
    "never": ("从未上报", "never reported"),
    "stale": ("离线", "stale"),
    "lost": ("数据丢失", "data lost"),
    "rejected": ("消息被拒收", "messages rejected"),
    "nonstandard": ("非标准字段", "non-standard fields"),
    "clock_skew": ("时钟偏差", "clock skew"),
}


@dataclass
class RegionFigures:
    expected: int = 0
    reporting: int = 0
    never: int = 0
    stale: int = 0
    gaps: int = 0
    lost: int = 0
    recovered: int = 0
    rejected: int = 0
    nonstandard_devices: int = 0
    skewed: int = 0

    def add(self, d: DeviceFacts) -> None:
        self.expected += 1
        self.reporting += d.reporting
        self.never += d.never
        self.stale += d.stale
        self.gaps += d.gaps
        self.lost += d.lost
        self.recovered += d.recovered
        self.rejected += sum(d.rejected.values())
        self.nonstandard_devices += d.nonstandard > 0
        self.skewed += d.skew_s is not None

    @property
    def reporting_pct(self) -> float | None:
        return None if self.expected == 0 else round(100.0 * self.reporting / self.expected, 1)


# --- reading -------------------------------------------------------------------------------------------------


def _regions(s: Session, region_id: str) -> list[Region]:
    root = s.get(Region, region_id)
    if root is None:
        raise UserError(f"region {region_id!r} does not exist")
    return list(s.scalars(select(Region).where(Region.path.startswith(root.path)).order_by(Region.path)))


def _devices(s: Session, region_ids: list[str], end: datetime) -> list[Device]:
    q = select(Device).where(Device.region_id.in_(region_ids), Device.enabled.is_(True)).order_by(Device.id)
    return [d for d in s.scalars(q) if d.created_at is None or _aware(d.created_at) < end]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _alerts(s: Session, root_path: str, end: datetime) -> list[AlertRow]:
    """DQ1 alerts (all, for the lost-to-date figure) and clock-skew candidates started before the period's end."""
    q = select(AlertRow).where(AlertRow.region_path.startswith(root_path), AlertRow.started_at < end.astimezone(UTC))
    return list(s.scalars(q))


def reported_between(store: TelemetryStore, device_id: str, start_ms: int, end_ms: int) -> bool:
    """Did the device store anything in [start, end)? A reading of one of its (newest) numeric fields, else an
    event: a few indexed look-ups, asked only of devices whose last data is after the period."""
    fields = [k for k, (_, v) in store.last_values(device_id).items() if isinstance(v, int | float)]
    if any(store.raw(device_id, fld, start_ms, end_ms, 1) for fld in fields[:PROBE_FIELDS]):
        return True
    return bool(store.events([device_id], start_ms, end_ms, None, 1))


def _facts(source: ReportSource, request: ReportRequest) -> tuple[list[Region], dict[str, DeviceFacts], bool]:
    start, end = request.start, request.end
    ref_ms = _ms(min(end, request.now))
    with Session(source.engine) as s:
        regions = _regions(s, request.region_id)
        devices = _devices(s, [r.id for r in regions], end)
        alerts = _alerts(s, regions[0].path, end)
    facts = {
        d.id: DeviceFacts(d.id, d.type, d.region_id, d.expected_interval_s or DEFAULT_INTERVAL_S.get(d.type, 60))
        for d in devices
    }
    states = source.telemetry.device_states(list(facts)) if facts else {}
    start_ms, end_ms = _ms(start), _ms(end)
    probes = 0
    for f in facts.values():
        st = f.state = states.get(f.device_id)
        last = None if st is None else st.last_seen_ms
        f.never = last is None
        f.reporting = last is not None and start_ms <= last < end_ms
        f.stale = f.never or not is_online(st, f.interval_s, ref_ms)
        if last is not None and last >= end_ms:  # it reported after the period: did it during the period?
            probes += 1
            f.reporting = probes > MAX_PROBES or reported_between(source.telemetry, f.device_id, start_ms, end_ms)
            f.stale = f.stale or not f.reporting  # nothing in the period: not online at its end
        if st is not None:
            f.gaps, f.nonstandard = st.gaps, st.nonstandard
    for a in alerts:
        fa = facts.get(a.device_id)
        if fa is None:
            continue
        f = fa
        detail = a.detail or {}
        started = _aware(a.started_at)
        if a.rule_id == DQ_RULE:
            n = seq_count(str(detail.get("group", "")))
            f.lost_to_date += n
            if started >= start:
                f.lost += n
        elif "skew_s" in detail:
            resolved = None if a.resolved_at is None else _aware(a.resolved_at)
            if resolved is None or resolved >= start:
                try:
                    skew = abs(float(detail["skew_s"]))
                except (TypeError, ValueError):
                    continue
                f.skew_s = skew if f.skew_s is None else max(f.skew_s, skew)
    rejections = source.telemetry.rejections(None, None, MAX_REJECTIONS)
    for rej in rejections:
        if start_ms <= rej.received_ms < end_ms:
            fr = facts.get(rej.device_id)
            if fr is not None:
                fr.rejected[rej.reason] += 1
    cut = len(rejections) >= MAX_REJECTIONS and rejections[-1].received_ms >= start_ms
    return regions, facts, cut


# --- figures -------------------------------------------------------------------------------------------------


def rollup(regions: list[Region], facts: Iterable[DeviceFacts]) -> dict[str, RegionFigures]:
    """Figures per region over its whole subtree (a device counts in its region and every ancestor listed)."""
    paths = {r.id: [p for p in r.path.split("/") if p] for r in regions}
    out = {r.id: RegionFigures() for r in regions}
    for f in facts:
        for rid in paths.get(f.region_id, []):
            if rid in out:
                out[rid].add(f)
    return out


def _names(ids: list[str]) -> str:
    more = len(ids) - NAMED
    head = ", ".join(ids[:NAMED])
    return head if more <= 0 else f"{head} (+{more})"


def _reason_zh(reason: str) -> str:
    return REJECTION_REASONS_ZH.get(reason, reason)


def findings(regions: list[Region], facts: Mapping[str, DeviceFacts]) -> list[Finding]:
    """What each region admin must fix, on the region that owns the devices; the worst problems first."""
    by_region: dict[str, list[DeviceFacts]] = defaultdict(list)
    for f in facts.values():
        by_region[f.region_id].append(f)
    out: list[Finding] = []
    for r in regions:
        devs = sorted(by_region.get(r.id, []), key=lambda f: f.device_id)
        if not devs:
            continue
        name = r.name
        never = [f.device_id for f in devs if f.never]
        if never:
            out.append(
                Finding(
                    f"{r.id}:never",
                    f"{name}：{len(never)} 台设备从未上报数据（{_names(never)}），请检查安装、接入凭据与网络。",
                    f"{name}: {len(never)} device(s) never reported ({_names(never)}): check installation, "
                    "credentials and network.",
                    {"region": r.id, "devices": len(never)},
                )
            )
        stale = [f for f in devs if f.stale and not f.never]
        if stale:
            ids = [f.device_id for f in stale]
            out.append(
                Finding(
                    f"{r.id}:stale",
                    f"{name}：{len(ids)} 台设备已离线（{_names(ids)}），请现场检查供电与通信。",
                    f"{name}: {len(ids)} device(s) offline ({_names(ids)}): check power and communication on site.",
                    {"region": r.id, "devices": len(ids)},
                )
            )
        lost = [f for f in devs if f.lost]
        if lost:
            n = sum(f.lost for f in lost)
            ids = [f.device_id for f in sorted(lost, key=lambda f: (-f.lost, f.device_id))]
            out.append(
                Finding(
                    f"{r.id}:lost",
                    f"{name}：{len(ids)} 台设备共丢失 {n} 条记录且无法补传（{_names(ids)}），"
                    "请启用设备缓存并检查网络。",
                    f"{name}: {n} record(s) of {len(ids)} device(s) lost and not resendable ({_names(ids)}): enable "
                    "the device buffer and check the network.",
                    {"region": r.id, "devices": len(ids), "records": n},
                )
            )
        reasons: Counter[str] = Counter()
        for f in devs:
            reasons.update(f.rejected)
        for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            ids = [
                f.device_id
                for f in sorted(devs, key=lambda f: (-f.rejected[reason], f.device_id))
                if f.rejected[reason]
            ]
            out.append(
                Finding(
                    f"{r.id}:rejected:{reason}",
                    f"{name}：{n} 条消息因“{_reason_zh(reason)}”（{reason}）被拒收（{_names(ids)}），"
                    "请按接入协议修正设备。",
                    f"{name}: {n} message(s) rejected for {reason} ({_names(ids)}): fix the devices per the protocol.",
                    {"region": r.id, "reason": reason, "messages": n, "devices": len(ids)},
                )
            )
        nonstd = [f.device_id for f in devs if f.nonstandard]
        if nonstd:
            out.append(
                Finding(
                    f"{r.id}:nonstandard",
                    f"{name}：{len(nonstd)} 台设备上报非标准字段（{_names(nonstd)}），请按接入协议改用标准字段名。",
                    f"{name}: {len(nonstd)} device(s) send non-standard fields ({_names(nonstd)}): use the standard "
                    "field names of the protocol.",
                    {"region": r.id, "devices": len(nonstd)},
                )
            )
        skewed = sorted((f for f in devs if f.skew_s is not None), key=lambda f: (-(f.skew_s or 0), f.device_id))
        if skewed:
            worst = skewed[0].skew_s or 0.0
            ids = [f.device_id for f in skewed]
            out.append(
                Finding(
                    f"{r.id}:clock_skew",
                    f"{name}：{len(ids)} 台设备时钟偏差（最大 {worst:g} 秒，{_names(ids)}），请校准设备时钟（NTP）。",
                    f"{name}: {len(ids)} device(s) with clock skew (up to {worst:g} s, {_names(ids)}): set their "
                    "clocks (NTP).",
                    {"region": r.id, "devices": len(ids), "max_skew_s": worst},
                )
            )
    return out


REGION_COLUMNS = (
    Column("region", "区域", "Region"),
    Column("name", "名称", "Name"),
    Column("expected", "应报设备", "Expected"),
    Column("reporting", "上报设备", "Reporting"),
    Column("reporting_pct", "上报率", "Reporting", "%"),
    Column("never", "从未上报", "Never reported"),
    Column("stale", "离线", "Stale"),
    Column("gaps", "序号缺口(累计)", "Seq gaps (to date)"),
    Column("recovered", "已补传(累计)", "Recovered (to date)"),
    Column("lost", "丢失(本期)", "Lost (period)"),
    Column("rejected", "拒收(本期)", "Rejected (period)"),
    Column("nonstandard", "非标准字段设备", "Non-standard devices"),
    Column("clock_skew", "时钟偏差设备", "Clock-skew devices"),
)


def _region_row(r: Region, g: RegionFigures) -> dict[str, Cell]:
    return {
        "region": r.id,
        "name": r.name,
        "expected": g.expected,
        "reporting": g.reporting,
        "reporting_pct": g.reporting_pct,
        "never": g.never,
        "stale": g.stale,
        "gaps": g.gaps,
        "recovered": g.recovered,
        "lost": g.lost,
        "rejected": g.rejected,
        "nonstandard": g.nonstandard_devices,
        "clock_skew": g.skewed,
    }


def _device_rows(facts: Mapping[str, DeviceFacts], lang_sep: str = " / ") -> tuple[dict[str, Cell], ...]:
    rows = []
    for f in sorted(facts.values(), key=lambda f: (f.region_id, f.device_id)):
        issues = f.issues()
        if not issues:
            continue
        last = None if f.state is None or f.state.last_seen_ms is None else f.state.last_seen_ms
        rows.append(
            {
                "device": f.device_id,
                "type": f.type,
                "region": f.region_id,
                "issues": "、".join(ISSUE_TITLES[i][0] for i in issues) + lang_sep + ", ".join(issues),
                "last_seen": None
                if last is None
                else f"{beijing(datetime.fromtimestamp(last / 1000, UTC)):%Y-%m-%d %H:%M}",
                "gaps": f.gaps,
                "lost": f.lost,
                "rejected": sum(f.rejected.values()),
                "nonstandard": f.nonstandard,
                "skew_s": f.skew_s,
            }
        )
    return tuple(rows[:MAX_DEVICE_ROWS])


DEVICE_COLUMNS = (
    Column("device", "设备", "Device"),
    Column("type", "类型", "Type"),
    Column("region", "区域", "Region"),
    Column("issues", "问题", "Issues"),
    Column("last_seen", "最后上报(北京时间)", "Last seen (Beijing)"),
    Column("gaps", "序号缺口(累计)", "Seq gaps (to date)"),
    Column("lost", "丢失(本期)", "Lost (period)"),
    Column("rejected", "拒收(本期)", "Rejected (period)"),
    Column("nonstandard", "非标准字段(累计)", "Non-standard (to date)"),
    Column("skew_s", "最大时钟偏差", "Max clock skew", "s"),
)

SUMMARY_LABELS: dict[str, tuple[str, str]] = {
    "expected": ("应报设备", "Devices expected"),
    "reporting": ("上报设备", "Devices reporting"),
    "reporting_pct": ("上报率 %", "Reporting %"),
    "never": ("从未上报", "Never reported"),
    "stale": ("离线设备", "Stale devices"),
    "gaps": ("序号缺口(累计)", "Seq gaps (to date)"),
    "recovered": ("已补传(累计)", "Recovered (to date)"),
    "lost": ("丢失记录(本期)", "Records lost (period)"),
    "rejected": ("拒收消息(本期)", "Messages rejected (period)"),
    "nonstandard": ("非标准字段设备", "Devices with non-standard fields"),
    "clock_skew": ("时钟偏差设备", "Devices with clock skew"),
    "findings": ("待办事项", "Findings"),
}


def build(source: ReportSource, request: ReportRequest) -> Report:
    regions, facts, cut = _facts(source, request)
    figures = rollup(regions, facts.values())
    root = regions[0]
    total = figures[root.id]
    found = findings(regions, facts)
    reason_counts: Counter[str] = Counter()
    for f in facts.values():
        reason_counts.update(f.rejected)
    children = [r for r in regions if r.parent_id == root.id]
    reason_rows: tuple[dict[str, Cell], ...] = tuple(
        {"reason": reason, "reason_zh": _reason_zh(reason), "count": n}
        for reason, n in sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    tables = (
        Table(
            "regions",
            "各区域覆盖与质量",
            "Coverage and quality per region",
            REGION_COLUMNS,
            tuple(_region_row(r, figures[r.id]) for r in regions),
        ),
        Table(
            "rejections",
            "拒收原因" + (f"（仅统计最近 {MAX_REJECTIONS} 条）" if cut else ""),
            "Rejections by reason" + (f" (newest {MAX_REJECTIONS} only)" if cut else ""),
            (
                Column("reason", "原因", "Reason"),
                Column("reason_zh", "说明", "Meaning"),
                Column("count", "次数", "Count"),
            ),
            reason_rows,
        ),
        Table("devices", "需处理的设备", "Devices needing attention", DEVICE_COLUMNS, _device_rows(facts)),
    )
    charts: list[Chart] = []
    if children:
        charts.append(
            Chart(
                "reporting_by_region",
                "下级区域上报率",
                "Reporting share per sub-region",
                "bar",
                tuple(r.name for r in children),
                {"上报率 / reporting": tuple(figures[r.id].reporting_pct or 0.0 for r in children)},
                "%",
            )
        )
    if reason_counts:
        charts.append(
            Chart(
                "rejections_by_reason",
                "拒收原因",
                "Rejections by reason",
                "bar",
                tuple(str(row["reason"]) for row in reason_rows),
                {
                    "拒收 / rejected": tuple(
                        float(n) for _, n in sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))
                    )
                },
            )
        )
    summary: dict[str, Cell] = {
        "expected": total.expected,
        "reporting": total.reporting,
        "reporting_pct": total.reporting_pct,
        "never": total.never,
        "stale": total.stale,
        "gaps": total.gaps,
        "recovered": total.recovered,
        "lost": total.lost,
        "rejected": total.rejected,
        "nonstandard": total.nonstandard_devices,
        "clock_skew": total.skewed,
        "findings": len(found),
    }
    return Report(
        kind="coverage",
        region_id=root.id,
        region_name=root.name,
        start=request.start,
        end=request.end,
        generated_at=request.now,
        title_zh="数据覆盖与质量报告",
        title_en="Data coverage and quality report",
        summary=summary,
        summary_labels=SUMMARY_LABELS,
        tables=tables,
        charts=tuple(charts),
        findings=tuple(found),
    )
