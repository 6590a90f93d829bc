"""The alert and joint-control engine as its own role: consumes ingest's forwarded batches (ingest/forward.py).

``EngineConsumer`` holds a persistent MQTT session (``alerts.engine_client_id``) subscribed, QoS 1, to its
partitions' topics ``lf/internal/v1/engine/<k>``. One worker thread takes the parts in arrival order, hands each
decoded batch to the listeners (the alert engine first: ``AlertsRuntime.on_batch`` returns once the batch's
alerts and decisive rule state are committed; then the live stream) and only then acknowledges it. A part that
was delivered but not acknowledged when the process stopped or died is delivered again by the broker; the alert
engine's replay guard drops the records it has already evaluated.

It also reads the status that every ingest process publishes (``lf/internal/v1/status/ingest/<client id>``):
``ingest_status()`` is what ``/health/ready`` and the platform alert "ingest stalled" see when ingest runs in
other processes. ``EngineStallAlerts`` raises the platform alert "alert engine stalled" when the engine falls
behind by more than ``alerts.engine_stall_after_s``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from alerts.platform import PLATFORM_DEVICE, PlatformAlerts
from alerts.types import AlertChange, Severity
from core.errors import BrokerUnavailable
from core.settings import AlertSettings, MqttSettings
from core.store import BatchListener
from ingest import metrics as ingest_metrics
from ingest.forward import (
    ENGINE_STATUS_TOPIC,
    METRICS_FILTER,
    RELAYED_PREFIX,
    STATUS_FILTER,
    LossNotice,
    decode,
    engine_topic,
    owned_partitions,
)

logger = logging.getLogger(__name__)

ENGINE_BATCHES = Counter("lianfang_engine_batches_total", "Forwarded batch parts evaluated by the alert engine")
ENGINE_RECORDS = Counter("lianfang_engine_records_total", "Records evaluated by the alert engine role")
ENGINE_MALFORMED = Counter("lianfang_engine_malformed_total", "Forwarded parts that could not be decoded (acked)")
ENGINE_QUEUE = Gauge("lianfang_engine_queue_batches", "Forwarded parts received and not yet evaluated")
ENGINE_LAG = Gauge(
    "lianfang_engine_lag_seconds", "Age (since ingest forwarded it) of the oldest part the engine has not finished"
)
ENGINE_CONNECTED = Gauge("lianfang_engine_broker_connected", "1 when the engine role is connected to the broker")

CONNECTED_METRIC = "lianfang_ingest_broker_connected"
STATUS_STALE_S = 10.0  # an ingest process that has not reported for this long is not fine
STATUS_FORGET_S = 300.0  # ... and is forgotten after this long (it was stopped or scaled in)


def platform_client(mqtt_settings: MqttSettings, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 client of the platform account (the engine's feed, its command channel, its live relay): the
    platform's username and password, TLS when ``mqtt.tls_ca`` is set, reconnects 1-10 s apart."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    client.username_pw_set(mqtt_settings.username, mqtt_settings.password.get_secret_value())
    if mqtt_settings.tls_ca is not None:
        client.tls_set(ca_certs=str(mqtt_settings.tls_ca))
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def default_client_id(settings: AlertSettings) -> str:
    if settings.engine_client_id:
        return settings.engine_client_id
    mine = owned_partitions(settings)
    if len(mine) == settings.partitions:
        return "lianfang-engine"
    return "lianfang-engine-" + "-".join(f"p{k}" for k in mine)


@dataclass(slots=True)
class _Part:
    mid: int
    qos: int
    payload: bytes
    arrived_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EngineConsumer:
    def __init__(
        self,
        mqtt_settings: MqttSettings,
        alert_settings: AlertSettings,
        listeners: Sequence[BatchListener],
        *,
        on_loss: Callable[[LossNotice], None] | None = None,
        client_id: str | None = None,
        receive_maximum: int = 16,
        hold: bool = False,
    ) -> None:
        """``hold``: connect and subscribe at ``start`` (the session exists, parts wait in the broker and the
        queue), evaluate nothing until ``release`` hands over the listeners (the engine is loaded)."""
        self.settings = alert_settings
        self.mqtt_settings = mqtt_settings
        self.listeners = list(listeners)
        self.on_loss = on_loss
        self.partitions = owned_partitions(alert_settings)
        self.client_id = client_id or default_client_id(alert_settings)
        self.receive_maximum = receive_maximum
        self.queue: queue.SimpleQueue[_Part | None] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.accepting = True
        self.last_error: str | None = None
        self.received = 0
        self.batches = 0
        self.records = 0
        self.malformed = 0
        self._current_sent_ms: int | None = None  # the part in the worker's hands (since ingest forwarded it)
        self._progress_at = 0.0  # when the progress (flow control of ingest/forward.py) was last published
        self._last_sent_ms: int | None = None
        self._ingest: dict[str, tuple[dict[str, Any], float]] = {}
        self._ingest_metrics: dict[str, tuple[str, float]] = {}
        self._ingest_lock = threading.Lock()
        self.client = platform_client(mqtt_settings, self.client_id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._go = threading.Event()
        self._released = not hold
        if not hold:
            self._go.set()
        self._worker = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        self._worker.start()
        self._started = True
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.mqtt_settings.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        s = self.mqtt_settings
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {s.host}:{s.port}: {exc}") from exc
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.client.loop_stop()
            raise BrokerUnavailable(
                f"MQTT broker {s.host}:{s.port} did not accept the engine session within {timeout:.0f} s: "
                f"{self.last_error or 'no answer'}"
            )
        ENGINE_QUEUE.set_function(lambda: float(self.queue.qsize()))
        ENGINE_LAG.set_function(self.lag_s)
        logger.info("alert engine consuming partitions %s as %s", self.partitions, self.client_id)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking parts, evaluate and acknowledge those received, then disconnect."""
        if not self._started:
            return
        self.accepting = False
        self.queue.put(None)
        self._go.set()
        self._worker.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        ENGINE_CONNECTED.set(0)
        ENGINE_QUEUE.set_function(lambda: 0.0)
        ENGINE_LAG.set_function(lambda: 0.0)
        logger.info("alert engine stopped: %d parts, %d records evaluated", self.batches, self.records)

    # --- callbacks (network thread) ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                self.last_error = f"connect refused: {reason}"
                logger.error("engine: MQTT connect refused: %s", reason)
                return
            self.connected.set()
            ENGINE_CONNECTED.set(1)
            topics = [(engine_topic(k), SubscribeOptions(qos=1)) for k in self.partitions]
            topics.append((STATUS_FILTER, SubscribeOptions(qos=0)))
            topics.append((METRICS_FILTER, SubscribeOptions(qos=0)))
            client.subscribe(topics)
        except Exception:
            logger.exception("engine on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self.last_error = f"subscribe refused: {failed[0]}"
            logger.error("engine: subscribe refused: %s (does the platform role allow lf/internal/v1/#?)", failed[0])
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        ENGINE_CONNECTED.set(0)
        if self.accepting:
            logger.warning("engine: MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic.startswith(METRICS_FILTER[:-1]):
                with self._ingest_lock:
                    self._ingest_metrics[msg.topic.rsplit("/", 1)[-1]] = (msg.payload.decode(), time.monotonic())
                return
            if msg.topic.startswith(STATUS_FILTER[:-1]):
                src = msg.topic.rsplit("/", 1)[-1]
                doc = orjson.loads(msg.payload)
                if isinstance(doc, dict):
                    with self._ingest_lock:
                        self._ingest[src] = (doc, time.monotonic())
                return
            if not self.accepting:
                return  # not acked: delivered again to the next session
            self.queue.put(_Part(msg.mid, msg.qos, bytes(msg.payload), _now_ms()))
            self.received += 1
        except Exception:
            logger.exception("engine: could not take a message on %s", msg.topic)

    # --- the worker ---------------------------------------------------------------------------------------

    def release(self, listeners: Sequence[BatchListener], on_loss: Callable[[LossNotice], None] | None) -> None:
        """Start evaluating (after ``hold``) with these listeners."""
        self.listeners = list(listeners)
        self.on_loss = on_loss
        self._released = True
        self._go.set()

    def _run(self) -> None:
        self._go.wait()
        if not self._released:
            return  # stopped before the engine was loaded: nothing evaluated, nothing acked
        while (part := self.queue.get()) is not None:
            try:
                self._evaluate(part)
            except Exception:  # a bug below: keep the thread; the part stays unacked and is redelivered later
                logger.exception("engine: evaluating a part failed unexpectedly; not acked")
        # stopping: what was queued behind the end mark is not acked and comes back to the next session

    def _evaluate(self, part: _Part) -> None:
        try:
            got = decode(part.payload)
        except ValueError as exc:
            logger.error("engine: dropping a malformed part: %s", exc)
            self.malformed += 1
            ENGINE_MALFORMED.inc()
            self._ack(part)
            return
        self._current_sent_ms = got.sent_ms
        try:
            for listener in self.listeners:
                try:
                    listener(got.batch)
                except Exception:
                    logger.exception("engine: batch listener %r failed", listener)
            for loss in got.losses:
                if self.on_loss is not None:
                    try:
                        self.on_loss(loss)
                    except Exception:
                        logger.exception("engine: loss notice of %s failed", loss.device_id)
        finally:
            self._last_sent_ms = got.sent_ms
            self._current_sent_ms = None
        self._ack(part)
        n = len(got.batch.readings) + len(got.batch.events) + len(got.batch.statuses)
        self.batches += 1
        self.records += n
        ENGINE_BATCHES.inc()
        ENGINE_RECORDS.inc(n)
        if time.monotonic() - self._progress_at >= 0.2 or not self.queue.qsize():
            self.publish_progress()

    def publish_progress(self) -> None:
        """What ingest's forwarders wait on (ingest/forward.py, flow control). QoS 0; never raises."""
        self._progress_at = time.monotonic()
        try:
            doc = {
                "partitions": self.partitions,
                "queue": self.queue.qsize(),
                "evaluated_sent_ms": self._last_sent_ms,
                "at_ms": _now_ms(),
            }
            self.client.publish(ENGINE_STATUS_TOPIC.format(client_id=self.client_id), orjson.dumps(doc), qos=0)
        except Exception:
            logger.exception("engine: progress publish failed")

    def _ack(self, part: _Part) -> None:
        if part.qos > 0:
            self.client.ack(part.mid, part.qos)

    # --- health -------------------------------------------------------------------------------------------

    def lag_s(self) -> float:
        """Seconds since ingest forwarded the part the engine is on (0 when idle)."""
        sent = self._current_sent_ms
        if sent is None:
            sent = self._last_sent_ms if self.queue.qsize() else None
        return 0.0 if sent is None else max(0.0, (_now_ms() - sent) / 1000)

    def status(self) -> dict[str, Any]:
        lag = self.lag_s()
        stalled = lag > self.settings.engine_stall_after_s
        alive = self._worker.is_alive()
        reason = None
        if stalled:
            reason = f"the alert engine is {lag:.0f} s behind ingest"
        elif not alive and self._started:
            reason = "the engine worker thread died"
        elif not self.connected.is_set():
            reason = "not connected to the broker"
        return {
            "ok": self.connected.is_set() and alive and not stalled,
            "client_id": self.client_id,
            "partitions": self.partitions,
            "connected": self.connected.is_set(),
            "queue": self.queue.qsize(),
            "lag_s": round(lag, 3),
            "received": self.received,
            "batches": self.batches,
            "records": self.records,
            "malformed": self.malformed,
            "stalled": stalled,
            "reason": reason,
        }

    def ingest_metrics(self) -> dict[str, str]:
        """The latest ``lianfang_ingest_*`` exposition of every ingest process heard from recently."""
        return {src: text for src, (text, _) in self.relayed_ingest_metrics().items()}

    def relayed_ingest_metrics(self) -> dict[str, tuple[str, bool]]:
        """Each ingest process's latest exposition, and whether it still holds: it came within STATUS_STALE_S
        and this process hears the broker (the relay goes through it, so without the broker a relayed value is
        only the last one seen)."""
        now = time.monotonic()
        live = self.connected.is_set()
        with self._ingest_lock:
            return {
                src: (text, live and now - at <= STATUS_STALE_S)
                for src, (text, at) in self._ingest_metrics.items()
                if now - at <= STATUS_FORGET_S
            }

    def ingest_status(self) -> dict[str, Any]:
        """The ingest processes' statuses as one, in the shape of ``Runtime.ingest_status`` (``stalled``,
        ``reason``, ``store_unavailable``, ``backlog``...), so /health/ready and the platform alerts read it."""
        now = time.monotonic()
        with self._ingest_lock:
            for src in [s for s, (_, at) in self._ingest.items() if now - at > STATUS_FORGET_S]:
                del self._ingest[src]
            seen = dict(self._ingest)
        if not seen:
            return {"ok": False, "connected": False, "detail": "no ingest process has reported yet"}
        reasons: list[str] = []
        backlog = 0
        oldest = 0.0
        store_error: str | None = None
        for src, (doc, at) in sorted(seen.items()):
            age = now - at
            backlog += int(doc.get("backlog") or 0)
            oldest = max(oldest, float(doc.get("oldest_unacked_age_s") or 0.0))
            if age > STATUS_STALE_S:
                reasons.append(f"{src} has not reported for {age:.0f} s")
            elif doc.get("stalled"):
                reasons.append(f"{src}: {doc.get('reason') or 'stalled'}")
            if doc.get("store_unavailable") and age <= STATUS_STALE_S:
                store_error = str(doc["store_unavailable"])
        return {
            "ok": not reasons,
            "connected": all(bool(d.get("connected")) for d, _ in seen.values()),
            "processes": {src: {**doc, "reported_s_ago": round(now - at, 1)} for src, (doc, at) in seen.items()},
            "backlog": backlog,
            "oldest_unacked_age_s": oldest,
            "stalled": bool(reasons),
            "reason": "; ".join(reasons) if reasons else None,
            "store_unavailable": store_error,
        }


ENGINE_STALLED_RULE = "platform.engine_stalled"


def engine_stall_changes(
    status: Mapping[str, Any], known: bool | None, *, region_path: Sequence[str], now: datetime
) -> list[AlertChange]:
    """(one alert per engine process: its client id is in the dedup key)"""
    """Pure: the platform alert "alert engine stalled" to raise or resolve, given the engine status and what was
    last sent (None: nothing yet, so a restart resolves one left open)."""
    firing = bool(status.get("stalled"))
    if known == firing:
        return []
    detail: dict[str, object] = {"reason": status.get("reason")} if firing else {}
    for key in ("lag_s", "queue", "partitions"):
        if key in status:
            detail[key] = status[key]
    return [
        AlertChange(
            rule_id=ENGINE_STALLED_RULE,
            dedup_key=f"{ENGINE_STALLED_RULE}:{status.get('client_id', '')}",
            device_id=PLATFORM_DEVICE,
            region_id=region_path[-1] if region_path else "",
            severity=Severity.CRITICAL,
            firing=firing,
            at=now,
            title_zh="告警引擎停滞",
            title_en="Alert engine stalled",
            detail=detail,
            region_path=tuple(region_path),
            kind="platform",
        )
    ]


class EngineStallAlerts(PlatformAlerts):
    """Polls the engine status every ``interval_s``; raises or resolves "alert engine stalled" through ``apply``
    (``AlertsRuntime.apply_platform_changes``). The check runs on its own thread, not the engine worker's; the
    polling, logging and counting are PlatformAlerts'."""

    thread_name = "engine-stall-alerts"

    def changes(self, status: Mapping[str, Any], root: tuple[str, ...], now: datetime) -> list[AlertChange]:
        return engine_stall_changes(status, self.known.get(ENGINE_STALLED_RULE), region_path=root, now=now)


class RelayedIngestMetrics:
    """A Prometheus collector: the ``lianfang_ingest_*`` metrics of the ingest processes, as they relay them
    (ingest/forward.py), each sample labelled ``ingest="<client id>"``. ``install`` takes this process's own
    (idle) ingest metrics out of the registry while it is installed, so no name is exposed twice."""

    def __init__(self, texts: Callable[[], Mapping[str, tuple[str, bool]]]) -> None:
        self._texts = texts  # client id -> (exposition, still current)
        # Only the families ingest relays (lianfang_ingest_*): the rest of ingest/metrics.py (the broker's dropped
        # messages, counted by this process's own monitor) stays this process's.
        self._own = [
            m
            for m in vars(ingest_metrics).values()
            if isinstance(m, MetricWrapperBase) and any(d.name.startswith(RELAYED_PREFIX) for d in m.describe())
        ]
        self._installed = False

    def describe(self) -> list[Metric]:
        return []  # names vary with what is relayed; nothing to check at registration

    def collect(self) -> list[Metric]:
        merged: dict[str, Metric] = {}
        for src, (text, current) in sorted(self._texts().items()):
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError:
                logger.warning("relayed metrics of %s could not be parsed", src)
                continue
            for fam in families:
                m = merged.get(fam.name)
                if m is None:
                    m = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for smp in fam.samples:
                    value = smp.value
                    if smp.name == CONNECTED_METRIC and not current:
                        value = 0.0  # not heard from through the broker: its connection is not known to be up
                    m.add_sample(smp.name, {**smp.labels, "ingest": src}, value, smp.timestamp, smp.exemplar)
        return list(merged.values())

    def install(self) -> RelayedIngestMetrics:
        for m in self._own:
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(m)
        REGISTRY.register(self)
        self._installed = True
        return self

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self)
        for m in self._own:
            with contextlib.suppress(ValueError):
                REGISTRY.register(m)
