"""A seeded registry + telemetry store + alerts for the coverage report, with figures computed by hand.

Regions: js (province) > nj (city) > nj-a (agency); js > sz (city). Period: 2026-11-01..2026-11-07 (Beijing),
report made 2026-11-08 12:00 Beijing.

| device | region | state | what it tests |
| g1 gate | nj-a | last seen 11-07 23:59:30 (online at the end) | gaps 10; DQ1 4 seqs in the period, 2 before |
| v1 vehicle | nj-a | last seen 11-05 12:00 (stale at the end) | 3 non-standard; 2 schema rejections in, 1 before |
| m1 meter | nj | never reported | never + stale |
| m2 meter | sz | last seen 11-07 23:59 (online) | clock skew -310.5 s open from 11-06; 3 bad_timestamp |
| g0 gate | sz | last seen 10-15 (before the period) | not reporting, stale |
| s1 sensor | sz | disabled | not expected |
| s2 sensor | sz | created 11-08 10:00 (after the end) | not expected |
| gate-late | sz | last seen 11-08 06:00, an event then, nothing in the period | not reporting, stale |
| gate-evt | sz | last seen 11-08 06:00, an event on 11-04 | reporting (from its event) |
| meter-3 | sz | last seen 11-08 06:00, a reading on 11-05 | reporting (from its reading) |
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from alerts.calendar import BEIJING
from alerts.models import AlertRow
from core.protocol import Event, Reading, Rejection
from core.store import DeviceCounters, WriteBatch
from devices.registry import DeviceSpec, RegionSpec, Registry

START = datetime(2026, 11, 1, tzinfo=BEIJING)
END = datetime(2026, 11, 8, tzinfo=BEIJING)
NOW = datetime(2026, 11, 8, 12, tzinfo=BEIJING)
CREATED = datetime(2026, 9, 1, tzinfo=UTC)


def bj(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=BEIJING)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _alert(i: int, rule: str, device: str, path: str, started: datetime, detail: dict[str, Any], **kw: Any) -> AlertRow:
    return AlertRow(
        id=i,
        dedup_key=f"{rule}:{device}:{i}",
        open_key=None if kw.get("resolved_at") else f"{rule}:{device}:{i}",
        rule_id=rule,
        device_id=device,
        region_id=path.strip("/").split("/")[-1],
        region_path=path,
        severity="warning",
        state="resolved" if kw.get("resolved_at") else "firing",
        title_zh="t",
        title_en="t",
        started_at=started.astimezone(UTC),
        updated_at=started.astimezone(UTC),
        detail=detail,
        resolved_at=kw.get("resolved_at"),
    )


def seed(registry: Registry, store: Any) -> None:
    registry.upsert_regions(
        [
            RegionSpec("js", "江苏省", "province"),
            RegionSpec("nj", "南京市", "city", "js"),
            RegionSpec("sz", "苏州市", "city", "js"),
            RegionSpec("nj-a", "南京市财政局", "agency", "nj"),
            RegionSpec("other", "浙江省", "province"),
        ],
        now=CREATED,
    )
    registry.add_devices(
        [
            DeviceSpec("gate-1", "gate", "nj-a"),
            DeviceSpec("veh-1", "vehicle", "nj-a"),
            DeviceSpec("meter-1", "energy_meter", "nj"),
            DeviceSpec("meter-2", "energy_meter", "sz"),
            DeviceSpec("gate-0", "gate", "sz"),
            DeviceSpec("sensor-1", "sensor", "sz"),
            DeviceSpec("gate-z", "gate", "other"),
            DeviceSpec("gate-late", "gate", "sz"),
            DeviceSpec("gate-evt", "gate", "sz"),
            DeviceSpec("meter-3", "energy_meter", "sz"),
        ],
        now=CREATED,
    )
    registry.add_devices([DeviceSpec("sensor-2", "sensor", "sz")], now=bj(11, 8, 10))
    registry.set_enabled("sensor-1", False, now=CREATED)
    batch = WriteBatch()
    batch.counters["gate-1"] = DeviceCounters(last_seen_ms=ms(bj(11, 7, 23, 59, 30)), messages=100, gaps=10)
    batch.counters["veh-1"] = DeviceCounters(last_seen_ms=ms(bj(11, 5, 12)), messages=50, nonstandard=3, rejected=3)
    batch.counters["meter-2"] = DeviceCounters(last_seen_ms=ms(bj(11, 7, 23, 59)), messages=70, rejected=3)
    batch.counters["gate-0"] = DeviceCounters(last_seen_ms=ms(bj(10, 15)), messages=5)
    batch.counters["gate-z"] = DeviceCounters(last_seen_ms=ms(bj(11, 7)), messages=5, gaps=99)
    after = ms(bj(11, 8, 6))
    for dev in ("gate-late", "gate-evt", "meter-3"):
        batch.counters[dev] = DeviceCounters(last_seen_ms=after, messages=2)
    batch.events += [
        Event("gate-late", "sz", "gate", after, None, "access", {"result": "granted"}),
        Event("gate-evt", "sz", "gate", ms(bj(11, 4)), None, "access", {"result": "granted"}),
        Event("gate-evt", "sz", "gate", after, None, "access", {"result": "granted"}),
    ]
    batch.readings += [
        Reading("meter-3", "sz", "energy_meter", ms(bj(11, 5)), None, {"energy_kwh": 10.0}),
        Reading("meter-3", "sz", "energy_meter", after, None, {"energy_kwh": 12.0}),
        Reading("gate-late", "sz", "gate", after, None, {"occupancy": 1}),
    ]

    def rej(device: str, reason: str, at: datetime) -> Rejection:
        return Rejection(device, f"lf/v1/{device}/telemetry", reason, "x", b"{}", ms(at))

    batch.rejections += [
        rej("veh-1", "schema", bj(11, 2)),
        rej("veh-1", "schema", bj(11, 6)),
        rej("veh-1", "schema", bj(10, 30)),  # before the period
        rej("meter-2", "bad_timestamp", bj(11, 3)),
        rej("meter-2", "bad_timestamp", bj(11, 4)),
        rej("meter-2", "bad_timestamp", bj(11, 7, 23)),
        rej("meter-2", "bad_timestamp", bj(11, 8, 1)),  # after the period
        rej("nobody", "unregistered_device", bj(11, 3)),  # not in the registry
        rej("gate-z", "schema", bj(11, 3)),  # another province
    ]
    store.write(batch)
    with Session(registry.engine) as s, s.begin():
        s.add_all(
            [
                _alert(1, "DQ1", "gate-1", "/js/nj/nj-a/", bj(11, 3), {"group": "101-104", "count": 1}),
                _alert(2, "DQ1", "gate-1", "/js/nj/nj-a/", bj(10, 20), {"group": "5-6", "count": 1}),
                _alert(3, "E5.skew", "meter-2", "/js/sz/", bj(11, 6), {"skew_s": -310.5, "direction": "behind"}),
                _alert(
                    4,
                    "E5.skew",
                    "meter-2",
                    "/js/sz/",
                    bj(10, 20),
                    {"skew_s": 999.0},
                    resolved_at=bj(10, 25).astimezone(UTC),
                ),
                _alert(5, "DQ1", "gate-z", "/other/", bj(11, 3), {"group": "1-50", "count": 1}),
                _alert(6, "G1", "gate-1", "/js/nj/nj-a/", bj(11, 3), {}),
            ]
        )
