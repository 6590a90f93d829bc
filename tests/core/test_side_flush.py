"""The side store's aggregated mode (core/store/side.py, ``store.side_flush_interval_s``) on real SQLite and real
PostgreSQL: counters added up in memory per process and flushed on an interval, on a bound and on close; the same
totals as the per-batch mode; a failed flush kept and retried without counting twice; two writers (two engines, as
two ingest processes) with disjoint devices adding up; and the real ingest pipeline on Mosquitto and
VictoriaMetrics, whose counts reach the database when the store is closed after ingest stopped (``Runtime.stop``)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from core.db import make_engine, migrate
from core.errors import StoreUnavailable
from core.protocol import Rejection, Status
from core.settings import IngestSettings
from core.store import DeviceState, WriteBatch
from core.store.influx import InfluxStore
from core.store.side import SqlSideStore
from devices.broker import free_port
from devices.registry import Registry
from ingest.service import IngestService
from tests.conftest import Broker
from tests.core.test_influx import PATHS
from tests.helpers import wait_until
from tests.influx_servers import Server
from tests.ingest.conftest import mqtt_settings, seed_registry
from tests.ingest.test_reliability import SeqPublisher

T0 = 1_700_000_000_000


@pytest.fixture
def migrated(db_url: str) -> str:
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    return db_url


def upserts(engine: Engine) -> list[str]:
    """The INSERTs into telemetry_device_state that ``engine`` executes from now on (appended as they run)."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TELEMETRY_DEVICE_STATE"):
            seen.append(statement)

    return seen


