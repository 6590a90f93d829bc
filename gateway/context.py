"""What the gateway needs from its caller: resources made outside (composition root), kept on ``app.state``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core import clock
from core.settings import Settings
from core.store import TelemetryStore
from devices.registry import Registry
from gateway.live import Broadcaster

# A health callback returns a JSON-ready dict with "ok" (or "connected") as a bool, plus any detail to show,
# e.g. ingest: {"connected": True, "queue_depth": 12}. It runs in a worker thread and should answer quickly.
HealthCallback = Callable[[], dict[str, Any]]


@dataclass
class GatewayContext:
    settings: Settings
    registry: Registry
    store: TelemetryStore
    broker_status: HealthCallback
    ingest_status: HealthCallback
    # Only with settings.env == "dev" and no API user in the database: requests without a token act as an admin
    # of the whole tree. The caller decides (from settings); never on by default.
    dev_open: bool = False
    # Register ``broadcaster.publish`` as an ingest BatchListener to feed /api/v1/stream.
    broadcaster: Broadcaster = field(default_factory=Broadcaster)
    clock: Callable[[], datetime] = clock.now
    stream_keepalive_s: float = 15.0
    # HTTP ingress: a started ``gateway.ingress_publisher.IngressPublisher``; None: ingress answers 503.
    ingress: Any | None = None
    # Seconds the HTTP ingress waits for the broker's PUBACK before answering 503.
    ingress_timeout_s: float = 5.0
    # The alert side (``alerts.wiring.AlertsRuntime`` or an ``alerts.service.AlertService``); None: the alert
    # endpoints answer 503 "alerts not running".
    alerts: Any | None = None
    # Device identities for the device management routes: a callable (actor) -> context manager of a
    # ``devices.provisioning.Provisioner`` (``gateway.deps.ProvisioningFactory``); None: the configured broker.
    provisioning: Any | None = None
    # Build the device counts of the overview and the region tree in the background at start-up
    # (``gateway.fleet.start_fleet``) instead of on the first request; ``serve`` turns it on.
    warm_fleet: bool = False
    # Runtime settings changed through PATCH /api/v1/config since start (gateway/routes/config.py), newest last.
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    # The API's reads on a PostgreSQL replica (``core.replica.ReadRouter`` over the registry's engine and the
    # replica's); None: made from ``settings.database_read_url`` when that is set, else every read uses the
    # registry's engine. ``gateway.deps.get_read_db`` asks it per request.
    read_router: Any | None = None
    # The registry on the replica's engine (made with the router): what read-only routes get as ReadRegistryDep.
    read_registry: Registry | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.read_router is None and self.settings.database_read_url:
            from core.db import make_read_engine
            from core.replica import ReadRouter

            self.read_router = ReadRouter(self.registry.engine, make_read_engine(self.settings.database_read_url))
        if self.read_router is not None:
            self.read_registry = Registry(self.read_router.replica)
