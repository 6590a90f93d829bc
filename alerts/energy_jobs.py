"""E6 and E7 as a job: the registry and telemetry-store readers around the pure judging of ``alerts.energy_checks``.

``energy_check_changes`` reads the regions, the enabled energy meters and their hourly ``energy_kwh`` buckets, and
judges them with the pure functions; ``EnergyChecks`` runs it on ``serve``'s scheduler and hands the changes to the
alert lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, select

from alerts.calendar import BEIJING, beijing_midnight_ms
from alerts.energy_checks import (
    HOUR_MS,
    MeterInfo,
    RegionInfo,
    agency_uses,
    balance_changes,
    hourly_kwh,
    month_scale,
    nearest,
    quota_changes,
    quota_rows,
    submeter_balance,
)
from alerts.rules import EffectiveRule, RuleSet
from alerts.types import AlertChange
from core import clock
from core.store import TelemetryStore
from devices.models import Device, Region

logger = logging.getLogger(__name__)


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
