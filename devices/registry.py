"""Region tree and device registry over SQL (SQLAlchemy 2).

The registry is the only source of a device's region and type; ingest reads a snapshot of it
(``snapshot``) and the API reads it directly. Methods take ``now`` where they stamp time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.db import session_factory
from core.errors import StoreUnavailable, UserError
from core.protocol import DEFAULT_INTERVAL_S, DEVICE_ID_RE, DEVICE_TYPES, DeviceInfo
from devices.models import LEVELS, Device, Region

# Region codes may be as short as two characters (a province code such as "gd"); otherwise like device ids.
REGION_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,63}$")


@dataclass(frozen=True, slots=True)
class RegionSpec:
    id: str
    name: str
    level: str
    parent_id: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    id: str
    type: str
    region_id: str
    name: str = ""
    expected_interval_s: int | None = None
    attributes: dict[str, Any] | None = None


def validate_device_spec(spec: DeviceSpec) -> None:
    """Raise UserError naming the problem with a device row (without looking at the database)."""
    if not DEVICE_ID_RE.match(spec.id):
        raise UserError(f"id {spec.id!r} must match {DEVICE_ID_RE.pattern}")
    if spec.type not in DEVICE_TYPES:
        raise UserError(f"type {spec.type!r} is not one of {', '.join(DEVICE_TYPES)}")
    if spec.expected_interval_s is not None and spec.expected_interval_s <= 0:
        raise UserError("expected_interval_s must be a positive number of seconds")


def expected_interval(device: Device) -> int:
    return device.expected_interval_s or DEFAULT_INTERVAL_S.get(device.type, 60)


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)

    def session(self) -> Session:
        return self._sessions()  # type: ignore[no-any-return]

    # --- regions ----------------------------------------------------------------------------------------

    def upsert_regions(self, specs: Sequence[RegionSpec], *, now: datetime) -> tuple[int, int]:
        """Insert or update regions, parents before children. Returns (created, updated)."""
        created = updated = 0
        try:
            with self.session() as s, s.begin():
                known = {r.id: r for r in s.scalars(select(Region))}
                for spec in _parents_first(specs, set(known)):
                    parent_path = "/"
                    if spec.parent_id is not None:
                        parent = known.get(spec.parent_id)
                        if parent is None:
                            raise UserError(f"region {spec.id}: parent {spec.parent_id!r} does not exist")
                        parent_path = parent.path
                        if LEVELS.index(spec.level) <= LEVELS.index(parent.level):
                            raise UserError(f"region {spec.id}: a {spec.level} cannot sit under a {parent.level}")
                    path = f"{parent_path}{spec.id}/"
                    row = known.get(spec.id)
                    if row is None:
                        row = Region(id=spec.id, created_at=now)
                        s.add(row)
                        known[spec.id] = row
                        created += 1
                    else:
                        if row.path != path and _has_children(s, row.id):
                            raise UserError(f"region {spec.id}: cannot move a region that has children")
                        updated += 1
                    row.name, row.level, row.parent_id, row.path = spec.name, spec.level, spec.parent_id, path
                    row.lat, row.lon = spec.lat, spec.lon
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry write failed: {exc}") from exc
        return created, updated

    def regions(self) -> list[Region]:
        with self.session() as s:
            return list(s.scalars(select(Region).order_by(Region.path)))

    def region(self, region_id: str) -> Region | None:
        with self.session() as s:
            return s.get(Region, region_id)

    def subtree_ids(self, region_id: str) -> list[str]:
        """The region and all its descendants; empty if it does not exist."""
        with self.session() as s:
            root = s.get(Region, region_id)
            if root is None:
                return []
            return list(s.scalars(select(Region.id).where(Region.path.startswith(root.path))))

    def ancestors(self, region_id: str) -> list[str]:
        """Root first, the region itself last."""
        region = self.region(region_id)
        return [] if region is None else [p for p in region.path.split("/") if p]

    # --- devices ----------------------------------------------------------------------------------------

    def add_devices(self, specs: Iterable[DeviceSpec], *, now: datetime) -> tuple[int, int]:
        """Insert new devices and update existing ones in one transaction. Returns (created, updated)."""
        created = updated = 0
        specs = list(specs)
        for spec in specs:
            validate_device_spec(spec)
        try:
            with self.session() as s, s.begin():
                regions = set(s.scalars(select(Region.id)))
                existing = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_([x.id for x in specs])))}
                for spec in specs:
                    if spec.region_id not in regions:
                        raise UserError(f"device {spec.id}: region {spec.region_id!r} does not exist")
                    row = existing.get(spec.id)
                    if row is None:
                        row = Device(id=spec.id, created_at=now, enabled=True)
                        s.add(row)
                        existing[spec.id] = row
                        created += 1
                    else:
                        updated += 1
                    row.type, row.region_id, row.name = spec.type, spec.region_id, spec.name
                    row.expected_interval_s = spec.expected_interval_s
                    row.attributes = dict(spec.attributes or {})
                    row.updated_at = now
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry write failed: {exc}") from exc
        return created, updated

    def device(self, device_id: str) -> Device | None:
        with self.session() as s:
            return s.get(Device, device_id)

    def devices(
        self,
        *,
        region_ids: Sequence[str] | None = None,
        device_type: str | None = None,
        enabled: bool | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Device], int]:
        """A page of devices and the total count matching the filters."""
        q = select(Device)
        if region_ids is not None:
            q = q.where(Device.region_id.in_(list(region_ids)))
        if device_type is not None:
            q = q.where(Device.type == device_type)
        if enabled is not None:
            q = q.where(Device.enabled == enabled)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            page = q.order_by(Device.id).offset(offset)
            if limit is not None:
                page = page.limit(limit)
            return list(s.scalars(page)), int(total)

    def set_enabled(self, device_id: str, enabled: bool, *, now: datetime) -> Device:
        with self.session() as s, s.begin():
            row = s.get(Device, device_id)
            if row is None:
                raise UserError(f"device {device_id!r} does not exist")
            row.enabled = enabled
            row.updated_at = now
            return row

    def snapshot(self) -> dict[str, DeviceInfo]:
        """What ingest needs about every device, in one query."""
        try:
            with self.session() as s:
                rows = s.execute(
                    select(Device.id, Device.type, Device.region_id, Device.enabled, Device.expected_interval_s)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry read failed: {exc}") from exc
        return {d: DeviceInfo(d, t, r, bool(e), i or DEFAULT_INTERVAL_S.get(t, 60)) for d, t, r, e, i in rows}


def _has_children(s: Session, region_id: str) -> bool:
    return s.scalar(select(func.count()).select_from(Region).where(Region.parent_id == region_id)) != 0


def _parents_first(specs: Sequence[RegionSpec], existing: set[str]) -> list[RegionSpec]:
    """Order specs so every parent comes before its children; detect unknown parents and cycles."""
    by_id: dict[str, RegionSpec] = {}
    for spec in specs:
        if not REGION_ID_RE.match(spec.id):
            raise UserError(f"region id {spec.id!r} must match {REGION_ID_RE.pattern}")
        if spec.level not in LEVELS:
            raise UserError(f"region {spec.id}: level {spec.level!r} is not one of {', '.join(LEVELS)}")
        if spec.id in by_id:
            raise UserError(f"region {spec.id} is listed twice")
        by_id[spec.id] = spec
    ordered: list[RegionSpec] = []
    done = set(existing) - set(by_id)
    pending = dict(by_id)
    while pending:
        ready = [s for s in pending.values() if s.parent_id is None or s.parent_id in done]
        if not ready:
            bad = sorted(pending)[0]
            raise UserError(f"region {bad}: parent {pending[bad].parent_id!r} does not exist (or forms a cycle)")
        for spec in ready:
            ordered.append(spec)
            done.add(spec.id)
            del pending[spec.id]
    return ordered
