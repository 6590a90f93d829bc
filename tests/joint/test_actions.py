"""Linkage actions (joint/actions.py): the pure book and guards, and the whole path through a real Mosquitto:
propose, confirm, the simulated gate receives ``lock`` and answers ``cmd_result`` through ingest, recorded."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import UserError
from core.protocol import Event
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import Fleet, SimDevice
from ingest.service import IngestService
from joint.actions import (
    ActionBook,
    ActionConflict,
    ActionDenied,
    ActionPolicy,
    LinkageAction,
    LinkageActions,
    MqttCommandSender,
    Step,
    Target,
    check_decide,
    check_propose,
)
from tests.conftest import Broker
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on, mqtt_settings, seed_registry

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
GATE = Target("gate-0001", "gd-gz-a01-b1", "gate")
METER = Target("meter-0001", "gd-gz-a01-b1", "energy_meter")


def _ids() -> object:
    n = iter(range(1, 10_000))
    return lambda: f"a{next(n)}"


def book(**kw: object) -> ActionBook:
    return ActionBook(ActionPolicy(**kw), new_id=_ids())  # type: ignore[arg-type]


# --- pure ---------------------------------------------------------------------------------------------------------


def test_book_propose_confirm_result_succeeds() -> None:
    b = book()
    (a,) = b.propose(7, "lock", [GATE], by="alice", now=T0, reason="door forced")
    assert a.state == "proposed" and a.expires_at == T0 + timedelta(minutes=30) and a.cmd_id is None
    sent = b.confirm(a.id, by="bob", now=T0 + timedelta(seconds=5))
    assert sent.state == "sent" and sent.cmd_id and sent.expires_at == T0 + timedelta(seconds=5, minutes=2)
    doc = __import__("json").loads(sent.command_payload())
    assert doc == {"cmd_id": sent.cmd_id, "name": "lock", "args": {}, "expires_at": doc["expires_at"]}
    assert doc["expires_at"] == int(sent.expires_at.timestamp() * 1000)
    assert sent.topic == "lf/v1/gate-0001/cmd"
    assert b.result("gate-0002", sent.cmd_id, True, "", T0) is None, "another device's answer is ignored"
    done = b.result("gate-0001", sent.cmd_id, True, "locked", T0 + timedelta(seconds=6))
    assert done is not None and done.state == "succeeded" and done.result_detail == "locked"
    assert b.result("gate-0001", sent.cmd_id, False, "again", T0) is None, "a second answer is ignored"


def test_book_refuses_unknown_commands_wrong_types_and_decided_actions() -> None:
    b = book()
    with pytest.raises(UserError, match="unknown linkage command"):
        b.propose(1, "reboot", [GATE], by="alice", now=T0)
    with pytest.raises(UserError, match="applies to gate"):
        b.propose(1, "lock", [GATE, METER], by="alice", now=T0)
    with pytest.raises(UserError, match="no device"):
        b.propose(1, "lock", [], by="alice", now=T0)
    (a,) = b.propose(1, "lock", [GATE], by="alice", now=T0)
    assert b.propose(1, "lock", [GATE], by="alice", now=T0) == [], "an open action is not proposed twice"
    b.decline(a.id, by="bob", now=T0, reason="false alarm")
    with pytest.raises(ActionConflict, match="declined"):
        b.confirm(a.id, by="bob", now=T0)


def test_book_expires_undecided_proposals_and_unanswered_commands() -> None:
    b = book(proposal_ttl=timedelta(minutes=1), command_ttl=timedelta(seconds=30))
    (p,) = b.propose(1, "lock", [GATE], by="alice", now=T0)
    (q,) = b.propose(2, "unlock", [GATE], by="alice", now=T0)
    b.confirm(q.id, by="bob", now=T0 + timedelta(seconds=10))
    assert b.expire(T0 + timedelta(seconds=39)) == []
    (gone,) = b.expire(T0 + timedelta(seconds=40))
    assert gone.id == q.id and gone.state == "expired" and "no cmd_result" in (gone.result_detail or "")
    with pytest.raises(ActionConflict, match="expired"):
        b.confirm(p.id, by="bob", now=T0 + timedelta(minutes=1))
    (late,) = b.expire(T0 + timedelta(minutes=1))
    assert late.id == p.id and late.state == "expired"


def test_book_replays_its_timeline_documents() -> None:
    b = book()
    (a,) = b.propose(3, "lock", [GATE], by="alice", now=T0)
    sent = b.confirm(a.id, by="bob", now=T0)
    again = ActionBook()
    assert again.replay([a.doc(), sent.doc()]) == 2
    got = again.get(a.id)
    assert got is not None and got.state == "sent" and got.cmd_id == sent.cmd_id
    assert again.result("gate-0001", sent.cmd_id or "", True, "", T0) is not None, "the command id is known again"


def test_guards_role_scope_and_four_eyes() -> None:
    inside = {"gd-gz-a01-b1"}.__contains__
    outside = {"gd-sz"}.__contains__
    check_propose("operator", inside, [GATE])
    with pytest.raises(ActionDenied, match="role"):
        check_propose("viewer", inside, [GATE])
    with pytest.raises(ActionDenied, match="scope"):
        check_propose("admin", outside, [GATE])
    (a,) = book().propose(1, "lock", [GATE], by="alice", now=T0)
    check_decide("admin", "bob", inside, a)
    with pytest.raises(ActionDenied, match="role admin"):
        check_decide("operator", "bob", inside, a)
    with pytest.raises(ActionDenied, match="scope"):
        check_decide("admin", "bob", outside, a)
    with pytest.raises(ActionDenied, match="other than its proposer"):
        check_decide("admin", "alice", inside, a)


def test_listener_records_results_and_unsent_commands() -> None:
    steps: list[tuple[str, Step, str]] = []
    sent: list[tuple[str, bytes]] = []
    up = [True]

    def publish(topic: str, payload: bytes) -> bool:
        sent.append((topic, payload))
        return up[0]

    la = LinkageActions(publish, record=lambda a, s, who: steps.append((a.id, s, who)), clock=lambda: T0)
    (a, b) = la.propose(9, "lock", [GATE, GATE.__class__("gate-0002", GATE.region_id, "gate")], by="alice")
    done = la.confirm(a.id, by="bob")
    assert done.state == "sent" and sent[0][0] == "lf/v1/gate-0001/cmd"
    ev = Event("gate-0001", GATE.region_id, "gate", 0, None, "cmd_result", {"cmd_id": done.cmd_id, "ok": True})
    la.on_batch(WriteBatch(events=[ev]))
    assert la.get(a.id) is not None and la.get(a.id).state == "succeeded"  # type: ignore[union-attr]
    up[0] = False
    failed = la.confirm(b.id, by="bob")
    assert failed.state == "failed" and "broker" in (failed.result_detail or "")
    assert [s for _, s, _ in steps] == ["proposed", "proposed", "confirmed", "sent", "result", "confirmed", "unsent"]


# --- through a real broker ----------------------------------------------------------------------------------------


class _Rig:
    """Registry, ingest with the actions' listener, the simulated gate (shared publisher with a Fleet), the
    platform's command sender."""

    def __init__(self, broker: Broker, registry: Registry, store: SqliteStore, clock_offset: timedelta) -> None:
        seed_registry(registry)
        self.steps: list[tuple[LinkageAction, Step, str]] = []
        self.lock = threading.Lock()
        self.sender = MqttCommandSender(mqtt_settings(broker, client_id="test-platform"))
        self.actions = LinkageActions(
            self.sender, record=self._record, clock=lambda: datetime.now(UTC) + clock_offset, tick_s=0.05
        )
        self.ingest: IngestService = ingest_on(broker, store, registry.snapshot, [self.actions.on_batch])
        start = datetime.now(UTC)
        self.fleet = Fleet(
            [SimDevice("gate-0001", "gate", "gd-gz-a01-b1", 23.13, 113.27, 60)], rng=random.Random(4), start=start
        )
        self.pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password, client_id="sim-gate")
        self.pub.gate_control = self.fleet.set_locked
        self.start = start

    def _record(self, a: LinkageAction, step: Step, who: str) -> None:
        with self.lock:
            self.steps.append((a, step, who))

    def up(self) -> None:
        self.ingest.start()
        self.sender.start()
        self.pub.start()
        self.actions.start()
        wait_until(self.sender.connected, 10, what="the platform's command link")
        msgs = self.fleet.advance(self.start + timedelta(minutes=2))  # the gate's status and first heartbeats
        assert any(m.seq is not None for m in msgs)
        for m in msgs:
            self.pub.publish(m)
        assert self.pub.flush(10)
        self.start += timedelta(minutes=2)

    def down(self) -> None:
        self.actions.stop()
        self.pub.close()
        self.sender.stop()
        self.ingest.stop()


