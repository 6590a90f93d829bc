"""JSON shapes of registry objects joined with their telemetry state."""

from __future__ import annotations

from typing import Any

from core.store import DeviceState
from devices.liveness import is_online
from devices.models import Device, Region
from devices.registry import expected_interval
from gateway.params import iso


def device_summary(device: Device, state: DeviceState | None, now_ms: int) -> dict[str, Any]:
    interval = expected_interval(device)
    last_seen = state.last_seen_ms if state is not None else None
    return {
        "id": device.id,
        "name": device.name,
        "type": device.type,
        "region_id": device.region_id,
        "enabled": device.enabled,
        "expected_interval_s": interval,
        "online": is_online(state, interval, now_ms),
        "last_seen_ms": last_seen,
        "last_seen": iso(last_seen),
        "status": state.status if state is not None else None,
    }


def region_json(region: Region) -> dict[str, Any]:
    return {
        "id": region.id,
        "name": region.name,
        "level": region.level,
        "parent_id": region.parent_id,
        "lat": region.lat,
        "lon": region.lon,
    }
