"""Device events and rejected messages, only of devices inside the caller's scope."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, WithJsonSchema
from sqlalchemy import select

from core.errors import REJECTION_REASONS
from core.protocol import EVENT_TYPES, RAW_KEEP, Rejection
from devices.models import Device
from gateway.deps import NowDep, PrincipalDep, RegistryDep, SettingsDep, StoreDep
from gateway.params import DAY_MS, DeviceQuery, Limit, RegionQuery, TimeQuery, error_responses, iso, time_range
from gateway.routes import API_PREFIX
from gateway.scope import device_or_404, region_filter

router = APIRouter(prefix=API_PREFIX, tags=["events"], responses=error_responses(401, 404, 422, 503))

PAYLOAD_SHOWN = 4096

# Every event type of PROTOCOL.md, of any device type.
KNOWN_EVENTS = tuple(sorted({t for table in EVENT_TYPES.values() for t in table}))


def _known_event(value: str) -> str:
    if value not in KNOWN_EVENTS:
        raise ValueError(f"{value!r} is not an event type of PROTOCOL.md: {', '.join(KNOWN_EVENTS)}")
    return value


EventType = Annotated[str, AfterValidator(_known_event), WithJsonSchema({"type": "string", "enum": list(KNOWN_EVENTS)})]
RejectionReason = Literal[REJECTION_REASONS]  # type: ignore[valid-type]


@router.get("/events")
def events(
    registry: RegistryDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    now: NowDep,
    device: DeviceQuery = None,
    region: RegionQuery = None,
    event_type: Annotated[
        list[EventType] | None, Query(alias="type", max_length=32, description="repeat for several types")
    ] = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Events newest first, in [start, end) (default: the last 7 days up to now); at most ``limit`` of them: page
    back in time by setting ``end`` to the oldest ``ts_ms`` seen."""
    start_ms, end_ms = time_range(
        start, end, now_ms=int(now.timestamp() * 1000), default_ms=7 * DAY_MS, max_days=settings.api.max_range_days
    )
    region_ids = region_filter(registry, principal, region)
    known: dict[str, Device] = {}
    device_ids: list[str] | None
    if device is not None:
        d = device_or_404(registry, principal, device)
        known[d.id] = d
        device_ids = [d.id] if region_ids is None or d.region_id in region_ids else []
    elif region_ids is None:
        device_ids = None
    else:
        devices, _ = registry.devices(region_ids=region_ids)
        known = {d.id: d for d in devices}
        device_ids = list(known)
    rows = store.events(device_ids, start_ms, end_ms, event_type or None, limit)
    if device_ids is None:
        missing = sorted({e.device_id for e in rows})
        if missing:
            with registry.session() as s:
                known = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_(missing)))}
    items = []
    for e in rows:
        known_device = known.get(e.device_id)
        items.append(
            {
                "device_id": e.device_id,
                "device_name": known_device.name if known_device else None,
                "device_type": known_device.type if known_device else None,
                "region_id": e.region_id,
                "ts_ms": e.ts_ms,
                "ts": iso(e.ts_ms),
                "type": e.type,
                "seq": e.seq,
                "data": e.data,
            }
        )
    return {"start_ms": start_ms, "end_ms": end_ms, "items": items}


def rejection_json(x: Rejection) -> dict[str, Any]:
    cut = x.payload[:PAYLOAD_SHOWN]
    return {
        "device_id": x.device_id,
        "topic": x.topic,
        "reason": x.reason,
        "detail": x.detail,
        "received_ms": x.received_ms,
        "received": iso(x.received_ms),
        "payload": cut.decode("utf-8", errors="replace"),
        "payload_bytes": len(x.payload),
        "payload_truncated": len(x.payload) > PAYLOAD_SHOWN or len(x.payload) >= RAW_KEEP,
    }


@router.get("/rejections")
def rejections(
    registry: RegistryDep,
    store: StoreDep,
    principal: PrincipalDep,
    device: DeviceQuery = None,
    region: RegionQuery = None,
    reason: Annotated[RejectionReason | None, Query(description="only this rejection reason")] = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Rejected messages newest first (payload as text, cut at 4 KiB) and counts by reason.

    Messages from devices that are not in the registry are seen only by users with the whole region tree, and
    never with a ``region`` filter (they have no region).
    """
    counts = store.rejection_counts()
    visible: set[str] | None
    if device is not None:
        if principal.region_ids is not None or registry.device(device) is not None:
            device_or_404(registry, principal, device)
        visible = {device}
        if region is not None:
            devices, _ = registry.devices(region_ids=region_filter(registry, principal, region))
            visible &= {d.id for d in devices}
    elif region is None and principal.region_ids is None:
        visible = None
    else:
        devices, _ = registry.devices(region_ids=region_filter(registry, principal, region))
        visible = {d.id for d in devices}
    by_reason: Counter[str] = Counter()
    with_rejections: set[str] = set()
    for (dev, why), n in counts.items():
        if visible is not None and dev not in visible:
            continue
        by_reason[why] += n
        if reason is None or why == reason:
            with_rejections.add(dev)
    if visible is None:
        rows = store.rejections(None, reason, limit)
    else:
        rows = []
        for dev in sorted(with_rejections):
            rows.extend(store.rejections(dev, reason, limit))
        rows.sort(key=lambda x: x.received_ms, reverse=True)
        rows = rows[:limit]
    return {
        "counts": dict(sorted(by_reason.items())),
        "total": sum(by_reason.values()),
        "items": [rejection_json(x) for x in rows],
    }