def batches(prefix: str, devices: int, n: int, seed: int = 7) -> Iterator[WriteBatch]:
    """``n`` batches over ``devices`` devices: counters of every kind, statuses (one device in five, some older
    than what was stored), a rejection now and then; the same sequence for the same seed, whatever the prefix."""
    rng = random.Random(seed)
    for k in range(n):
        b = WriteBatch()
        for _ in range(rng.randint(1, 3 * devices)):
            dev = f"{prefix}{rng.randrange(devices):03d}"
            c = b.counter(dev)
            c.messages += 1
            c.last_seen_ms = max(c.last_seen_ms, T0 + k * 1000 + rng.randrange(2000) - 1000)
            c.gaps += rng.random() < 0.1
            c.duplicates += rng.random() < 0.05
            c.nonstandard += rng.random() < 0.05
        for _ in range(rng.randrange(devices // 5 + 1)):
            dev = f"{prefix}{rng.randrange(devices):03d}"
            b.statuses.append(
                Status(dev, "r", T0 + k * 1000 - rng.randrange(3000), rng.choice(["online", "offline"]), None)
            )
        if rng.random() < 0.3:
            dev = f"{prefix}{rng.randrange(devices):03d}"
            b.counter(dev).rejected += 1
            b.rejections.append(Rejection(dev, f"lf/v1/{dev}/telemetry", "schema", "bad", b"{", T0 + k))
        yield b


def unprefixed(states: dict[str, DeviceState], prefix: str) -> dict[str, tuple[Any, ...]]:
    return {
        d.removeprefix(prefix): (
            s.last_seen_ms,
            s.status,
            s.status_ms,
            s.messages,
            s.gaps,
            s.duplicates,
            s.nonstandard,
            s.rejected,
        )
        for d, s in states.items()
        if d.startswith(prefix)
    }


def test_batches_become_one_upsert_per_device_per_flush(migrated: str) -> None:
    side = SqlSideStore(make_engine(migrated), flush_interval_s=3600)  # flushed by hand below
    other = SqlSideStore(make_engine(migrated))  # another process reading the database
    seen = upserts(side.engine)
    try:
        for _ in range(20):
            b = WriteBatch()
            for i in range(50):
                c = b.counter(f"d-{i:02d}")
                c.messages, c.last_seen_ms = 2, T0 + i
            side.write(b)
        assert seen == [] and side.pending_devices == 50  # 20 batches x 50 devices: nothing written yet
        assert other.device_states() == {}  # other processes see the database alone
        assert {s.messages for s in side.device_states().values()} == {40}  # this process adds its aggregate
        assert side.flush() == 50
        assert len(seen) == 1 and side.stats.rows == 50 and side.pending_devices == 0
        states = other.device_states()
        assert len(states) == 50 and {s.messages for s in states.values()} == {40}
        assert states["d-07"].last_seen_ms == T0 + 7
        assert side.flush() == 0 and len(seen) == 1  # nothing held: no statement
    finally:
        side.close()
        other.close()


def test_the_same_totals_as_one_upsert_per_batch(migrated: str) -> None:
    """The same batches through the per-batch mode (devices p…) and the aggregated mode (devices q…, flushed every
    few batches) leave the same rows: counters, last seen, status, and the rejections."""
    per_batch = SqlSideStore(make_engine(migrated))
    aggregated = SqlSideStore(make_engine(migrated), flush_interval_s=3600)
    try:
        for b in batches("p", 40, 62):
            per_batch.write(b)
        for k, b in enumerate(batches("q", 40, 62)):
            aggregated.write(b)
            if k % 7 == 3:
                aggregated.flush()
        assert aggregated.pending_devices > 0
        exact = unprefixed(per_batch.device_states(), "p")
        assert unprefixed(aggregated.device_states(), "q") == exact  # read through the aggregate
        aggregated.flush()
        assert unprefixed(per_batch.device_states(), "q") == exact  # as another process reads it
        assert any(s[1] == "offline" for s in exact.values()) and sum(s[3] for s in exact.values()) > 1000
        counts = per_batch.rejection_counts()
        assert {d[1:]: n for (d, _), n in counts.items() if d[0] == "p"} == {
            d[1:]: n for (d, _), n in counts.items() if d[0] == "q"
        }
    finally:
        per_batch.close()
        aggregated.close()


def test_statuses_and_rejections_are_written_with_their_batch(migrated: str) -> None:
    side = SqlSideStore(make_engine(migrated), flush_interval_s=3600)
    other = SqlSideStore(make_engine(migrated))
    try:
        b = WriteBatch()
        for dev in ("gate-1", "meter-1"):
            b.counter(dev).messages, b.counter(dev).last_seen_ms = 3, T0
        b.statuses.append(Status("gate-1", "r", T0 + 5, "offline", "1.0"))
        b.rejections.append(Rejection("meter-1", "lf/v1/meter-1/telemetry", "schema", "bad", b"{", T0))
        side.write(b)
        states = other.device_states()
        assert list(states) == ["gate-1"]  # the device with a status: its whole row at once
        g = states["gate-1"]
        assert (g.status, g.status_ms, g.fw, g.messages, g.last_seen_ms) == ("offline", T0 + 5, "1.0", 3, T0)
        assert other.rejection_counts() == {("meter-1", "schema"): 1}
        assert side.pending_devices == 1  # meter-1's counters wait for the flush
    finally:
        side.close()  # flushes
        other.close()
    check = SqlSideStore(make_engine(migrated))
    try:
        assert check.device_states()["meter-1"].messages == 3
    finally:
        check.close()


def test_close_flushes_and_the_interval_flushes_without_a_call(migrated: str) -> None:
    other = SqlSideStore(make_engine(migrated))
    side = SqlSideStore(make_engine(migrated), flush_interval_s=0.2)
    try:
        side.write(batch_of({"a": 1, "b": 2}))
        # The flusher counts a flush once its commit returned: the rows can be visible a moment before the count.
        wait_until(
            lambda: other.device_states().keys() == {"a", "b"} and side.stats.flushes == 1, 10, 0.05, "the flush"
        )
        side.write(batch_of({"a": 5}))
        side.close()  # before the next interval
        assert other.device_states()["a"].messages == 6
    finally:
        side.close()
        other.close()


def batch_of(messages: dict[str, int], at: int = T0) -> WriteBatch:
    b = WriteBatch()
    for dev, n in messages.items():
        b.counter(dev).messages, b.counter(dev).last_seen_ms = n, at
    return b


def _rename(url: str, old: str, new: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    engine.dispose()


def test_a_failed_flush_is_retried_without_counting_twice(migrated: str) -> None:
    """The table goes away (as the database would): the flush fails with StoreUnavailable and keeps what it held;
    batches meanwhile add to it; when it is full a batch is refused before anything of it is written (ingest
    retries it); once the table is back the next flush writes each count exactly once."""
    side = SqlSideStore(make_engine(migrated), flush_interval_s=3600, max_pending=3)
    try:
        side.write(batch_of({"a": 1, "b": 1}))
        side.flush()
        side.write(batch_of({"a": 2, "c": 4}, T0 + 10))
        _rename(migrated, "telemetry_device_state", "tds_away")
        with pytest.raises(StoreUnavailable, match="flush failed"):
            side.flush()
        assert side.stats.failures == 1 and side.pending_devices == 2
        side.write(batch_of({"a": 1, "d": 1}, T0 + 5))  # 3 devices held now: the bound
        with pytest.raises(StoreUnavailable):
            side.write(batch_of({"e": 7}))  # the aggregate is full and cannot be flushed: refused whole
        assert side.pending_devices == 3 and side.stats.failures == 2
        _rename(migrated, "tds_away", "telemetry_device_state")
        side.write(batch_of({"e": 7}))  # ingest's retry: the bound's flush succeeds first
        assert side.pending_devices == 1
        side.flush()
        states = side.device_states()
        assert {d: s.messages for d, s in states.items()} == {"a": 4, "b": 1, "c": 4, "d": 1, "e": 7}
        assert states["a"].last_seen_ms == T0 + 10  # the newest, not the last added
    finally:
        side.close()


def test_reads_during_flushes_never_count_twice(migrated: str) -> None:
    """A flush commits while this process's reads wait: every read sees each count once, either in the
    aggregate or in the database, however the flusher thread and the reads interleave."""
    side = SqlSideStore(make_engine(migrated), flush_interval_s=0.001)
    try:
        devices = [f"d-{i:03d}" for i in range(100)]
        for k in range(1, 101):
            side.write(batch_of(dict.fromkeys(devices, 1)))
            states = side.device_states(devices[k % 2 :: 2])
            assert {s.messages for s in states.values()} == {k}, k
        assert side.stats.flushes > 5
    finally:
        side.close()


def test_two_writers_with_disjoint_devices_add_up(migrated: str) -> None:
    """Two stores with an engine each (as two ingest processes with hash_clientid: disjoint devices), each
    flushing every 50 ms from its own thread while it writes: every count of both arrives, once."""
    errors: list[BaseException] = []

    def run(w: int) -> None:
        side = SqlSideStore(make_engine(migrated), flush_interval_s=0.05)
        try:
            for k in range(200):
                side.write(batch_of({f"w{w}-{i:02d}": 1 + (i % 3) for i in range(30)}, T0 + k))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            side.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    check = SqlSideStore(make_engine(migrated))
    try:
        states = check.device_states()
        assert len(states) == 60
        assert all(s.messages == 200 * (1 + int(d[-2:]) % 3) and s.last_seen_ms == T0 + 199 for d, s in states.items())
    finally:
        check.close()


@pytest.mark.integration
def test_ingest_counts_reach_the_database_when_the_store_is_closed(
    broker: Broker, registry: Registry, victoria: Server, influxdb: Server
) -> None:
    """The real pipeline (Mosquitto, IngestService, InfluxStore on VictoriaMetrics) with the aggregated side store:
    while ingest runs another process sees no counts (the interval is an hour); ingest stopped and the store
    closed (the order of ``Runtime.stop`` on SIGTERM), every message is counted once."""
    seed_registry(registry)
    n = 500
    store = InfluxStore(
        victoria.url,
        org="lianfang",
        bucket="telemetry",
        token="t",
        database="lf",
        side=SqlSideStore(registry.engine, owns_engine=False, flush_interval_s=3600),
        query_url=influxdb.url,
        region_paths=lambda: PATHS,
        timeout_s=5,
    )
    other = SqlSideStore(registry.engine, owns_engine=False)
    svc = IngestService(
        mqtt_settings(broker), IngestSettings(batch_wait_ms=5, registry_refresh_s=60), store, registry.snapshot
    )
    pub = SeqPublisher(broker.port, broker.sim_password, "meter-0001", n)
    try:
        svc.start()
        wait_until(svc.consumer.connected.is_set, 10, what="ingest connected")
        pub.start()
        wait_until(lambda: svc.stats.acked >= n, 60, 0.05, "every message written and acked")
        assert "meter-0001" not in other.device_states()
        assert store.device_states()["meter-0001"].messages == n  # this process: through its aggregate
    finally:
        pub.close()
        svc.stop()
        store.close()
    assert other.device_states()["meter-0001"].messages == n


def test_the_setting_reaches_the_side_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LIANFANG_STORE__SIDE_FLUSH_INTERVAL_S`` -> ``store.side_flush_interval_s`` -> the InfluxDB store's side
    store (``lianfang.store_cmd.influx_store``, what ``open_store`` builds for ingest); 0 by default."""
    from core.settings import load_settings
    from lianfang.store_cmd import influx_store

    url = f"sqlite:///{tmp_path}/registry.db"
    migrate(make_engine(url))
    for key, value in {
        "LIANFANG_DATA_DIR": str(tmp_path),
        "LIANFANG_DATABASE_URL": url,
        "LIANFANG_STORE__BACKEND": "influxdb",
        "LIANFANG_STORE__INFLUX_URL": f"http://127.0.0.1:{free_port()}",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIANFANG_CONFIG", raising=False)
    assert load_settings().store.side_flush_interval_s == 0
    monkeypatch.setenv("LIANFANG_STORE__SIDE_FLUSH_INTERVAL_S", "30")
    store = influx_store(load_settings())
    try:
        assert store.side.flush_interval_s == 30
        store.side.write(batch_of({"a": 2}))
        assert store.side.pending_devices == 1
    finally:
        store.close()  # flushes
    check = SqlSideStore(make_engine(url))
    try:
        assert check.device_states()["a"].messages == 2
    finally:
        check.close()
