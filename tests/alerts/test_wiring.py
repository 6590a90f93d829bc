"""AlertsRuntime: building from settings, start/stop, health, notifications and escalation through a real local
HTTP receiver (signed webhook), on a migrated SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerts.notify.log import DeliveryLog
from alerts.wiring import AlertsRuntime, RegionDirectory
from core.errors import UserError
from core.protocol import Event
from core.settings import AlertSettings, Settings
from core.store import WriteBatch
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.alerts.notify_fixtures import WEBHOOK_SECRET, Received, Receiver, receiver  # noqa: F401
from tests.helpers import wait_until

REGIONS = [
    RegionSpec("gd", "广东省", "province"),
    RegionSpec("gz", "广州市", "city", "gd"),
    RegionSpec("gz-b1", "一号办公楼", "building", "gz"),
]


@pytest.fixture
def reg(sqlite_registry: Registry) -> Registry:
    now = datetime.now(UTC)
    sqlite_registry.upsert_regions(REGIONS, now=now)
    sqlite_registry.add_devices([DeviceSpec("gate-w-0001", "gate", "gz-b1")], now=now)
    return sqlite_registry


def notify_yaml(tmp_path: Path, url: str, escalation: str = "") -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(
        f"""
channels:
  - {{name: ops, type: webhook, url: "{url}", secret: "{WEBHOOK_SECRET}", group_window_s: 0}}
  - {{name: city-duty, type: webhook, url: "{url}-city", secret: "{WEBHOOK_SECRET}", group_window_s: 0}}
routes:
  - {{name: building, regions: [gz-b1], channels: [ops]}}
  - {{name: city duty, regions: [gz], include_subtree: false, kinds: [escalated], channels: [city-duty]}}
{escalation}
""",
        encoding="utf-8",
    )
    return path


def settings(tmp_path: Path, notify: Path | None, **kw: float) -> Settings:
    only_tamper = tmp_path / "only-tamper.yaml"
    only_tamper.write_text(
        "overrides:\n  - {rule: '*', enabled: false}\n  - {rule: G11.tamper, enabled: true}\n", encoding="utf-8"
    )
    return Settings(alerts=AlertSettings(rules_paths=[only_tamper], notify_config=notify, **kw))


def tamper_batch(seq: int) -> WriteBatch:
    batch = WriteBatch()
    ms = int(datetime.now(UTC).timestamp() * 1000)
    batch.events.append(Event("gate-w-0001", "gz-b1", "gate", ms, seq, "tamper", {}))
    return batch


@pytest.fixture
def runtime_factory(reg: Registry) -> Iterator[list[AlertsRuntime]]:
    made: list[AlertsRuntime] = []
    yield made
    for rt in made:
        rt.stop()


def test_wiring_without_notify_config_stores_alerts_and_reports_health(
    reg: Registry, tmp_path: Path, runtime_factory: list[AlertsRuntime]
) -> None:
    rt = AlertsRuntime(settings(tmp_path, None, tick_interval_s=0.05), reg, notify_stop_timeout_s=1)
    runtime_factory.append(rt)
    assert rt.status()["ok"] is False and rt.status()["state"] == "new"
    rt.start()
    rt.start()  # idempotent
    st = rt.status()
    assert st["ok"] is True and st["channels"] == 0 and st["open_alerts"] == 0
    rt.on_batch(tamper_batch(1))  # synchronous: stored when it returns
    rows = rt.service.repo.alerts()
    assert [(a.rule_id, a.device_id, a.region_path) for a in rows] == [
        ("G11.tamper", "gate-w-0001", ("gd", "gz", "gz-b1"))
    ]
    assert rt.status()["open_alerts"] == 1
    rt.stop()
    rt.stop()  # idempotent
    # no channels: the notification is handed over and logged as unrouted, nothing is sent
    assert rt.notified == 1
    assert [r.status for r in DeliveryLog(reg.engine).rows()] == ["unrouted"]
    assert rt.status()["ok"] is False and rt.status()["state"] == "stopped"


def test_wiring_bad_notify_config_fails_at_construction(reg: Registry, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {name: r, channels: [nope]}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"routes\[0\]\.channels\[0\]: unknown channel 'nope'"):
        AlertsRuntime(settings(tmp_path, bad), reg)


def test_wiring_notifies_firing_then_escalates_to_the_city_by_the_scheduler(
    reg: Registry,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    runtime_factory: list[AlertsRuntime],
) -> None:
    esc = "escalation:\n  default: {after_s: [0.3], min_severity: info}\n"
    cfg = settings(tmp_path, notify_yaml(tmp_path, f"{receiver.base}/hook", esc), escalation_tick_s=0.1)
    rt = AlertsRuntime(cfg, reg, notify_stop_timeout_s=2, notify_idle_wait_s=0.05)
    runtime_factory.append(rt)
    rt.start()
    rt.on_batch(tamper_batch(7))
    rt.on_batch(tamper_batch(7))  # a replayed record: no second alert, no second message

    def at(path: str) -> list[Received]:
        return [r for r in receiver.accepted(path) if r.path == path]

    wait_until(lambda: at("/hook"), 5, what="firing webhook")
    escalated = wait_until(lambda: at("/hook-city"), 5, what="escalation to the city")
    rt.stop()
    firing = at("/hook")
    assert len(firing) == 1
    assert "门禁设备被破坏" in firing[0].text()  # zh-CN by default
    assert len(escalated) == 1
    alert = rt.service.repo.alerts()[0]
    assert alert.escalation_level >= 1 and alert.count == 1
    assert len(rt.service.repo.alerts()) == 1


def test_region_directory_caches_and_rereads_unknown_regions(reg: Registry) -> None:
    d = RegionDirectory(reg, refresh_s=60, miss_refresh_s=0)
    assert d.ancestors("gz-b1") == ["gd", "gz", "gz-b1"]
    assert d.name("gz") == "广州市"
    reg.upsert_regions([RegionSpec("gz-b2", "二号楼", "building", "gz")], now=datetime.now(UTC))
    assert d.ancestors("gz-b1") == ["gd", "gz", "gz-b1"]  # cached
    assert d.ancestors("gz-b2") == ["gd", "gz", "gz-b2"]  # unknown -> re-read
    assert d.ancestors("nowhere") == [] and d.name("nowhere") == "nowhere"
