"""Prometheus metrics of the alert engine: evaluation and write times, lifecycle events, open alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from alerts.rules import RuleSet
from alerts.service import AlertService, regions_from_registry
from core.protocol import Reading
from core.store import WriteBatch
from devices.registry import DeviceSpec, RegionSpec, Registry

NOW = datetime(2026, 11, 26, 8, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_that_raises_an_alert_is_counted_and_timed(sqlite_registry: Registry, tmp_path: Path) -> None:
    reg = sqlite_registry
    reg.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    reg.add_devices([DeviceSpec("sensor-0001", "sensor", "gd")], now=NOW)
    rules = tmp_path / "hot.yaml"
    rules.write_text(
        "rules:\n  - {id: HOT, kind: threshold, device_types: [sensor], title_zh: 过热, title_en: Hot,\n"
        "       params: {field: temp_c, op: '>', value: 50}}\n",
        encoding="utf-8",
    )
    svc = AlertService(
        reg.engine, RuleSet.load([rules]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    svc.load(now=NOW)
    created = _value("lianfang_alert_lifecycle_events_total", kind="created")
    evaluations = _value("lianfang_alert_evaluation_seconds_count")
    writes = _value("lianfang_alert_write_seconds_count")
    delays = _value("lianfang_alert_trigger_delay_seconds_count")
    delay_sum = _value("lianfang_alert_trigger_delay_seconds_sum")

    svc.on_batch(WriteBatch(readings=[Reading("sensor-0001", "gd", "sensor", NOW_MS - 2000, 1, {"temp_c": 20.0})]))
    assert _value("lianfang_alert_evaluation_seconds_count") == evaluations + 1
    assert _value("lianfang_alert_lifecycle_events_total", kind="created") == created  # nothing fired

    svc.on_batch(WriteBatch(readings=[Reading("sensor-0001", "gd", "sensor", NOW_MS - 1000, 2, {"temp_c": 80.0})]))
    assert _value("lianfang_alert_lifecycle_events_total", kind="created") == created + 1
    assert _value("lianfang_alert_write_seconds_count") >= writes + 1
    assert _value("lianfang_alert_trigger_delay_seconds_count") == delays + 1
    assert _value("lianfang_alert_trigger_delay_seconds_sum") - delay_sum == 1.0  # the reading is 1 s before `now`
    assert _value("lianfang_alerts_open") == 1
