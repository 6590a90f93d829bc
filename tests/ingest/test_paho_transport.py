"""ingest/paho_transport.py: the buffered socket on its own, and IngestClient against a real Mosquitto (every
message arrives once, batch acknowledgements are accepted by the broker, what is not acked is redelivered)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import paho_transport
from ingest.paho_transport import BufferedSocket, IngestClient
from tests.conftest import Broker
from tests.helpers import wait_until

# --- BufferedSocket -----------------------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_reads_are_served_from_one_chunk(pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = pair
    data = bytes(range(256)) * 4
    writer.sendall(data)
    time.sleep(0.05)
    s = BufferedSocket(reader)
    assert s.recv(1) == data[:1]
    assert s.pending() == len(data) - 1  # the rest arrived with the first recv
    assert s.recv(3) == data[1:4]
    assert s.recv(2000) == data[4:]  # a short read at the end of the buffer, like a socket's
    assert s.pending() == 0
    with pytest.raises(BlockingIOError):
        s.recv(1)  # nothing buffered, nothing on the socket: the socket's own behaviour
    writer.sendall(b"xy")
    time.sleep(0.05)
    assert s.recv(5) == b"xy"  # a read larger than what is there
    writer.close()
    time.sleep(0.05)
    assert s.recv(1) == b""  # end of stream


def test_everything_else_is_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    _, reader = pair
    s = BufferedSocket(reader)
    assert s.fileno() == reader.fileno()
    assert s.gettimeout() == reader.gettimeout()


# --- IngestClient against Mosquitto -------------------------------------------------------------------------

TOPIC = "lf/v1/meter-0001/telemetry"


def _connect(client: mqtt.Client, broker: Broker) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = 1000
    client.username_pw_set(broker.platform_username, broker.platform_password)
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)


class Session:
    """A persistent ingest session with IngestClient; messages are held until the test acks them."""

    def __init__(self, broker: Broker) -> None:
        self.client = IngestClient(
            CallbackAPIVersion.VERSION2, client_id="lianfang-ingest-t", protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.got: list[tuple[int, int, bytes]] = []  # (mid, qos, payload)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.got.append((msg.mid, msg.qos, bytes(msg.payload)))

        self.client.on_message = on_message
        self.client.on_connect = lambda c, *a: c.subscribe("lf/v1/+/+", 1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        _connect(self.client, broker)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, _, p in self.got]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker: Broker, n: int, start: int = 0) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim", protocol=mqtt.MQTTv5)
    pub.username_pw_set("lianfang-sim", broker.sim_password)
    window = threading.Semaphore(100)
    pub.on_publish = lambda *a: window.release()
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for i in range(start, start + n):
        window.acquire()
        pub.publish(TOPIC, f'{{"ts":{1790000000000 + i},"seq":{i},"energy_kwh":{i}}}'.encode(), qos=1)
    for _ in range(100):
        window.acquire()
    pub.disconnect()
    pub.loop_stop()


@pytest.mark.parametrize("batched", [True, False], ids=["one-write", "ack-each"])
def test_batch_acks_are_accepted_and_the_rest_is_redelivered(
    broker: Broker, batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paho_transport, "BATCH_ACKS", batched)
    Session(broker).close()  # the persistent session and its subscription exist
    publish(broker, 3000)
    s = Session(broker)
    wait_until(lambda: len(s.got) >= 1000, 10, what="the first Receive Maximum of messages")
    time.sleep(0.2)
    assert len(s.got) == 1000  # flow control: nothing beyond Receive Maximum while unacked
    s.client.ack_many([(mid, qos) for mid, qos, _ in s.got[:1000]])  # ack all held: the broker sends on
    wait_until(lambda: len(s.got) >= 2000, 10, what="the second thousand after the acks")
    s.client.ack_many([(mid, qos) for mid, qos, _ in s.got[1000:1500]])  # 500 of the second thousand
    time.sleep(0.3)
    s.close()
    first = s.payloads()
    # everything not acked comes again to the next session, and nothing acked does
    s2 = Session(broker)
    wait_until(lambda: len(s2.got) >= 1500, 10, what="redelivery of the 1,500 unacked")
    s2.client.ack_many([(mid, qos) for mid, qos, _ in s2.got])
    time.sleep(0.3)
    s2.close()
    again = s2.payloads()
    assert len(again) == 1500
    seqs = sorted(int(p.split(b'"seq":')[1].split(b",")[0]) for p in first[:1500] + again)
    assert seqs == list(range(3000))  # every message exactly once across the acked sets
