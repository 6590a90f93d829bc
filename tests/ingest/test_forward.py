"""The pure parts of ingest -> engine forwarding (ingest/forward.py), the engine's stall alert and the partitioned
alert ids (no broker: the feed through Mosquitto is tests/lianfang/test_engine_role.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerts.lifecycle import LifecycleConfig
from alerts.wiring import PartitionedAlertBook
from core.protocol import Event, Reading, Rejection, Status
from core.settings import AlertSettings
from core.store import WriteBatch
from ingest.forward import (
    LossNotice,
    Part,
    Partitioner,
    decode,
    encode,
    engine_topic,
    owned_partitions,
    partition_of_topic,
    relayed_metrics,
)
from lianfang.engine_role import engine_stall_changes

PATHS = {
    "gd": ("gd",),
    "gd-gz": ("gd", "gd-gz"),
    "gd-gz-a01-b1": ("gd", "gd-gz", "gd-gz-a01", "gd-gz-a01-b1"),
    "gd-sz": ("gd", "gd-sz"),
    "gd-sz-a01-b1": ("gd", "gd-sz", "gd-sz-a01", "gd-sz-a01-b1"),
}


def test_a_part_survives_the_wire_unchanged() -> None:
    part = Part(
        readings=[Reading("m1", "gd-gz-a01-b1", "energy_meter", 1_000, 7, {"energy_kwh": 1.5, "on": True}, 1, False)],
        events=[Event("g1", "gd-gz-a01-b1", "gate", 2_000, None, "door_forced", {"door": "东门"}, True)],
        statuses=[Status("g1", "gd-gz-a01-b1", 3_000, "offline", "1.2")],
        rejections=[Rejection("x", "lf/v1/x/telemetry", "schema", "bad", b"raw bytes", 4_000)],
        losses=[LossNotice("m1", 3, 5, "no_answer", 3, "gd-gz-a01-b1", "energy_meter")],
    )
    got = decode(encode(part, src="ingest-1", oldest_ms=900, sent_ms=950))
    assert (got.src, got.oldest_ms, got.sent_ms) == ("ingest-1", 900, 950)
    assert got.batch.readings == part.readings and got.batch.events == part.events
    assert got.batch.statuses == part.statuses
    assert got.batch.rejections == [Rejection("x", "lf/v1/x/telemetry", "schema", "bad", b"", 4_000)]  # no payload
    assert got.losses == part.losses


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"v": 2}', b'{"v": 1, "src": "x"}', b'{"v":1,"r":[[1]]}'])
def test_anything_else_is_a_clear_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|wire version|malformed"):
        decode(payload)


def test_partitions_follow_the_region_subtree_at_the_level() -> None:
    city = Partitioner(2, 2, lambda: PATHS)
    assert city.of("gd-gz-a01-b1") == city.of("gd-gz") != city.of("gd-sz-a01-b1") == city.of("gd-sz")
    assert city.of("gd") in (0, 1)  # above the level: its own unit
    province = Partitioner(4, 1, lambda: PATHS)
    assert len({province.of(r) for r in PATHS}) == 1  # one province: one partition
    assert Partitioner(1, 2, lambda: {}).of("anything") == 0


def test_split_puts_each_record_in_its_partition_and_rejections_in_0() -> None:
    p = Partitioner(2, 2, lambda: PATHS)
    gz, sz = p.of("gd-gz"), p.of("gd-sz")
    batch = WriteBatch(
        readings=[Reading("m1", "gd-gz-a01-b1", "energy_meter", 1, 1, {"energy_kwh": 1.0})],
        events=[Event("g1", "gd-sz-a01-b1", "gate", 1, 1, "door_forced")],
        rejections=[Rejection("x", "t", "schema", "d", b"", 1)],
    )
    replay = Event("g2", "gd-gz-a01-b1", "gate", 1, 9, "door_forced")
    parts = p.split(batch, [replay])
    assert [r.device_id for r in parts[gz].readings] == ["m1"] and [e.device_id for e in parts[gz].events] == ["g2"]
    assert [e.device_id for e in parts[sz].events] == ["g1"]
    assert len(parts[0].rejections) == 1


def test_an_unknown_region_is_looked_up_again_after_the_refresh_pause() -> None:
    paths: dict[str, tuple[str, ...]] = {}
    p = Partitioner(2, 2, lambda: paths, miss_refresh_s=0)
    p.of("gd-sz-a01-b1")  # unknown: hashed as itself, not cached
    paths.update(PATHS)
    assert p.of("gd-sz-a01-b1") == p.of("gd-sz")


def test_topics_and_owned_partitions() -> None:
    assert partition_of_topic(engine_topic(3)) == 3 and partition_of_topic("lf/v1/x/telemetry") is None
    assert owned_partitions(AlertSettings(partitions=3)) == [0, 1, 2]
    assert owned_partitions(AlertSettings(partitions=3, engine_partitions=[2, 0, 2])) == [0, 2]
    with pytest.raises(ValueError, match="engine_partitions: 3 is not a partition"):
        owned_partitions(AlertSettings(partitions=3, engine_partitions=[3]))


def test_partitioned_alert_ids_never_meet() -> None:
    books = [PartitionedAlertBook(LifecycleConfig(), stride=3, offset=k) for k in range(3)]
    ids: list[set[int]] = [set(), set(), set()]
    for k, book in enumerate(books):
        book.next_id = max(book.next_id, 10)  # as restore() does with max(id) + 1
        for _ in range(5):
            ids[k].add(book.next_id)
            book.next_id += 1
    assert all(i % 3 == k for k in range(3) for i in ids[k])
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and min(min(s) for s in ids) >= 10


def test_the_engine_stall_alert_fires_and_resolves_per_engine() -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    status = {"stalled": True, "reason": "the alert engine is 45 s behind ingest", "lag_s": 45.0, "client_id": "e0"}
    (fire,) = engine_stall_changes(status, None, region_path=("gd",), now=now)
    assert fire.firing and fire.rule_id == "platform.engine_stalled" and fire.region_id == "gd"
    assert fire.dedup_key.endswith(":e0") and fire.title_zh == "告警引擎停滞" and fire.detail["lag_s"] == 45.0
    assert engine_stall_changes(status, True, region_path=("gd",), now=now) == []
    (clear,) = engine_stall_changes({"stalled": False, "client_id": "e0"}, True, region_path=("gd",), now=now)
    assert not clear.firing


def test_only_the_ingest_families_are_relayed() -> None:
    text = (
        "# HELP lianfang_ingest_messages_received_total x\n# TYPE lianfang_ingest_messages_received_total counter\n"
        "lianfang_ingest_messages_received_total 5.0\n# HELP python_gc_objects_collected_total y\n"
        'python_gc_objects_collected_total{generation="0"} 1.0\nlianfang_alerts_open 2.0\n'
    )
    out = relayed_metrics(text)
    assert "lianfang_ingest_messages_received_total 5.0" in out
    assert "python_gc" not in out and "lianfang_alerts_open" not in out
