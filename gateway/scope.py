"""Region scoping on the server: every object and list goes through here.

An object outside the principal's subtree is answered exactly like one that does not exist (404), so a scoped
user learns nothing about other regions.
"""

from __future__ import annotations

from fastapi import HTTPException, status

from devices.models import Device, Region
from devices.registry import Registry
from gateway.auth import Principal


def not_found(kind: str, ident: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{kind} {ident!r} not found")


def region_or_404(registry: Registry, principal: Principal, region_id: str) -> Region:
    region = registry.region(region_id)
    if region is None or not principal.sees_region(region.id):
        raise not_found("region", region_id)
    return region


def device_or_404(registry: Registry, principal: Principal, device_id: str) -> Device:
    device = registry.device(device_id)
    if device is None or not principal.sees_region(device.region_id):
        raise not_found("device", device_id)
    return device


def region_filter(registry: Registry, principal: Principal, region_id: str | None) -> list[str] | None:
    """Region ids a list may include: the subtree of ``region_id`` (404 if not visible), else the principal's
    whole scope; None means no restriction at all (an unscoped principal and no filter)."""
    if region_id is not None:
        region_or_404(registry, principal, region_id)
        ids = registry.subtree_ids(region_id)
        if principal.region_ids is not None:
            ids = [r for r in ids if r in principal.region_ids]
        return ids
    if principal.region_ids is None:
        return None
    return sorted(principal.region_ids)
