"""Registry.snapshot is incremental (devices.registry.DeviceFeed, migration 0012's change log): a device added,
changed, disabled or deleted by any writer (the registry, provisioning's plain UPDATE, raw SQL, another process)
is in the next snapshot, and a re-read with nothing changed reads no device row."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, event, text, update

from core.db import make_engine
from devices.models import Device
from devices.registry import DeviceSpec, RegionSpec, Registry

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def _setup(registry: Registry, n: int = 50) -> None:
    registry.upsert_regions(
        [RegionSpec("gd", "广东", "province"), RegionSpec("gz", "广州", "city", "gd")],
        now=NOW,
    )
    registry.add_devices([DeviceSpec(f"gate-{i:04d}", "gate", "gz") for i in range(n)], now=NOW)


def _device_rows_read(registry: Registry) -> list[str]:
    """Count the statements that read the devices table (hooked on the engine)."""
    seen: list[str] = []

    def hook(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM devices" in statement:
            seen.append(statement)

    event.listen(registry.engine, "before_cursor_execute", hook)
    return seen


def test_snapshot_sees_every_kind_of_change(registry: Registry) -> None:
    _setup(registry)
    first = registry.snapshot()
    assert len(first) == 50 and registry.feed.full_reads == 1
    assert registry.snapshot() is first  # nothing changed: the same view, no copy

    registry.add_devices([DeviceSpec("gate-9000", "gate", "gz"), DeviceSpec("gate-0001", "gate", "gd")], now=NOW)
    registry.set_enabled("gate-0002", False, now=NOW)
    with registry.engine.begin() as conn:  # writers outside the registry: provisioning's UPDATE, plain SQL
        conn.execute(update(Device).where(Device.id == "gate-0003").values(expected_interval_s=7))
        conn.execute(delete(Device).where(Device.id == "gate-0004"))
    second = registry.snapshot()
    assert registry.feed.full_reads == 1 and registry.feed.changed_reads == 1  # incremental
    assert "gate-9000" in second and second["gate-0001"].region_id == "gd"
    assert second["gate-0002"].enabled is False and second["gate-0003"].expected_interval_s == 7
    assert "gate-0004" not in second and len(second) == 50
    assert first["gate-0001"].region_id == "gz" and "gate-0004" in first  # a view handed out is never modified
    assert second["gate-0010"] is first["gate-0010"]  # unchanged devices keep their object
    registry.add_devices([DeviceSpec("gate-0010", "gate", "gz", name="东门")], now=NOW)  # nothing ingest reads
    assert registry.snapshot() is second and registry.feed.changed_reads == 2


def test_changes_made_by_another_process_and_rereads_are_small(db_url: str) -> None:
    engine_a, engine_b = make_engine(db_url), make_engine(db_url)
    from core.db import migrate

    migrate(engine_a)
    a, b = Registry(engine_a), Registry(engine_b)
    try:
        _setup(a, 200)
        assert len(b.snapshot()) == 200
        reads = _device_rows_read(b)
        b.snapshot()
        assert reads == []  # nothing changed: only the log was looked at
        a.add_devices([DeviceSpec("gate-0007", "gate", "gd")], now=NOW)
        assert b.snapshot()["gate-0007"].region_id == "gd"
        assert len(reads) == 1 and "IN" in reads[0].upper()  # one read of the changed device only
        assert b.feed.full_reads == 1
    finally:
        engine_a.dispose()
        engine_b.dispose()


def test_pruned_log_falls_back_to_a_full_read(sqlite_registry: Registry) -> None:
    registry = sqlite_registry
    _setup(registry, 10)
    registry.snapshot()
    registry.add_devices([DeviceSpec("gate-0100", "gate", "gz")], now=NOW)
    with registry.engine.begin() as conn:  # another process pruned the log past what this one read
        conn.execute(text("DELETE FROM device_changes"))
    registry.add_devices([DeviceSpec("gate-0101", "gate", "gz")], now=NOW)
    view = registry.snapshot()
    assert {"gate-0100", "gate-0101"} <= set(view)
    assert registry.feed.full_reads == 2


def test_log_is_pruned(sqlite_registry: Registry) -> None:
    registry = sqlite_registry
    registry.feed.keep = 20
    _setup(registry, 10)
    registry.snapshot()
    registry.add_devices([DeviceSpec(f"gate-{i:04d}", "gate", "gz") for i in range(100, 150)], now=NOW)
    assert len(registry.snapshot()) == 60
    with registry.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM device_changes")) == 20
    registry.add_devices([DeviceSpec("gate-0200", "gate", "gz")], now=NOW)
    assert "gate-0200" in registry.snapshot() and registry.feed.full_reads == 1
