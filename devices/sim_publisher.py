"""MQTT adapter of the simulator: publishes SimMessages with paho-mqtt 2.x on MQTT v5, QoS 1.

paho keeps every unacknowledged QoS 1 message in a table keyed by its 16-bit message id; past 65,535 messages
in flight the ids wrap and paho refuses (or, in older versions, overwrites) messages without raising. Every
publisher here therefore bounds the messages not yet acknowledged (a counting window taken before ``publish``
and given back in ``on_publish``, the PUBACK), so ``publish`` blocks when the broker falls behind instead of
losing data. The window is also lowered to the broker's Receive Maximum from CONNACK (Mosquitto's
``max_inflight_messages``, 2000 in the generated config). paho's own in-flight limit stays off (0): with one,
paho rescans every pending message on each PUBACK.

Two connection modes:

- :class:`SharedPublisher`: one connection (the dev simulator account ``lianfang-sim``, allowed to publish on
  every device's telemetry, event and status topics) for benchmarks and the demo. A device going silent has its
  Last Will published on its behalf.
- :class:`DevicePublisher`: one connection per device with the device's own credentials (client id = username
  = device id) and its Last Will (retained ``{"state":"offline"}`` on ``lf/v1/{id}/status``), as real devices
  connect. A device going silent is disconnected with reason code 0x04 so the broker itself sends its Will.
  One paho network thread per device: fine for a few hundred devices; use the shared mode beyond that.

:func:`publish_bulk` pushes a list of messages as fast as possible (bounded in flight) and waits for every ack.

Resend (PROTOCOL.md v1.1): both threaded publishers keep what they sent (telemetry and events with a ``seq``), the
last ``resend_buffer`` records per device (:class:`SendBuffer`, default 10,000), subscribe to the devices' ``cmd``
topic and answer a ``resend`` command on a worker thread: the records of the range republished unchanged (same
seq, same ts), then a ``cmd_result`` event with ``ok: true`` and in ``detail`` the seqs no longer held
(``"1-3,7"``). ``resend_buffer=0``: no buffer, the answer is ``ok: false``. The shared publisher needs the
simulator role's subscription to ``lf/v1/+/cmd`` (devices/broker.py); without it, it only publishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import BrokerUnavailable
from core.protocol import topic_for
from devices.simulator import OFFLINE_PAYLOAD, SimMessage
from ingest.resend import MAX_RANGE, format_seq_ranges

logger = logging.getLogger(__name__)

SIM_USERNAME = "lianfang-sim"
# In-flight window: well under paho's 65,535 message ids, and lowered to the broker's Receive Maximum at connect.
DEFAULT_MAX_OUTSTANDING = 1_000
_BURST = 64
DEFAULT_RESEND_BUFFER = 10_000  # records kept per device for resend (PROTOCOL.md recommends at least 10,000)
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux


@dataclass(slots=True)
class PublishCounts:
    published: int = 0  # handed to paho
    acked: int = 0  # PUBACK with a success reason code
    rejected: int = 0  # PUBACK with a failure reason code (e.g. 0x87 Not authorized)
    reconnects: int = 0

    @property
    def pending(self) -> int:
        return self.published - self.acked - self.rejected


class Publisher(Protocol):
    """What the simulation loop needs from a publisher."""

    @property
    def counts(self) -> PublishCounts: ...

    def start(self) -> None: ...

    def publish(self, msg: SimMessage) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...


class _Window:
    """Bounds the messages published but not yet acknowledged (the in-flight window); counts them.

    ``pump`` (single-threaded use) services the network while waiting for room; without it, the caller
    blocks until the network thread delivers a PUBACK.
    """

    def __init__(self, limit: int) -> None:
        if not 1 <= limit < 65_535:
            raise ValueError("max_outstanding must be between 1 and 65,534")
        self.limit = limit
        self.counts = PublishCounts()
        self._taken = 0
        self._by_name: dict[str, int] = {}
        self._cond = threading.Condition()

    def lower_limit(self, limit: int) -> None:
        with self._cond:
            self.limit = max(1, min(self.limit, limit))

    def acquire(self, timeout: float, pump: Callable[[float], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if self._taken < self.limit:
                    self._taken += 1
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(f"no PUBACK from the broker for {timeout:.0f} s ({self._taken} pending)")
                if pump is None:
                    self._cond.wait(min(left, 1.0))
                    continue
            pump(0.01)

    def published(self, name: str) -> None:
        with self._cond:
            self.counts.published += 1
            self._by_name[name] = self._by_name.get(name, 0) + 1

    def give_back(self) -> None:
        """A publish that paho refused: it will never be acked."""
        with self._cond:
            self._taken -= 1
            self._cond.notify_all()

    def acked(self, name: str, ok: bool) -> None:
        with self._cond:
            self._by_name[name] = self._by_name.get(name, 0) - 1
            if ok:
                self.counts.acked += 1
            else:
                self.counts.rejected += 1
            self._taken -= 1
            self._cond.notify_all()

    def wait_drained(
        self, timeout: float, pump: Callable[[float], None] | None = None, name: str | None = None
    ) -> bool:
        """Wait until nothing (or nothing of connection ``name``) awaits a PUBACK."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if (self._taken if name is None else self._by_name.get(name, 0)) <= 0:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if pump is None:
                    self._cond.wait(left)
                    continue
            pump(min(left, 0.05))


