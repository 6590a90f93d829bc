"""MQTT publisher of the HTTP ingress: hands an accepted HTTP body to the broker, so it takes the same pipeline
as a device's own MQTT message (ingest subscribes, validates, stores, acks).

One paho-mqtt 2.x connection on MQTT v5 with the ``lianfang-gateway`` account (allowed to publish only on
``lf/v1/+/telemetry`` and ``lf/v1/+/event``). :meth:`IngressPublisher.publish` blocks until the broker's PUBACK
(the message is then the broker's responsibility: persisted, queued for ingest's persistent session), or raises
:class:`core.errors.BrokerUnavailable` after a bounded wait. Messages awaiting a PUBACK are bounded (a counting
window, lowered to the broker's Receive Maximum), far below paho's 65,535 message ids.

A publish that timed out may still reach the broker later (paho resends after a reconnect); the HTTP client was
told 503 and retries, so delivery is at-least-once, like MQTT QoS 1 itself (``seq`` makes the retry a duplicate
that is stored once).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import BrokerUnavailable
from core.settings import Settings
from devices.broker import GATEWAY_USERNAME, derive_gateway_password

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 1000


class IngressPublisher:
    """Publishes HTTP-ingress messages at QoS 1 and waits for each PUBACK.

    Thread-safe: ``publish`` may be called from many threads at once (the API's worker threads).
    """

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        username: str = GATEWAY_USERNAME,
        client_id: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        connect_timeout_s: float = 10.0,
        keepalive_s: int = 30,
        tls_ca: Path | None = None,
    ) -> None:
        if not 1 <= max_in_flight < 65_535:
            raise ValueError("max_in_flight must be between 1 and 65,534")
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_in_flight = max_in_flight
        self._cond = threading.Condition()
        self._in_flight = 0
        self._results: dict[int, ReasonCode] = {}
        self._abandoned: set[int] = set()
        self._up = False
        self._answered = threading.Event()
        self._refusal: str | None = None
        self._started = False
        self.published = 0
        self.refused = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{GATEWAY_USERNAME}-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.max_inflight_messages_set(0)  # the window below is the one bound
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    @classmethod
    def from_settings(cls, settings: Settings, admin_password: str, **kw: Any) -> IngressPublisher:
        """The gateway's publisher for the configured broker; its password is derived from the dynsec admin
        password (``devices.broker.derive_gateway_password``), as the broker's bootstrap does."""
        return cls(
            settings.mqtt.host,
            settings.mqtt.port,
            derive_gateway_password(admin_password),
            tls_ca=settings.mqtt.tls_ca,
            **kw,
        )

    # --- paho callbacks (network thread: only record and notify) ------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
        with self._cond:
            if rc.is_failure:
                self._refusal = str(rc)
                logger.warning("ingress publisher: broker refused the connection: %s", rc)
            else:
                receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
                if isinstance(receive_max, int) and receive_max > 0:
                    self.max_in_flight = max(1, min(self.max_in_flight, receive_max))
                if self._started and not self._up:
                    logger.info("ingress publisher: connected to %s:%s again", self.host, self.port)
                self._up = True
            self._cond.notify_all()
        self._answered.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        with self._cond:
            was_up, self._up = self._up, False
            self._cond.notify_all()
        if was_up and rc.is_failure:
            logger.warning("ingress publisher: lost the broker at %s:%s (%s)", self.host, self.port, rc)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        with self._cond:
            if mid in self._abandoned:
                self._abandoned.discard(mid)
                self._in_flight -= 1
            else:
                self._results[mid] = rc
            self._cond.notify_all()

    # --- life cycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect within ``connect_timeout_s``; BrokerUnavailable if the broker refuses or does not answer."""
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"ingress publisher cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        self._answered.wait(self.connect_timeout_s)
        with self._cond:
            up, refusal = self._up, self._refusal
        if not up:
            self.client.disconnect()
            self.client.loop_stop()
            why = f"refused: {refusal}" if refusal else f"no answer within {self.connect_timeout_s:g} s"
            raise BrokerUnavailable(f"MQTT broker {self.host}:{self.port} did not accept {GATEWAY_USERNAME} ({why})")
        self._started = True
        logger.info("ingress publisher connected to %s:%s", self.host, self.port)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self._cond:
            self._up = False
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._up

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "connected": self._up,
                "in_flight": self._in_flight,
                "published": self.published,
                "refused": self.refused,
            }

    # --- publishing -----------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, timeout: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the PUBACK; BrokerUnavailable if not connected, if the window stays full
        or no PUBACK arrives within ``timeout`` seconds, or if the broker refuses the message."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if not self._up:
                    raise BrokerUnavailable(f"the gateway is not connected to the MQTT broker {self.host}:{self.port}")
                if self._in_flight < self.max_in_flight:
                    self._in_flight += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(f"{self._in_flight} ingress messages await the broker; try again")
                self._cond.wait(left)
        try:
            info = self.client.publish(topic, payload, qos=1)
        except Exception:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()
            raise
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()
            raise BrokerUnavailable(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        mid = info.mid
        with self._cond:
            self.published += 1
            while mid not in self._results:
                left = deadline - time.monotonic()
                if left <= 0:
                    # Keep the window slot until the late PUBACK (paho still holds the message).
                    self._abandoned.add(mid)
                    raise BrokerUnavailable(f"no PUBACK from {self.host}:{self.port} within {timeout:g} s")
                self._cond.wait(left)
            rc = self._results.pop(mid)
            self._in_flight -= 1
            self._cond.notify_all()
            if rc.is_failure:
                self.refused += 1
        if rc.is_failure:
            raise BrokerUnavailable(f"the broker refused the message on {topic}: {rc}")
