"""The InfluxDB backend's side store (core/store/side.py) on a migrated SQL database, SQLite and PostgreSQL: device
states, counters and rejections, shared by several writers (ingest processes) without losing a count."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import make_engine
from core.errors import StoreUnavailable
from core.protocol import Rejection, Status
from core.store import DeviceCounters, WriteBatch
from core.store.side import INT64_MAX, SqlSideStore, state_rows
from devices.broker import free_port


def counted(devices: list[str], messages: int = 1, last_seen_ms: int = 0) -> WriteBatch:
    b = WriteBatch()
    for d in devices:
        c = b.counter(d)
        c.messages, c.last_seen_ms = messages, last_seen_ms
    return b


def test_state_rows_merge_counters_and_the_newest_status_per_device() -> None:
    rows = state_rows(
        {"b": DeviceCounters(last_seen_ms=5, messages=2), "a": DeviceCounters(messages=1, gaps=INT64_MAX + 5)},
        [
            Status("c", "r", 20, "online", "2.0"),
            Status("c", "r", 10, "offline", None),
            Status("b", "r", 7, "online", None),
            Status("c", "r", 20, "offline", None),  # same time, later in the batch: wins
        ],
    )
    assert [r["device_id"] for r in rows] == ["a", "b", "c"]  # device order: writers lock rows in one order
    a, b, c = rows
    assert a["gaps"] == INT64_MAX and a["status"] is None and a["last_seen_ms"] is None
    assert (b["messages"], b["last_seen_ms"], b["status"], b["status_ms"]) == (2, 5, "online", 7)
    assert (c["status"], c["status_ms"], c["fw"], c["messages"]) == ("offline", 20, "2.0", 0)


def test_counters_statuses_and_rejections(side_store: SqlSideStore) -> None:
    b = counted(["meter-1", "gate-1"], messages=3, last_seen_ms=1000)
    b.counter("meter-1").gaps = 2
    b.statuses.append(Status("gate-1", "r", 900, "online", "1.2.3"))
    b.rejections += [
        Rejection("meter-1", "lf/v1/meter-1/telemetry", "schema", "bad\x00value", b"\x00{}", 1000),
        Rejection("ghost", "lf/v1/ghost/telemetry", "unknown_device", "no such device", b"x", 1001),
    ]
    side_store.write(b)
    later = counted(["meter-1"], messages=2, last_seen_ms=500)  # an older last-seen does not move it back
    later.statuses += [Status("gate-1", "r", 800, "offline", "0.9"), Status("meter-1", "r", 1500, "offline", None)]
    side_store.write(later)
    states = side_store.device_states()
    m, g = states["meter-1"], states["gate-1"]
    assert (m.messages, m.gaps, m.last_seen_ms, m.status, m.status_ms, m.fw) == (5, 2, 1000, "offline", 1500, None)
    assert (g.messages, g.status, g.status_ms, g.fw) == (3, "online", 900, "1.2.3")  # the older status was ignored
    assert side_store.device_states(["gate-1", "nope"]).keys() == {"gate-1"}
    assert side_store.device_states([]) == {}
    assert side_store.rejection_counts() == {("meter-1", "schema"): 1, ("ghost", "unknown_device"): 1}
    newest = side_store.rejections(None, None, 10)
    assert [r.device_id for r in newest] == ["ghost", "meter-1"]
    assert newest[1].payload == b"\x00{}" and newest[1].detail == "bad\\0value"  # NUL kept in the raw bytes
    assert [r.reason for r in side_store.rejections("meter-1", None, 10)] == ["schema"]
    assert side_store.rejections(None, "unknown_device", 10)[0].received_ms == 1001
    assert side_store.prune(1001) == 1 and side_store.rejection_counts() == {("ghost", "unknown_device"): 1}
    assert side_store.ping()


def test_gaps_saturate_instead_of_overflowing(side_store: SqlSideStore) -> None:
    for _ in range(2):
        b = counted(["d"])
        b.counter("d").gaps = INT64_MAX - 1
        side_store.write(b)
    assert side_store.device_states()["d"].gaps == INT64_MAX


def test_writers_in_parallel_lose_no_count_and_do_not_deadlock(db_url: str) -> None:
    """Four writers (as four ingest processes: an engine each) add to the same 200 devices, in opposite orders:
    every count arrives and no transaction deadlocks (one row per device, written in device order)."""
    from core.db import migrate

    migrate(make_engine(db_url))
    devices = [f"dev-{i:03d}" for i in range(200)]
    errors: list[BaseException] = []

    def run(k: int) -> None:
        side = SqlSideStore(make_engine(db_url))
        try:
            for i in range(25):
                ids = devices if (i + k) % 2 else list(reversed(devices))
                b = counted(ids, messages=1, last_seen_ms=k * 1000 + i)
                b.statuses.append(Status(ids[0], "r", k * 1000 + i, "online", None))
                side.write(b)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            side.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    check = SqlSideStore(make_engine(db_url))
    try:
        states = check.device_states()
        assert len(states) == 200 and {s.messages for s in states.values()} == {100}
        assert {s.last_seen_ms for s in states.values()} == {3024}
    finally:
        check.close()


@pytest.mark.postgres
def test_an_unreachable_database_is_store_unavailable() -> None:
    side = SqlSideStore(make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nope?connect_timeout=2"))
    try:
        with pytest.raises(StoreUnavailable, match="side store"):
            side.write(counted(["d"]))
        with pytest.raises(StoreUnavailable):
            side.device_states()
        assert not side.ping()
    finally:
        side.close()


def test_an_unmigrated_database_does_not_answer_ping(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    side = SqlSideStore(engine)
    try:
        assert not side.ping()  # `lianfang store check` says "no answer or not migrated"
    finally:
        side.close()
