"""Devices (list, one) and a device's telemetry (raw or bucketed), always inside the caller's scope; and the region
admin's device management of their subtree, as ``lianfang devices add`` / ``rotate`` / ``delete`` do it:

* ``POST /devices``: register a device in a region of the caller's scope and give it its broker identity; the
  secret is in the answer, once (``Cache-Control: no-store``), stored only as a hash.
* ``PATCH /devices/{id}``: name, expected interval, or another region inside the scope.
* ``POST /devices/{id}/credentials``: a new secret (the first identity, or a rotation that kicks the connected
  device and refuses the old secret); shown once; a sensitive action, audited.
* ``POST /devices/{id}/decommission``: remove the broker identity and the credential (a connected device is
  kicked) and disable the device; its registry row and history stay.

Only the role ``admin`` (``region_admin``); a device or region outside the caller's subtree is 404. Every write is
audited (``device.create``, ``device.update``, ``device.credentials``, ``device.decommission``, and the
provisioner's own per-device records).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from core.errors import BrokerUnavailable, LianfangError, StoreUnavailable, UserError
from core.protocol import DEVICE_ID_RE, DEVICE_TYPES
from core.store import Agg
from devices.audit import Actor
from devices.imports import DeviceRow, device_row_problems, write_devices
from devices.liveness import is_online
from devices.provisioning import ProvisionOnWrite
from devices.registry import REGION_ID_RE, expected_interval
from gateway.audit import ApiAudit
from gateway.auth import Principal
from gateway.deps import (
    AuditDep,
    NowDep,
    PrincipalDep,
    ProvisioningDep,
    ReadRegistryDep,
    RegistryDep,
    SettingsDep,
    StoreDep,
    client_origin,
    require_role,
)
from gateway.params import (
    DAY_MS,
    BucketQuery,
    DevicePath,
    Limit,
    Offset,
    RegionQuery,
    TimeQuery,
    bad_param,
    error_responses,
    iso,
    iso_at,
    parse_bucket,
    time_range,
)
from gateway.routes import API_PREFIX
from gateway.scope import device_or_404, region_filter, region_or_404
from gateway.views import device_summary, region_json

router = APIRouter(prefix=API_PREFIX, tags=["devices"], responses=error_responses(401, 404, 422, 503))
# The management routes also answer 400 (a body that is not UTF-8), 403 (not a region admin) and 409.
_WRITE_ERRORS = error_responses(400, 403, 409)
RegionAdmin = Annotated[Principal, Depends(require_role("admin"))]

DeviceType = Literal["gate", "vehicle", "energy_meter", "sensor"]
assert set(DeviceType.__args__) == set(DEVICE_TYPES)  # type: ignore[attr-defined]


@router.get("/devices")
def list_devices(
    registry: ReadRegistryDep,
    store: StoreDep,
    principal: PrincipalDep,
    now: NowDep,
    region: RegionQuery = None,
    device_type: Annotated[DeviceType | None, Query(alias="type")] = None,
    enabled: bool | None = None,
    online: bool | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """A page of devices with online state and last seen; ``total`` counts all matches."""
    now_ms = int(now.timestamp() * 1000)
    region_ids = region_filter(registry, principal, region)
    if online is None:
        page, total = registry.devices(
            region_ids=region_ids, device_type=device_type, enabled=enabled, offset=offset, limit=limit
        )
        states = store.device_states([d.id for d in page])
    else:
        # Online state lives in the telemetry store, not SQL: filter the whole match set, then page.
        matches, _ = registry.devices(region_ids=region_ids, device_type=device_type, enabled=enabled)
        states = store.device_states([d.id for d in matches])
        wanted = [d for d in matches if is_online(states.get(d.id), expected_interval(d), now_ms) == online]
        total = len(wanted)
        page = wanted[offset : offset + limit]
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": [device_summary(d, states.get(d.id), now_ms) for d in page],
    }


@router.get("/devices/{device_id}")
def get_device(
    device_id: DevicePath, registry: ReadRegistryDep, store: StoreDep, principal: PrincipalDep, now: NowDep
) -> dict[str, Any]:
    """Registry fields, online state, last seen, data-quality counters and the last value of every field."""
    device = device_or_404(registry, principal, device_id)
    state = store.device_states([device.id]).get(device.id)
    out = device_summary(device, state, int(now.timestamp() * 1000))
    out["attributes"] = device.attributes
    out["created_at"] = iso_at(device.created_at)
    out["updated_at"] = iso_at(device.updated_at)
    region = registry.region(device.region_id)
    out["region"] = region_json(region) if region is not None else None
    out["region_path"] = [r for r in registry.ancestors(device.region_id) if principal.sees_region(r)]
    out["fw"] = state.fw if state is not None else None
    out["status_ms"] = state.status_ms if state is not None else None
    out["counters"] = {
        "messages": state.messages if state else 0,
        "gaps": state.gaps if state else 0,
        "duplicates": state.duplicates if state else 0,
        "nonstandard": state.nonstandard if state else 0,
        "rejected": state.rejected if state else 0,
    }
    out["last_values"] = {
        fld: {"ts_ms": ts, "ts": iso(ts), "value": value}
        for fld, (ts, value) in sorted(store.last_values(device.id).items())
    }
    return out


AggName = Literal["mean", "min", "max", "sum", "count", "last"]


@router.get("/devices/{device_id}/telemetry")
def telemetry(
    device_id: DevicePath,
    registry: RegistryDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    now: NowDep,
    field: Annotated[str, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="telemetry field, e.g. power_kw")],
    start: TimeQuery = None,
    end: TimeQuery = None,
    bucket: BucketQuery = None,
    agg: AggName = "mean",
) -> dict[str, Any]:
    """Raw points of one field, or one aggregated value per time bucket when ``bucket`` is given.

    The range is at most ``api.max_range_days``; more than ``api.max_points`` points or buckets is a 422 that
    says how to narrow the query.
    """
    device = device_or_404(registry, principal, device_id)
    max_points = settings.api.max_points
    start_ms, end_ms = time_range(
        start, end, now_ms=int(now.timestamp() * 1000), default_ms=DAY_MS, max_days=settings.api.max_range_days
    )
    out: dict[str, Any] = {
        "device_id": device.id,
        "field": field,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "start": iso(start_ms),
        "end": iso(end_ms),
    }
    if bucket is None:
        points = store.raw(device.id, field, start_ms, end_ms, max_points + 1)
        if len(points) > max_points:
            raise bad_param(
                "start",
                f"more than {max_points} points in this range (api.max_points); "
                "narrow start/end or aggregate with bucket=",
            )
        out.update(bucket_ms=None, agg=None, points=[[ts, v] for ts, v in points])
        return out
    bucket_ms = parse_bucket(bucket)
    n_buckets = (end_ms - 1) // bucket_ms - start_ms // bucket_ms + 1  # buckets are aligned to the epoch
    if n_buckets > max_points:
        raise bad_param(
            "bucket", f"{n_buckets} buckets exceed the limit of {max_points} (api.max_points); use a larger bucket"
        )
    agg_name: Agg = agg
    buckets = store.aggregate(device.id, field, start_ms, end_ms, bucket_ms, agg_name, max_points)
    out.update(
        bucket_ms=bucket_ms,
        agg=agg,
        buckets=[{"ts_ms": b.ts_ms, "value": b.value, "count": b.count} for b in buckets],
    )
    return out


# --- management by region admins -----------------------------------------------------------------------------

DeviceId = Annotated[str, Field(min_length=3, max_length=64, pattern=DEVICE_ID_RE.pattern)]
RegionId = Annotated[str, Field(min_length=2, max_length=64, pattern=REGION_ID_RE.pattern)]
DeviceName = Annotated[str, Field(max_length=128)]
Interval = Annotated[int, Field(ge=1, le=86_400, description="expected seconds between reports (1..86400)")]
_NO_STORE = {"Cache-Control": "no-store"}


class NewDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    type: DeviceType
    region_id: RegionId
    name: DeviceName = ""
    expected_interval_s: Interval | None = None


class DeviceChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DeviceName | None = None
    region_id: RegionId | None = None
    expected_interval_s: Interval | None = None


def _actor(principal: Principal, request_origin: str) -> Actor:
    return Actor(f"{principal.name} ({principal.role})", request_origin)


def _refused(audit: ApiAudit, principal: Principal, action: str, device_id: str, exc: Exception, now: Any) -> None:
    outcome = "error" if isinstance(exc, BrokerUnavailable | StoreUnavailable) else "refused"
    audit.write(principal, action, f"device {device_id}", now=now, outcome=outcome, detail={"error": str(exc)[:300]})


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, BrokerUnavailable):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"broker unavailable: {exc}")
    if isinstance(exc, UserError):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"provisioning failed: {exc}")


@router.post("/devices", status_code=status.HTTP_201_CREATED, responses=_WRITE_ERRORS)
def create_device(
    body: NewDevice,
    request: Request,
    principal: RegionAdmin,
    registry: RegistryDep,
    store: StoreDep,
    provisioning: ProvisioningDep,
    audit: AuditDep,
    now: NowDep,
) -> JSONResponse:
    """Register a device in a region of the caller's subtree and create its broker identity. Answers the device
    and its ``secret``, shown only this once. 409 if the id is taken; nothing is written if the broker cannot be
    reached (503)."""
    region_or_404(registry, principal, body.region_id)
    if registry.device(body.id) is not None:
        # Taken, in scope or not: the same answer, which names no region.
        audit.write(principal, "device.create", f"device {body.id}", now=now, outcome="conflict")
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"device id {body.id!r} is taken")
    given = frozenset(k for k in ("name", "expected_interval_s") if k in body.model_fields_set)
    row = DeviceRow(body.id, body.type, body.region_id, None, body.name, body.expected_interval_s, given)
    problems = device_row_problems(row, {body.region_id})
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="; ".join(problems))
    detail = {"type": body.type, "region_id": body.region_id, "name": body.name}
    try:
        with provisioning(_actor(principal, client_origin(request))) as prov:
            hook = ProvisionOnWrite(prov, now)
            write_devices(registry, [row], now=now, on_written=hook)
    except (LianfangError, StoreUnavailable) as exc:
        _refused(audit, principal, "device.create", body.id, exc, now)
        raise _http(exc) from exc
    audit.write(principal, "device.create", f"device {body.id}", now=now, detail={**detail, "secret_shown": True})
    device = registry.device(body.id)
    assert device is not None
    out = device_summary(device, store.device_states([body.id]).get(body.id), int(now.timestamp() * 1000))
    out["secret"] = hook.secrets.get(body.id)
    return JSONResponse(out, status_code=status.HTTP_201_CREATED, headers=_NO_STORE)


@router.patch("/devices/{device_id}", responses=_WRITE_ERRORS)
def update_device(
    device_id: DevicePath,
    body: DeviceChange,
    principal: RegionAdmin,
    registry: RegistryDep,
    store: StoreDep,
    audit: AuditDep,
    now: NowDep,
) -> dict[str, Any]:
    """Change a device's name, expected interval or region (inside the caller's subtree)."""
    device = device_or_404(registry, principal, device_id)
    region = device.region_id
    if body.region_id is not None:
        region = region_or_404(registry, principal, body.region_id).id
    given = frozenset(k for k in ("name", "expected_interval_s") if getattr(body, k) is not None)
    row = DeviceRow(device.id, device.type, region, None, body.name or "", body.expected_interval_s, given)
    changes = {k: getattr(body, k) for k in sorted(body.model_fields_set)}
    try:
        write_devices(registry, [row], now=now)
    except (UserError, StoreUnavailable) as exc:
        _refused(audit, principal, "device.update", device_id, exc, now)
        raise _http(exc) from exc
    audit.write(principal, "device.update", f"device {device_id}", now=now, detail=changes)
    updated = registry.device(device_id)
    assert updated is not None
    return device_summary(updated, store.device_states([device_id]).get(device_id), int(now.timestamp() * 1000))


@router.post("/devices/{device_id}/credentials", responses=_WRITE_ERRORS)
def device_credentials(
    device_id: DevicePath,
    request: Request,
    principal: RegionAdmin,
    registry: RegistryDep,
    provisioning: ProvisioningDep,
    audit: AuditDep,
    now: NowDep,
) -> JSONResponse:
    """A new secret for the device: its first broker identity, or a rotation (the connected device is kicked and
    the old secret refused from now on). The secret is in the answer only this once."""
    device_or_404(registry, principal, device_id)
    try:
        with provisioning(_actor(principal, client_origin(request))) as prov:
            rotated = prov.credential(device_id) is not None
            secret = prov.rotate(device_id, now) if rotated else prov.create(device_id, now)
    except (LianfangError, StoreUnavailable) as exc:
        _refused(audit, principal, "device.credentials", device_id, exc, now)
        raise _http(exc) from exc
    kind = "rotated" if rotated else "created"
    audit.write(
        principal, "device.credentials", f"device {device_id}", now=now, detail={"identity": kind, "secret_shown": True}
    )
    return JSONResponse({"device_id": device_id, "identity": kind, "secret": secret}, headers=_NO_STORE)


@router.post("/devices/{device_id}/decommission", responses=_WRITE_ERRORS)
def decommission_device(
    device_id: DevicePath,
    request: Request,
    principal: RegionAdmin,
    registry: RegistryDep,
    provisioning: ProvisioningDep,
    audit: AuditDep,
    now: NowDep,
) -> dict[str, Any]:
    """Take a device out of service: its broker identity and credential removed (a connected device is kicked),
    the device disabled (ingest rejects what still arrives). The registry row and its history stay."""
    device_or_404(registry, principal, device_id)
    try:
        with provisioning(_actor(principal, client_origin(request))) as prov:
            had = prov.credential(device_id) is not None
            if had:
                prov.delete(device_id, now)
            registry.set_enabled(device_id, False, now=now)
    except (LianfangError, StoreUnavailable) as exc:
        _refused(audit, principal, "device.decommission", device_id, exc, now)
        raise _http(exc) from exc
    audit.write(principal, "device.decommission", f"device {device_id}", now=now, detail={"identity_removed": had})
    return {"device_id": device_id, "enabled": False, "identity_removed": had}
