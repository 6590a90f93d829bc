"""The floor under ingest: how fast a bare paho-mqtt v5 consumer drains a persistent session, acking each message
manually and doing nothing else.

    python bench/paho_floor.py [--messages N] [--no-speedup] [--plain] [--short]

By default the consumer is ingest's own client (``ingest/paho_transport.py``: buffered reads, one write per 100
acknowledgements); ``--plain`` uses paho's ``Client`` with an ``ack()`` per message.

Starts its own Mosquitto with the project's generated config. Prints one line. Compare with bench/ingest.py: the
difference is what decoding, validation and the durable write cost on top of MQTT.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices.broker import BrokerConfig, MosquittoProcess, free_port
from ingest import paho_speedups
from ingest.paho_transport import IngestClient

PAYLOAD = b'{"ts":1790000000000,"seq":1,"energy_kwh":1234.5,"power_kw":12.5,"voltage_v":220.1}'


def _consumer(password: str, plain: bool = True) -> mqtt.Client:
    cls = mqtt.Client if plain else IngestClient
    c = cls(CallbackAPIVersion.VERSION2, client_id="lianfang-platform", protocol=mqtt.MQTTv5, manual_ack=True)
    c.username_pw_set("lianfang-platform", password)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--no-speedup", action="store_true", help="without ingest/paho_speedups.py")
    ap.add_argument("--plain", action="store_true", help="paho's own Client, one ack() per message")
    ap.add_argument("--short", action="store_true", help="CI mode: 10,000 messages")
    args = ap.parse_args()
    n = 10_000 if args.short else args.messages
    if not args.no_speedup:
        paho_speedups.install()
    cfg = BrokerConfig(
        directory=Path(tempfile.mkdtemp(prefix="lf-bench-paho-")),
        port=free_port(),
        admin_password="bench-admin-x",
        platform_password="bench-platform-x",
        sim_password="bench-sim-x",
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 2000
    with MosquittoProcess(cfg):
        # the persistent session with its subscription, then away
        subscribed = threading.Event()
        c = _consumer(cfg.platform_password)
        c.on_connect = lambda cl, *a: cl.subscribe("lf/v1/+/+", 1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", cfg.port, clean_start=False, properties=props)
        c.loop_start()
        subscribed.wait(10)
        c.disconnect()
        c.loop_stop()
        # pre-fill, at most 50 unacked (paho slows down with many in flight and loses past 65,535)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim", protocol=mqtt.MQTTv5)
        pub.username_pw_set("lianfang-sim", cfg.sim_password or "")
        window = threading.Semaphore(50)
        pub.on_publish = lambda *a: window.release()
        pub.connect("127.0.0.1", cfg.port)
        pub.loop_start()
        for i in range(n):
            window.acquire()
            pub.publish(f"lf/v1/meter-{i % 3000:05d}/telemetry", PAYLOAD, qos=1)
        for _ in range(50):
            window.acquire()
        pub.disconnect()
        pub.loop_stop()
        # drain
        got = 0
        done = threading.Event()

        held: list[tuple[int, int]] = []

        def on_message(cl: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            nonlocal got
            got += 1
            if args.plain:
                cl.ack(msg.mid, msg.qos)
            else:
                held.append((msg.mid, msg.qos))
                if len(held) >= 100 or got >= n:
                    cl.ack_many(held)  # type: ignore[attr-defined]
                    held.clear()
            if got >= n:
                done.set()

        c = _consumer(cfg.platform_password, plain=args.plain)
        c.on_message = on_message
        started = time.perf_counter()
        c.connect("127.0.0.1", cfg.port, clean_start=False, properties=props)
        c.loop_start()
        done.wait(600)
        elapsed = time.perf_counter() - started
        c.disconnect()
        c.loop_stop()
    speedup = "without" if args.no_speedup else "with"
    client = "paho Client, ack() each" if args.plain else "IngestClient, ack_many per 100"
    print(
        f"paho_floor: {got} msgs drained in {elapsed:.2f} s = {got / elapsed:,.0f} msg/s "
        f"({client}, {speedup} paho_speedups)"
    )
    sys.exit(0 if got == n else 1)


if __name__ == "__main__":
    main()
