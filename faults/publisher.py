"""A bounded multi-device publisher for the fault suite: one MQTT v5 connection per device with its own identity.

Every device publishes energy-meter telemetry with ``seq`` 1, 2, ... and an increasing ``ts`` at QoS 1 through a
bounded window (at most ``window`` messages without a PUBACK), and records which seqs the broker PUBACKed: that is
the set the platform owes us. A device with a buffer keeps every record it sent (bounded, as PROTOCOL.md v1.1
recommends) and answers ``resend`` by publishing the asked records again, unchanged, then a ``cmd_result``; a
device without one answers ``ok: false``. Devices connect with a persistent session (a command sent while they were
away is delivered when they are back) and subscribe to their own ``cmd`` topic.

The publisher is written for the suite, independently of ``devices/sim_publisher.py``, so that the accounting per
seq is exact whatever the simulator does.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

logger = logging.getLogger(__name__)

BUFFER_RECORDS = 20_000


@dataclass
class DeviceState:
    device_id: str
    secret: str
    buffered: bool
    client: mqtt.Client | None = None
    seq: int = 0
    last_ts: int = 0
    sent: int = 0  # handed to paho (first publish of each seq)
    pending: dict[int, int] = field(default_factory=dict)  # mid -> seq, waiting for PUBACK
    early: dict[int, bool] = field(default_factory=dict)  # mid -> ok: PUBACKs that beat the pending entry
    acked: set[int] = field(default_factory=set)  # seqs with a successful PUBACK
    refused: int = 0  # PUBACK with a failure reason
    buffer: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    resend_requests: list[tuple[int, int]] = field(default_factory=list)
    resent: int = 0
    connected: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def seq_ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``: the seqs a resend could not find, as a ``cmd_result`` detail."""
    out: list[str] = []
    for s in sorted(set(seqs)):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == s - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        elif out and "-" not in out[-1] and int(out[-1]) == s - 1:
            out[-1] = f"{out[-1]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out)


def telemetry_payload(seq: int, ts: int) -> bytes:
    return json.dumps({"ts": ts, "seq": seq, "energy_kwh": round(seq * 0.01, 2), "power_kw": 1.5}).encode()


