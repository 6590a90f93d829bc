"""Stalls are visible (issue 8, part 2): the telemetry store held locked by another process.

The whole service (``lianfang.runtime.Runtime``: embedded Mosquitto, ingest, alerts, platform alerts) and the
real gateway app: while another process holds the store's write lock, the writer's attempts fail after the busy
timeout as StoreUnavailable (counted, logged with the whole backlog), ``/health/ready`` answers 503 with the
reason, the backlog and oldest-age metrics show the held messages, and the platform alerts "store unavailable"
and "ingest stalled" are raised within 60 s. After the lock is released, everything is stored (nothing lost),
readiness is 200 again and both alerts are resolved.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from alerts.platform import INGEST_STALLED, STORE_UNAVAILABLE
from core.db import make_engine, migrate
from core.settings import IngestSettings, MqttSettings, Settings, StoreSettings
from devices.registry import Registry
from gateway.app import GatewayContext, create_app
from lianfang.runtime import BrokerSecrets, Runtime, broker_secrets_path
from tests.conftest import free_port_pair
from tests.helpers import mqtt_client, wait_until
from tests.ingest.conftest import seed_registry

pytestmark = pytest.mark.slow

LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    db_url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(db_url)
    migrate(engine)
    seed_registry(Registry(engine))
    engine.dispose()
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        gc_settle_s=0,
        store=StoreSettings(sqlite_path=tmp_path / "telemetry.db"),
        mqtt=MqttSettings(port=free_port_pair(), broker_dir=tmp_path / "mosquitto"),  # devices: port + 1
        ingest=IngestSettings(batch_wait_ms=5, stall_after_s=2),
    )
    rt = Runtime(settings)
    rt.start()
    yield rt
    rt.stop()


def _gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_store_locked_by_another_process_is_visible_and_nothing_is_lost(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert runtime.registry is not None and runtime.store is not None and runtime.alerts is not None
    store, alerts = runtime.store, runtime.alerts
    gw = GatewayContext(
        runtime.settings, runtime.registry, store, runtime.broker_status, runtime.ingest_status, alerts=alerts
    )
    sim_password = BrokerSecrets.load_or_create(broker_secrets_path(runtime.settings)).sim
    sim = mqtt_client(runtime.settings.mqtt.port, "lianfang-sim", sim_password)
    now = time.time_ns() // 1_000_000
    sent = 0
    seqs = {"meter-0001": 0, "meter-0002": 0}

    def publish(n: int) -> None:
        nonlocal sent
        infos = []
        for _ in range(n):
            sent += 1
            device = ("meter-0001", "meter-0002")[sent % 2]
            seqs[device] += 1
            doc = {"ts": now - 60_000 + sent, "seq": seqs[device], "energy_kwh": float(sent)}
            infos.append(sim.publish(f"lf/v1/{device}/telemetry", json.dumps(doc), qos=1))
        for info in infos:
            info.wait_for_publish(10)

    def stored() -> int:
        return store.count_readings("meter-0001") + store.count_readings("meter-0002")

    def open_platform_alerts() -> set[str]:
        return {a.rule_id for a in alerts.service.open_alerts() if a.device_id == "platform"}

    holder: subprocess.Popen[str] | None = None
    with TestClient(create_app(gw)) as client:
        try:
            publish(50)
            wait_until(lambda: stored() == 50, 10, what="the first 50 stored")
            wait_until(lambda: client.get("/api/v1/health/ready").status_code == 200, 10, what="ready")
            errors_before = _gauge("lianfang_ingest_store_errors_total")

            holder = subprocess.Popen(
                [sys.executable, "-c", LOCK_HOLDER, str(store.path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            publish(200)

            def not_ready() -> dict[str, object] | None:
                r = client.get("/api/v1/health/ready")
                return r.json() if r.status_code == 503 else None

            body = wait_until(not_ready, 30, 0.1, "/health/ready 503")
            assert any(str(line).startswith("ingest: ") for line in body["reasons"])  # type: ignore[union-attr]
            wait_until(
                lambda: open_platform_alerts() == {INGEST_STALLED.rule_id, STORE_UNAVAILABLE.rule_id},
                60,
                0.1,
                "both platform alerts raised",
            )
            raised_after = time.monotonic() - locked_at
            assert raised_after < 60
            st = runtime.ingest_status()
            assert st["ok"] is False and st["stalled"] is True
            assert "database is locked" in str(st["store_unavailable"])
            assert st["backlog"] == 200 and st["received"] == 250 and st["acked"] == 50
            assert _gauge("lianfang_ingest_unacked_messages") == 200
            assert _gauge("lianfang_ingest_oldest_unacked_age_seconds") >= 2
            assert _gauge("lianfang_ingest_store_errors_total") > errors_before
            assert stored() == 50
            assert "store unavailable, holding 200 messages unacked" in caplog.text
            assert "another process has held the write lock" in caplog.text
        finally:
            if holder is not None and holder.poll() is None:
                assert holder.stdin is not None
                holder.stdin.write("\n")
                holder.stdin.flush()
                holder.wait(10)
            if holder is not None:
                for pipe in (holder.stdin, holder.stdout):
                    if pipe is not None:
                        pipe.close()

        wait_until(lambda: stored() == 250, 30, 0.1, "the held 200 stored")  # nothing lost
        wait_until(lambda: client.get("/api/v1/health/ready").status_code == 200, 30, 0.1, "ready again")
        wait_until(lambda: not open_platform_alerts(), 30, 0.1, "platform alerts resolved")
        st = runtime.ingest_status()
        assert st["backlog"] == 0 and st["received"] == st["acked"] == 250 and st["store_unavailable"] is None
        assert "store back after" in caplog.text
    sim.loop_stop()
    sim.disconnect()
    resolved = {a.rule_id: a for a in alerts.service.repo.alerts() if a.device_id == "platform"}
    assert set(resolved) == {INGEST_STALLED.rule_id, STORE_UNAVAILABLE.rule_id}
    assert all(a.resolved_at is not None for a in resolved.values())
    print(f"platform alerts raised {raised_after:.1f} s after the lock was taken")
