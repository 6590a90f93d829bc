"""The alert pipeline as in production, for scenario tests through a real Mosquitto.

``running_stack`` runs ``AlertsRuntime`` (the default packs plus a rule file of overrides, 50 ms ticks) behind a
real ``IngestService`` on the test broker, and a ``SharedPublisher`` on the simulator account to publish
:class:`devices.simulator.SimMessage` s. Use it with the ``broker``, ``sqlite_registry`` and ``store`` fixtures::

    with running_stack(broker, reg, store, rules_file) as stack:
        stack.publish(messages)
        stack.wait_acked(len(messages), "ingest acked the messages")
        wait_until(lambda: stack.stored() ..., 20, what="the expected alerts")

Device timestamps may lie in the past (a recorded night): ingest and the engine take them as a backlog.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alerts.wiring import AlertsRuntime
from core.settings import AlertSettings, Settings
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from ingest.service import IngestService
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on


@dataclass
class Stack:
    alerts: AlertsRuntime
    ingest: IngestService
    pub: SharedPublisher

    def publish(self, msgs: Sequence[SimMessage], timeout_s: float = 15) -> None:
        for m in msgs:
            self.pub.publish(m)
        assert self.pub.flush(timeout_s), "broker did not acknowledge every message"

    def wait_acked(self, n: int, what: str, timeout_s: float = 15) -> None:
        wait_until(lambda: self.ingest.stats.acked >= n, timeout_s, what=what)

    def stored(self) -> list[tuple[str, str, int]]:
        """(rule, device, count) of every alert stored, open or resolved."""
        return sorted((a.rule_id, a.device_id, a.count) for a in self.alerts.service.repo.alerts())


@contextmanager
def running_stack(broker: Any, reg: Registry, store: SqliteStore, rules: Path) -> Iterator[Stack]:
    """AlertsRuntime (default packs + ``rules``, 50 ms ticks) behind a real IngestService on ``broker``."""
    settings = Settings(alerts=AlertSettings(rules_paths=[rules], tick_interval_s=0.05, escalation_tick_s=0.5))
    alerts = AlertsRuntime(settings, reg, notify_stop_timeout_s=3, notify_idle_wait_s=0.05)
    ingest = ingest_on(broker, store, reg.snapshot, listeners=[alerts.on_batch])
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password)
    alerts.start()
    try:
        ingest.start()
        try:
            pub.start()
            try:
                yield Stack(alerts, ingest, pub)
            finally:
                pub.close()
        finally:
            ingest.stop()
    finally:
        alerts.stop()


def docs(msgs: Sequence[SimMessage], device_id: str, kind: str) -> list[dict[str, Any]]:
    """The JSON documents of one device's messages of one kind (telemetry, event, status)."""
    return [m.doc() for m in msgs if m.device_id == device_id and m.kind == kind]
