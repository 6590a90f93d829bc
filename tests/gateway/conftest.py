"""Gateway fixtures: a seeded registry (two cities), a filled SQLite store, API users and a TestClient."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.errors import BrokerUnavailable
from core.protocol import Event, Reading, Rejection, Status
from core.settings import Settings
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.broker import free_port
from devices.registry import DeviceSpec, RegionSpec, Registry
from gateway.app import GatewayContext, create_app
from gateway.auth import create_user
from tests.helpers import wait_until

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
MIN_MS = 60_000

REGIONS = [
    RegionSpec("gd", "广东省", "province"),
    RegionSpec("gz", "广州市", "city", "gd"),
    RegionSpec("sz", "深圳市", "city", "gd"),
    RegionSpec("gz-jgj", "广州市机关事务管理局", "agency", "gz"),
    RegionSpec("sz-jgj", "深圳市机关事务管理局", "agency", "sz"),
    RegionSpec("gz-b1", "一号办公楼", "building", "gz-jgj"),
    RegionSpec("sz-b1", "市民中心", "building", "sz-jgj"),
]
# id, type, region, name
DEVICES = [
    ("gate-gz-0001", "gate", "gz-b1", "东门"),
    ("gate-gz-0002", "gate", "gz-b1", "西门"),
    ("meter-gz-0001", "energy_meter", "gz-jgj", "总表"),
    ("gate-sz-0001", "gate", "sz-b1", "南门"),
    ("car-sz-0001", "vehicle", "sz", "粤B00001"),
]


def reading(device: str, region: str, dtype: str, ts_ms: int, **fields: float | bool) -> Reading:
    return Reading(device, region, dtype, ts_ms, None, dict(fields))


def event(device: str, region: str, dtype: str, ts_ms: int, etype: str, **data: Any) -> Event:
    return Event(device, region, dtype, ts_ms, None, etype, dict(data))


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    ctx: GatewayContext
    tokens: dict[str, str]
    health: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, path: str, user: str | None = "admin", **params: Any) -> Any:
        headers = {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.client.get(path, params=params or None, headers=headers)


def fill_store(store: SqliteStore) -> None:
    batch = WriteBatch()
    # meter-gz-0001: one power reading a minute for the last 2 hours -> online
    for i in range(120):
        ts = NOW_MS - (120 - i) * MIN_MS
        batch.readings.append(reading("meter-gz-0001", "gz-jgj", "energy_meter", ts, energy_kwh=1000.0 + i, power_kw=i))
    batch.counter("meter-gz-0001").last_seen_ms = NOW_MS - MIN_MS
    batch.counter("meter-gz-0001").messages = 120
    # gate-gz-0001: seen 10 minutes ago with a 60 s interval -> offline (2.5 x 60 s = 150 s)
    batch.readings.append(reading("gate-gz-0001", "gz-b1", "gate", NOW_MS - 10 * MIN_MS, door_open=False))
    batch.counter("gate-gz-0001").last_seen_ms = NOW_MS - 10 * MIN_MS
    # gate-sz-0001: fresh -> online
    batch.readings.append(reading("gate-sz-0001", "sz-b1", "gate", NOW_MS - 30_000, occupancy=3))
    batch.counter("gate-sz-0001").last_seen_ms = NOW_MS - 30_000
    # car-sz-0001: fresh data but announced offline after it -> offline
    batch.readings.append(reading("car-sz-0001", "sz", "vehicle", NOW_MS - 20_000, lat=22.5, lon=114.0))
    batch.counter("car-sz-0001").last_seen_ms = NOW_MS - 20_000
    batch.statuses.append(Status("car-sz-0001", "sz", NOW_MS - 10_000, "offline"))
    batch.events += [
        event("gate-gz-0001", "gz-b1", "gate", NOW_MS - 5 * MIN_MS, "door_forced"),
        event("gate-gz-0001", "gz-b1", "gate", NOW_MS - 4 * MIN_MS, "access", credential="c-1", result="granted"),
        event("gate-sz-0001", "sz-b1", "gate", NOW_MS - 3 * MIN_MS, "tamper"),
        event("car-sz-0001", "sz", "vehicle", NOW_MS - 2 * MIN_MS, "ignition_on"),
        event("gate-sz-0001", "sz-b1", "gate", NOW_MS - 9 * 24 * 60 * MIN_MS, "access", credential="old"),
    ]
    batch.rejections += [
        Rejection("gate-gz-0002", "lf/v1/gate-gz-0002/event", "schema", "$.type: required string", b'{"x":1}', NOW_MS),
        Rejection("gate-gz-0002", "lf/v1/gate-gz-0002/event", "not_json", "bad", b"\xff\xfe{", NOW_MS + 1),
        Rejection("gate-sz-0001", "lf/v1/gate-sz-0001/telemetry", "bad_timestamp", "$.ts", b"{}", NOW_MS + 2),
        Rejection("ghost-0001", "lf/v1/ghost-0001/telemetry", "unregistered_device", "", b"{}", NOW_MS + 3),
        Rejection("gate-sz-0001", "lf/v1/gate-sz-0001/telemetry", "schema", "big", b"x" * 5000, NOW_MS + 4),
    ]
    store.write(batch)


@pytest.fixture
def seeded(sqlite_registry: Registry, store: SqliteStore) -> tuple[Registry, SqliteStore]:
    sqlite_registry.upsert_regions(REGIONS, now=NOW)
    sqlite_registry.add_devices([DeviceSpec(d, t, r, n) for d, t, r, n in DEVICES], now=NOW)
    fill_store(store)
    return sqlite_registry, store


@contextmanager
def no_broker(_actor: Any) -> Iterator[Any]:
    raise BrokerUnavailable("no broker in this test")
    yield


@dataclass
class Gateway:
    ctx: GatewayContext
    tokens: dict[str, str]
    health: dict[str, dict[str, Any]]


@pytest.fixture
def gateway(seeded: tuple[Registry, SqliteStore]) -> Gateway:
    """A context over the seeded registry and store, with four users: admin (whole tree), a Guangzhou operator,
    a Shenzhen viewer and a viewer of one Guangzhou building."""
    registry, store = seeded
    engine = registry.engine
    tokens = {
        "admin": create_user(engine, "admin", "admin", None, NOW),
        "gz": create_user(engine, "gz-duty", "operator", "gz", NOW),
        "sz": create_user(engine, "sz-viewer", "viewer", "sz", NOW),
        "gzb1": create_user(engine, "gz-b1-guard", "viewer", "gz-b1", NOW),
    }
    health: dict[str, dict[str, Any]] = {"broker": {"ok": True}, "ingest": {"connected": True, "queue_depth": 0}}
    ctx = GatewayContext(
        settings=Settings(),
        registry=registry,
        store=store,
        broker_status=lambda: health["broker"],
        ingest_status=lambda: health["ingest"],
        clock=lambda: NOW,
        stream_keepalive_s=0.2,
        provisioning=no_broker,  # never the configured (demo) broker; test_device_admin.py gives a real one
    )
    return Gateway(ctx, tokens, health)


@pytest.fixture
def served(gateway: Gateway) -> Iterator[str]:
    """The gateway on a real uvicorn server on a free port; yields its base URL."""
    app = create_app(gateway.ctx)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test")
    thread.start()
    try:
        wait_until(lambda: server.started, 10, what="uvicorn started")
        yield f"http://127.0.0.1:{port}"
    finally:
        gateway.ctx.broadcaster.close()  # end open streams so the server can stop at once
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def api(gateway: Gateway) -> Iterator[Api]:
    app = create_app(gateway.ctx)
    with TestClient(app) as client:
        yield Api(app, client, gateway.ctx, gateway.tokens, gateway.health)