class SendBuffer:
    """The last ``size`` records (telemetry and events with a ``seq``) each device sent; ``size`` 0 keeps none
    but still knows which devices it published for. Thread-safe."""

    def __init__(self, size: int = DEFAULT_RESEND_BUFFER) -> None:
        if size < 0:
            raise ValueError("resend_buffer must be >= 0")
        self.size = size
        self._by_device: dict[str, OrderedDict[int, SimMessage]] = {}
        self._lock = threading.Lock()

    def add(self, msg: SimMessage) -> None:
        if msg.seq is None or msg.kind not in ("telemetry", "event"):
            return
        with self._lock:
            held = self._by_device.get(msg.device_id)
            if held is None:
                held = self._by_device[msg.device_id] = OrderedDict()
            if self.size == 0:
                return
            held[msg.seq] = msg
            held.move_to_end(msg.seq)
            while len(held) > self.size:
                held.popitem(last=False)

    def knows(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._by_device

    def take(self, device_id: str, from_seq: int, to_seq: int) -> tuple[list[SimMessage], list[int]]:
        """The records of ``from_seq..to_seq`` still held, in seq order, and the seqs no longer held."""
        with self._lock:
            held = self._by_device.get(device_id, OrderedDict())
            found = [held[s] for s in range(from_seq, to_seq + 1) if s in held]
        have = {m.seq for m in found}
        return found, [s for s in range(from_seq, to_seq + 1) if s not in have]


def _expired(value: object, now_ms: int) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value < now_ms
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp() * 1000 < now_ms
        except ValueError:
            return False
    return False


def _new_client(
    client_id: str,
    username: str,
    password: str,
    *,
    tls_ca: Path | None,
    reconnect_min_s: float,
    reconnect_max_s: float,
) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.reconnect_delay_set(max(1, round(reconnect_min_s)), max(1, round(reconnect_max_s)))
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
    return client


def _safe(fn: Any) -> Any:
    """Wrap a paho callback so an exception is logged and never kills the network thread."""

    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("error in MQTT callback %s", getattr(fn, "__name__", fn))

    return wrapper


class _Base:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_outstanding: int,
        keepalive_s: int,
        connect_timeout_s: float,
        ack_timeout_s: float,
        tls_ca: Path | None,
        resend_buffer: int = DEFAULT_RESEND_BUFFER,
        answer_commands: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.tls_ca = tls_ca
        self._window = _Window(max_outstanding)
        self._pump: Callable[[float], None] | None = None
        self.buffer = SendBuffer(resend_buffer)
        self.answer_commands = answer_commands
        self.commands_answered = 0
        self._commands: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        # Linkage commands (joint/actions.py): ``lock`` / ``unlock`` of a gate call this with (device, locked); it
        # answers whether the device obeyed (e.g. ``Fleet.set_locked``). None: the publisher only acknowledges.
        self.gate_control: Callable[[str, bool], bool] | None = None
        self.locked: set[str] = set()

    @property
    def counts(self) -> PublishCounts:
        return self._window.counts

    def flush(self, timeout: float) -> bool:
        """Wait until every published message is acknowledged; False on timeout."""
        return self._window.wait_drained(timeout, self._pump)

    def _send(self, client: mqtt.Client, name: str, topic: str, payload: bytes, retain: bool) -> None:
        self._window.acquire(self.ack_timeout_s, self._pump)
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN keeps the message queued in paho, sent on reconnect; anything else was refused.
            self._window.give_back()
            raise BrokerUnavailable(f"paho refused a publish on {topic}: {mqtt.error_string(info.rc)}")
        self._window.published(name)

    def _wire(self, client: mqtt.Client, name: str) -> None:
        # paho's own window stays unlimited (0): with a limit it rescans every pending message on each PUBACK.
        # The _Window is the one bound, at most the broker's Receive Maximum.
        client.max_inflight_messages_set(0)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
            if rc.is_failure:
                logger.warning("%s: broker refused the connection: %s", name, rc)
                self._refused(name, str(rc))
                return
            receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
            if isinstance(receive_max, int) and receive_max > 0:
                self._window.lower_limit(receive_max)
            self._connected(name)
            cmd_topic = self._cmd_topic(name)
            if self.answer_commands and cmd_topic is not None:
                c.subscribe(cmd_topic, qos=1)

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
            self._disconnected(name, rc)

        def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: ReasonCode, _p: Properties | None) -> None:
            self._window.acked(name, not rc.is_failure)

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Properties | None) -> None:
            if any(rc.is_failure for rc in rcs):
                logger.warning(
                    "%s: the broker refused the command subscription (%s); resend not answered", name, rcs[0]
                )

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            parts = msg.topic.split("/")
            if len(parts) == 4 and parts[3] == "cmd":
                self._commands.put((parts[2], bytes(msg.payload)))  # answered on the worker thread

        client.on_connect = _safe(on_connect)
        client.on_disconnect = _safe(on_disconnect)
        client.on_publish = _safe(on_publish)
        client.on_subscribe = _safe(on_subscribe)
        client.on_message = _safe(on_message)

    # --- commands (resend) ----------------------------------------------------------------------------------

    def _cmd_topic(self, name: str) -> str | None:
        """The command topic this connection subscribes to (None: none)."""
        return None

    def _client_for(self, device_id: str) -> tuple[mqtt.Client, str] | None:
        """The connection that publishes for ``device_id`` (client, window name), None if not ours."""
        return None

    def _start_worker(self) -> None:
        if self.answer_commands and self._worker is None:
            self._worker = threading.Thread(target=self._work, name="sim-commands", daemon=True)
            self._worker.start()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._commands.put(None)
            self._worker.join(10)
            self._worker = None

    def _work(self) -> None:
        while (item := self._commands.get()) is not None:
            try:
                self._answer(*item)
            except BrokerUnavailable as exc:
                logger.warning("command for %s not answered: %s", item[0], exc)
            except Exception:
                logger.exception("command for %s failed", item[0])

    def _answer(self, device_id: str, payload: bytes) -> None:
        """One command: ``resend`` is answered from the buffer; anything else gets ``ok: false``."""
        target = self._client_for(device_id)
        if target is None or not self.buffer.knows(device_id):
            return  # not a device this publisher simulates
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("cmd_id"), str):
            return
        now_ms = time.time_ns() // 1_000_000
        if _expired(doc.get("expires_at"), now_ms):
            return
        client, name = target
        cmd_id: str = doc["cmd_id"]
        if doc.get("name") in ("lock", "unlock"):
            locked = doc.get("name") == "lock"
            obeyed = self.gate_control(device_id, locked) if self.gate_control is not None else True
            if obeyed:
                (self.locked.add if locked else self.locked.discard)(device_id)
            detail = ("locked" if locked else "unlocked") if obeyed else "not a gate"
            self._result(client, name, device_id, cmd_id, obeyed, detail)
            return
        if doc.get("name") != "resend":
            self._result(client, name, device_id, cmd_id, False, f"unsupported command {doc.get('name')!r}")
            return
        args = doc.get("args")
        if not isinstance(args, dict):
            args = {}
        a, b = args.get("from_seq"), args.get("to_seq")
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b and b - a < MAX_RANGE):
            self._result(client, name, device_id, cmd_id, False, "args: from_seq <= to_seq, at most 10,000")
            return
        if self.buffer.size == 0:
            self._result(client, name, device_id, cmd_id, False, "no buffer")
            return
        records, gone = self.buffer.take(device_id, a, b)
        for msg in records:  # unchanged: same seq, same ts
            self._send(client, name, msg.topic, msg.payload, False)
        self._result(client, name, device_id, cmd_id, True, format_seq_ranges(gone))
        logger.info("%s: resent %d records of %d-%d, %d no longer held", device_id, len(records), a, b, len(gone))

    def _result(self, client: mqtt.Client, name: str, device_id: str, cmd_id: str, ok: bool, detail: str) -> None:
        body = {"type": "cmd_result", "cmd_id": cmd_id, "ok": ok, "detail": detail}
        self._send(client, name, topic_for(device_id, "event"), json.dumps(body).encode(), False)
        self.commands_answered += 1

    def _connected(self, name: str) -> None:
        raise NotImplementedError

    def _refused(self, name: str, reason: str) -> None:
        raise NotImplementedError

    def _disconnected(self, name: str, rc: ReasonCode) -> None:
        raise NotImplementedError