@pytest.fixture
def rig(
    request: pytest.FixtureRequest, broker: Broker, sqlite_registry: Registry, store: SqliteStore
) -> Iterator[_Rig]:
    r = _Rig(broker, sqlite_registry, store, getattr(request, "param", timedelta(0)))
    r.up()
    yield r
    r.down()


@pytest.mark.integration
def test_confirmed_lock_reaches_the_simulated_gate_and_its_cmd_result_is_recorded(rig: _Rig) -> None:
    (a,) = rig.actions.propose(42, "lock", [GATE], by="alice", reason="门被强行打开")
    assert rig.pub.locked == set(), "nothing goes out before a confirmation"
    sent = rig.actions.confirm(a.id, by="bob")
    assert sent.state == "sent"

    def answered() -> LinkageAction | None:
        got = rig.actions.get(a.id)
        return got if got is not None and got.state != "sent" else None

    done = wait_until(answered, 15, 0.05, "the gate's cmd_result through ingest")
    assert done.state == "succeeded" and done.result_ok is True and done.result_detail == "locked"
    assert rig.pub.locked == {"gate-0001"}
    with rig.lock:
        assert [s for _, s, _ in rig.steps] == ["proposed", "confirmed", "sent", "result"]
        assert rig.steps[-1][2] == "gate-0001", "the result step's actor is the device"
    # The gate obeys: a day of arrivals at a locked gate grants nobody.
    msgs = rig.fleet.advance(rig.start + timedelta(hours=24))
    access = [m.doc() for m in msgs if m.kind == "event" and m.doc()["type"] in ("access", "request_to_exit")]
    assert access, "no access attempt in a day: the test proved nothing"
    assert all(d["type"] == "access" and d["result"] == "denied" for d in access)
    # ... and unlock lets people in again.
    (u,) = rig.actions.propose(42, "unlock", [GATE], by="alice")
    rig.actions.confirm(u.id, by="bob")
    wait_until(lambda: getattr(rig.actions.get(u.id), "state", "") == "succeeded", 15, 0.05, "the unlock's answer")
    msgs = rig.fleet.advance(rig.start + timedelta(hours=48))
    assert any(m.kind == "event" and m.doc().get("result") == "granted" for m in msgs)


