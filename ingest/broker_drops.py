"""Messages the broker dropped: ``lianfang_broker_dropped_messages_total`` and a callback for the alert.

Past ``max_queued_messages`` Mosquitto drops messages queued for a session (ingest's, while it is down or slow)
and the devices still got their PUBACK; its log says only "Outgoing messages are being dropped for client ...".
Mosquitto 2.0 counts them in ``$SYS/broker/publish/messages/dropped`` (since the broker started, published every
``sys_interval`` seconds while it changes, retained). :class:`DropCounter` turns those readings into increments
(pure); :class:`BrokerDropMonitor` subscribes with the platform's identity (its role may read ``$SYS/broker/#``,
devices/broker.py), counts the increments in the metric and calls ``on_drops(new, total)``.

The first reading after connecting counts everything the broker dropped since it started (typically while ingest
was down: exactly what must be seen). A reading lower than the last one means the broker restarted: it counts
from zero again. The records behind the drops leave seq gaps, which ``ingest/resend.py`` asks back from the devices.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.settings import MqttSettings
from ingest import metrics

logger = logging.getLogger(__name__)

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


class DropCounter:
    """Cumulative broker readings -> increments. Pure."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.total = 0  # counted by this process

    def update(self, value: int) -> int:
        if value < 0:
            return 0
        new = value if self.last is None or value < self.last else value - self.last
        self.last = value
        self.total += new
        return new


def parse_count(payload: bytes) -> int | None:
    try:
        return int(payload.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


class BrokerDropMonitor:
    """Reads the broker's dropped-message counter (connection ``{client_id}-sys``)."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_drops: Callable[[int, int], None] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.on_drops = on_drops
        self.counter = DropCounter()
        self.subscribed = threading.Event()
        self.readings = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"{settings.client_id}-sys", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(settings.username, settings.password.get_secret_value())
        if settings.tls_ca is not None:
            self.client.tls_set(ca_certs=str(settings.tls_ca))
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        try:
            if reason.is_failure:
                logger.warning("broker counters: connection refused: %s", reason)
                return
            client.subscribe(DROPPED_TOPIC, qos=0)
        except Exception:
            logger.exception("broker counters: on_connect failed")

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            logger.warning(
                "broker counters: reading %s refused (%s): broker drops are not counted; the platform role needs "
                "subscribePattern/publishClientReceive on $SYS/broker/# (devices/broker.py)",
                DROPPED_TOPIC,
                reasons[0],
            )
            return
        self.subscribed.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.subscribed.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            value = parse_count(bytes(msg.payload))
            if value is None:
                return
            self.readings += 1
            new = self.counter.update(value)
            if not new:
                return
            metrics.BROKER_DROPPED.inc(new)
            logger.error(
                "the broker dropped %d messages (max_queued_messages reached; %d since it started): "
                "the devices got PUBACK, the records are missing until resent",
                new,
                value,
            )
            if self.on_drops is not None:
                self.on_drops(new, value)
        except Exception:
            logger.exception("broker counters: reading failed")

    def status(self) -> dict[str, object]:
        return {"subscribed": self.subscribed.is_set(), "dropped": self.counter.total, "last": self.counter.last}
