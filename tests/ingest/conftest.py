from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from core.settings import IngestSettings, MqttSettings
from core.store import BatchListener
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from ingest.service import IngestService
from tests.conftest import Broker

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def seed_registry(registry: Registry) -> None:
    registry.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gd-gz", "广州市", "city", "gd"),
            RegionSpec("gd-gz-a01", "省政府办公厅", "agency", "gd-gz"),
            RegionSpec("gd-gz-a01-b1", "1号楼", "building", "gd-gz-a01"),
        ],
        now=NOW,
    )
    registry.add_devices(
        [
            DeviceSpec("meter-0001", "energy_meter", "gd-gz-a01-b1"),
            DeviceSpec("meter-0002", "energy_meter", "gd-gz-a01-b1"),
            DeviceSpec("gate-0001", "gate", "gd-gz-a01-b1"),
            DeviceSpec("car-0001", "vehicle", "gd-gz-a01"),
            DeviceSpec("meter-off", "energy_meter", "gd-gz-a01-b1"),
        ],
        now=NOW,
    )
    registry.set_enabled("meter-off", False, now=NOW)


def mqtt_settings(broker: Broker, **kw: object) -> MqttSettings:
    return MqttSettings(
        port=broker.port,
        username=broker.platform_username,
        password=SecretStr(broker.platform_password),
        embedded_broker=False,
        **kw,  # type: ignore[arg-type]
    )


def ingest_on(
    broker: Broker, store: SqliteStore, load: Callable[[], Any], listeners: Sequence[BatchListener] = ()
) -> IngestService:
    """An IngestService on the test broker, with the test settings (5 ms batches, no periodic registry re-read)."""
    return IngestService(
        mqtt_settings(broker),
        IngestSettings(batch_wait_ms=5, registry_refresh_s=60),
        store,
        load,
        listeners=listeners,
    )


IngestFactory = Callable[..., IngestService]


@pytest.fixture
def make_ingest(broker: Broker, sqlite_registry: Registry, store: SqliteStore) -> Iterator[IngestFactory]:
    seed_registry(sqlite_registry)
    started: list[IngestService] = []

    def make(**kw: object) -> IngestService:
        mqtt_kw = {k: kw.pop(k) for k in list(kw) if k in MqttSettings.model_fields}
        svc = IngestService(
            mqtt_settings(broker, **mqtt_kw),
            IngestSettings(batch_wait_ms=5, registry_refresh_s=60),
            store,
            sqlite_registry.snapshot,
            **kw,  # type: ignore[arg-type]
        )
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()
