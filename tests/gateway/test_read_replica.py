"""database_read_url against a real PostgreSQL streaming replica (tests/pg_replica.py: a primary and a replica of
our own, PostgreSQL 15): the API's lists read the replica, writes land on the primary, the writer reads its own
writes, and a stopped replica makes reads fall back to the primary with a note in /health/ready."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select, text

from alerts.models import AlertRow
from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from core.db import make_engine, make_read_engine, migrate
from core.protocol import Event
from core.replica import ReadRouter
from core.settings import Settings
from core.store.sqlite import SqliteStore
from devices.broker import free_port
from devices.registry import DeviceSpec, Registry
from gateway.app import GatewayContext, create_app
from gateway.auth import create_user
from gateway.read_from import READ_FROM_HEADER
from tests.gateway.conftest import DEVICES, NOW, NOW_MS, REGIONS, fill_store, no_broker
from tests.helpers import wait_until
from tests.pg_replica import PgPair, wait_replayed


@dataclass
class Rep:
    client: TestClient
    tokens: dict[str, str]
    primary: Engine
    replica: Engine
    replica_admin: Engine  # the replica's postgres database, for pg_wal_replay_pause/resume
    primary_admin: Engine
    registry: Registry
    router: ReadRouter

    def get(self, path: str, user: str = "admin", **params: Any) -> Any:
        h = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.client.get(f"/api/v1{path}", params=params or None, headers=h)

    def post(self, path: str, body: dict[str, Any], user: str = "admin") -> Any:
        return self.client.post(f"/api/v1{path}", json=body, headers={"Authorization": f"Bearer {self.tokens[user]}"})

    def replay(self, paused: bool) -> None:
        with self.replica_admin.connect() as conn:
            conn.execute(text("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"))


@dataclass
class AlertsSide:
    """What ``serve`` hands the gateway (alerts.wiring.AlertsRuntime): the service and a health callback."""

    service: AlertService

    def status(self) -> dict[str, Any]:
        return {"ok": True}


def tamper(device: str, region: str, ts_ms: int) -> Event:
    return Event(device, region, "gate", ts_ms, 1, "tamper", {})


@pytest.fixture
def rep(pg_replica: PgPair, tmp_path: Any) -> Iterator[Rep]:
    name = "lf_rep_" + uuid.uuid4().hex[:10]
    primary_admin = create_engine(pg_replica.primary_url(), isolation_level="AUTOCOMMIT")
    replica_admin = create_engine(pg_replica.replica_url(), isolation_level="AUTOCOMMIT")
    with primary_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    primary = make_engine(pg_replica.primary_url(name))
    migrate(primary)
    registry = Registry(primary)
    registry.upsert_regions(REGIONS, now=NOW)
    registry.add_devices([DeviceSpec(d, t, r, n) for d, t, r, n in DEVICES], now=NOW)
    tokens = {
        "admin": create_user(primary, "admin", "admin", None, NOW),
        "gz": create_user(primary, "gz-duty", "operator", "gz", NOW),
        "auditor": create_user(primary, "auditor", "auditor", None, NOW),
    }
    store = SqliteStore(tmp_path / "telemetry.db")
    fill_store(store)
    svc = AlertService(
        primary, RuleSet.load([PACKS_DIR]), registry.snapshot, regions_from_registry(registry), clock_fn=lambda: NOW
    )
    svc.load(now=NOW)
    svc.process([tamper("gate-gz-0001", "gz-b1", NOW_MS - 60_000)], now=NOW)
    svc.process([tamper("gate-sz-0001", "sz-b1", NOW_MS - 30_000)], now=NOW)
    wait_replayed(primary_admin, replica_admin)
    replica = make_read_engine(pg_replica.replica_url(name))
    router = ReadRouter(primary, replica, recheck_s=0.2, retry_down_s=0.5, ryw_min_s=2.0)
    ctx = GatewayContext(
        settings=Settings(),
        registry=registry,
        store=store,
        broker_status=lambda: {"ok": True},
        ingest_status=lambda: {"connected": True},
        clock=lambda: NOW,
        provisioning=no_broker,
        alerts=AlertsSide(svc),
        read_router=router,
    )
    try:
        with TestClient(create_app(ctx)) as client:
            yield Rep(client, tokens, primary, replica, replica_admin, primary_admin, registry, router)
    finally:
        try:
            with replica_admin.connect() as conn:
                conn.execute(text("SELECT pg_wal_replay_resume()"))
        except Exception:
            pass  # the replica may be stopped
        replica.dispose()
        primary.dispose()
        store.close()
        with primary_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        primary_admin.dispose()
        replica_admin.dispose()


def _state_on(engine: Engine, alert_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.scalar(select(AlertRow.state).where(AlertRow.id == alert_id)))


def _by_device(resp: Any) -> dict[str, dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return {a["device_id"]: a for a in resp.json()["items"]}


@pytest.mark.postgres
def test_lists_read_the_replica_writes_land_on_the_primary_and_the_writer_reads_its_own(rep: Rep) -> None:
    listed = rep.get("/alerts")
    assert listed.headers[READ_FROM_HEADER] == "replica"
    alert_id = _by_device(listed)["gate-gz-0001"]["id"]
    assert _by_device(rep.get("/alerts", user="gz"))["gate-gz-0001"]["state"] == "firing"

    rep.replay(paused=True)  # the replica keeps receiving WAL but applies none of it
    acked = rep.post(f"/alerts/{alert_id}/ack", {"reason": "保安已到场"}, user="gz")  # the write path still works
    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "acknowledged"
    assert _state_on(rep.primary, alert_id) == "acknowledged"  # the write landed on the primary
    assert _state_on(rep.replica, alert_id) == "firing"  # and is not replayed yet

    # Another user's list is served by the replica: it does not show the acknowledgement yet.
    other = rep.get("/alerts")
    assert other.headers[READ_FROM_HEADER] == "replica"
    assert _by_device(other)["gate-gz-0001"]["state"] == "firing"
    # The writer reads the primary within the read-your-writes window; the detail always reads the primary.
    own = rep.get("/alerts", user="gz")
    assert own.headers[READ_FROM_HEADER] == "primary"
    assert _by_device(own)["gate-gz-0001"]["state"] == "acknowledged"
    assert rep.get(f"/alerts/{alert_id}").json()["state"] == "acknowledged"

    # A row written on the primary directly (not through the API) is missing from the replica's lists.
    rep.registry.add_devices([DeviceSpec("gate-gz-0099", "gate", "gz-b1", "新门")], now=NOW)
    devices = rep.get("/devices", limit=100)
    assert devices.headers[READ_FROM_HEADER] == "replica"
    assert "gate-gz-0099" not in {d["id"] for d in devices.json()["items"]}
    assert rep.get("/devices/gate-gz-0099").status_code == 404  # a detail of the registry: on the replica too
    audit = rep.get("/audit", user="auditor", action="alert.ack")
    assert audit.headers[READ_FROM_HEADER] == "replica" and audit.json()["items"] == []

    ready = rep.get("/health/ready").json()
    replica = ready["checks"]["database_replica"]
    assert ready["ready"] is True and replica["reachable"] is True and replica["replay_paused"] is True
    assert replica["in_recovery"] is True and replica["reads_on"] == "replica"
    assert replica["receive_lsn"] != replica["replay_lsn"]  # WAL received, not applied

    rep.replay(paused=False)
    wait_until(
        lambda: _by_device(rep.get("/alerts"))["gate-gz-0001"]["state"] == "acknowledged", 10, what="ack replayed"
    )
    assert "gate-gz-0099" in {d["id"] for d in rep.get("/devices", limit=100).json()["items"]}
    assert [r["action"] for r in rep.get("/audit", user="auditor", action="alert.ack").json()["items"]] == ["alert.ack"]
    # The writer's window has passed (2 s here): back on the replica, which has caught up.
    wait_until(lambda: rep.get("/alerts", user="gz").headers[READ_FROM_HEADER] == "replica", 10, what="window")
    for path, user in (("/incidents", "admin"), ("/overview", "admin"), ("/regions/gz", "admin"), ("/risk", "gz")):
        resp = rep.get(path, user=user)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers[READ_FROM_HEADER] == "replica", path
    stats = rep.get("/stats/alerts", user="admin", group_by="rule")
    assert stats.status_code == 200 and stats.headers[READ_FROM_HEADER] == "replica", stats.text
    # Every read route's work runs on a read-only server: a write slipped into one would fail here.
    for path, user, params in (
        ("/devices/gate-gz-0099", "gz", {}),
        ("/regions", "admin", {}),
        ("/stats/incidents", "admin", {"group_by": "type"}),
        ("/risk/top", "admin", {}),
        ("/risk/history", "admin", {}),
        ("/audit/verify", "auditor", {}),
        ("/audit/export", "auditor", {}),
        ("/reports/energy", "admin", {"period": "7d"}),
        ("/reports/coverage", "gz", {"period": "7d", "format": "csv"}),
    ):
        resp = rep.get(path, user=user, **params)
        assert resp.status_code == 200, (path, resp.text)
        # The region tree is answered from the in-memory fleet index (gateway/fleet.py): no SQL, no header.
        assert resp.headers.get(READ_FROM_HEADER) == (None if path == "/regions" else "replica"), path


@pytest.mark.postgres
def test_a_stopped_replica_makes_reads_fall_back_to_the_primary(
    rep: Rep, pg_replica: PgPair, caplog: pytest.LogCaptureFixture
) -> None:
    assert rep.get("/devices").headers[READ_FROM_HEADER] == "replica"
    before = {d["id"] for d in rep.get("/devices", limit=100).json()["items"]}
    pg_replica.stop_replica()
    try:
        with caplog.at_level(logging.WARNING, logger="core.replica"):
            resp = rep.get("/devices", limit=100)  # the first read after the stop: found at checkout, not a 500
        assert resp.status_code == 200, resp.text
        assert resp.headers[READ_FROM_HEADER] == "primary"
        assert {d["id"] for d in resp.json()["items"]} == before
        assert any("replica unreachable" in r.getMessage() for r in caplog.records)
        alerts = rep.get("/alerts", user="gz")
        assert alerts.status_code == 200 and alerts.headers[READ_FROM_HEADER] == "primary"
        assert rep.get("/audit", user="auditor").status_code == 200

        ready = rep.get("/health/ready")
        assert ready.status_code == 200, ready.text  # the API still answers its reads: ready, with a note
        body = ready.json()
        assert body["ready"] is True
        replica = body["checks"]["database_replica"]
        assert replica["reachable"] is False and replica["reads_on"] == "primary"
        assert any("replica unreachable" in n for n in body["notes"])
        metrics = rep.client.get("/metrics").text
        assert "lianfang_db_replica_lag_seconds -1.0" in metrics
        assert "lianfang_db_replica_serving 0.0" in metrics
    finally:
        pg_replica.start_replica()
    # Tried again after retry_down_s (0.5 s here): reads go back to the replica.
    wait_until(lambda: rep.get("/devices").headers[READ_FROM_HEADER] == "replica", 15, what="replica back")
    ready = rep.get("/health/ready").json()
    assert ready["checks"]["database_replica"]["reachable"] is True and "notes" not in ready
    assert "lianfang_db_replica_serving 1.0" in rep.client.get("/metrics").text


def test_the_setting_alone_wires_the_router_and_an_unreachable_replica_is_a_note(
    seeded: tuple[Registry, SqliteStore],
) -> None:
    """What `lianfang serve` does: GatewayContext makes the router from settings.database_read_url. A replica that
    refuses connections (nothing listens on the port) sends every read to the primary, and readiness stays 200."""
    registry, store = seeded
    token = create_user(registry.engine, "admin", "admin", None, NOW)
    settings = Settings(database_read_url=f"postgresql+psycopg://lianfang:s3cret@127.0.0.1:{free_port()}/lianfang")
    ctx = GatewayContext(
        settings=settings,
        registry=registry,
        store=store,
        broker_status=lambda: {"ok": True},
        ingest_status=lambda: {"connected": True},
        clock=lambda: NOW,
        provisioning=no_broker,
    )
    assert isinstance(ctx.read_router, ReadRouter) and ctx.read_registry is not None
    assert ctx.read_registry.engine is ctx.read_router.replica and ctx.read_router.primary is registry.engine
    h = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(create_app(ctx)) as client:
            resp = client.get("/api/v1/devices", headers=h)
            assert resp.status_code == 200 and resp.headers[READ_FROM_HEADER] == "primary"
            assert resp.json()["total"] == len(DEVICES)
            ready = client.get("/api/v1/health/ready")
            assert ready.status_code == 200, ready.text
            note = ready.json()["notes"][0]
            assert note.startswith("database_replica: replica unreachable") and "s3cret" not in ready.text
    finally:
        ctx.read_router.replica.dispose()
