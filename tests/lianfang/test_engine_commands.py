"""The command channel between engine processes (lianfang/engine_commands.py) on a real Mosquitto: a request is
answered by the engine of its partition, applied once when it is delivered twice, not applied after its
deadline, and dropped (503 for the caller, no late change) while its owner is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from core.settings import MqttSettings
from lianfang.engine_commands import EngineCommands, EngineUnavailable, request_topic
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until

pytestmark = [pytest.mark.integration]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((op, args))
        if op == "refuse":
            return {"status": 409, "detail": "no"}
        if op == "boom":
            raise RuntimeError("bug")
        if op == "slow":
            time.sleep(0.5)
        return {"status": 200, "detail": f"{op} done"}


def _settings(broker: Broker) -> MqttSettings:
    return MqttSettings(
        port=broker.port,
        username=broker.platform_username,
        password=SecretStr(broker.platform_password),
        embedded_broker=False,
    )


@pytest.fixture
def pair(broker: Broker) -> Iterator[tuple[EngineCommands, EngineCommands, Recorder]]:
    owner_handler = Recorder()
    owner = EngineCommands(_settings(broker), [1], owner_handler, client_id="t-engine-p1-cmd").start()
    caller = EngineCommands(_settings(broker), [0], Recorder(), client_id="t-engine-p0-cmd", timeout_s=3).start()
    yield owner, caller, owner_handler
    caller.stop()
    owner.stop()


def test_a_request_is_answered_by_the_engine_of_its_partition(
    pair: tuple[EngineCommands, EngineCommands, Recorder],
) -> None:
    _, caller, handler = pair
    assert caller.call(1, "alert.ack", {"alert_id": 7}) == {"status": 200, "detail": "alert.ack done"}
    assert handler.calls == [("alert.ack", {"alert_id": 7})]
    assert caller.call(1, "refuse", {}) == {"status": 409, "detail": "no"}
    reply = caller.call(1, "boom", {})
    assert reply["status"] == 500 and "bug" in reply["detail"]
    with pytest.raises(EngineUnavailable, match="partition 3"):  # nobody serves partition 3
        caller.call(3, "alert.ack", {"alert_id": 1}, timeout_s=0.5)


def test_a_request_delivered_twice_is_applied_once_and_a_late_one_not_at_all(
    broker: Broker, pair: tuple[EngineCommands, EngineCommands, Recorder]
) -> None:
    owner, _, handler = pair
    raw = mqtt_client(broker.port, broker.platform_username, broker.platform_password, client_id="t-raw")
    replies: list[tuple[bytes, bytes]] = []
    raw.on_message = lambda c, u, m: replies.append((getattr(m.properties, "CorrelationData", b""), bytes(m.payload)))
    subscribed = threading.Event()
    raw.on_subscribe = lambda *a: subscribed.set()
    raw.subscribe("lf/internal/v1/cmd/reply/t-raw", qos=1)
    assert subscribed.wait(10)

    def send(rid: bytes, deadline_ms: int, op: str = "slow") -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "lf/internal/v1/cmd/reply/t-raw"
        props.CorrelationData = rid
        doc = {"op": op, "args": {"alert_id": 9}, "deadline_ms": deadline_ms}
        raw.publish(request_topic(1), orjson.dumps(doc), qos=1, properties=props).wait_for_publish(5)

    try:
        far = int(time.time() * 1000) + 60_000
        send(b"req-1", far)
        send(b"req-1", far)  # a redelivery while the first is being applied: answered by its one reply
        wait_until(lambda: replies, 10, what="the reply")
        time.sleep(0.7)
        assert [r for r, _ in replies] == [b"req-1"]
        send(b"req-1", far)  # a redelivery after it was applied: answered again from the cache
        wait_until(lambda: len(replies) == 2, 10, what="the cached reply")
        assert [r for r, _ in replies] == [b"req-1", b"req-1"]
        assert {orjson.loads(p)["status"] for _, p in replies} == {200}
        assert handler.calls == [("slow", {"alert_id": 9})], "applied once"
        assert owner.duplicates == 2
        send(b"req-2", int(time.time() * 1000) - 1, "alert.comment")  # past its deadline: the caller gave up
        wait_until(lambda: owner.late == 1, 10, what="the late request seen")
        assert len(handler.calls) == 1 and len(replies) == 2
    finally:
        raw.disconnect()
        raw.loop_stop()


def test_a_request_for_an_engine_that_is_down_is_refused_and_never_applied(
    broker: Broker, pair: tuple[EngineCommands, EngineCommands, Recorder]
) -> None:
    owner, caller, handler = pair
    owner.stop()
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="did not answer within 1 s"):
        caller.call(1, "alert.ack", {"alert_id": 5}, timeout_s=1)
    assert 0.9 < time.monotonic() - t0 < 3
    back_handler = Recorder()
    back = EngineCommands(_settings(broker), [1], back_handler, client_id="t-engine-p1-cmd").start()
    try:
        time.sleep(1.0)
        assert back_handler.calls == [], "a request of the down time reached the engine once it was back"
        assert caller.call(1, "alert.ack", {"alert_id": 5})["status"] == 200
        assert back_handler.calls == [("alert.ack", {"alert_id": 5})]
    finally:
        back.stop()
    assert handler.calls == []
