"""Broker persistence: publish throughput into a backlog against what a broker crash (SIGKILL) loses.

    python bench/broker_persistence.py [--trials N] [--seconds S] [--backlog N] [--consume] [--rate R]
                                       [--settings NAME,...] [--short]

For each persistence setting, each trial starts a real Mosquitto from the project's generated config
(``devices/broker.py``; only the persistence lines differ), makes the ingest session persistent and leaves it away
(not consuming: every message is queued for it, a backlog), publishes QoS 1 as fast as one connection can with a
bounded window for a random 60-100 % of ``--seconds``, then SIGKILLs the broker, restarts it from its persistence
file and drains the session. ``--backlog N`` starts each trial with N messages already queued (an ingest outage
in progress), which makes every save of the whole file that much bigger. ``--consume`` keeps the ingest session
connected and taking everything (normal operation: no backlog), ``--rate`` caps the publishing rate. It prints one
line per setting:

- ``msg/s``: PUBACKed messages per second while the backlog grew (median of the trials);
- ``lost``: messages the broker had PUBACKed but did not deliver after the restart (min / median / max);
- ``window``: lost / rate, the time of acknowledged traffic a crash throws away (median, ms).

Settings: ``interval5`` (mosquitto ``autosave_interval 5``, the old default), ``interval1``, ``changesN``
(``autosave_on_changes true``, ``autosave_interval N``: save after N changes) and ``off`` (``persistence false``).
Every save rewrites the whole persistence file, so the cost of a save grows with the backlog: the numbers depend
on how long the backlog grew. The machine is shared; compare the settings of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices.broker import BrokerConfig, MosquittoProcess, free_port

SETTINGS: dict[str, dict[str, Any]] = {
    "interval5": {"autosave_interval_s": 5},
    "interval1": {"autosave_interval_s": 1},
    "changes1": {"autosave_on_changes": True, "autosave_interval_s": 1},
    "changes100": {"autosave_on_changes": True, "autosave_interval_s": 100},
    "changes1000": {"autosave_on_changes": True, "autosave_interval_s": 1000},
    "changes10000": {"autosave_on_changes": True, "autosave_interval_s": 10_000},
    "off": {"persistence": False},
}
SESSION_ID = "lianfang-ingest"
WINDOW = 1000  # messages published and not yet PUBACKed
DEVICE = "meter-0001"


@dataclass
class Trial:
    acked: int
    seconds: float
    lost: int

    @property
    def rate(self) -> float:
        return self.acked / self.seconds


def _session(cfg: BrokerConfig, drain: bool) -> set[int]:
    """Connect the persistent ingest session (subscribe on first use); with ``drain``, take and ack everything
    queued until nothing arrives for a second, and return the distinct seqs received."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 2000
    seqs: set[int] = set()
    last = [time.monotonic()]
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SESSION_ID, protocol=mqtt.MQTTv5)
    c.username_pw_set(cfg.platform_username, cfg.platform_password)

    def on_connect(cl: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if not flags.session_present:
            cl.subscribe("lf/v1/+/+", 1)
        else:
            subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        seqs.add(int(json.loads(msg.payload)["seq"]))
        last[0] = time.monotonic()

    c.on_connect = on_connect
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = on_message
    c.connect("127.0.0.1", cfg.port, clean_start=False, properties=props)
    c.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the ingest session was not accepted")
        if drain:
            last[0] = time.monotonic()
            while time.monotonic() - last[0] < 1.0:
                time.sleep(0.1)
    finally:
        c.disconnect()
        c.loop_stop()
    return seqs


class _Consumer:
    """The ingest session connected and taking everything (acked as it arrives): no backlog builds up."""

    def __init__(self, cfg: BrokerConfig) -> None:
        self.seqs: set[int] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SESSION_ID, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(cfg.platform_username, cfg.platform_password)
        self.client.on_message = lambda _c, _u, msg: self.seqs.add(int(json.loads(msg.payload)["seq"]))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 2000
        self.client.connect("127.0.0.1", cfg.port, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> set[int]:
        self.client.loop_stop()
        return set(self.seqs)


def _publish(
    cfg: BrokerConfig,
    broker: MosquittoProcess,
    *,
    seconds: float = 1e9,
    first: int = 1,
    count: int = 2**62,
    rate: float | None = None,
) -> tuple[set[int], float]:
    """Publish seq ``first``, ``first + 1``, ... at full speed (bounded window) for ``seconds``, then SIGKILL the
    broker and read the PUBACKs it had already sent; or publish ``count`` messages, wait for their PUBACKs and
    leave the broker running. ``rate``: at most that many messages per second. Returns the PUBACKed seqs and the
    publishing time."""
    pending: dict[int, int] = {}
    acked: set[int] = set()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim", protocol=mqtt.MQTTv5)
    pub.username_pw_set("lianfang-sim", cfg.sim_password or "")
    pub.max_inflight_messages_set(0)

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        seq = pending.pop(mid, None)
        if seq is not None and not rc.is_failure:
            acked.add(seq)

    pub.on_publish = on_publish
    pub.connect("127.0.0.1", cfg.port)
    while not pub.is_connected():
        pub.loop(0.05)
    topic = f"lf/v1/{DEVICE}/telemetry"
    base = int(time.time() * 1000)
    seq = first - 1
    last = first - 1 + count
    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        if seq >= last:
            while pending:
                pub.loop(0.01)
            pub.disconnect()
            return acked, time.monotonic() - started
        burst = 0
        if rate is not None and seq - first + 1 >= rate * (time.monotonic() - started):
            pub.loop(0.001)
            continue
        while len(pending) < WINDOW and burst < 64 and seq < last:
            seq += 1
            payload = json.dumps({"ts": base + seq, "seq": seq, "energy_kwh": seq / 10, "power_kw": 12.5})
            info = pub.publish(topic, payload, qos=1)
            pending[info.mid] = seq
            burst += 1
        pub.loop(0 if len(pending) < WINDOW else 0.01)
    elapsed = time.monotonic() - started
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait()
    # PUBACKs the broker wrote before it died may still sit in our socket buffer
    for _ in range(100):
        if pub.loop(0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            break
    pub.loop_stop()
    broker.stop()
    return acked, elapsed


def _config(directory: Path, port: int, overrides: dict[str, Any]) -> BrokerConfig:
    return BrokerConfig(
        directory=directory,
        port=port,
        admin_password="bench-admin-x",
        platform_password="bench-platform-x",
        sim_password="bench-sim-x",
        **overrides,
    )


def trial(
    overrides: dict[str, Any], seconds: float, backlog: int, *, consume: bool = False, rate: float | None = None
) -> Trial:
    with tempfile.TemporaryDirectory(prefix="lf-bench-persist-") as tmp:
        port = free_port()
        if backlog:
            # The backlog an ingest outage leaves, queued and saved by a graceful stop (fast, whatever the
            # setting under test), then loaded by the broker under test.
            pre = _config(Path(tmp), port, {})
            broker = MosquittoProcess(pre)
            broker.start()
            try:
                _session(pre, drain=False)
                _publish(pre, broker, count=backlog)
            finally:
                broker.stop()
        cfg = _config(Path(tmp), port, overrides)
        broker = MosquittoProcess(cfg)
        broker.start()
        try:
            _session(cfg, drain=False)  # subscribed, then away: everything queues for it
            consumer = _Consumer(cfg) if consume else None  # ... unless it comes back and takes everything
            acked, elapsed = _publish(cfg, broker, seconds=seconds, first=backlog + 1, rate=rate)
            received = consumer.stop() if consumer is not None else set()
            broker = MosquittoProcess(cfg)
            broker.start()  # from the persistence file
            if overrides.get("persistence", True):
                received |= _session(cfg, drain=True)
        finally:
            broker.stop()
        return Trial(len(acked), elapsed, len(acked - received))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5, help="broker kills per setting (default 5)")
    ap.add_argument("--seconds", type=float, default=8.0, help="longest publishing time before a kill (default 8)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    ap.add_argument("--backlog", type=int, default=0, help="messages already queued when the trial starts")
    ap.add_argument("--consume", action="store_true", help="the ingest session takes everything (no backlog)")
    ap.add_argument("--rate", type=float, default=None, help="publish at most this many msg/s (default: max)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--short", action="store_true", help="CI mode: one 2 s trial per setting")
    args = ap.parse_args()
    trials, seconds = (1, 2.0) if args.short else (args.trials, args.seconds)
    rng = random.Random(args.seed)
    for name in args.settings.split(","):
        overrides = SETTINGS[name]
        results = [
            trial(overrides, seconds * rng.uniform(0.6, 1.0), args.backlog, consume=args.consume, rate=args.rate)
            for _ in range(trials)
        ]
        rate = statistics.median(t.rate for t in results)
        lost = sorted(t.lost for t in results)
        window_ms = statistics.median(1000 * t.lost / t.rate for t in results)
        print(
            f"broker_persistence {name:<12} msg/s={rate:>7.0f} lost min/median/max={lost[0]}/"
            f"{statistics.median(lost):.0f}/{lost[-1]} of ~{statistics.median(t.acked for t in results):.0f} "
            f"PUBACKed, window={window_ms:.0f} ms (trials={trials}, "
            f"{'consumed, ' if args.consume else ''}{f'rate {args.rate:g}, ' if args.rate else ''}"
            f"backlog {args.backlog:,} + grown for "
            f"{min(t.seconds for t in results):.1f}-{max(t.seconds for t in results):.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
