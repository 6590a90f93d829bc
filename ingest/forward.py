"""Ingest -> alert engine over the broker: the wire format, the partitioner and the forwarder.

With ``alerts.engine: separate`` ingest does not evaluate its batches itself: it publishes each decoded batch,
QoS 1, to the internal topic of its engine partition, ``lf/internal/v1/engine/<k>``, and acknowledges the devices'
messages only when the broker has PUBACKed every part (and the store has committed the batch: ingest/service.py).
The engine role (``lianfang/engine_role.py``, ``lianfang alerts``) holds a persistent session on its partitions
and acknowledges a part only after the alert engine has committed what it raised. So a batch is either evaluated
or still held by the broker (or by ingest, unacknowledged) at every moment: at-least-once end to end. A part
delivered twice is harmless: the engine's replay guard (``AlertService._replayed``) drops records it has seen.

Partitions: a record goes to the partition of its region's ancestor at ``alerts.partition_level`` (1: the root),
``crc32(ancestor) % alerts.partitions``, so every subtree at that level is evaluated by one engine process and
its per-device and per-region state stays in one place. Rejections (they have no region) go to partition 0, for
the live stream only.

The payload is compact JSON (orjson) of the records, as lists::

    {"v": 1, "src": "lianfang-ingest", "oldest_ms": ..., "sent_ms": ...,
     "r": [[device, region, type, ts_ms, seq, fields, nonstandard, ts_from_device], ...],
     "e": [[device, region, type, ts_ms, seq, event_type, data, ts_from_device], ...],
     "s": [[device, region, ts_ms, state, fw], ...],
     "x": [[device, topic, reason, detail, received_ms], ...],
     "l": [[device, from_seq, to_seq, reason, count, region, type], ...]}   (optional: seqs resend gave up on)

Flow control: the engine publishes its progress (``lf/internal/v1/status/engine/<client id>``: its partitions,
how many parts it holds, the ``sent_ms`` of the last part it finished) every few hundred milliseconds. Before a
batch, the forwarder waits while an engine of a partition it sends to holds more than ``max_engine_queue`` (32)
parts, or holds parts and is more than ``max_lead_s`` (2 s) behind. So ingest does not run ahead of the engine:
its acknowledgements wait, and MQTT flow control holds the backlog in the broker, as it did with the engine in
ingest's process. Without this an engine that falls behind sees its devices' records late, and its absence
timers fire on devices that did report. An engine not heard from for 10 s is not waited for: its parts wait for
it in the broker.

Ingest also publishes its status (``IngestService.status``) every few seconds, QoS 0, to
``lf/internal/v1/status/ingest/<client id>``: the process running the engine and the gateway shows it in
``/health/ready`` and raises the platform alert "ingest stalled" from it; and its ``lianfang_ingest_*`` metrics
to ``lf/internal/v1/metrics/ingest/<client id>``, which that process's ``/metrics`` shows with the label
``ingest="<client id>"``.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.protocol import Event, Reading, Record, Rejection, Status
from core.settings import AlertSettings, MqttSettings
from core.store import WriteBatch

logger = logging.getLogger(__name__)

INTERNAL_ROOT = "lf/internal/v1"
ENGINE_TOPIC = INTERNAL_ROOT + "/engine/{k}"
STATUS_TOPIC = INTERNAL_ROOT + "/status/ingest/{client_id}"
STATUS_FILTER = INTERNAL_ROOT + "/status/ingest/+"
ENGINE_STATUS_TOPIC = INTERNAL_ROOT + "/status/engine/{client_id}"
ENGINE_STATUS_FILTER = INTERNAL_ROOT + "/status/engine/+"
ENGINE_SILENT_S = 10.0  # an engine not heard from for this long is not waited for (its parts wait in the broker)
METRICS_TOPIC = INTERNAL_ROOT + "/metrics/ingest/{client_id}"
METRICS_FILTER = INTERNAL_ROOT + "/metrics/ingest/+"
RELAYED_PREFIX = "lianfang_ingest_"  # the metric families an ingest process relays to the engine's /metrics


def relayed_metrics(text: str) -> str:
    """The ``lianfang_ingest_*`` families of a Prometheus text exposition (the rest stays with the process)."""
    out = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") else line
        if name.startswith(RELAYED_PREFIX):
            out.append(line)
    return "\n".join(out) + "\n"


WIRE_VERSION = 1


def engine_topic(k: int) -> str:
    return ENGINE_TOPIC.format(k=k)


def partition_of_topic(topic: str) -> int | None:
    prefix = INTERNAL_ROOT + "/engine/"
    if not topic.startswith(prefix):
        return None
    try:
        return int(topic[len(prefix) :])
    except ValueError:
        return None


# --- wire format (pure) --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LossNotice:
    """Seqs of a device that resend could not recover (ingest/resend.py ``Loss``), for the data-quality alert
    (alerts/data_quality.py), which the engine raises."""

    device_id: str
    from_seq: int
    to_seq: int
    reason: str
    count: int
    region_id: str
    device_type: str


@dataclass
class Part:
    """One partition's share of a batch."""

    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    losses: list[LossNotice] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.readings) + len(self.events) + len(self.statuses) + len(self.rejections)


