"""Vehicle dispatch records (派车单, devices/dispatch.py): list, one, request, approve, close.

Rule V2 (movement without dispatch) fires when a vehicle leaves its depot with no approved dispatch open; the alert
engine re-reads the approved dispatches on each registry refresh (``alerts.refresh_interval_s``, 60 s by default;
V2 waits 5 min outside the depot before it fires).

Scoping: a dispatch belongs to its vehicle's region (at the time it was requested); one outside the caller's
subtree is 404, like one that does not exist, and lists hold only the caller's subtree. Roles: ``operator`` or
``admin`` request (``POST /dispatches``) and close; only an ``admin`` of the region approves, and never a dispatch
they requested themselves (409). Every write is audited (``dispatch.create``, ``dispatch.approve``,
``dispatch.close``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from core.errors import UserError
from devices.dispatch import Dispatch, DispatchConflict, DispatchStore
from gateway.auth import Principal
from gateway.deps import AuditDep, NowDep, PrincipalDep, RegistryDep, require_role
from gateway.params import (
    DEVICE_PATTERN,
    DeviceQuery,
    Instant,
    Limit,
    ObjectId,
    Offset,
    RegionQuery,
    TimeQuery,
    error_responses,
    iso,
    parse_time,
)
from gateway.routes import API_PREFIX
from gateway.scope import device_or_404, not_found, region_filter

router = APIRouter(prefix=API_PREFIX, tags=["dispatches"], responses=error_responses(401, 404, 422, 503))
_WRITE_ERRORS = error_responses(400, 403, 409)  # 400: a body that is not UTF-8
Writer = Annotated[Principal, Depends(require_role("operator", "admin"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
Text = Annotated[str, Field(min_length=1, max_length=100, pattern=r"\S")]


def _ms(at: Any) -> int:
    return int(at.timestamp() * 1000)


def dispatch_json(d: Dispatch) -> dict[str, Any]:
    start, end = d.window()
    return {
        "id": d.id,
        "vehicle_id": d.vehicle_id,
        "region_id": d.region_id,
        "driver": d.driver,
        "purpose": d.purpose,
        "requested_by": d.requested_by,
        "status": d.status,
        "approved": d.approved,
        "approver": d.approver,
        "approved_at": iso(d.approved_ms),
        "planned_start": iso(d.planned_start_ms),
        "planned_end": iso(d.planned_end_ms),
        "actual_start": iso(d.actual_start_ms),
        "actual_end": iso(d.actual_end_ms),
        "covers": {"start": iso(start), "end": iso(end)},
        "created_at": iso(d.created_ms),
        "updated_at": iso(d.updated_ms),
    }


def _store(registry: RegistryDep) -> DispatchStore:
    return DispatchStore(registry.engine)


StoreDep = Annotated[DispatchStore, Depends(_store)]


def _visible(store: DispatchStore, principal: Principal, dispatch_id: int) -> Dispatch:
    d = store.get(dispatch_id)
    if d is None or not principal.sees_region(d.region_id):
        raise not_found("dispatch", str(dispatch_id))
    return d


@router.get("/dispatches")
def list_dispatches(
    registry: RegistryDep,
    store: StoreDep,
    principal: PrincipalDep,
    region: RegionQuery = None,
    vehicle: DeviceQuery = None,
    status_: Annotated[Literal["pending", "approved", "closed"] | None, Query(alias="status")] = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Dispatches in the caller's scope, newest planned start first; ``start`` / ``end``: those whose plan overlaps
    the range; ``total`` counts all matches."""
    region_ids = region_filter(registry, principal, region)
    items, total = store.list(
        region_ids=region_ids,
        vehicle_id=vehicle,
        status=status_,
        start_ms=parse_time(start, "start") if start is not None else None,
        end_ms=parse_time(end, "end") if end is not None else None,
        limit=limit,
        offset=offset,
    )
    return {"total": total, "limit": limit, "offset": offset, "items": [dispatch_json(d) for d in items]}


@router.get("/dispatches/{dispatch_id}")
def get_dispatch(dispatch_id: ObjectId, store: StoreDep, principal: PrincipalDep) -> dict[str, Any]:
    return dispatch_json(_visible(store, principal, dispatch_id))


class DispatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vehicle_id: str = Field(max_length=64, pattern=DEVICE_PATTERN)
    driver: Text
    purpose: str = Field(min_length=1, max_length=500, pattern=r"\S")
    planned_start: Instant
    planned_end: Instant


@router.post("/dispatches", status_code=status.HTTP_201_CREATED, responses=_WRITE_ERRORS)
def create_dispatch(
    body: DispatchBody, registry: RegistryDep, store: StoreDep, principal: Writer, audit: AuditDep, now: NowDep
) -> dict[str, Any]:
    """Request a dispatch of a vehicle in the caller's scope (pending until a region admin approves it)."""
    device = device_or_404(registry, principal, body.vehicle_id)
    if device.type != "vehicle":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{device.id} is not a vehicle")
    try:
        d = store.create(
            vehicle_id=device.id,
            region_id=device.region_id,
            driver=body.driver,
            purpose=body.purpose,
            requested_by=principal.name,
            planned_start_ms=_ms(body.planned_start),
            planned_end_ms=_ms(body.planned_end),
            now_ms=_ms(now),
        )
    except UserError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    audit.write(principal, "dispatch.create", f"dispatch {d.id}", now=now, detail={"vehicle": d.vehicle_id})
    return dispatch_json(d)


@router.post("/dispatches/{dispatch_id}/approve", responses=_WRITE_ERRORS)
def approve_dispatch(
    dispatch_id: ObjectId, store: StoreDep, principal: Admin, audit: AuditDep, now: NowDep
) -> dict[str, Any]:
    """Approve a pending dispatch (an admin of its region, not the one who requested it)."""
    d = _visible(store, principal, dispatch_id)
    try:
        d = store.approve(d.id, approver=principal.name, now_ms=_ms(now))
    except DispatchConflict as exc:
        audit.write(principal, "dispatch.approve", f"dispatch {dispatch_id}", now=now, outcome="conflict")
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    audit.write(principal, "dispatch.approve", f"dispatch {d.id}", now=now, detail={"vehicle": d.vehicle_id})
    return dispatch_json(d)


class CloseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actual_start: Instant | None = None
    actual_end: Instant | None = None  # default: now


@router.post("/dispatches/{dispatch_id}/close", responses=_WRITE_ERRORS)
def close_dispatch(
    dispatch_id: ObjectId,
    store: StoreDep,
    principal: Writer,
    audit: AuditDep,
    now: NowDep,
    body: CloseBody | None = None,
) -> dict[str, Any]:
    """Record the actual end (default now) and optionally the actual start; a pending dispatch closed is
    cancelled."""
    d = _visible(store, principal, dispatch_id)
    body = body or CloseBody()
    try:
        d = store.close(
            d.id,
            now_ms=_ms(now),
            actual_start_ms=_ms(body.actual_start) if body.actual_start is not None else None,
            actual_end_ms=_ms(body.actual_end) if body.actual_end is not None else None,
        )
    except DispatchConflict as exc:
        audit.write(principal, "dispatch.close", f"dispatch {dispatch_id}", now=now, outcome="conflict")
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except UserError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    audit.write(principal, "dispatch.close", f"dispatch {d.id}", now=now, detail={"vehicle": d.vehicle_id})
    return dispatch_json(d)
