"""X2, X4 and X5 end to end through a real Mosquitto, ingest and the alert engine, with a restart in the middle.

The stack runs as ``lianfang serve`` wires it: ``SharedPublisher`` (the simulator account) -> Mosquitto (the
project's generated config) -> ``IngestService`` (real SQLite telemetry store and registry) ->
``AlertsRuntime.on_batch`` (default packs) -> ``JointService`` (the X pack, attached by ``joint.service.build``).
Device timestamps are the wall clock, so the rules' timers (G1's settle window, absence) run as in production.

- X2: forced doors (G1) at two doors of building b1 within seconds: one critical intrusion incident, a security
  task. A forced door alone in another city (sz) is the near miss: nothing.
- X4: 200 gates of building b3 that never report (G11.offline after 2 s instead of 150 s): one outage incident
  with 200 muted members, none of whose offline alerts reaches the notifier; three of them come back and are
  un-muted (their resolution is not notified either: nobody was told they fired).
- X5: tamper alerts (G11.tamper) from gates in three buildings of Guangzhou: three before a restart, two after;
  one city incident with all five members (the window survived the restart).
- The restart keeps every incident, member, mute and task; at the end there are exactly these three incidents.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts.notify import Notification
from alerts.wiring import AlertsRuntime
from core.settings import AlertSettings, JointSettings, Settings
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from ingest.service import IngestService
from joint.correlator import IncidentChange
from joint.models import Incident, IncidentState, ScopeLevel, Severity
from joint.service import JointService, build
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on

REGIONS = [
    RegionSpec("gd", "广东省", "province"),
    RegionSpec("gz", "广州市", "city", "gd"),
    RegionSpec("gz-a1", "市机关事务局", "agency", "gz"),
    RegionSpec("gz-a1-b1", "一号楼", "building", "gz-a1"),
    RegionSpec("gz-a1-b2", "二号楼", "building", "gz-a1"),
    RegionSpec("gz-a1-b3", "三号楼", "building", "gz-a1"),
    RegionSpec("gz-a1-b4", "四号楼", "building", "gz-a1"),
    RegionSpec("gz-a2", "区机关事务局", "agency", "gz"),
    RegionSpec("gz-a2-b1", "区办公楼", "building", "gz-a2"),
    RegionSpec("sz", "深圳市", "city", "gd"),
    RegionSpec("sz-a1", "深圳机关事务局", "agency", "sz"),
    RegionSpec("sz-a1-b1", "深圳办公楼", "building", "sz-a1"),
]
DOORS_B1 = ["gate-b1-door1", "gate-b1-door2"]
DOOR_SZ = "gate-sz-door1"  # the near miss of X2: a forced door alone
STORM = [f"gate-b3-{i:03d}" for i in range(200)]
TAMPER = [  # X5: 5 gates in 3 buildings of gz
    ("gate-b2-t1", "gz-a1-b2"),
    ("gate-b4-t1", "gz-a1-b4"),
    ("gate-a2-t1", "gz-a2-b1"),
    ("gate-b2-t2", "gz-a1-b2"),
    ("gate-b4-t2", "gz-a1-b4"),
]
# G11.offline after 2 s for the storm building only (the pack: 2.5 x 60 s, longer than this test runs)
RULES = "overrides:\n  - {rule: G11.offline, region: gz-a1-b3, params: {interval_s: 1, factor: 2}}\n"


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class Seq:
    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def msg(self, device: str, kind: str, body: str) -> SimMessage:
        seq = self.n[device] = self.n.get(device, 0) + 1
        ts = _now_ms()
        return SimMessage(device, kind, f'{{"ts":{ts},"seq":{seq},{body}}}'.encode(), ts, seq)


@dataclass
class Stack:
    alerts: AlertsRuntime
    joint: JointService
    ingest: IngestService
    pub: SharedPublisher
    notified: list[Notification]
    changes: list[IncidentChange]

    def publish(self, msgs: list[SimMessage]) -> None:
        for m in msgs:
            self.pub.publish(m)
        assert self.pub.flush(15), "broker did not acknowledge every message"

    def incidents(self) -> list[Incident]:
        return sorted(self.joint.store.list(limit=1000), key=lambda i: i.id)

    def incident(self, pattern: str) -> Incident | None:
        found = [i for i in self.incidents() if i.pattern_id == pattern]
        return found[0] if found else None


@contextmanager
def running_stack(broker: Any, reg: Registry, store: SqliteStore, rules: Path) -> Iterator[Stack]:
    settings = Settings(
        alerts=AlertSettings(rules_paths=[rules], tick_interval_s=0.05, escalation_tick_s=0.5),
        joint=JointSettings(tick_interval_s=0.05, snapshot_interval_s=0.2),
    )
    alerts = AlertsRuntime(settings, reg, notify_stop_timeout_s=3, notify_idle_wait_s=0.05)
    notified: list[Notification] = []
    handed = alerts.dispatcher.notify

    def record(n: Notification) -> None:  # what the notifier is handed (our own seam; then the real dispatcher)
        notified.append(n)
        handed(n)

    alerts.dispatcher.notify = record  # type: ignore[method-assign]
    joint = build(settings, reg, alerts)
    changes: list[IncidentChange] = []
    joint.subscribe(changes.append)
    joint.start()
    alerts.start()
    ingest = ingest_on(broker, store, reg.snapshot, listeners=[alerts.on_batch])
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password)
    try:
        ingest.start()
        try:
            pub.start()
            try:
                yield Stack(alerts, joint, ingest, pub, notified, changes)
            finally:
                pub.close()
        finally:
            ingest.stop()
    finally:
        alerts.stop()
        joint.stop()


def _forced(seq: Seq, door: str) -> list[SimMessage]:
    return [seq.msg(door, "telemetry", '"door_open":false'), seq.msg(door, "telemetry", '"door_open":true')]


@pytest.mark.integration
def test_x2_x4_x5_through_mosquitto_with_a_restart_in_the_middle(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    reg = sqlite_registry
    now = datetime.now(UTC)
    reg.upsert_regions(REGIONS, now=now)
    devices = [DeviceSpec(d, "gate", "gz-a1-b1") for d in DOORS_B1] + [DeviceSpec(DOOR_SZ, "gate", "sz-a1-b1")]
    devices += [DeviceSpec(d, "gate", "gz-a1-b3") for d in STORM] + [DeviceSpec(d, "gate", r) for d, r in TAMPER]
    reg.add_devices(devices, now=now)
    rules = tmp_path / "scenario.yaml"
    rules.write_text(RULES, encoding="utf-8")
    seq = Seq()

    with running_stack(broker, reg, store, rules) as stack:
        # X4: the storm building never reports; its 200 gates go offline together about 2 s after the start
        x4 = wait_until(lambda: (i := stack.incident("X4")) and len(i.members) == 200 and i, 20, what="X4, 200")
        assert (x4.scope_level, x4.region_id, x4.type) == (ScopeLevel.BUILDING, "gz-a1-b3", "site_outage")
        assert len(x4.muted_ids) == 200
        storm_alerts = {a.id for a in stack.alerts.service.open_alerts() if a.device_id in STORM}
        assert storm_alerts == set(x4.member_ids)
        assert not [n for n in stack.notified if n.alert.device_id in STORM]  # none reached the notifier

        # X2 and its near miss
        stack.publish(_forced(seq, DOORS_B1[0]) + _forced(seq, DOORS_B1[1]) + _forced(seq, DOOR_SZ))
        x2 = wait_until(lambda: stack.incident("X2"), 15, what="X2")
        wait_until(
            lambda: {"G1"} == {a.rule_id for a in stack.alerts.service.open_alerts() if a.device_id == DOOR_SZ},
            15,
            what="the lone forced door's G1",
        )
        x2 = stack.incident("X2")
        assert x2 is not None and (x2.region_id, x2.severity) == ("gz-a1-b1", Severity.CRITICAL)
        assert {m.device_id for m in x2.members.values()} == set(DOORS_B1)
        assert [t.department for t in stack.joint.store.tasks(incident_id=x2.id)] == ["security"]
        assert [n.alert.device_id for n in stack.notified if n.alert.rule_id == "G1"].count(DOOR_SZ) == 1

        # X5, first half: three tamper alerts in three buildings
        stack.publish([seq.msg(d, "event", '"type":"tamper"') for d, _ in TAMPER[:3]])
        wait_until(
            lambda: len([a for a in stack.alerts.service.open_alerts() if a.rule_id == "G11.tamper"]) == 3,
            15,
            what="three tamper alerts",
        )
        assert stack.incident("X5") is None
        before = {i.id: (i.pattern_id, i.member_ids, i.muted_ids) for i in stack.incidents()}

    # --- restart -----------------------------------------------------------------------------------------------
    with running_stack(broker, reg, store, rules) as stack:
        after = {i.id: (i.pattern_id, i.member_ids, i.muted_ids) for i in stack.incidents()}
        assert after == before
        assert all(stack.joint.held(a) for a in x4.member_ids)  # still muted
        assert {i.pattern_id for i in stack.joint.open_incidents()} == {"X2", "X4"}

        stack.publish([seq.msg(d, "event", '"type":"tamper"') for d, _ in TAMPER[3:]])
        x5 = wait_until(lambda: stack.incident("X5"), 15, what="X5 after the restart")
        assert (x5.scope_level, x5.region_id, x5.type) == (ScopeLevel.CITY, "gz", "regional_cluster")
        assert {m.device_id for m in x5.members.values()} == {d for d, _ in TAMPER}
        assert x5.detail["buildings"] == 3
        assert sorted(t.department for t in stack.joint.store.tasks(incident_id=x5.id)) == ["it", "security"]

        # three storm gates come back: their offline alerts resolve, un-muted, nothing notified of them
        back = STORM[:3]
        stack.publish([seq.msg(d, "telemetry", '"door_open":false') for d in back])

        def unmuted() -> Incident | None:
            i = stack.incident("X4")
            done = i is not None and all(not m.muted and m.resolved for m in i.members.values() if m.device_id in back)
            return i if done else None

        x4 = wait_until(unmuted, 15, what="three members un-muted")
        assert len(x4.muted_ids) == 197 and x4.state is IncidentState.OPEN
        assert not [n for n in stack.notified if n.alert.device_id in STORM]
        kinds = [c.kind for c in stack.changes if c.incident.pattern_id == "X4"]
        assert kinds.count("member_resolved") == 3

        final = stack.incidents()
    assert sorted((i.pattern_id, i.region_id) for i in final) == [("X2", "gz-a1-b1"), ("X4", "gz-a1-b3"), ("X5", "gz")]
    timeline = [e.data.get("text_en", "") for e in stack.joint.store.timeline(x4.id)]
    assert timeline[0].startswith("opened by pattern X4") and sum("joined" in t for t in timeline) == 200