def encode(part: Part, *, src: str, oldest_ms: int, sent_ms: int) -> bytes:
    return orjson.dumps(
        {
            "v": WIRE_VERSION,
            "src": src,
            "oldest_ms": oldest_ms,
            "sent_ms": sent_ms,
            "r": [
                [r.device_id, r.region_id, r.device_type, r.ts_ms, r.seq, r.fields, r.nonstandard, r.ts_from_device]
                for r in part.readings
            ],
            "e": [
                [e.device_id, e.region_id, e.device_type, e.ts_ms, e.seq, e.type, e.data, e.ts_from_device]
                for e in part.events
            ],
            "s": [[s.device_id, s.region_id, s.ts_ms, s.state, s.fw] for s in part.statuses],
            "x": [[x.device_id, x.topic, x.reason, x.detail, x.received_ms] for x in part.rejections],
            **(
                {
                    "l": [
                        [n.device_id, n.from_seq, n.to_seq, n.reason, n.count, n.region_id, n.device_type]
                        for n in part.losses
                    ]
                }
                if part.losses
                else {}
            ),
        }
    )


@dataclass(frozen=True)
class Decoded:
    batch: WriteBatch
    src: str
    oldest_ms: int
    sent_ms: int
    losses: list[LossNotice] = field(default_factory=list)


def decode(payload: bytes) -> Decoded:
    """The batch a part carries; ValueError for anything that is not a part of this wire version."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
        raise ValueError(f"not an engine part of wire version {WIRE_VERSION}")
    try:
        batch = WriteBatch(
            readings=[Reading(*row) for row in doc["r"]],
            events=[Event(*row) for row in doc["e"]],
            statuses=[Status(*row) for row in doc["s"]],
            rejections=[Rejection(d, t, r, det, b"", ms) for d, t, r, det, ms in doc["x"]],
        )
        losses = [LossNotice(*row) for row in doc.get("l", ())]
        return Decoded(batch, str(doc["src"]), int(doc["oldest_ms"]), int(doc["sent_ms"]), losses)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed engine part: {exc}") from exc


# --- partitions (pure) -----------------------------------------------------------------------------------------


class Partitioner:
    """Region id -> engine partition: ``crc32(ancestor at level) % partitions``.

    ``regions`` returns region id -> path (root first, the region last); it is read at the first lookup and again
    on an unknown region, at most every ``miss_refresh_s``. An unknown region is its own unit (its id hashed)."""

    def __init__(
        self,
        partitions: int,
        level: int,
        regions: Callable[[], Mapping[str, Sequence[str]]],
        *,
        miss_refresh_s: float = 5.0,
    ) -> None:
        if partitions < 1 or level < 1:
            raise ValueError("partitions and level must be >= 1")
        self.partitions = partitions
        self.level = level
        self._regions = regions
        self.miss_refresh_s = miss_refresh_s
        self._cache: dict[str, int] = {}
        self._paths: Mapping[str, Sequence[str]] = {}
        self._loaded_at = float("-inf")

    def unit(self, path: Sequence[str]) -> str:
        return path[min(self.level, len(path)) - 1]

    def of(self, region_id: str) -> int:
        if self.partitions == 1:
            return 0
        k = self._cache.get(region_id)
        if k is not None:
            return k
        path = self._paths.get(region_id)
        if path is None and time.monotonic() - self._loaded_at >= self.miss_refresh_s:
            try:
                self._paths = self._regions()
            except Exception as exc:  # the registry is down: the unknown region is hashed as itself for now
                logger.warning("engine partitions: regions unavailable: %s", exc)
            self._loaded_at = time.monotonic()
            path = self._paths.get(region_id)
        if path is None or not path:
            return zlib.crc32(region_id.encode()) % self.partitions  # not cached: known later, it is looked up
        k = self._cache[region_id] = zlib.crc32(self.unit(path).encode()) % self.partitions
        return k

    def split(self, records: WriteBatch, extra: Iterable[Record] = ()) -> dict[int, Part]:
        """The batch's records (and ``extra`` ones: duplicates that may have missed the engine) per partition."""
        parts: dict[int, Part] = {}

        def part(region_id: str) -> Part:
            k = self.of(region_id)
            p = parts.get(k)
            if p is None:
                p = parts[k] = Part()
            return p

        for r in records.readings:
            part(r.region_id).readings.append(r)
        for e in records.events:
            part(e.region_id).events.append(e)
        for s in records.statuses:
            part(s.region_id).statuses.append(s)
        for rec in extra:
            if isinstance(rec, Reading):
                part(rec.region_id).readings.append(rec)
            elif isinstance(rec, Event):
                part(rec.region_id).events.append(rec)
        if records.rejections:
            parts.setdefault(0, Part()).rejections.extend(records.rejections)
        return parts


