"""The live stream of other engine processes' partitions (issue 12, docs/scaling.md).

With several engine processes the gateway (``lianfang serve``) runs beside the engine of some partitions; its
live stream (gateway/live.py) is fed by that engine's batches and incident changes only. Every engine that does not
run beside the gateway (``lianfang alerts``) publishes, after the change is committed, what the gateway's stream
would have shown, on ``lf/internal/v1/live/<k>`` (QoS 1, compact JSON):

- ``{"batch": {...}}``: the region-tagged summary of a batch it evaluated (``gateway.live.summarise``: events,
  status changes, the newest reading per device), published after the alert engine's listener returned;
- ``{"incident": item, "region_path": [...], "members": [...]}``: an incident change or a linkage step
  (``incident_doc_live``, the item the gateway's stream sends), ``k`` the incident id's residue.

The gateway's process subscribes to the partitions its engine does not own and hands each message to its
``Broadcaster`` exactly as a local one (``publish_summary`` / ``publish_incident``), so the region scoping per
subscriber applies as for local items. Best-effort, as the stream is: a message published while the gateway is
down or disconnected is lost (clean session); lists and details come from SQL. With one engine nothing of this runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
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

LIVE_TOPIC = INTERNAL_ROOT + "/live/{k}"


def live_topic(k: int) -> str:
    return LIVE_TOPIC.format(k=k)


class _Link:
    """One clean MQTT 5 session with the platform's identity."""

    def __init__(self, mqtt_settings: MqttSettings, client_id: str) -> None:
        self.mqtt_settings = mqtt_settings
        self.client_id = client_id
        self.connected = threading.Event()
        self.published = 0
        self.received = 0
        self.client = platform_client(mqtt_settings, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._started = False

    def _connect(self, timeout: float) -> None:
        s = self.mqtt_settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True, properties=props)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {s.host}:{s.port}: {exc}") from exc
        self.client.loop_start()
        self._started = True

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            logger.error("live relay: MQTT connect refused: %s", reason)
            return
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if self._started:
            logger.warning("live relay: MQTT disconnected (%s); reconnecting", reason)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        self.client.loop_stop()


class LivePublisher(_Link):
    """In an engine process without the gateway: its batches' summaries and its incident changes to the broker.

    ``on_batch`` is a batch listener (after the alert engine's), ``on_change`` a ``JointService`` subscriber, and
    ``publish_incident`` has the ``Broadcaster``'s signature (the linkage steps' recorder calls it). Never raise."""

    def __init__(self, mqtt_settings: MqttSettings, partitions: int, owned: Iterable[int], *, client_id: str) -> None:
        super().__init__(mqtt_settings, client_id)
        self.partitions = partitions
        self.owned = sorted(set(owned))

    def start(self, timeout: float = 10.0) -> LivePublisher:
        self._connect(timeout)
        self.connected.wait(timeout)  # not fatal: the stream is best-effort and paho reconnects
        return self

    def _send(self, k: int, doc: dict[str, Any]) -> None:
        if not self.connected.is_set():
            return  # best-effort: lost while disconnected
        self.client.publish(live_topic(k), orjson.dumps(doc), qos=1)
        self.published += 1

    def on_batch(self, batch: Any) -> None:
        try:
            from gateway.live import summarise

            items = summarise(batch)
            items.pop("rejections", None)  # ingest's, not forwarded to engines
            if not any(items.values()):
                return
            # the batch is one partition's part (ingest forwards one message per partition)
            self._send(self.owned[0], {"batch": items})
        except Exception:
            logger.exception("live relay: publishing a batch failed")

    def publish_incident(
        self, item: dict[str, Any], region_path: Iterable[str], member_regions: Iterable[str] = ()
    ) -> None:
        try:
            k = int(item["id"]) % self.partitions
            self._send(k, {"incident": item, "region_path": list(region_path), "members": sorted(set(member_regions))})
        except Exception:
            logger.exception("live relay: publishing an incident change failed")

    def on_change(self, change: Any) -> None:
        from gateway.incident_live import incident_doc_live

        inc = getattr(change, "incident", None)
        if inc is None:
            return
        members = {m.region_id for m in inc.members.values()}
        self.publish_incident(incident_doc_live(inc, str(change.kind)), inc.region_path, members)


class LiveSubscriber(_Link):
    """In the gateway's process: the other partitions' live messages into its ``Broadcaster``."""

    def __init__(
        self, mqtt_settings: MqttSettings, partitions: Sequence[int], broadcaster: Any, *, client_id: str
    ) -> None:
        super().__init__(mqtt_settings, client_id)
        self.partitions = sorted(set(partitions))
        self.broadcaster = broadcaster
        self.subscribed = threading.Event()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> LiveSubscriber:
        self._connect(timeout)
        if not self.subscribed.wait(timeout):
            logger.warning("live relay: not subscribed to partitions %s yet", self.partitions)
        else:
            logger.info("live relay: the stream carries partitions %s too", self.partitions)
        return self

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        super()._on_connect(client, userdata, flags, reason, props)
        if not reason.is_failure:
            client.subscribe([(live_topic(k), SubscribeOptions(qos=1)) for k in self.partitions])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            logger.error("live relay: subscribe refused: %s (may the platform role use lf/internal/v1/#?)", failed[0])
            return
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = orjson.loads(msg.payload)
            self.received += 1
            if isinstance(doc.get("batch"), dict):
                self.broadcaster.publish_summary(doc["batch"])
            elif isinstance(doc.get("incident"), dict):
                self.broadcaster.publish_incident(
                    doc["incident"], doc.get("region_path") or (), doc.get("members") or ()
                )
        except Exception:
            logger.exception("live relay: a message on %s dropped", msg.topic)
