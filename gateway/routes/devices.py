"""Devices (list, one) and a device's telemetry (raw or bucketed), always inside the caller's scope."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from core.protocol import DEVICE_TYPES
from core.store import Agg
from devices.liveness import is_online
from devices.registry import expected_interval
from gateway.deps import NowDep, PrincipalDep, RegistryDep, SettingsDep, StoreDep
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
from gateway.scope import device_or_404, region_filter
from gateway.views import device_summary, region_json

router = APIRouter(prefix=API_PREFIX, tags=["devices"], responses=error_responses(401, 404, 422, 503))

DeviceType = Literal["gate", "vehicle", "energy_meter", "sensor"]
assert set(DeviceType.__args__) == set(DEVICE_TYPES)  # type: ignore[attr-defined]


@router.get("/devices")
def list_devices(
    registry: RegistryDep,
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
    device_id: DevicePath, registry: RegistryDep, store: StoreDep, principal: PrincipalDep, now: NowDep
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
