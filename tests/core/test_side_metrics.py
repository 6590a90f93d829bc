"""The side store's aggregated mode in Prometheus and /health/ready (core/store/side.py, ingest/metrics.py):
lianfang_ingest_side_store_* (pending devices, flushes, failures, flush duration) on a real SQLite side store
behind a real InfluxDB 1.6, relayed like the other ingest families; a flush failing for longer than two intervals
(the table renamed away) is a note in /health/ready's store check, gone once a flush commits again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import text

from core.db import make_engine, migrate
from core.settings import IngestSettings, MqttSettings, load_settings
from core.store import WriteBatch
from core.store.side import flush_note
from devices.broker import free_port
from devices.registry import Registry
from gateway.app import create_app
from gateway.context import GatewayContext
from ingest.forward import relayed_metrics
from ingest.service import IngestService
from lianfang.engine_role import RelayedIngestMetrics
from tests.helpers import wait_until
from tests.influx_servers import Server

T0 = 1_700_000_000_000
FAMILIES = [
    "lianfang_ingest_side_store_pending_devices",
    "lianfang_ingest_side_store_flushes_total",
    "lianfang_ingest_side_store_flush_failures_total",
    "lianfang_ingest_side_store_flush_seconds",
]


def test_flush_note_only_after_two_intervals_of_failures() -> None:
    assert flush_note(None, None, 5, interval_s=30, now=1000) is None  # flushes succeed
    assert flush_note(900, "gone", 5, interval_s=0, now=1000) is None  # per-batch mode: no flushes
    assert flush_note(940, "gone", 5, interval_s=30, now=1000) is None  # exactly two intervals: not yet
    note = flush_note(939, "no such table", 5, interval_s=30, now=1000)
    assert note == (
        "side store flushes failing for 61 s (interval 30 s): the counters and last-seen times of 5 devices are "
        "held in memory, not in the database; last error: no such table"
    )


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _batch(messages: dict[str, int]) -> WriteBatch:
    b = WriteBatch()
    for dev, n in messages.items():
        b.counter(dev).messages, b.counter(dev).last_seen_ms = n, T0
    return b


def _rename(url: str, old: str, new: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    engine.dispose()


@pytest.mark.integration
def test_flushes_are_metrics_and_a_failing_flush_is_a_health_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, influxdb: Server
) -> None:
    from lianfang.store_cmd import influx_store

    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    for key, value in {
        "LIANFANG_DATA_DIR": str(tmp_path),
        "LIANFANG_DATABASE_URL": url,
        "LIANFANG_STORE__BACKEND": "influxdb",
        "LIANFANG_STORE__INFLUX_URL": influxdb.url,
        "LIANFANG_STORE__INFLUX_DATABASE": "lf",
        "LIANFANG_STORE__SIDE_FLUSH_INTERVAL_S": "0.2",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIANFANG_CONFIG", raising=False)
    settings = load_settings()
    store = influx_store(settings)  # what open_store builds for ingest and the gateway
    ingest_doc: dict[str, Any] = {"connected": True}
    ctx = GatewayContext(
        settings=settings,
        registry=Registry(engine),
        store=store,
        broker_status=lambda: {"ok": True},
        ingest_status=lambda: ingest_doc,
    )
    flushes, failures = (_sample(f"lianfang_ingest_side_store_{n}_total") for n in ("flushes", "flush_failures"))
    timed = _sample("lianfang_ingest_side_store_flush_seconds_count")
    try:
        with TestClient(create_app(ctx)) as client:

            def ready(code: int = 200) -> dict[str, Any]:
                r = client.get("/api/v1/health/ready")
                assert r.status_code == code, r.text
                doc: dict[str, Any] = r.json()
                return doc

            store.side.write(_batch({"a": 2, "b": 1}))  # starts the flusher
            wait_until(lambda: _sample("lianfang_ingest_side_store_flushes_total") > flushes, 10, what="a flush")
            assert _sample("lianfang_ingest_side_store_flush_seconds_count") > timed
            assert _sample("lianfang_ingest_side_store_pending_devices") == 0
            doc = ready()
            assert doc["checks"]["store"] == {"ok": True} and "notes" not in doc

            _rename(url, "telemetry_device_state", "tds_away")
            store.side.write(_batch({"a": 1, "c": 3}))
            wait_until(
                lambda: _sample("lianfang_ingest_side_store_flush_failures_total") > failures, 10, what="a failure"
            )
            assert _sample("lianfang_ingest_side_store_pending_devices") == 2
            wait_until(lambda: store.side.health_note() is not None, 10, what="failing for over two intervals")
            doc = ready(503)  # the table is gone: the store's ping fails too, and the note says what is held
            note = doc["checks"]["store"]["note"]
            assert doc["checks"]["store"]["ok"] is False
            assert note.startswith("side store flushes failing for") and "of 2 devices" in note
            assert "no such table: telemetry_device_state" in note  # the database's own error
            assert doc["notes"] == [f"store: {note}"] and doc["reasons"] == [f"store: {note}"]
            # what an ingest process reports over the broker (ingest/forward.py publishes IngestService.status)
            svc = IngestService(
                MqttSettings(port=free_port(), embedded_broker=False), IngestSettings(), store, ctx.registry.snapshot
            )
            assert str(svc.status()["store_note"]).startswith("side store flushes failing for")

            # relayed from an ingest process (ingest/forward.py): the families travel, and the engine's side
            # takes its own idle ones out while it shows the relayed ones (no name twice)
            relayed = relayed_metrics(generate_latest(REGISTRY).decode())
            assert all(f"# TYPE {name} " in relayed for name in FAMILIES)
            own = {d.name for m in RelayedIngestMetrics(dict)._own for d in m.describe()}
            assert {n.removesuffix("_total") for n in FAMILIES} <= own
            _rename(url, "tds_away", "telemetry_device_state")
            wait_until(lambda: store.side.pending_devices == 0, 10, what="the kept aggregate flushed")
            assert store.side.health_note() is None and _sample("lianfang_ingest_side_store_pending_devices") == 0
            doc = ready()
            assert doc["checks"]["store"] == {"ok": True} and "notes" not in doc
            assert {d: s.messages for d, s in store.side.device_states().items()} == {"a": 3, "b": 1, "c": 3}
            # an ingest process's note, as its status reports it over the broker (engine_role.ingest_status):
            # a note, the API stays ready
            ingest_doc["processes"] = {"ingest-b": {"connected": True, "store_note": "side store flushes failing"}}
            doc = ready()
            assert doc["notes"] == ["store: ingest ingest-b: side store flushes failing"]
            assert doc["checks"]["store"] == {"ok": True, "note": "ingest ingest-b: side store flushes failing"}
    finally:
        store.close()
        engine.dispose()