class SharedPublisher(_Base):
    """One connection publishing on behalf of every simulated device (dev simulator account).

    ``threaded=True`` (default): paho's network thread runs in the background; ``publish`` may be called from
    any one thread. ``threaded=False``: no background thread; the caller's ``publish`` and ``flush`` drive the
    network (fastest for bulk loads: no thread hand-offs), so call ``flush`` before pausing.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str = SIM_USERNAME,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        ack_timeout_s: float = 60.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 10.0,
        tls_ca: Path | None = None,
        threaded: bool = True,
        resend_buffer: int = DEFAULT_RESEND_BUFFER,
    ) -> None:
        super().__init__(
            host,
            port,
            max_outstanding=max_outstanding,
            keepalive_s=keepalive_s,
            connect_timeout_s=connect_timeout_s,
            ack_timeout_s=ack_timeout_s,
            tls_ca=tls_ca,
            # Single-threaded (bulk loads): nobody services the network between publishes, so no commands.
            resend_buffer=resend_buffer if threaded else 0,
            answer_commands=threaded,
        )
        self.client = _new_client(
            client_id,
            username,
            password,
            tls_ca=tls_ca,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
        )
        self.threaded = threaded
        self._reconnect_min_s = reconnect_min_s
        self._next_retry = 0.0
        self._since_pump = 0
        self._up = threading.Event()
        self._answered = threading.Event()
        self._refusal: str | None = None
        self._ever_connected = False
        self._name = client_id
        self._wire(self.client, client_id)
        if not threaded:
            self._pump = self._service

    def _cmd_topic(self, name: str) -> str | None:
        return topic_for("+", "cmd")

    def _client_for(self, device_id: str) -> tuple[mqtt.Client, str] | None:
        return self.client, self._name

    def _connected(self, name: str) -> None:
        if self._ever_connected:
            self.counts.reconnects += 1
            logger.info("%s reconnected, %d messages pending", name, self.counts.pending)
        self._ever_connected = True
        self._up.set()
        self._answered.set()

    def _refused(self, name: str, reason: str) -> None:
        self._refusal = reason
        self._answered.set()

    def _disconnected(self, name: str, rc: ReasonCode) -> None:
        self._up.clear()
        if rc.is_failure:
            logger.warning("%s disconnected: %s; %d messages pending", name, rc, self.counts.pending)

    def _service(self, timeout: float) -> None:
        """Single-threaded mode: read and write what is due, reconnect when the connection dropped."""
        if self._since_pump:
            self._since_pump = 0
            self._cork(False)
        rc = self.client.loop(timeout)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        now = time.monotonic()
        if now < self._next_retry:
            time.sleep(min(timeout, self._next_retry - now))
            return
        self._next_retry = now + self._reconnect_min_s
        try:
            self.client.reconnect()
        except OSError as exc:
            logger.debug("reconnect failed: %s", exc)

    def start(self) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {self.host}:{self.port}: {exc}") from exc
        if self.threaded:
            self.client.loop_start()
            self._answered.wait(self.connect_timeout_s)
        else:
            deadline = time.monotonic() + self.connect_timeout_s
            while not self._answered.is_set() and time.monotonic() < deadline:
                self.client.loop(0.05)
        if not self._up.is_set():
            self.client.disconnect()
            self.client.loop_stop()
            why = f"refused: {self._refusal}" if self._refusal else f"no answer within {self.connect_timeout_s:.0f} s"
            raise BrokerUnavailable(f"MQTT broker {self.host}:{self.port} did not accept the simulator ({why})")
        self._start_worker()
        logger.info("simulator publisher connected to %s:%s", self.host, self.port)

    def publish(self, msg: SimMessage) -> None:
        if self.threaded:
            self.buffer.add(msg)
            self._send(self.client, self._name, msg.topic, msg.payload, msg.retain)
            return
        # paho writes one packet per send(); corking the socket for a burst of publishes lets the kernel send
        # full segments, so the broker wakes once per burst instead of once per message.
        if self._since_pump == 0:
            self._cork(True)
        self._send(self.client, self._name, msg.topic, msg.payload, msg.retain)
        self._since_pump += 1
        if self._since_pump >= _BURST:
            self._since_pump = 0
            self._cork(False)
            self._service(0)  # read the PUBACKs that arrived meanwhile

    def _cork(self, on: bool) -> None:
        sock = self.client.socket()
        if _TCP_CORK is not None and isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1 if on else 0)

    def close(self, timeout: float = 5.0) -> None:
        self._stop_worker()
        if timeout > 0:
            self.flush(timeout)
        self.client.disconnect()
        if self.threaded:
            self.client.loop_stop()
        else:
            self.client.loop(0.05)  # write the DISCONNECT


_WILL_REASON = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")


class DevicePublisher(_Base):
    """One connection per device with its own credentials and Last Will (as real devices connect).

    ``credentials`` maps device id -> password; the device id is both client id and username. Each connection
    has its own paho network thread; ``publish`` may be called from any one thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Mapping[str, str],
        *,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        keepalive_s: int = 30,
        connect_timeout_s: float = 30.0,
        ack_timeout_s: float = 60.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 10.0,
        tls_ca: Path | None = None,
        resend_buffer: int = DEFAULT_RESEND_BUFFER,
    ) -> None:
        super().__init__(
            host,
            port,
            max_outstanding=max_outstanding,
            keepalive_s=keepalive_s,
            connect_timeout_s=connect_timeout_s,
            ack_timeout_s=ack_timeout_s,
            tls_ca=tls_ca,
            resend_buffer=resend_buffer,
        )
        self._credentials = dict(credentials)
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self.clients: dict[str, mqtt.Client] = {}
        self._lock = threading.Lock()
        self._all_up = threading.Condition(self._lock)
        self._up: set[str] = set()
        self._ever: set[str] = set()
        self._silent: set[str] = set()
        self._retired: list[mqtt.Client] = []
        self._refusals: dict[str, str] = {}

    def _make(self, device_id: str) -> mqtt.Client:
        client = _new_client(
            device_id,
            device_id,
            self._credentials[device_id],
            tls_ca=self.tls_ca,
            reconnect_min_s=self._reconnect[0],
            reconnect_max_s=self._reconnect[1],
        )
        client.will_set(topic_for(device_id, "status"), OFFLINE_PAYLOAD, qos=1, retain=True)
        self._wire(client, device_id)
        return client

    def _cmd_topic(self, name: str) -> str | None:
        return topic_for(name, "cmd")

    def _client_for(self, device_id: str) -> tuple[mqtt.Client, str] | None:
        client = self.clients.get(device_id)
        if client is None or device_id in self._silent:
            return None
        return client, device_id

    def _connected(self, name: str) -> None:
        with self._lock:
            if name in self._ever:
                self.counts.reconnects += 1
            self._ever.add(name)
            self._up.add(name)
            self._all_up.notify_all()

    def _refused(self, name: str, reason: str) -> None:
        with self._lock:
            self._refusals[name] = reason
            self._all_up.notify_all()

    def _disconnected(self, name: str, rc: ReasonCode) -> None:
        with self._lock:
            self._up.discard(name)
        if rc.is_failure and name not in self._silent:
            logger.warning("device %s disconnected: %s", name, rc)

    @property
    def connected(self) -> int:
        with self._lock:
            return len(self._up)

    def _open(self, device_id: str) -> None:
        client = self._make(device_id)
        self.clients[device_id] = client
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect device {device_id} to {self.host}:{self.port}: {exc}") from exc
        client.loop_start()

    def start(self) -> None:
        for device_id in self._credentials:
            self._open(device_id)
        deadline = time.monotonic() + self.connect_timeout_s
        with self._lock:
            while len(self._up) < len(self._credentials) and not self._refusals:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._all_up.wait(left)
            missing = sorted(set(self._credentials) - self._up)
            refusals = dict(self._refusals)
        if missing:
            self.close(0)
            first = next(iter(sorted(refusals.items())), None)
            why = f"{first[0]} refused: {first[1]}" if first else f"first: {missing[0]}, no answer"
            raise BrokerUnavailable(f"{len(missing)} simulated devices could not connect ({why})")
        self._start_worker()
        logger.info("%d simulated devices connected with their own credentials", len(self.clients))

    def publish(self, msg: SimMessage) -> None:
        client = self.clients.get(msg.device_id)
        if client is None:
            raise BrokerUnavailable(f"no credentials for device {msg.device_id}")
        if msg.will:
            # Going silent: the broker publishes the device's own Last Will. What it sent before is acked
            # first (a disconnect would leave it unacked); the network thread ends once DISCONNECT is written.
            if not self._window.wait_drained(self.ack_timeout_s, name=msg.device_id):
                raise BrokerUnavailable(f"device {msg.device_id}: no PUBACK for {self.ack_timeout_s:.0f} s")
            self._silent.add(msg.device_id)
            client.disconnect(reasoncode=_WILL_REASON)
            self._retired.append(client)
            return
        if msg.device_id in self._silent:
            if msg.kind != "status":
                return
            self._silent.discard(msg.device_id)
            self._open(msg.device_id)  # back online: a fresh connection, then its online status
            client = self.clients[msg.device_id]
        self.buffer.add(msg)
        self._send(client, msg.device_id, msg.topic, msg.payload, msg.retain)

    def close(self, timeout: float = 5.0) -> None:
        self._stop_worker()
        if timeout > 0:
            self.flush(timeout)
        for client in self.clients.values():
            client.disconnect()
        for client in [*self.clients.values(), *self._retired]:
            client.loop_stop()


def publish_bulk(
    messages: Iterable[SimMessage],
    *,
    host: str,
    port: int,
    username: str = SIM_USERNAME,
    password: str,
    client_id: str = "lianfang-bulk",
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    timeout_s: float = 120.0,
) -> PublishCounts:
    """Publish every message (QoS 1, bounded in flight) on one connection and wait for all acks.

    Single-threaded (the fastest paho can go). Used by the ingest benchmark to pre-fill a persistent session.
    Raises BrokerUnavailable if the acks do not all arrive within ``timeout_s``.
    """
    pub = SharedPublisher(
        host,
        port,
        username,
        password,
        client_id=client_id,
        max_outstanding=max_outstanding,
        ack_timeout_s=timeout_s,
        threaded=False,
    )
    pub.start()
    try:
        for msg in messages:
            pub.publish(msg)
        if not pub.flush(timeout_s):
            raise BrokerUnavailable(f"{pub.counts.pending} messages not acknowledged after {timeout_s:.0f} s")
    finally:
        pub.close(0)
    return pub.counts