class FleetPublisher:
    """Devices publishing QoS 1 with seqs; ``step`` publishes one message per device whose window has room."""

    def __init__(
        self,
        port: int,
        credentials: Mapping[str, str],
        buffered: Iterable[str] = (),
        *,
        host: str = "127.0.0.1",
        window: int = 100,
    ) -> None:
        self.host, self.port = host, port
        self.window = window
        buf = set(buffered)
        self.devices = {d: DeviceState(d, s, d in buf) for d, s in credentials.items()}
        self._commands: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()

    # --- connections ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        for dev in self.devices.values():
            dev.client = self._client(dev)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            dev.client.connect(self.host, self.port, keepalive=10, clean_start=False, properties=props)
            dev.client.loop_start()
        deadline = time.monotonic() + timeout
        while not all(d.connected for d in self.devices.values()):
            if time.monotonic() > deadline:
                down = [d.device_id for d in self.devices.values() if not d.connected]
                raise RuntimeError(f"{len(down)} devices could not connect, first {down[0]}")
            time.sleep(0.02)

    def _client(self, dev: DeviceState) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev.device_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(dev.device_id, dev.secret)
        c.reconnect_delay_set(1, 2)
        c.max_inflight_messages_set(0)  # our own window bounds what is in flight
        cmd_topic = f"lf/v1/{dev.device_id}/cmd"

        def on_connect(cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                logger.warning("%s refused: %s", dev.device_id, rc)
                return
            dev.connected = True
            cl.subscribe(cmd_topic, 1)

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            dev.connected = False

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
            # paho holds its own lock here: never call publish() while holding dev.lock (see _send)
            with dev.lock:
                seq = dev.pending.pop(mid, None)
                if seq is None:
                    dev.early[mid] = not rc.is_failure
                    return
                self._settle(dev, seq, not rc.is_failure)

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                self._commands.put((dev.device_id, json.loads(msg.payload)))
            except ValueError:
                logger.warning("%s: a command that is not JSON: %r", dev.device_id, msg.payload[:200])

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_publish = on_publish
        c.on_message = on_message
        return c

    def close(self) -> None:
        for dev in self.devices.values():
            if dev.client is not None:
                dev.client.disconnect()
                dev.client.loop_stop()

    # --- publishing -----------------------------------------------------------------------------------------

    def _send(self, dev: DeviceState, topic: str, payload: bytes, seq: int) -> None:
        """``seq`` 0: not a telemetry record (a cmd_result, a poison value), not counted."""
        assert dev.client is not None
        info = dev.client.publish(topic, payload, qos=1)  # not under dev.lock: on_publish takes it inside paho's
        with dev.lock:
            ok = dev.early.pop(info.mid, None)
            if ok is None:
                dev.pending[info.mid] = seq
            else:
                self._settle(dev, seq, ok)

    @staticmethod
    def _settle(dev: DeviceState, seq: int, ok: bool) -> None:
        if not ok:
            dev.refused += 1
        elif seq > 0:
            dev.acked.add(seq)

    def publish_next(self, dev: DeviceState) -> bool:
        """The device's next record, if its window has room; False when it is full (the broker is behind)."""
        if len(dev.pending) >= self.window:
            return False
        dev.seq += 1
        dev.last_ts = max(int(time.time() * 1000), dev.last_ts + 1)
        payload = telemetry_payload(dev.seq, dev.last_ts)
        if dev.buffered:
            dev.buffer[dev.seq] = payload
            while len(dev.buffer) > BUFFER_RECORDS:
                dev.buffer.popitem(last=False)
        self._send(dev, f"lf/v1/{dev.device_id}/telemetry", payload, dev.seq)
        dev.sent += 1
        return True

    def publish_raw(self, device_id: str, payload: bytes, channel: str = "telemetry") -> None:
        """A message outside the seq accounting (poison values)."""
        self._send(self.devices[device_id], f"lf/v1/{device_id}/{channel}", payload, 0)

    def run(
        self,
        *,
        seconds: float,
        rate: float,
        devices: Iterable[str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Publish for ``seconds`` at about ``rate`` messages per second per device (round robin), answering
        commands meanwhile."""
        chosen = [self.devices[d] for d in devices] if devices is not None else list(self.devices.values())
        started = time.monotonic()
        end = started + seconds
        n = 0
        while (now := time.monotonic()) < end and not (stop is not None and stop.is_set()):
            self.serve_commands()
            due = int((now - started) * rate) + 1
            if n >= due:
                time.sleep(min(0.005, end - now))
                continue
            for dev in chosen:
                self.publish_next(dev)
            n += 1
        self.serve_commands()

    def idle(self, seconds: float) -> None:
        """Answer commands only, for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.serve_commands()
            time.sleep(0.02)

    def flush(self, timeout: float) -> bool:
        """Wait until every device's messages are PUBACKed (answering commands meanwhile)."""
        deadline = time.monotonic() + timeout
        while any(d.pending for d in self.devices.values()):
            if time.monotonic() > deadline:
                return False
            self.serve_commands()
            time.sleep(0.02)
        return True

    # --- commands -------------------------------------------------------------------------------------------

    def serve_commands(self) -> None:
        while True:
            try:
                device_id, cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            self._answer(self.devices[device_id], cmd)

    def _answer(self, dev: DeviceState, cmd: dict[str, Any]) -> None:
        if cmd.get("name") != "resend":
            ok, detail = False, f"unsupported command {cmd.get('name')!r}"
        elif not dev.buffered:
            ok, detail = False, "no buffer"
        else:
            args = cmd.get("args") or {}
            first, last = int(args.get("from_seq", 0)), int(args.get("to_seq", -1))
            dev.resend_requests.append((first, last))
            missing: list[int] = []
            for seq in range(first, last + 1):
                payload = dev.buffer.get(seq)
                if payload is None:
                    missing.append(seq)
                    continue
                self._send(dev, f"lf/v1/{dev.device_id}/telemetry", payload, seq)
                dev.resent += 1
            ok, detail = True, seq_ranges(missing)
        result = {"type": "cmd_result", "cmd_id": str(cmd.get("cmd_id", "")), "ok": ok, "detail": detail}
        self._send(dev, f"lf/v1/{dev.device_id}/event", json.dumps(result).encode(), 0)

    # --- accounting -----------------------------------------------------------------------------------------

    def acked(self, device_id: str) -> set[int]:
        dev = self.devices[device_id]
        with dev.lock:
            return set(dev.acked)
