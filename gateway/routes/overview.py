"""GET /api/v1/overview: the control room's key figures for one region's subtree (the caller's scope by default).

Devices per type (total, online), open alerts per severity, active incidents per severity, the energy meters' use
today against its baseline and the vehicles in use. Device figures come from the in-memory fleet index
(``gateway.fleet``: its docstring defines "online", "in use", "today" and the baseline); alert and incident
figures are two grouped SQL counts on indexed columns, cached per scope for at most 2 s and dropped when the alert
service of this process stores a change. The page polls it (it is not on the live stream).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from alerts.models import AlertRow
from alerts.types import AlertState, Severity
from core.errors import StoreUnavailable
from core.protocol import DEVICE_TYPES
from devices.registry import Registry
from gateway.auth import Principal
from gateway.deps import NowDep, PrincipalDep, ReadRegistryDep
from gateway.fleet import METER, VEHICLE, FleetDep
from gateway.params import RegionQuery, error_responses, iso
from gateway.routes import API_PREFIX
from gateway.scope import region_filter, subtree_path, under_path
from joint.models import IncidentMemberRow, IncidentRow, IncidentState

router = APIRouter(prefix=API_PREFIX, tags=["overview"], responses=error_responses(401, 404, 422, 503))

OPEN_ALERT_STATES = (str(AlertState.FIRING), str(AlertState.ACKNOWLEDGED))
ACTIVE_INCIDENT_STATES = (str(IncidentState.OPEN), str(IncidentState.INVESTIGATING))
SEVERITIES = tuple(str(s) for s in Severity)


def _severities(rows: list[tuple[str, int]]) -> dict[str, int]:
    out = dict.fromkeys(SEVERITIES, 0)
    for sev, n in rows:
        out[sev] = out.get(sev, 0) + int(n)
    return out


def alert_counts(registry: Registry, scope_id: str | None) -> dict[str, int]:
    """Open (firing or acknowledged) alerts per severity under ``scope_id`` (None: all)."""
    q = select(AlertRow.severity, func.count()).where(AlertRow.state.in_(OPEN_ALERT_STATES))
    if scope_id is not None:
        q = q.where(under_path(AlertRow.region_path, subtree_path(registry, scope_id), registry.engine.dialect.name))
    try:
        with registry.engine.connect() as conn:
            rows = [(str(s), int(n)) for s, n in conn.execute(q.group_by(AlertRow.severity))]
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"alert store read failed: {exc}") from exc
    return _severities(rows)


def incident_counts(registry: Registry, principal: Principal, region: str | None) -> dict[str, int]:
    """Active (open or investigating) incidents per severity that the caller sees in ``region``'s subtree: scoped
    there, or with a member alert there (as the incident list counts them)."""
    q = select(IncidentRow.severity, func.count()).where(IncidentRow.state.in_(ACTIVE_INCIDENT_STATES))
    scopes: list[tuple[str, list[str]]] = []
    if region is not None:
        scopes.append((region, registry.subtree_ids(region)))
    if principal.region_ids is not None and principal.region_id is not None:
        scopes.append((principal.region_id, sorted(principal.region_ids)))
    for rid, ids in scopes:
        members = select(IncidentMemberRow.incident_id).where(IncidentMemberRow.region_id.in_(ids))
        within = under_path(IncidentRow.region_path, subtree_path(registry, rid), registry.engine.dialect.name)
        q = q.where(or_(within, IncidentRow.id.in_(members)))
    try:
        with registry.engine.connect() as conn:
            rows = [(str(s), int(n)) for s, n in conn.execute(q.group_by(IncidentRow.severity))]
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"incident store read failed: {exc}") from exc
    return _severities(rows)


class CountCache:
    """Alert and incident counts per scope, kept at most ``max_age_s`` and dropped at once when the alert service
    of this process stores a change (``AlertService.subscribe_batch``). Where the alert engine runs in another
    process, the age bound alone applies."""

    def __init__(self, max_age_s: float = 2.0) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._items: dict[tuple[Any, ...], tuple[float, dict[str, int]]] = {}

    def clear(self, _events: object = None) -> None:
        with self._lock:
            self._items.clear()

    def get(self, key: tuple[Any, ...], compute: Callable[[], dict[str, int]]) -> dict[str, int]:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.max_age_s:
            return dict(hit[1])
        value = compute()
        with self._lock:
            self._items[key] = (now, value)
        return dict(value)


_CACHE_LOCK = threading.Lock()


def get_counts(request: Request) -> CountCache:
    """The app's count cache, subscribed to the alert service's changes when one runs in this process."""
    state = request.app.state
    cache: CountCache | None = getattr(state, "overview_counts", None)
    if cache is not None:
        return cache
    with _CACHE_LOCK:
        cache = getattr(state, "overview_counts", None)
        if cache is None:
            cache = CountCache()
            alerts = state.ctx.alerts
            service = getattr(alerts, "service", alerts)
            if service is not None and hasattr(service, "subscribe_batch"):
                service.subscribe_batch(cache.clear)
            state.overview_counts = cache
    return cache


CountsDep = Annotated[CountCache, Depends(get_counts)]


@router.get("/overview")
def overview(
    registry: ReadRegistryDep,
    fleet: FleetDep,
    counts: CountsDep,
    principal: PrincipalDep,
    now: NowDep,
    region: RegionQuery = None,
) -> dict[str, Any]:
    """Key figures of ``region``'s subtree (default: the caller's whole scope; a region outside it is 404).

    * ``devices.by_type``: per device type, ``total`` and ``online`` (enabled and reporting within 2.5 expected
      intervals, no ``offline`` status since);
    * ``alerts.by_severity``: open alerts (firing or acknowledged);
    * ``incidents``: active incidents (open or investigating), in all and per severity;
    * ``energy``: ``today_kwh``, the meters' use since 00:00 Beijing time, and ``baseline_kwh``, the mean of the
      same meters' use up to the same time of day on the previous four same weekdays (null without history, or
      while it is being computed after midnight);
    * ``vehicles``: ``total`` and ``in_use`` (online, and the newest reading says ignition on or moving).
    """
    now_ms = int(now.timestamp() * 1000)
    ids = region_filter(registry, principal, region)  # 404 outside the scope
    scope_id = region if region is not None else principal.region_id
    roll = fleet.rollup(ids, now_ms)
    by_type = {t: {"total": 0, "online": 0} for t in DEVICE_TYPES}
    for t, c in roll.by_type.items():
        by_type[t] = {"total": c[0], "online": c[1]}
    vehicles = roll.by_type.get(VEHICLE, [0, 0, 0, 0])
    incidents = counts.get(
        ("incidents", region, principal.region_id), lambda: incident_counts(registry, principal, region)
    )
    meters = roll.by_type.get(METER, [0, 0, 0, 0])
    return {
        "region_id": scope_id,
        "at": iso(now_ms),
        "devices": {"by_type": by_type},
        "alerts": {"by_severity": counts.get(("alerts", scope_id), lambda: alert_counts(registry, scope_id))},
        "incidents": {"open": sum(incidents.values()), "by_severity": incidents},
        "energy": {
            "meters": meters[0],
            "today_kwh": round(roll.today_kwh, 3),
            "baseline_kwh": None if roll.baseline_kwh is None else round(roll.baseline_kwh, 3),
        },
        "vehicles": {"total": vehicles[0], "in_use": vehicles[3]},
    }
