"""JointService on SQLite and PostgreSQL: lifecycle batches in, incidents stored and told; people's actions; a
restart rebuilds open incidents, tasks, mutes and windows."""

from __future__ import annotations

from datetime import datetime

from alerts.lifecycle import LifecycleEvent
from alerts.types import Alert, AlertState, Severity
from devices.registry import DeviceSpec, RegionSpec, Registry
from joint.correlator import IncidentChange
from joint.models import IncidentState, TaskState
from joint.service import JointService, RegionTree
from tests.joint.helpers import LEVELS, T0, pack, path_of, rule_kind, s

REGIONS = [RegionSpec(r, r, level, None if level == "province" else path_of(r)[-2]) for r, level in LEVELS.items()]


def _service(reg: Registry, clock: list[datetime]) -> JointService:
    return JointService(
        reg.engine,
        pack(),
        RegionTree(reg.regions, reg.snapshot),
        rule_kind,
        clock_fn=lambda: clock[0],
    )


def _ev(kind: str, alert_id: int, rule: str, device: str, region: str, at: datetime) -> LifecycleEvent:
    a = Alert(
        alert_id,
        f"{rule}:{device}",
        rule,
        device,
        region,
        Severity.MAJOR if rule != "G6" else Severity.WARNING,
        AlertState.RESOLVED if kind == "resolved" else AlertState.FIRING,
        "t",
        "t",
        at,
        at,
        region_path=path_of(region),
    )
    return LifecycleEvent(kind, a, at, True)


def _setup(reg: Registry) -> None:
    reg.upsert_regions(sorted(REGIONS, key=lambda r: len(path_of(r.id))), now=T0)
    devs = [DeviceSpec(f"door-{i}", "gate", "gz-a1-b1") for i in range(6)]
    devs += [DeviceSpec(f"dev{i}", "gate", f"gz-a1-b{i + 1}") for i in range(4)] + [
        DeviceSpec("dev-e1", "gate", "gz-a2-b1")
    ]
    reg.add_devices(devs, now=T0)


def test_service_stores_tells_and_closes_through_tasks(registry: Registry) -> None:
    _setup(registry)
    clock = [T0]
    svc = _service(registry, clock)
    seen: list[IncidentChange] = []
    svc.subscribe(seen.append)
    svc.load()
    svc.on_events(
        [_ev("created", 1, "G1", "door-0", "gz-a1-b1", T0), _ev("created", 2, "G2", "door-1", "gz-a1-b1", T0 + s(5))]
    )
    [inc] = svc.store.list()
    assert (inc.pattern_id, inc.state, inc.member_ids) == ("X2", IncidentState.OPEN, [1, 2])
    assert [c.kind for c in seen] == ["opened", "task_created"]
    [task] = svc.store.tasks(incident_id=inc.id)
    opened = svc.store.timeline(inc.id)[0]
    assert opened.text.startswith("由关联规则 X2 生成：") and opened.data["text_en"].startswith("opened by pattern X2")

    clock[0] = T0 + s(60)
    svc.investigate(inc.id, "duty-li")
    svc.acknowledge_task(task.id, "sec-wang", "on my way")
    clock[0] = T0 + s(120)
    changes = svc.close_task(task.id, "sec-wang", "a cleaner with a stuck badge")
    assert [c.kind for c in changes] == ["task_closed", "closed"]
    got = svc.store.get(inc.id)
    assert got is not None and got.state is IncidentState.CLOSED and got.cause_code == "tasks_closed"
    assert got.closed_at == T0 + s(120) and got.closed_by == "sec-wang"
    t = svc.store.task(task.id)
    assert t is not None and (t.state, t.acknowledged_by, t.note) == (
        TaskState.CLOSED,
        "sec-wang",
        "a cleaner with a stuck badge",
    )
    kinds = [e.kind.value for e in svc.store.timeline(inc.id)]
    assert kinds.count("action") == 1 and kinds.count("task") == 3 and kinds[-1] == "event"
    assert svc.open_incidents() == []


def test_service_restart_keeps_incidents_mutes_tasks_and_windows(registry: Registry) -> None:
    _setup(registry)
    clock = [T0]
    svc = _service(registry, clock)
    svc.load()
    svc.on_events([_ev("created", 10 + i, "G11.offline", f"door-{i}", "gz-a1-b1", T0 + s(i)) for i in range(5)])
    svc.on_events([_ev("created", 20 + i, "G6", f"dev{i}", f"gz-a1-b{i + 1}", T0 + s(i)) for i in range(3)])
    assert svc.held(10) and not svc.held(20)
    svc.stop()  # writes the windows

    svc2 = _service(registry, clock)
    svc2.load()
    [x4] = svc2.open_incidents()
    assert x4.pattern_id == "X4" and x4.muted_ids == [10, 11, 12, 13, 14]
    assert all(svc2.held(i) for i in range(10, 15))
    assert [t.department for t in svc2.tasks_of(x4.id)] == ["it", "energy"]
    svc2.on_events(
        [
            _ev("created", 23, "G6", "dev3", "gz-a1-b4", T0 + s(10)),
            _ev("created", 24, "G6", "dev-e1", "gz-a2-b1", T0 + s(11)),
        ]
    )
    x5 = [i for i in svc2.store.list() if i.pattern_id == "X5"]
    assert len(x5) == 1 and x5[0].member_ids == [20, 21, 22, 23, 24] and x5[0].id == x4.id + 1
    # a muted member comes back: un-muted, its resolution held from the notifier in that batch
    svc2.on_events([_ev("resolved", 10, "G11.offline", "door-0", "gz-a1-b1", T0 + s(30))])
    assert svc2.held(10)
    got = svc2.store.get(x4.id)
    assert got is not None and got.muted_ids == [11, 12, 13, 14] and got.members[10].resolved
    svc2.on_events([])
    assert not svc2.held(10)
    svc2.stop()


def test_service_tick_escalates_a_city_cluster_to_the_province_and_stores_it(registry: Registry) -> None:
    _setup(registry)
    clock = [T0]
    svc = _service(registry, clock)
    seen: list[IncidentChange] = []
    svc.subscribe(seen.append)
    svc.load()
    where = [
        ("dev0", "gz-a1-b1"),
        ("dev1", "gz-a1-b2"),
        ("dev2", "gz-a1-b3"),
        ("dev3", "gz-a1-b4"),
        ("dev-e1", "gz-a2-b1"),
    ]
    svc.on_events([_ev("created", 30 + i, "G6", d, r, T0 + s(i)) for i, (d, r) in enumerate(where)])
    [x5] = [i for i in svc.store.list() if i.pattern_id == "X5"]
    assert (x5.scope_level.value, x5.region_id) == ("city", "gz")
    assert "escalated" not in [c.kind for c in svc.tick(T0 + s(1700))]
    changes = svc.tick(T0 + s(4 + 1800))
    assert "escalated" in [c.kind for c in changes]
    got = svc.store.get(x5.id)
    assert got is not None and (got.scope_level.value, got.region_id, got.region_path) == ("province", "gd", ("gd",))
    assert got.escalation_level == 1
    assert [i.id for i in svc.store.list(region_id="gd", open_only=True)] == [x5.id]
    assert svc.store.list(region_id="gz", open_only=True) == []  # the province's now
