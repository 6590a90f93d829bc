"""GET /api/v1/vehicles/positions: every vehicle of a subtree with its newest position, for the page's map.

One answer instead of one ``GET /devices/{id}`` per vehicle: the positions, online and in-use flags and last-seen
times come from the in-memory fleet index (``gateway.fleet``: fed by every write batch, a vehicle's newest
``lat``/``lon`` with the speed, ignition and heading known then; read from the store once when the index is
built), and the names of the page's vehicles from one registry query. Region-scoped like every list; paged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StoreUnavailable
from devices.models import Device
from gateway.deps import NowDep, PrincipalDep, RegistryDep
from gateway.fleet import FleetDep, VehicleRow
from gateway.params import Offset, RegionQuery, error_responses, iso
from gateway.routes import API_PREFIX
from gateway.scope import region_filter

router = APIRouter(prefix=API_PREFIX, tags=["vehicles"], responses=error_responses(401, 404, 422, 503))

MAX_VEHICLES = 2000
VehicleLimit = Annotated[int, Query(ge=1, le=MAX_VEHICLES, description=f"page size, at most {MAX_VEHICLES}")]


def vehicle_json(v: VehicleRow, name: str | None) -> dict[str, Any]:
    p = v.pos
    return {
        "id": v.id,
        "name": name,
        "region_id": v.region_id,
        "enabled": v.enabled,
        "online": v.online,
        "in_use": v.in_use,
        "last_seen": iso(v.last_seen_ms),
        "lat": p.lat if p else None,
        "lon": p.lon if p else None,
        "position_at": iso(p.ts_ms) if p else None,
        "speed_kmh": p.speed_kmh if p else None,
        "ignition": p.ignition if p else None,
        "heading_deg": p.heading_deg if p else None,
    }


@router.get("/vehicles/positions")
def positions(
    registry: RegistryDep,
    fleet: FleetDep,
    principal: PrincipalDep,
    now: NowDep,
    region: RegionQuery = None,
    with_position: Annotated[bool, Query(description="only vehicles with a known position")] = False,
    limit: VehicleLimit = 500,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Vehicles of ``region``'s subtree (default: the caller's scope; outside it 404), sorted by id: newest
    position (``lat``, ``lon``, ``position_at``, with ``speed_kmh``, ``ignition``, ``heading_deg``; null when
    never reported), ``online``, ``in_use`` and ``last_seen``. ``total`` counts all matches."""
    ids = region_filter(registry, principal, region)  # 404 outside the scope
    now_ms = int(now.timestamp() * 1000)
    rows = fleet.vehicles(ids, now_ms)
    if with_position:
        rows = [v for v in rows if v.pos is not None]
    page = rows[offset : offset + limit]
    names: dict[str, str] = {}
    if page:
        try:
            with registry.engine.connect() as conn:
                q = select(Device.id, Device.name).where(Device.id.in_([v.id for v in page]))
                names = {str(i): str(n) for i, n in conn.execute(q)}
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry read failed: {exc}") from exc
    return {
        "total": len(rows),
        "limit": limit,
        "offset": offset,
        "at": iso(now_ms),
        "items": [vehicle_json(v, names.get(v.id)) for v in page],
    }