@pytest.mark.integration
@pytest.mark.parametrize("rig", [timedelta(hours=-1)], indirect=True)
def test_an_expired_command_is_ignored_by_the_gate_and_expires(rig: _Rig) -> None:
    """The platform's clock is an hour behind: the command's expires_at is already past for the device."""
    (a,) = rig.actions.propose(43, "lock", [GATE], by="alice")
    rig.actions.confirm(a.id, by="bob")
    rig.actions.book.policy = ActionPolicy(command_ttl=timedelta(minutes=2))
    rig.actions.clock = lambda: datetime.now(UTC)  # now the platform sees the expiry pass too
    done = wait_until(lambda: getattr(rig.actions.get(a.id), "state", "") == "expired", 10, 0.05, "the expiry")
    assert done
    assert rig.pub.locked == set(), "the gate never obeyed an expired command"
    with rig.lock:
        assert [s for _, s, _ in rig.steps] == ["proposed", "confirmed", "sent", "expired"]


def test_listener_looks_only_while_a_command_waits_and_records_a_late_answer() -> None:
    now = [T0]
    la = LinkageActions(
        lambda _t, _p: True, clock=lambda: now[0], policy=ActionPolicy(command_ttl=timedelta(seconds=30))
    )
    assert not la.book.awaiting
    (a,) = la.propose(1, "lock", [GATE], by="alice")
    sent = la.confirm(a.id, by="bob")
    assert la.book.awaiting
    now[0] = T0 + timedelta(seconds=31)
    (gone,) = la.tick()
    assert gone.state == "expired" and not la.book.awaiting
    ev = Event("gate-0001", GATE.region_id, "gate", 0, None, "cmd_result", {"cmd_id": sent.cmd_id, "ok": True})
    la.on_batch(WriteBatch(events=[ev]))
    late = la.get(a.id)
    assert late is not None and late.state == "succeeded", "a late answer is still recorded: the gate did lock"
    now[0] = T0 + timedelta(minutes=20)
    (b,) = la.propose(1, "unlock", [GATE], by="alice")
    la.on_batch(WriteBatch(events=[ev]))  # nothing waits: the batch is not even looked at
    assert la.get(b.id) is not None and la.get(b.id).state == "proposed"
