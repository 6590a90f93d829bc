"""Issue 10: the correlator's windows are stored one row per (pattern, window) and a snapshot writes only those
that changed; a restart reads them back (also from the old one-document row); the region tree re-reads only the
devices that changed and sees devices added, moved and removed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select

from devices.models import Device
from devices.registry import DeviceSpec, RegionSpec, Registry
from joint.models import JointKvRow
from joint.service import RegionTree
from joint.store import JOINT_WINDOWS, WINDOWS_KEY, JointStore

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def doc(windows: dict[str, list[Any]], seen: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shape of ``Correlator.windows()``: a group pattern with windows, a sequence-like one without."""
    return {
        "v": 1,
        "state": {
            "X9": {"windows": {k: {"scope": ["gd", k], "entries": v} for k, v in windows.items()}},
            "X1": seen or {},
        },
    }


def rows(store: JointStore) -> dict[tuple[str, str], Any]:
    c = JOINT_WINDOWS.c
    with store.engine.connect() as conn:
        return {(p, k): v for p, k, v in conn.execute(select(c.pattern_id, c.key, c.value))}


def test_only_changed_windows_are_written_and_read_back(registry: Registry) -> None:
    store = JointStore(registry.engine)
    first = doc({f"dev-{i}": [[i, "V12", f"dev-{i}", "b", "b", 1000 * i, "major", 1, True]] for i in range(100)})
    store.save(windows=first, now=T0)
    assert store.window_rows_written == 102 and len(rows(store)) == 102
    store.save(windows=first, now=T0)
    assert store.window_rows_written == 102  # nothing changed: nothing written
    second = doc(
        {
            **{f"dev-{i}": [[i, "V12", f"dev-{i}", "b", "b", 1000 * i, "major", 1, True]] for i in range(1, 100)},
            "dev-5": [[5, "V12", "dev-5", "b", "b", 5000, "major", 2, True]],  # fired again
        },
        {"gz": {"a": 1}},
    )
    store.save(windows=second, now=T0)
    assert store.window_rows_written == 102 + 3  # dev-0 gone, dev-5 changed, X1's state changed
    assert ("X9", "w:dev-0") not in rows(store)
    again = JointStore(registry.engine)
    assert again.load().windows == second
    again.save(windows=second, now=T0)
    assert again.window_rows_written == 0  # what was read is not written again


def test_old_one_document_row_is_read_then_replaced(registry: Registry) -> None:
    old = doc({"dev-1": [[1, "V12", "dev-1", "b", "b", 1000, "major", 1, True]]})
    with registry.engine.begin() as conn:
        conn.execute(JointKvRow.__table__.insert().values(key=WINDOWS_KEY, value=old, updated_at=T0))
    store = JointStore(registry.engine)
    assert store.load().windows == old
    store.save(windows=old, now=T0)
    with registry.engine.connect() as conn:
        assert conn.scalar(select(JointKvRow.key).where(JointKvRow.key == WINDOWS_KEY)) is None
    assert JointStore(registry.engine).load().windows == old


def test_region_tree_sees_devices_added_moved_and_removed(registry: Registry) -> None:
    registry.upsert_regions(
        [
            RegionSpec("gd", "广东", "province"),
            RegionSpec("gz", "广州", "city", "gd"),
            RegionSpec("b1", "一号楼", "building", "gz"),
            RegionSpec("b2", "二号楼", "building", "gz"),
        ],
        now=T0,
    )
    registry.add_devices([DeviceSpec(f"gate-{i}", "gate", "b1") for i in range(5)], now=T0)
    tree = RegionTree(registry.regions, registry.snapshot)
    tree.reload()
    before = tree.devices
    registry.add_devices([DeviceSpec("gate-9", "gate", "b2"), DeviceSpec("gate-1", "gate", "b2")], now=T0)
    with registry.engine.begin() as conn:
        conn.execute(delete(Device).where(Device.id == "gate-2"))
    tree.reload()
    assert tree.devices["gate-9"] == ("gate", "b2") and tree.devices["gate-1"] == ("gate", "b2")
    assert "gate-2" not in tree.devices and len(tree.devices) == 5
    assert before["gate-1"] == ("gate", "b1") and "gate-2" in before  # replaced, not modified
    assert registry.feed.full_reads == 1
