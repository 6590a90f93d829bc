"""JSON shapes of registry objects joined with their telemetry state; the control-room page's CSP and settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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
        "attributes": dict(region.attributes or {}),
    }


# The page loads nothing from anywhere else (closed government intranets); the one exception is the map's tile
# server when the operator configured one (api.map_tile_url, on their own network): images from that origin only.
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def tile_origin(tile_url: str | None) -> str | None:
    """``scheme://host[:port]`` of the tile URL template (None without one)."""
    if not tile_url:
        return None
    parts = urlsplit(tile_url)
    return f"{parts.scheme}://{parts.netloc}"


def page_csp(tile_url: str | None = None) -> str:
    """The page's Content-Security-Policy: 'self' only, plus the tile server's origin for images when set."""
    origin = tile_origin(tile_url)
    return _PAGE_CSP.format(tiles=f" {origin}" if origin else "")


def page_config(tile_url: str | None) -> dict[str, Any]:
    """What the page needs from the settings before anyone logs in (no secret): the map's tile URL template."""
    return {"map_tile_url": tile_url}
