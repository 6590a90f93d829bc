"""Region tree and device registry over SQL (SQLAlchemy 2).

The registry is the only source of a device's region and type; ingest, the alert service and the joint service
read a snapshot of it (``snapshot``) every few seconds and the API reads it directly. Methods take ``now`` where
they stamp time.

``snapshot`` is incremental (``DeviceFeed``): triggers on ``devices`` log every inserted, updated or deleted row
in ``device_changes`` (migration 0012), and a re-read fetches only the devices logged since the last one, so at
100,000 devices it costs O(changes), not the ~500 ms of building every ``DeviceInfo`` again. Unchanged devices
keep the same ``DeviceInfo`` object and an unchanged registry returns the same dict, so readers can skip what did
not change by identity. A full re-read still happens at the first call, every ``DeviceFeed.full_every_s``, when
the log was pruned past what this process read, or when too many devices changed at once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.db import session_factory
from core.errors import StoreUnavailable, UserError
from core.protocol import DEFAULT_INTERVAL_S, DEVICE_ID_RE, DEVICE_TYPES, RULE_ATTRIBUTES, DeviceInfo
from devices.models import LEVELS, Device, Region

# The change log of ``devices`` (migration 0012_incremental_state: rows written by triggers, never by this code).
DEVICE_CHANGES = Table(
    "device_changes",
    MetaData(),
    Column("seq", Integer, primary_key=True),
    Column("device_id", String(64), nullable=False),
)

# Region codes may as short as two characters (a province code such as "gd"); otherwise like device ids.
REGION_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,63}$")


@dataclass(frozen=True, slots=True)
class RegionSpec:
    id: str
    name: str
    level: str
    parent_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    # devices/region_attrs.py; None: not given (an update keeps the stored attributes).
    attributes: dict[str, Any] | None = None


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
        self.feed = DeviceFeed(engine)

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
                    if spec.attributes is not None or row.attributes is None:
                        row.attributes = dict(spec.attributes or {})
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
        """What ingest, the alert service and the joint service need about every device, current as of this call
        (every change committed before it is in). Incremental (``DeviceFeed``): do not modify the dict returned;
        the same dict is returned again while nothing changed."""
        return self.feed.read()


_DEVICE_COLUMNS = (
    Device.id,
    Device.type,
    Device.region_id,
    Device.enabled,
    Device.expected_interval_s,
    Device.attributes,
)


def _info(d: str, t: str, r: str, e: Any, i: int | None, a: Any = None) -> DeviceInfo:
    kept = {k: a[k] for k in RULE_ATTRIBUTES if k in a} if isinstance(a, dict) else None
    return DeviceInfo(d, t, r, bool(e), i or DEFAULT_INTERVAL_S.get(t, 60), kept or None)


class DeviceFeed:
    """Every device as ``DeviceInfo``, kept current by re-reading only the devices changed since the last read.

    ``read()`` returns the current view: the same dict while nothing changed, else a new dict (the old one is
    never modified: a reader may hold it) in which unchanged devices keep their ``DeviceInfo`` objects.

    How changes are found: ``device_changes`` (seq, device_id), one row per changed ``devices`` row, written by
    triggers. A read takes the rows after the last seq applied, and re-checks the ``OVERLAP`` seqs below it: on
    PostgreSQL a transaction holding a lower seq may commit after one holding a higher seq, so a seq is applied
    once it is seen, whenever that is (``_seen``). A device logged is read again from ``devices``; a logged id with
    no row was deleted. A full read (the first, then every ``full_every_s`` as a safety net, when the log was
    pruned past the last seq read here, or when more than ``max_changes`` devices changed) reads the log's head
    first and then every device, so a change racing with it is applied again by the next read. The log is pruned
    to its newest ``keep`` rows when it holds twice that. Without the log table (a database not migrated to
    0012) every read is a full read, as before.
    """

    OVERLAP = 1000

    def __init__(
        self, engine: Engine, *, full_every_s: float = 3600.0, max_changes: int = 20_000, keep: int = 200_000
    ) -> None:
        self.engine = engine
        self.full_every_s = full_every_s
        self.max_changes = max_changes
        self.keep = keep
        self.devices: dict[str, DeviceInfo] = {}
        self.full_reads = 0
        self.changed_reads = 0  # reads that found changes and applied them without a full read
        self._last_seq: int | None = None  # None: no read yet (or no log table): the next read is a full one
        self._seen: set[int] = set()  # seqs in (last - OVERLAP, last] already applied
        self._full_at = float("-inf")
        self._lock = threading.Lock()

    def read(self) -> dict[str, DeviceInfo]:
        try:
            with self._lock, self.engine.connect() as conn:
                due = self._last_seq is None or time.monotonic() - self._full_at >= self.full_every_s
                if due or not self._changes(conn):
                    self._full(conn)
                return self.devices
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry read failed: {exc}") from exc

    def _head(self, conn: Any) -> tuple[int, set[int]] | None:
        """The log's newest seq and the seqs of its last OVERLAP; None without the log table."""
        c = DEVICE_CHANGES.c
        try:
            last = int(conn.scalar(select(func.max(c.seq))) or 0)
            seen = set(conn.scalars(select(c.seq).where(c.seq > last - self.OVERLAP)))
        except SQLAlchemyError:
            conn.rollback()
            return None
        return last, seen

    def _full(self, conn: Any) -> None:
        head = self._head(conn)  # before the devices: a change after this point is applied by the next read
        rows = conn.execute(select(*_DEVICE_COLUMNS)).all()
        conn.rollback()
        old = self.devices
        devices: dict[str, DeviceInfo] = {}
        for row in rows:
            info = _info(*row)
            prev = old.get(info.device_id)
            devices[info.device_id] = prev if prev == info else info
        self.devices = devices
        self._last_seq, self._seen = head if head is not None else (None, set())
        self._full_at = time.monotonic()
        self.full_reads += 1

    def _changes(self, conn: Any) -> bool:
        """Apply the changes logged since the last read; False when a full read is needed instead."""
        last = self._last_seq
        assert last is not None
        c = DEVICE_CHANGES.c
        try:
            lowest = conn.scalar(select(func.min(c.seq)))
            if lowest is not None and lowest > last + 1:
                return False  # pruned past what was read here
            logged = conn.execute(select(c.seq, c.device_id).where(c.seq > last - self.OVERLAP)).all()
        except SQLAlchemyError:
            conn.rollback()
            return False
        fresh = [(seq, dev) for seq, dev in logged if seq not in self._seen and seq > last - self.OVERLAP]
        if not fresh:
            conn.rollback()
            return True
        ids = sorted({dev for _, dev in fresh})
        if len(ids) > self.max_changes:
            conn.rollback()
            return False
        found: dict[str, DeviceInfo] = {}
        for i in range(0, len(ids), 500):
            for row in conn.execute(select(*_DEVICE_COLUMNS).where(Device.id.in_(ids[i : i + 500]))):
                info = _info(*row)
                found[info.device_id] = info
        top = max(seq for seq, _ in fresh)
        if lowest is not None and top - lowest >= 2 * self.keep:
            conn.execute(delete(DEVICE_CHANGES).where(c.seq <= top - self.keep))
            conn.commit()
        else:
            conn.rollback()
        current = self.devices
        gone = [dev for dev in ids if dev not in found and dev in current]
        moved = {dev: info for dev, info in found.items() if current.get(dev) != info}
        if gone or moved:  # else (e.g. only a name changed): the same view, readers skip it by identity
            devices = dict(current)
            for dev in gone:
                del devices[dev]
            devices.update(moved)
            self.devices = devices
        new_last = max(last, top)
        self._seen = {s for s in self._seen if s > new_last - self.OVERLAP} | {
            seq for seq, _ in fresh if seq > new_last - self.OVERLAP
        }
        self._last_seq = new_last
        self.changed_reads += 1
        return True


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
