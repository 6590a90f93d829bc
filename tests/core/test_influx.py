"""The InfluxDB store against real servers: the write path against VictoriaMetrics (``/api/v2/write``), the read
path against InfluxDB 1.6 (InfluxQL on ``/query``, seeded through its v1 ``/write`` with our line protocol), and
the HTTP error mapping against a scripted HTTP server (400 partial write, 429/503 with Retry-After)."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from core.errors import StoreUnavailable
from core.protocol import Event, Reading, Rejection, Status
from core.store import WriteBatch
from core.store.influx import InfluxStore, PointRejected, batch_lines, device_field, stored_field
from core.store.side import SqlSideStore
from devices.broker import free_port
from tests.influx_servers import Server, seed_influxd, sqlite_side

PATHS = {"r-b1": "/gd/gd-gz/r-b1/", "r,odd b": "/gd/r,odd b/"}


def influx_store(server_url: str, tmp_path: Path, side: SqlSideStore | None = None, **kw: Any) -> InfluxStore:
    """The store on ``server_url``; its side store on a migrated SQLite database in tmp_path unless given."""
    return InfluxStore(
        server_url,
        org="lianfang",
        bucket="telemetry",
        token="test-token",
        database="lf",
        side=side if side is not None else sqlite_side(tmp_path),
        region_paths=lambda: PATHS,
        **kw,
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sample_batch(t0: int) -> WriteBatch:
    b = WriteBatch()
    for i in range(10):
        b.readings.append(Reading("meter-0001", "r-b1", "energy_meter", t0 + i * 1000, i, {"energy_kwh": 100.0 + i}))
    b.readings.append(
        Reading("gate-0001", "r-b1", "gate", t0, 7, {"door_open": True, "occupancy": 3, "device_type": 9.5})
    )
    b.readings.append(Reading("sensor-01", "r,odd b", "sensor", t0, None, {"f_x": 1.5, "temp_c": -2.25}))
    b.events.append(
        Event("gate-0001", "r-b1", "gate", t0 + 500, 8, "access", {"credential": 'c"1\\x\n,= y', "result": "granted"})
    )
    b.events.append(Event("car-0001", "r-b1", "vehicle", t0 + 600, None, "harsh_brake", {}))
    b.statuses.append(Status("gate-0001", "r-b1", t0, "online", "1.2.3"))
    b.rejections.append(Rejection("meter-0001", "lf/v1/meter-0001/telemetry", "schema", "bad", b"{}", t0))
    c = b.counter("meter-0001")
    c.messages, c.last_seen_ms = 10, t0 + 9000
    return b


# --- line protocol ------------------------------------------------------------------------------------------


def test_stored_field_never_collides_with_tags_and_round_trips() -> None:
    for name in ("device_id", "region", "region_path", "device_type", "type", "seq", "data", "time", "f_x", "temp"):
        key = stored_field(name)
        assert key not in {"device_id", "region", "region_path", "device_type", "type", "seq", "data", "time"}
        assert device_field(key) == name
    assert stored_field("f_f_x") != stored_field("f_x")


def test_batch_lines_escape_tags_and_strings() -> None:
    lines = batch_lines(sample_batch(1_000).readings, sample_batch(1_000).events, lambda r: PATHS[r])
    sensor = next(x for x in lines if x.startswith("sensor,"))
    assert "region=r\\,odd\\ b" in sensor and "region_path=/gd/r\\,odd\\ b/" in sensor
    assert "f_f_x=1.5" in sensor and "seq=-1i" in sensor
    gate = next(x for x in lines if x.startswith("gate,"))
    assert "f_device_type=9.5" in gate and "door_open=true" in gate and "occupancy=3.0" in gate
    access = next(x for x in lines if x.startswith("events,") and "type=access" in x)
    assert "\n" not in access


# --- write path: VictoriaMetrics ------------------------------------------------------------------------------


def vm_export(server: Server, match: str) -> dict[tuple[str, frozenset[tuple[str, str]]], dict[int, float]]:
    """Series name + labels -> {ts: value} (duplicates of a replay collapse to one timestamp)."""
    httpx.get(server.url + "/internal/force_flush", timeout=10)
    r = httpx.post(server.url + "/api/v1/export", data={"match[]": match}, timeout=10)
    r.raise_for_status()
    out: dict[tuple[str, frozenset[tuple[str, str]]], dict[int, float]] = {}
    for line in r.text.splitlines():
        doc = orjson.loads(line)
        labels = dict(doc["metric"])
        name = labels.pop("__name__")
        points = out.setdefault((name, frozenset(labels.items())), {})
        points.update(zip(doc["timestamps"], doc["values"], strict=True))
    return out


def test_write_reaches_victoria_metrics_with_tags_fields_and_side_store(
    victoria: Server, side_store: SqlSideStore, tmp_path: Path
) -> None:
    """On a side store in SQLite and in PostgreSQL."""
    t0 = now_ms() - 60_000
    store = influx_store(victoria.url, tmp_path, side=side_store)
    try:
        store.write(sample_batch(t0))
        store.write(sample_batch(t0))  # a replay: the same points again, counters counted again (new messages)
        series = vm_export(victoria, '{__name__=~"(energy_meter|gate|sensor|events)_.*"}')
        meter_tags = frozenset(
            {
                "device_id": "meter-0001",
                "region": "r-b1",
                "region_path": "/gd/gd-gz/r-b1/",
                "device_type": "energy_meter",
            }.items()
        )
        energy = series[("energy_meter_energy_kwh", meter_tags)]
        assert energy == {t0 + i * 1000: 100.0 + i for i in range(10)}
        assert series[("energy_meter_seq", meter_tags)] == {t0 + i * 1000: float(i) for i in range(10)}
        gate_names = {name for name, tags in series if ("device_id", "gate-0001") in tags}
        assert {"gate_door_open", "gate_occupancy", "gate_f_device_type", "gate_seq", "events_seq"} <= gate_names
        sensor = {name: pts for (name, tags), pts in series.items() if ("device_id", "sensor-01") in tags}
        assert sensor["sensor_f_f_x"] == {t0: 1.5} and sensor["sensor_temp_c"] == {t0: -2.25}
        sensor_tags = next(tags for (name, tags) in series if name == "sensor_temp_c")
        assert ("region", "r,odd b") in sensor_tags and ("region_path", "/gd/r,odd b/") in sensor_tags
        events = {(name, tags) for name, tags in series if name == "events_seq"}
        assert {dict(t)["type"] for _, t in events} == {"access", "harsh_brake"}
        # device state and rejections: the side store
        states = store.device_states()
        assert states["meter-0001"].messages == 20 and states["meter-0001"].last_seen_ms == t0 + 9000
        assert states["gate-0001"].status == "online" and states["gate-0001"].fw == "1.2.3"
        assert store.rejection_counts() == {("meter-0001", "schema"): 2}
    finally:
        store.close()


def test_write_chunks_a_large_batch(victoria: Server, tmp_path: Path) -> None:
    t0 = now_ms() - 600_000
    store = influx_store(victoria.url, tmp_path, chunk_lines=100)
    try:
        b = WriteBatch()
        b.readings = [
            Reading(f"m-{i % 7}", "r-b1", "energy_meter", t0 + i, i, {"power_kw": float(i)}) for i in range(1050)
        ]
        store.write(b)
        series = vm_export(victoria, '{__name__="energy_meter_power_kw"}')
        assert sum(len(p) for p in series.values()) == 1050
    finally:
        store.close()


def test_write_unreachable_is_store_unavailable(tmp_path: Path) -> None:
    store = influx_store(f"http://127.0.0.1:{free_port()}", tmp_path, timeout_s=2)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.write(sample_batch(now_ms()))
        assert store.device_states() == {}  # nothing of a failed batch reaches the side store
        assert not store.ping()
    finally:
        store.close()


# --- HTTP error mapping: a scripted HTTP server --------------------------------------------------------------


class Scripted(http.server.ThreadingHTTPServer):
    def __init__(self, replies: list[tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies = replies
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.poison: bytes | None = None  # a body containing this is answered 400 (a point the server refuses)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.bodies.append(gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw)
        self.server.paths.append(self.path)
        poison = self.server.poison
        if poison is not None and poison in self.server.bodies[-1]:
            status, headers, body = 400, {}, b'{"code":"invalid","message":"partial write: field type conflict"}'
        else:
            status, headers, body = self.server.replies.pop(0) if self.server.replies else (204, {}, b"")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted([])
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    yield server
    server.shutdown()
    server.server_close()
    t.join(5)


def test_write_honours_retry_after_then_succeeds(scripted: Scripted, tmp_path: Path) -> None:
    scripted.replies[:] = [(429, {"Retry-After": "2"}, b"{}"), (503, {"Retry-After": "1"}, b"{}")]
    slept: list[float] = []
    store = influx_store(f"http://127.0.0.1:{scripted.server_address[1]}", tmp_path, sleep=slept.append)
    try:
        store.write(sample_batch(now_ms()))
        assert slept == [2.0, 1.0]
        assert len(scripted.bodies) == 3 and scripted.bodies[0] == scripted.bodies[2]
        assert scripted.paths[0].startswith("/api/v2/write?") and "precision=ms" in scripted.paths[0]
        assert b"energy_meter,device_id=meter-0001" in scripted.bodies[0]
    finally:
        store.close()


def test_write_gives_up_as_store_unavailable_after_max_attempts(scripted: Scripted, tmp_path: Path) -> None:
    scripted.replies[:] = [(503, {}, b"{}")] * 3
    slept: list[float] = []
    store = influx_store(f"http://127.0.0.1:{scripted.server_address[1]}", tmp_path, sleep=slept.append, backoff_s=0.1)
    try:
        with pytest.raises(StoreUnavailable, match="503"):
            store.write(sample_batch(now_ms()))
        assert slept == [0.1, 0.2]
    finally:
        store.close()


def test_write_partial_write_400_is_poison_not_unavailable(scripted: Scripted, tmp_path: Path) -> None:
    msg = b'{"code":"invalid","message":"partial write: field type conflict"}'
    scripted.replies[:] = [(400, {"Content-Type": "application/json"}, msg)]
    store = influx_store(f"http://127.0.0.1:{scripted.server_address[1]}", tmp_path)
    try:
        with pytest.raises(PointRejected, match="field type conflict") as info:
            store.write(sample_batch(now_ms()))
        assert not isinstance(info.value, StoreUnavailable)
        assert store.device_states() == {}
    finally:
        store.close()


def test_write_auth_failure_is_store_unavailable(scripted: Scripted, tmp_path: Path) -> None:
    scripted.replies[:] = [(401, {}, b'{"code":"unauthorized"}')]
    store = influx_store(f"http://127.0.0.1:{scripted.server_address[1]}", tmp_path)
    try:
        with pytest.raises(StoreUnavailable, match="401"):
            store.write(sample_batch(now_ms()))
    finally:
        store.close()


# --- read path: InfluxDB 1.6 ----------------------------------------------------------------------------------


def seed_v1(server: Server, lines: list[str]) -> None:
    seed_influxd(server, "lf", lines)


def test_reads_through_influxql_on_influxdb_1_6(influxdb: Server, tmp_path: Path) -> None:
    t0 = (now_ms() // 60_000 - 30) * 60_000
    batch = sample_batch(t0)
    seed_v1(influxdb, batch_lines(batch.readings, batch.events, lambda r: PATHS[r]))
    store = influx_store(influxdb.url, tmp_path)
    try:
        assert store.ping()
        assert store.raw("meter-0001", "energy_kwh", t0, t0 + 5000, 100) == [
            (t0 + i * 1000, 100.0 + i) for i in range(5)
        ]
        assert store.raw("meter-0001", "energy_kwh", t0, t0 + 60_000, 3) == [
            (t0 + i * 1000, 100.0 + i) for i in range(3)
        ]
        assert store.raw("gate-0001", "door_open", t0, t0 + 1, 10) == [(t0, 1.0)]
        assert store.raw("gate-0001", "device_type", t0, t0 + 1, 10) == [(t0, 9.5)]  # an escaped field name
        buckets = store.aggregate("meter-0001", "energy_kwh", t0, t0 + 10_000, 5000, "mean", 100)
        assert [(b.ts_ms, b.value, b.count) for b in buckets] == [(t0, 102.0, 5), (t0 + 5000, 107.0, 5)]
        last = store.aggregate("meter-0001", "energy_kwh", t0, t0 + 10_000, 5000, "last", 100)
        assert [(b.ts_ms, b.value) for b in last] == [(t0, 104.0), (t0 + 5000, 109.0)]
        cnt = store.aggregate("meter-0001", "energy_kwh", t0, t0 + 10_000, 5000, "count", 100)
        assert [(b.value, b.count) for b in cnt] == [(5.0, 5), (5.0, 5)]
        total = store.aggregate("meter-0001", "energy_kwh", t0, t0 + 10_000, 10_000, "sum", 100)
        assert [(b.value, b.count) for b in total] == [(1045.0, 10)]
        mx = store.aggregate("meter-0001", "energy_kwh", t0, t0 + 10_000, 10_000, "max", 1)
        assert [(b.value, b.count) for b in mx] == [(109.0, 10)]
        assert store.last_values("meter-0001") == {"energy_kwh": (t0 + 9000, 109.0)}
        assert store.last_values("gate-0001") == {
            "door_open": (t0, True),
            "occupancy": (t0, 3.0),
            "device_type": (t0, 9.5),
        }
        assert store.last_values("sensor-01") == {"f_x": (t0, 1.5), "temp_c": (t0, -2.25)}
        evs = store.events(None, t0, t0 + 60_000, None, 10)
        assert [(e.device_id, e.type, e.seq, e.ts_ms) for e in evs] == [
            ("car-0001", "harsh_brake", None, t0 + 600),
            ("gate-0001", "access", 8, t0 + 500),
        ]
        assert evs[1].data == {"credential": 'c"1\\x\n,= y', "result": "granted"} and evs[1].region_id == "r-b1"
        assert [e.type for e in store.events(["gate-0001"], t0, t0 + 60_000, None, 10)] == ["access"]
        assert [e.device_id for e in store.events(None, t0, t0 + 60_000, ["harsh_brake"], 10)] == ["car-0001"]
        assert store.events([], t0, t0 + 60_000, None, 10) == []
        assert store.count_readings() == 12 and store.count_readings("meter-0001") == 10
        assert store.counts_by_device() == {"meter-0001": 10, "gate-0001": 1, "sensor-01": 1}
        seqs = store.recent_seqs(100)
        assert ("meter-0001", 9, t0 + 9000) in seqs and ("gate-0001", 8, t0 + 500) in seqs
        assert all(dev != "sensor-01" and dev != "car-0001" for dev, _, _ in seqs)  # no seq: not returned
    finally:
        store.close()


def test_query_of_a_missing_database_is_an_error_not_empty(influxdb: Server, tmp_path: Path) -> None:
    store = InfluxStore(influxdb.url, org="o", bucket="b", token="", database="nope", side=sqlite_side(tmp_path))
    try:
        with pytest.raises(Exception, match="database not found"):
            store.raw("meter-0001", "energy_kwh", 0, now_ms(), 10)
    finally:
        store.close()


def test_reads_of_a_stopped_server_are_store_unavailable(influxdb: Server, tmp_path: Path) -> None:
    store = influx_store(influxdb.url, tmp_path, timeout_s=2)
    try:
        influxdb.stop()
        with pytest.raises(StoreUnavailable):
            store.last_values("meter-0001")
        assert not store.ping()
    finally:
        store.close()


def test_ingest_writer_isolates_a_refused_point_and_stores_the_rest(scripted: Scripted, tmp_path: Path) -> None:
    """ingest's BatchWriter on the InfluxDB store: a 400 for one message's point splits the batch down to that
    message, which is rejected internal_error with the server's reason; the other messages are written."""
    from core.protocol import DeviceInfo, decode
    from ingest.dedup import SeqTracker
    from ingest.pipeline import RawMessage, build_batch
    from ingest.writer import BatchWriter

    devices = {d: DeviceInfo(d, "energy_meter", "r-b1") for d in ("meter-0001", "meter-0002", "meter-0bad")}
    t0 = now_ms() - 10_000
    msgs = [
        RawMessage(
            f"lf/v1/{dev}/telemetry", orjson.dumps({"ts": t0 + i, "seq": i, "energy_kwh": 1.0 + i}), i + 1, 1, t0
        )
        for i, dev in enumerate(["meter-0001", "meter-0002", "meter-0bad", "meter-0001", "meter-0002"] * 4)
    ]
    scripted.poison = b"device_id=meter-0bad"
    store = influx_store(f"http://127.0.0.1:{scripted.server_address[1]}", tmp_path)
    try:
        seqs = SeqTracker()
        writer = BatchWriter(store, seqs, decode)
        written = writer.write(msgs, devices, build_batch(msgs, devices, seqs))
        assert writer.isolated == 4 and len(written.readings) == 16
        accepted = b"\n".join(b for b in scripted.bodies if b"meter-0bad" not in b)
        assert accepted.count(b"energy_meter,device_id=meter-000") == 16
        rejected = store.rejections(None, None, 10)
        assert {r.device_id for r in rejected} == {"meter-0bad"} and len(rejected) == 4
        assert all(r.reason == "internal_error" and "field type conflict" in r.detail for r in rejected)
    finally:
        store.close()