def owned_partitions(settings: AlertSettings) -> list[int]:
    """The partitions an engine process consumes (``alerts.engine_partitions``; empty: all). ValueError for one
    out of range."""
    if not settings.engine_partitions:
        return list(range(settings.partitions))
    bad = [k for k in settings.engine_partitions if not 0 <= k < settings.partitions]
    if bad:
        raise ValueError(f"alerts.engine_partitions: {bad[0]} is not a partition (0..{settings.partitions - 1})")
    return sorted(set(settings.engine_partitions))


def partition_owner(settings: AlertSettings, registry: Any) -> Callable[[str], bool] | None:
    """region id -> whether this engine process owns it; None when it owns every partition."""
    owned = set(owned_partitions(settings))
    if len(owned) == settings.partitions:
        return None
    p = Partitioner(settings.partitions, settings.partition_level, region_paths(registry))
    return lambda region_id: p.of(region_id) in owned


def region_paths(registry: Any) -> Callable[[], dict[str, tuple[str, ...]]]:
    """``Partitioner``'s ``regions`` from ``devices.registry.Registry``."""

    def paths() -> dict[str, tuple[str, ...]]:
        return {r.id: tuple(p for p in r.path.split("/") if p) for r in registry.regions()}

    return paths


# --- the forwarder ---------------------------------------------------------------------------------------------


