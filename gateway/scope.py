"""Region scoping on the server: every object and list goes through here.

An object outside the principal's subtree is answered exactly like one that does not exist (404), so a scoped
user learns nothing about other regions.
"""

from __future__ import annotations

from fastapi import HTTPException, status
from sqlalchemy import ColumnElement, and_
from sqlalchemy.orm import InstrumentedAttribute

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


def path_upper_bound(path: str) -> str:
    """The smallest string above every string that starts with ``path`` (``"/gd/sz/"`` -> ``"/gd/sz0"``, since
    ``"0"`` follows ``"/"``): ``path <= x < bound`` is "x starts with path" as a range an index can seek. Pure."""
    if not path:
        raise ValueError("empty path")
    return path[:-1] + chr(ord(path[-1]) + 1)


def under_path(column: ColumnElement[str] | InstrumentedAttribute[str], path: str, dialect: str) -> ColumnElement[bool]:
    """``column`` (a materialised path such as ``alerts.region_path``, "/gd/sz/b1/") lies in the subtree whose path
    is ``path``, as an indexed range instead of ``LIKE '%/sz/%'`` (which scans every row). The range compares
    bytes: SQLite's default BINARY collation does; on PostgreSQL the column is compared ``COLLATE "C"``, matched by
    the expression indexes of migration 0016_scope_indexes (a language collation would order "/" apart)."""
    col = column.collate("C") if dialect == "postgresql" else column
    return and_(col >= path, col < path_upper_bound(path))


def subtree_path(registry: Registry, region_id: str) -> str:
    """The materialised path ("/gd/sz/") of a region; a region that does not exist gives a path no row has."""
    region = registry.region(region_id)
    return region.path if region is not None else f"/\x00{region_id}/"
