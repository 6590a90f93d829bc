"""joint/store.py on SQLite and PostgreSQL: incidents, members, timeline, tasks, filters, paging, the snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.errors import StoreUnavailable
from devices.registry import Registry
from joint.models import (
    Incident,
    IncidentMember,
    IncidentState,
    ScopeLevel,
    Severity,
    Task,
    TaskState,
    TimelineEntry,
    TimelineKind,
)
from joint.store import JointStore

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def _incident(i: int, region: tuple[str, ...], *, at: datetime = T0, group: str | None = None) -> Incident:
    return Incident(
        id=i,
        pattern_id="X4",
        type="site_outage",
        title_zh="楼宇断电",
        title_en="building outage",
        severity=Severity.MAJOR,
        state=IncidentState.OPEN,
        scope_level=ScopeLevel.BUILDING,
        region_id=region[-1],
        group_key=group or f"X4|{region[-1]}",
        opened_at=at,
        updated_at=at,
        region_path=region,
    )


def test_store_round_trip_members_timeline_tasks(registry: Registry) -> None:
    store = JointStore(registry.engine)
    inc = _incident(1, ("gd", "gz", "a1", "b1"))
    inc.members[7] = IncidentMember(7, T0, "platform.offline", "d1", "b1", muted=True)
    inc.members[8] = IncidentMember(8, T0, "platform.offline", "d2", "b1")
    inc.detail["devices"] = ["d1", "d2"]
    task = Task(1, 1, "it", TaskState.OPEN, T0, T0 + timedelta(minutes=30))
    entry = TimelineEntry(1, T0, TimelineKind.EVENT, "system", "opened", {"members": 2})
    store.save(incidents=[inc], tasks=[task], timeline=[entry], windows={"w": [1, 2]}, now=T0)

    got = store.get(1)
    assert got is not None
    assert got.member_ids == [7, 8] and got.muted_ids == [7]
    assert got.opened_at == T0 and got.region_path == ("gd", "gz", "a1", "b1")
    assert got.detail == {"devices": ["d1", "d2"]}
    assert store.tasks(incident_id=1) == [task]
    [e] = store.timeline(1)
    assert (e.kind, e.text, e.data, e.ts) == (TimelineKind.EVENT, "opened", {"members": 2}, T0)
    assert store.incidents_of_alerts([7, 8, 9]) == {7: 1, 8: 1}

    # an update: unmuted, resolved; the same snapshot twice is harmless
    inc.members[7].muted = False
    inc.state = IncidentState.RESOLVED
    inc.resolved_at = T0 + timedelta(minutes=5)
    store.save(incidents=[inc], now=T0)
    store.save(incidents=[inc], now=T0)
    got = store.get(1)
    assert got is not None and got.muted_ids == [] and got.state is IncidentState.RESOLVED
    assert got.resolved_at == T0 + timedelta(minutes=5)


def test_store_keeps_instants_given_with_an_offset(registry: Registry) -> None:
    store = JointStore(registry.engine)
    at = datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    store.save(incidents=[_incident(1, ("gd", "gz", "a1", "b1"), at=at)], now=at)
    got = store.get(1)
    assert got is not None and got.opened_at == at and got.opened_at.tzinfo is UTC


def test_store_one_open_incident_per_group_key(registry: Registry) -> None:
    store = JointStore(registry.engine)
    store.save(incidents=[_incident(1, ("gd", "gz", "a1", "b1"))], now=T0)
    with pytest.raises(StoreUnavailable):
        store.save(incidents=[_incident(2, ("gd", "gz", "a1", "b1"))], now=T0)
    closed = _incident(1, ("gd", "gz", "a1", "b1"))
    closed.state = IncidentState.CLOSED
    store.save(incidents=[closed, _incident(2, ("gd", "gz", "a1", "b1"))], now=T0)  # the key is free again
    assert store.count(open_only=True) == 1


def test_store_list_filters_by_region_subtree_and_pages(registry: Registry) -> None:
    store = JointStore(registry.engine)
    incs = [
        _incident(i, ("gd", "gz" if i % 2 else "sz", f"a{i}", f"b{i}"), at=T0 + timedelta(minutes=i))
        for i in range(1, 8)
    ]
    store.save(incidents=incs, now=T0)
    assert [i.id for i in store.list(region_id="gz")] == [7, 5, 3, 1]
    assert [i.id for i in store.list(region_id="gd", offset=2, limit=3)] == [5, 4, 3]
    assert [i.id for i in store.list(region_ids=["a2", "b3"])] == [3, 2]
    assert store.list(region_ids=[]) == []
    assert store.count(region_id="sz") == 3
    assert [i.id for i in store.list(since=T0 + timedelta(minutes=6))] == [7, 6]
    assert store.list(region_id="g") == []  # a region id, not a prefix


def test_store_load_rebuilds_open_incidents_tasks_and_windows(registry: Registry) -> None:
    store = JointStore(registry.engine)
    open_one = _incident(1, ("gd", "gz", "a1", "b1"))
    resolved_with_task = _incident(2, ("gd", "gz", "a2", "b2"))
    resolved_with_task.state = IncidentState.RESOLVED
    closed = _incident(3, ("gd", "gz", "a3", "b3"))
    closed.state = IncidentState.CLOSED
    tasks = [
        Task(4, 2, "security", TaskState.ACKNOWLEDGED, T0, T0, acknowledged_by="li", acknowledged_at=T0),
        Task(5, 3, "it", TaskState.CLOSED, T0, T0, closed_by="wang", closed_at=T0),
    ]
    store.save(incidents=[open_one, resolved_with_task, closed], tasks=tasks, windows={"k": {"a": 1}}, now=T0)
    snap = JointStore(registry.engine).load()
    assert [i.id for i in snap.incidents] == [1, 2]
    assert snap.tasks == [tasks[0]]
    assert snap.windows == {"k": {"a": 1}}
    assert (snap.next_incident_id, snap.next_task_id) == (4, 6)


def test_an_incident_saved_again_writes_only_its_new_and_changed_members(registry: Registry) -> None:
    """A city cluster keeps growing: each save writes the members that are new or changed, not all of them, and
    what is stored is still every member as the incident holds it (also after another store wrote, and after a
    restart of the store)."""
    store = JointStore(registry.engine)
    inc = _incident(1, ("gd", "gz"))
    for a in range(1, 201):
        inc.members[a] = IncidentMember(a, T0, "G1.event", f"g{a}", "b1")
    store.save(incidents=[inc], now=T0)
    assert store.member_rows_written == 200
    inc.members[201] = IncidentMember(201, T0, "G1.event", "g201", "b2")
    inc.members[5].resolved = True
    store.save(incidents=[inc], now=T0)
    assert store.member_rows_written == 202  # the new one and the changed one
    store.save(incidents=[inc], now=T0)
    assert store.member_rows_written == 202  # nothing changed: no member row written
    got = store.get(1)
    assert got is not None and got.member_ids == list(range(1, 202)) and got.members[5].resolved
    fresh = JointStore(registry.engine)  # a restarted process knows nothing written: writes every member once
    fresh.save(incidents=[inc], now=T0)
    assert fresh.member_rows_written == 201
