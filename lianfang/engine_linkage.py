"""Linkage actions (joint/actions.py) in an engine process of some partitions (``lianfang alerts``; docs/scaling.md).

With several engine processes each engine holds its own incidents (lianfang/partitioned_joint.py). The linkage
actions of an incident live beside it: proposed, confirmed and declined there (the gateway sends people's steps
over the command channel, lianfang/engine_commands.py), the confirmed command published there once, and its
``cmd_result`` seen there: the device answers with an event that ingest forwards to the device's partition, which
is the incident's engine for every pattern as wide as the partition level or narrower. In ``lianfang serve`` the
gateway's linkage actions (gateway/routes/incidents.py ``attach``) are those of the gateway's engine.

``start_engine_linkage`` builds them for the engine role: the timeline recorder of the gateway (without a live
stream: the gateway's stream does not reach this process), the platform's MQTT identity for the commands, the
actions of this engine's incidents rebuilt from the timelines, the automatic proposal of an intrusion, and its
``on_batch`` for the engine's batch listeners.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from core import clock
from core.settings import Settings
from devices.registry import Registry
from joint.actions import SYSTEM, LinkageActions, MqttCommandSender, auto_proposal, gate_targets
from joint.service import JointService
from joint.store import JointStore

logger = logging.getLogger(__name__)


class _NoStream:
    """The live stream of a process without the gateway: incident items go nowhere."""

    def publish_incident(self, *args: Any, **kwargs: Any) -> None:
        return None


def owned_action_docs(docs: list[dict[str, Any]], stride: int, owned: Collection[int]) -> list[dict[str, Any]]:
    """The stored action documents of the incidents an engine owns (``incident_id % stride`` among ``owned``): it
    rebuilds and ticks only those (another engine's would be expired twice)."""
    out = []
    for d in docs:
        try:
            if int(d["incident_id"]) % stride in owned:
                out.append(d)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def start_engine_linkage(
    settings: Settings,
    registry: Registry,
    joint: JointService,
    owned: Collection[int],
    client_id: str,
    stream: Any = None,
) -> tuple[LinkageActions, Callable[[], None]]:
    """The started linkage actions of an engine of the partitions ``owned`` and the function that stops them.
    ``stream``: where the steps' live items go (lianfang/engine_live.py ``LivePublisher``; default nowhere)."""
    from gateway.incident_live import StepRecorder

    store = JointStore(registry.engine)
    sender = MqttCommandSender(settings.mqtt, client_id=client_id)
    sender.start()
    recorder = StepRecorder(store, stream or _NoStream(), clock.now)
    actions = LinkageActions(sender, record=recorder, clock=clock.now)
    try:
        actions.replay(owned_action_docs(store.action_docs(), settings.alerts.partitions, owned))
    except Exception:
        logger.exception("linkage actions: rebuilding from the timelines failed")

    def on_change(change: Any) -> None:
        inc = change.incident
        name = auto_proposal(inc.type)
        if change.kind != "opened" or name is None:
            return
        try:
            targets = gate_targets(registry, inc.region_id)
            if targets:
                with recorder.held(inc):
                    actions.propose(inc.id, name, targets, by=SYSTEM, reason=inc.title_zh)
        except Exception:
            logger.exception("linkage actions: proposing %s for incident %s failed", name, inc.id)

    joint.subscribe(on_change)
    actions.start()
    logger.info("linkage actions: %d rebuilt for the incidents of partitions %s", len(actions.book.actions), owned)

    def stop() -> None:
        actions.stop()
        sender.stop()

    return actions, stop
