"""People's actions sent to the engine process that owns the alert, over the broker (issue 12, docs/scaling.md).

With several engine processes (``alerts.engine_partitions``) each one holds the live state of its partitions'
alerts. The gateway runs beside one of them (``lianfang serve``); an action on an alert of another partition is
sent to the engine of that partition and answered with what it did:

- requests: ``lf/internal/v1/cmd/engine/<k>``, QoS 1, one topic per partition; every engine subscribes to the
  topics of the partitions it owns. MQTT 5 properties carry the reply address (``ResponseTopic``) and the request
  id (``CorrelationData``). The payload is ``{"op", "args", "deadline_ms"}``.
- replies: ``lf/internal/v1/cmd/reply/<client id>``, QoS 1, ``{"status": 200 | 409 | 404, "detail": ...}``.

Each process keeps a clean session (no session expiry): a request published while its owner is down has no
subscriber, the broker drops it, and the caller answers 503 after its timeout. An owner that receives a request
after its deadline does not apply it. A request delivered twice (QoS 1 redelivery) is answered from the cache of
the last ``REPLY_CACHE`` replies by request id and applied once.

With one engine (every ``lianfang serve`` by default) none of this runs: actions stay in-process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from core.errors import BrokerUnavailable
from core.settings import MqttSettings
from ingest.forward import INTERNAL_ROOT
from lianfang.engine_role import platform_client

logger = logging.getLogger(__name__)

REQUEST_TOPIC = INTERNAL_ROOT + "/cmd/engine/{k}"
REPLY_TOPIC = INTERNAL_ROOT + "/cmd/reply/{client_id}"
REPLY_CACHE = 1024
DEFAULT_TIMEOUT_S = 10.0

# (op, args) -> {"status": int, "detail": ...}; raised exceptions become a 500 reply
Handler = Callable[[str, dict[str, Any]], dict[str, Any]]


class EngineUnavailable(BrokerUnavailable):
    """The owning engine did not answer in time (down, not connected, or the broker is unreachable)."""


def request_topic(k: int) -> str:
    return REQUEST_TOPIC.format(k=k)


@dataclass(slots=True)
class _Waiter:
    done: threading.Event
    reply: dict[str, Any] | None = None


@dataclass(slots=True)
class _Request:
    rid: str
    reply_to: str
    op: str
    args: dict[str, Any]
    deadline_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EngineCommands:
    """One MQTT connection per engine process: serves the requests of ``partitions`` with ``handler`` (on its own
    worker thread, in arrival order) and sends requests to the other partitions' engines (``call``)."""

    def __init__(
        self,
        mqtt_settings: MqttSettings,
        partitions: Sequence[int],
        handler: Handler,
        *,
        client_id: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.mqtt_settings = mqtt_settings
        self.partitions = sorted(set(partitions))
        self.handler = handler
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.reply_topic = REPLY_TOPIC.format(client_id=client_id)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self.served = 0
        self.duplicates = 0
        self.late = 0
        self._waiting: dict[str, _Waiter] = {}
        self._replies: OrderedDict[str, bytes] = OrderedDict()  # request id -> the reply sent
        self._busy: set[str] = set()  # request ids queued or being applied
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="engine-commands", daemon=True)
        self.client = platform_client(mqtt_settings, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> EngineCommands:
        s = self.mqtt_settings
        self._worker.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0  # clean: a request for an engine that is down is dropped, not held
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True, properties=props)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {s.host}:{s.port}: {exc}") from exc
        self.client.loop_start()
        self._started = True
        if not self.subscribed.wait(timeout):
            self.stop()
            raise BrokerUnavailable(
                f"MQTT broker {s.host}:{s.port} did not accept the engine command session within {timeout:.0f} s: "
                f"{self.last_error or 'no answer'}"
            )
        logger.info("engine commands: serving partitions %s as %s", self.partitions, self.client_id)
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._queue.put(None)
        self._worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()

    # --- network thread -----------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            logger.error("engine commands: MQTT connect refused: %s", reason)
            return
        self.connected.set()
        topics = [(request_topic(k), SubscribeOptions(qos=1)) for k in self.partitions]
        topics.append((self.reply_topic, SubscribeOptions(qos=1)))
        client.subscribe(topics)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self.last_error = f"subscribe refused: {failed[0]}"
            logger.error(
                "engine commands: subscribe refused: %s (may the platform role use lf/internal/v1/#?)", failed[0]
            )
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._started:
            logger.warning("engine commands: MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            props = getattr(msg, "properties", None)
            corr = getattr(props, "CorrelationData", None)
            rid = corr.decode() if isinstance(corr, bytes | bytearray) else None
            if rid is None:
                logger.warning("engine commands: a message on %s without correlation data dropped", msg.topic)
                return
            doc = orjson.loads(msg.payload)
            if msg.topic == self.reply_topic:
                with self._lock:
                    waiter = self._waiting.get(rid)
                if waiter is not None and waiter.reply is None:
                    waiter.reply = doc if isinstance(doc, dict) else {"status": 500, "detail": "a malformed reply"}
                    waiter.done.set()
                return
            reply_to = getattr(props, "ResponseTopic", None)
            if not isinstance(doc, dict) or not isinstance(reply_to, str):
                logger.warning("engine commands: a malformed request on %s dropped", msg.topic)
                return
            with self._lock:
                cached = self._replies.get(rid)
                busy = rid in self._busy
                if cached is None and not busy:
                    self._busy.add(rid)
            if cached is not None:  # delivered again: answered again, applied once
                self.duplicates += 1
                self._reply(reply_to, rid, cached)
                return
            if busy:
                self.duplicates += 1
                return  # the reply follows when it is applied
            args = doc.get("args")
            self._queue.put(
                _Request(
                    rid,
                    reply_to,
                    str(doc.get("op")),
                    args if isinstance(args, dict) else {},
                    int(doc.get("deadline_ms") or 0),
                )
            )
        except Exception:
            logger.exception("engine commands: could not take a message on %s", msg.topic)

    # --- the worker (serving) -------------------------------------------------------------------------------

    def _run(self) -> None:
        while (req := self._queue.get()) is not None:
            try:
                self._serve(req)
            except Exception:
                logger.exception("engine commands: serving %s failed", req.op)

    def _serve(self, req: _Request) -> None:
        if req.deadline_ms and _now_ms() > req.deadline_ms:
            self.late += 1  # the caller has given up (503): applying it now would be a change it did not report
            logger.warning("engine commands: %s (request %s) arrived after its deadline; not applied", req.op, req.rid)
            with self._lock:
                self._busy.discard(req.rid)
            return
        try:
            out = self.handler(req.op, req.args)
        except Exception as exc:
            logger.exception("engine commands: %s failed", req.op)
            out = {"status": 500, "detail": f"{type(exc).__name__}: {exc}"[:500]}
        payload = orjson.dumps(out)
        with self._lock:
            self._replies[req.rid] = payload
            while len(self._replies) > REPLY_CACHE:
                self._replies.popitem(last=False)
            self._busy.discard(req.rid)
        self.served += 1
        self._reply(req.reply_to, req.rid, payload)

    def _reply(self, topic: str, rid: str, payload: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = rid.encode()
        self.client.publish(topic, payload, qos=1, properties=props)

    # --- calling --------------------------------------------------------------------------------------------

    def call(self, partition: int, op: str, args: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """Send ``op`` to the engine of ``partition`` and return its reply (``status``, ``detail``). Raises
        EngineUnavailable when it does not answer within the timeout (nothing was applied by it, or it applied
        it and its reply was lost: the alert's stored state says which)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not self.connected.is_set():
            raise EngineUnavailable("this process is not connected to the broker: the owning engine cannot be asked")
        rid = uuid.uuid4().hex
        waiter = _Waiter(threading.Event())
        with self._lock:
            self._waiting[rid] = waiter
        try:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = rid.encode()
            doc = {"op": op, "args": args, "deadline_ms": _now_ms() + int(timeout * 1000)}
            self.client.publish(request_topic(partition), orjson.dumps(doc), qos=1, properties=props)
            if not waiter.done.wait(timeout) or waiter.reply is None:
                raise EngineUnavailable(
                    f"the alert engine of partition {partition} did not answer within {timeout:g} s"
                    " (is its `lianfang alerts` process running?)"
                )
            return waiter.reply
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.connected.is_set(),
            "client_id": self.client_id,
            "partitions": self.partitions,
            "served": self.served,
            "duplicates": self.duplicates,
            "late": self.late,
        }
