"""MQTT adapter of ingest: paho-mqtt 2.x on MQTT v5, persistent session, QoS 1, manual acknowledgement.

The callback only hands off: ``on_message`` puts a RawMessage on a queue (bounded by the session's
Receive Maximum: the broker stops sending when that many messages are unacked). Acknowledgements are sent by
the writer after the batch is durable (``ack``). Subscribing happens in ``on_connect`` so a reconnect restores
it; callbacks never raise into paho's network thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from core.errors import BrokerUnavailable
from core.settings import MqttSettings
from ingest import metrics, paho_speedups
from ingest.paho_transport import IngestClient
from ingest.pipeline import RawMessage

logger = logging.getLogger(__name__)

TOPIC_FILTER = "lf/v1/+/+"


def subscription_topic(shared_group: str | None) -> str:
    return f"$share/{shared_group}/{TOPIC_FILTER}" if shared_group else TOPIC_FILTER


class MqttConsumer:
    def __init__(
        self, settings: MqttSettings, out: queue.SimpleQueue[RawMessage], *, client_id: str | None = None
    ) -> None:
        paho_speedups.install()
        self.settings = settings
        self.out = out
        self.topic = subscription_topic(settings.shared_group)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.accepting = True
        self.last_error: str | None = None
        self.received = 0  # messages that arrived (counted here, on arrival; only the network thread writes it)
        self.session_present: bool | None = None
        self.client = IngestClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.username_pw_set(settings.username, settings.password.get_secret_value())
        if settings.tls_ca is not None:
            self.client.tls_set(ca_certs=str(settings.tls_ca))
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        try:
            self.client.connect(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive_s,
                clean_start=False,
                properties=props,
            )
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot connect to MQTT broker {self.settings.host}:{self.settings.port}: {exc}"
            ) from exc
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.client.loop_stop()
            raise BrokerUnavailable(
                f"MQTT broker {self.settings.host}:{self.settings.port} did not accept the ingest session "
                f"within {timeout:.0f} s: {self.last_error or 'no answer'}"
            )

    def stop_accepting(self) -> None:
        """Stop taking new messages; what is not acked yet is redelivered by the broker later."""
        self.accepting = False

    def stop(self) -> None:
        self.accepting = False
        self.client.disconnect()
        self.client.loop_stop()
        metrics.CONNECTED.set(0)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def ack_many(self, acks: Iterable[tuple[int, int]]) -> None:
        """Acknowledge a written batch in order, as one write to the broker (``ingest/paho_transport.py``)."""
        self.client.ack_many(acks)

    # --- callbacks (network thread) ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                self.last_error = f"connect refused: {reason}"
                logger.error("MQTT connect refused: %s", reason)
                return
            self.session_present = bool(flags.session_present)
            self.connected.set()
            metrics.CONNECTED.set(1)
            logger.info("MQTT connected session_present=%s, subscribing %s", self.session_present, self.topic)
            client.subscribe(self.topic, options=SubscribeOptions(qos=1))
        except Exception:
            logger.exception("on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        try:
            failed = [r for r in reasons if r.is_failure]
            if failed:
                self.last_error = f"subscribe refused: {failed[0]}"
                logger.error("MQTT subscribe to %s refused: %s", self.topic, failed[0])
                return
            self.subscribed.set()
        except Exception:
            logger.exception("on_subscribe failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        metrics.CONNECTED.set(0)
        if self.accepting:
            logger.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not self.accepting:
            return  # not acked: the broker redelivers it to the next session
        try:
            self.out.put(
                RawMessage(
                    msg.topic,
                    bytes(msg.payload),
                    msg.mid,
                    msg.qos,
                    time.time_ns() // 1_000_000,
                    bool(msg.retain),
                    bool(msg.dup),
                )
            )
            self.received += 1
            metrics.RECEIVED.inc()
        except Exception:
            logger.exception("could not enqueue message on %s", msg.topic)