class EngineForwarder:
    """Publishes batches to the engine partitions (QoS 1) and waits for the broker's PUBACKs.

    Its own MQTT connection (``{client_id}-fwd``), so the forward never waits behind ingest's receive path. paho
    keeps a message that is not PUBACKed and sends it again after a reconnect; ``forward`` returns only when
    every part is PUBACKed, or False when asked to stop first (then the batch stays unacknowledged)."""

    def __init__(
        self,
        settings: MqttSettings,
        partitioner: Partitioner,
        *,
        client_id: str | None = None,
        status: Callable[[], Mapping[str, Any]] | None = None,
        status_interval_s: float = 2.0,
        max_lead_s: float = 2.0,
        max_engine_queue: int = 32,
    ) -> None:
        self.settings = settings
        self.partitioner = partitioner
        self.src = settings.client_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"{settings.client_id}-fwd", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(settings.username, settings.password.get_secret_value())
        if settings.tls_ca is not None:
            self.client.tls_set(ca_certs=str(settings.tls_ca))
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_engine_status
        self.max_lead_s = max_lead_s
        self.max_engine_queue = max_engine_queue
        self._engines: dict[str, tuple[dict[str, Any], float]] = {}  # client id -> (progress, when heard)
        self._engines_changed = threading.Condition()
        self.waited_s = 0.0
        self._acked = threading.Condition()
        self._done: set[int] = set()  # mids PUBACKed and not yet taken by forward()
        self._status = status
        self.status_interval_s = status_interval_s
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None
        self.parts = 0
        self.records = 0

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            logger.error("engine forward: MQTT connect refused: %s", reason)
            return
        client.subscribe(ENGINE_STATUS_FILTER, qos=0)
        self.connected.set()

    def _on_engine_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = orjson.loads(msg.payload)
            if isinstance(doc, dict):
                with self._engines_changed:
                    self._engines[msg.topic.rsplit("/", 1)[-1]] = (doc, time.monotonic())
                    self._engines_changed.notify_all()
        except Exception:
            logger.exception("engine forward: bad engine status on %s", msg.topic)

    def _behind(self, partitions: Iterable[int]) -> bool:
        """An engine of one of these partitions holds more than max_engine_queue parts, or holds parts and is more
        than max_lead_s behind."""
        now, now_ms = time.monotonic(), time.time_ns() // 1_000_000
        wanted = set(partitions)
        for doc, heard in self._engines.values():
            if now - heard > ENGINE_SILENT_S or not wanted & set(doc.get("partitions") or ()):
                continue
            done, queued = doc.get("evaluated_sent_ms"), int(doc.get("queue") or 0)
            if queued > self.max_engine_queue:
                return True
            if queued and isinstance(done, int) and now_ms - done > self.max_lead_s * 1000:
                return True
        return False

    def _wait_for_engines(self, partitions: Iterable[int]) -> None:
        keys = list(partitions)
        started = time.monotonic()
        with self._engines_changed:
            while self._behind(keys) and not self._stop.is_set():
                self._engines_changed.wait(0.2)
        self.waited_s += time.monotonic() - started

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            logger.warning("engine forward: MQTT disconnected (%s); reconnecting", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._acked:
            self._done.add(mid)
            self._acked.notify_all()

    def start(self, timeout: float = 10.0) -> None:
        from core.errors import BrokerUnavailable

        try:
            self.client.connect(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot connect to MQTT broker {self.settings.host}:{self.settings.port}: {exc}"
            ) from exc
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.client.loop_stop()
            raise BrokerUnavailable(
                f"MQTT broker {self.settings.host}:{self.settings.port} refused the engine forward connection"
            )

    def start_status(self) -> None:
        """Publish ``status`` now and every ``status_interval_s`` (once ingest runs)."""
        if self._status is not None and self._status_thread is None:
            self._status_thread = threading.Thread(target=self._status_loop, name="ingest-status", daemon=True)
            self._status_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def forward(self, batch: WriteBatch, oldest_ms: int, extra: Iterable[Record] = ()) -> bool:
        """Publish the batch's parts; True once every part is PUBACKed, False if stopped before."""
        parts = self.partitioner.split(batch, extra)
        if not parts:
            return True
        self._wait_for_engines(parts)
        sent_ms = time.time_ns() // 1_000_000
        mids: set[int] = set()
        for k, part in parts.items():
            payload = encode(part, src=self.src, oldest_ms=oldest_ms, sent_ms=sent_ms)
            # Queued by paho even while disconnected (sent after the reconnect). Not under ``_acked``: paho calls
            # on_publish holding its own message lock, which publish() takes too.
            info = self.client.publish(engine_topic(k), payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                return False
            mids.add(info.mid)
        with self._acked:
            while not mids <= self._done:
                if self._stop.is_set() and not self.connected.is_set():
                    self._done -= mids
                    return False
                self._acked.wait(0.5)
            self._done -= mids
        self.parts += len(parts)
        self.records += sum(len(p) for p in parts.values())
        return True

    def forward_loss(self, notice: LossNotice) -> None:
        """Hand a resend loss to the engine of the device's partition (QoS 1; not waited for: the loss is also
        in ingest's resend status and metrics)."""
        part = Part(losses=[notice])
        now = time.time_ns() // 1_000_000
        payload = encode(part, src=self.src, oldest_ms=now, sent_ms=now)
        self.client.publish(engine_topic(self.partitioner.of(notice.region_id)), payload, qos=1)

    def _status_loop(self) -> None:
        assert self._status is not None
        from prometheus_client import REGISTRY, generate_latest

        topic = STATUS_TOPIC.format(client_id=self.src)
        metrics_topic = METRICS_TOPIC.format(client_id=self.src)
        while True:
            try:
                text = relayed_metrics(generate_latest(REGISTRY).decode())  # first: status "connected" means
                self.client.publish(metrics_topic, text.encode(), qos=0)  # the metrics are there too
                doc = dict(self._status())
                doc["at_ms"] = time.time_ns() // 1_000_000
                self.client.publish(topic, orjson.dumps(doc, default=str), qos=0)
            except Exception:
                logger.exception("ingest status publish failed")
            if self._stop.wait(self.status_interval_s):
                return
