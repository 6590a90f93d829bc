"""Poison values never jam ingest (issue 8, part 1).

- The store rolls back on any error, so the next write starts clean.
- ``BatchWriter`` isolates the one message whose write fails (bisecting the batch), rejects it ``internal_error``
  with the error kept, stores the rest; the duplicate tracker learns only what was written.
- A hypothesis property over the JSON value space, per device type and channel: every message (or object of an
  array) ends as exactly one of stored, duplicate or rejected with a reason, the store holds what was written, and
  the writer goes on.
- Through a real Mosquitto: seq 2^63..2^64-1 is rejected ``schema`` and the other devices' messages are stored;
  with a decoder that lets such a seq through (the bug class), the message is isolated as ``internal_error``, the
  rest of its batch is stored and acked at once, and its seq is not learnt (sent again, it is isolated again).
"""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidMessage
from core.protocol import EVENT_TYPES, TELEMETRY_FIELDS, DeviceInfo, Reading, Record, decode, load_json, parse_topic
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from ingest.dedup import SeqTracker
from ingest.pipeline import RawMessage, build_batch
from ingest.writer import BatchWriter
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until
from tests.ingest.conftest import IngestFactory

NOW_MS = 1_780_000_000_000
DEVICES: dict[str, DeviceInfo] = {
    d.device_id: d
    for d in (
        DeviceInfo("meter-0001", "energy_meter", "r1"),
        DeviceInfo("meter-0002", "energy_meter", "r1"),
        DeviceInfo("car-0001", "vehicle", "r1"),
        DeviceInfo("gate-0001", "gate", "r1"),
        DeviceInfo("gate-0002", "gate", "r2"),
        DeviceInfo("sensor-0001", "sensor", "r2"),
        DeviceInfo("meter-off", "energy_meter", "r1", enabled=False),
    )
}
DEVICE_IDS = [*DEVICES, "meter-9999", "Bad_Id"]


class FaultyStore(SqliteStore):
    """The real store, plus a write failure tied to one value: a reading with a ``boom`` field raises, as an
    unknown bug of the write path would (after the real store has begun its transaction)."""

    def write(self, batch: WriteBatch) -> None:
        if any("boom" in r.fields for r in batch.readings):
            conn = self._writer
            with self._write_lock():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    raise ValueError("boom: this value cannot be written")
                except BaseException:
                    self._abort()
                    raise
        super().write(batch)


def _raw(i: int, topic: str, payload: bytes, retain: bool = False) -> RawMessage:
    return RawMessage(topic, payload, i + 1, 1, NOW_MS - 10_000 + i, retain)


# --- the store rolls back -------------------------------------------------------------------------------------


def test_a_write_that_raises_is_rolled_back_and_the_next_write_works(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db", background_checkpoint=False)
    try:
        bad = Reading("m-1", "r", "energy_meter", NOW_MS, 2**63, {"energy_kwh": 1.0})  # decode would refuse it
        good = Reading("m-1", "r", "energy_meter", NOW_MS + 1, 5, {"energy_kwh": 2.0})
        with pytest.raises(OverflowError):
            store.write(WriteBatch(readings=[good, bad]))
        assert store.count_readings() == 0  # nothing of the failed batch, and no transaction left open
        store.write(WriteBatch(readings=[good]))  # was: "cannot start a transaction within a transaction"
        assert store.count_readings() == 1
    finally:
        store.close()


# --- the writer isolates the message --------------------------------------------------------------------------


def _writer(store: SqliteStore, seqs: SeqTracker) -> BatchWriter:
    return BatchWriter(store, seqs, decode, retry_backoff_s=(0.01, 0.01))


def test_the_failing_message_is_isolated_and_the_rest_of_its_batch_stored(tmp_path: Path) -> None:
    store = FaultyStore(tmp_path / "t.db", background_checkpoint=False)
    try:
        seqs = SeqTracker()
        msgs = [
            _raw(
                i,
                "lf/v1/meter-0001/telemetry",
                json.dumps({"ts": NOW_MS - 5000 + i, "seq": i, "energy_kwh": i}).encode(),
            )
            for i in range(40)
        ]
        poison = json.dumps({"ts": NOW_MS - 4000, "seq": 17, "energy_kwh": 1, "boom": 1}).encode()
        msgs[17] = _raw(17, "lf/v1/meter-0002/telemetry", poison)
        batch = build_batch(msgs, DEVICES, seqs)
        written = _writer(store, seqs).write(msgs, DEVICES, batch)
        assert store.count_readings("meter-0001") == 39 and store.count_readings("meter-0002") == 0
        (rej,) = store.rejections(None, None, 10)
        assert rej.reason == "internal_error" and "ValueError: boom" in rej.detail and rej.payload == poison
        assert len(written.readings) == 39 and [r.reason for r in written.rejections] == ["internal_error"]
        # The tracker learnt the 39 stored seqs, not the isolated one, and holds nothing staged.
        assert seqs.staged_count() == 0
        again = build_batch([_raw(50, "lf/v1/meter-0001/telemetry", msgs[3].payload)], DEVICES, seqs)
        assert again.counters["meter-0001"].duplicates == 1
        fixed = json.dumps({"ts": NOW_MS - 4000, "seq": 17, "energy_kwh": 1}).encode()
        later = build_batch([_raw(51, "lf/v1/meter-0002/telemetry", fixed)], DEVICES, seqs)
        assert len(later.readings) == 1  # the isolated seq is not taken for a duplicate
    finally:
        store.close()


def test_a_batch_that_fails_leaves_no_seqs_behind_for_its_redelivery(tmp_path: Path) -> None:
    """The issue's loss: a failed batch's seqs in the tracker made its redelivered good messages duplicates."""
    seqs = SeqTracker()
    msgs = [_raw(i, "lf/v1/meter-0001/telemetry", json.dumps({"seq": i, "energy_kwh": i}).encode()) for i in range(5)]
    first = build_batch(msgs, DEVICES, seqs)
    assert len(first.readings) == 5
    seqs.abort(first.seqs)  # the write failed: nothing was stored
    redelivered = build_batch(msgs, DEVICES, seqs)
    assert len(redelivered.readings) == 5 and redelivered.counters["meter-0001"].duplicates == 0
    # Within one batch, and across batches still in flight, duplicates are caught before anything is written.
    dup_batch = build_batch(msgs[:2] + msgs[:2], DEVICES, seqs)
    assert dup_batch.counters["meter-0001"].duplicates == 4  # 2 staged by `redelivered`, 2 within this batch
    seqs.commit(redelivered.seqs)
    seqs.abort(dup_batch.seqs)
    assert build_batch(msgs[:1], DEVICES, seqs).counters["meter-0001"].duplicates == 1


# --- the property ----------------------------------------------------------------------------------------------

_KNOWN = sorted({f for t in TELEMETRY_FIELDS.values() for f in t} | {"ts", "seq", "type", "state", "fw", "boom"})
_EVENT_TYPES = sorted({t for table in EVENT_TYPES.values() for t in table})
_EDGE_INTS = [0, 1, 7, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]

_scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from(_EDGE_INTS)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
_names = st.sampled_from(_KNOWN) | st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True) | st.text(max_size=8)


@st.composite
def _object(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = draw(st.dictionaries(_names, _json, max_size=5))
    if draw(st.booleans()):
        obj["seq"] = draw(st.integers(0, 6) | st.sampled_from(_EDGE_INTS) | _json)
    if draw(st.booleans()):
        offset = draw(st.integers(-40 * 86_400_000, 10 * 60_000))
        obj["ts"] = draw(st.just(NOW_MS + offset) | st.just(NOW_MS - 1000) | _json)
    if draw(st.booleans()):
        obj["type"] = draw(st.sampled_from(_EVENT_TYPES) | _json)
    if draw(st.booleans()):
        obj["state"] = draw(st.sampled_from(["online", "offline"]) | _json)
    for f in draw(st.lists(st.sampled_from(_KNOWN), max_size=3)):
        obj[f] = draw(st.floats(-1e20, 1e20) | st.integers(-10, 2**64) | st.booleans() | _json)
    return obj


_numbers = st.sampled_from(_EDGE_INTS) | st.integers() | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def _plausible(draw: st.DrawFn, device: DeviceInfo, kind: str) -> dict[str, Any]:
    """An object that is valid for the device type and channel but for the values drawn (edge integers, huge
    floats, one stray field): what reaches the store unless decode checks every bound."""
    obj: dict[str, Any] = {}
    if kind == "telemetry":
        for name, spec in TELEMETRY_FIELDS[device.device_type].items():
            if draw(st.booleans()):
                obj[name] = draw(st.booleans()) if spec.kind == "bool" else draw(_numbers)
        for name in ("energy_kwh",) if device.device_type == "energy_meter" else ():
            obj.setdefault(name, draw(_numbers))
        if device.device_type == "vehicle":
            obj.setdefault("lat", draw(st.floats(-90, 90)))
            obj.setdefault("lon", draw(st.floats(-180, 180)))
        if device.device_type == "sensor" or draw(st.booleans()):
            obj[draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))] = draw(_numbers)
    elif kind == "event":
        etype = draw(st.sampled_from(sorted(EVENT_TYPES[device.device_type])))
        obj["type"] = etype
        for name, (fkind, _required, allowed) in EVENT_TYPES[device.device_type][etype].items():
            if fkind == "str":
                obj[name] = draw(st.sampled_from(allowed)) if allowed else draw(st.text(max_size=5))
            elif fkind == "bool":
                obj[name] = draw(st.booleans())
            else:
                obj[name] = draw(_numbers)
        if draw(st.booleans()):
            obj[draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))] = draw(_numbers | st.text(max_size=3))
    else:
        obj["state"] = draw(st.sampled_from(["online", "offline"]))
    if draw(st.booleans()):
        obj["seq"] = draw(st.integers(0, 6) | st.sampled_from(_EDGE_INTS))
    if draw(st.booleans()):
        obj["ts"] = NOW_MS - draw(st.integers(0, 20_000))
    return obj


@st.composite
def _message(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    device = draw(st.sampled_from(DEVICE_IDS))
    kind = draw(st.sampled_from(["telemetry", "event", "status", "cmd"]))
    shape = draw(st.sampled_from(["plausible"] * 3 + ["object", "array", "array", "value", "bytes"]))
    info = DEVICES.get(device)
    if shape == "plausible" and info is not None and kind != "cmd":
        one = _plausible(info, kind)
        doc = draw(one) if kind == "status" or draw(st.booleans()) else draw(st.lists(one, min_size=1, max_size=4))
        payload = json.dumps(doc).encode()
    elif shape in ("object", "plausible"):
        payload = json.dumps(draw(_object())).encode()
    elif shape == "array":
        payload = json.dumps(draw(st.lists(_object() | _json, max_size=6))).encode()
    elif shape == "value":
        payload = json.dumps(draw(_json)).encode()
    else:
        payload = draw(st.binary(max_size=20) | st.sampled_from([b'{"energy_kwh": NaN}', b'{"seq": 1e999}']))
    return f"lf/v1/{device}/{kind}", payload, draw(st.sampled_from([False] * 5 + [True]))  # retained: 1 in 6


def _units(msg: RawMessage, devices: Mapping[str, DeviceInfo]) -> int:
    """How many outcomes a message has: one per object of a decodable array, else one."""
    try:
        device_id, kind = parse_topic(msg.topic)
        doc = load_json(msg.payload)
    except InvalidMessage:
        return 1
    device = devices.get(device_id)
    if device is None or not device.enabled or (msg.retain and kind != "status"):
        return 1
    if isinstance(doc, list) and kind != "status" and 0 < len(doc) <= 500:
        return len(doc)
    return 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_message(), min_size=1, max_size=12))
def test_every_message_ends_stored_duplicate_or_rejected_and_the_writer_goes_on(
    messages: list[tuple[str, bytes, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = FaultyStore(Path(tmp) / "t.db", background_checkpoint=False)
        try:
            seqs = SeqTracker()
            msgs = [_raw(i, topic, payload, retain) for i, (topic, payload, retain) in enumerate(messages)]
            batch = build_batch(msgs, DEVICES, seqs)
            written = _writer(store, seqs).write(msgs, DEVICES, batch)

            # Exactly one outcome per message (per object of an array): stored, duplicate or rejected.
            isolated = {r.received_ms for r in written.rejections if r.reason == "internal_error"}
            for rej in written.rejections:
                assert rej.reason and rej.detail, rej
            for ms in isolated:
                (msg,) = [m for m in msgs if m.received_ms == ms]
                assert b"boom" in msg.payload, f"a real write failure: {msg}"  # decode lets nothing unwritable by
            expected = sum(1 if m.received_ms in isolated else _units(m, DEVICES) for m in msgs)
            stored = len(written.readings) + len(written.events) + len(written.statuses)
            dups = sum(c.duplicates for c in written.counters.values())
            assert stored + dups + len(written.rejections) == expected

            # What is stored is within PROTOCOL.md v1.1's bounds.
            for rec in [*written.readings, *written.events]:
                assert rec.seq is None or 0 <= rec.seq < 2**63
                values = rec.fields.values() if isinstance(rec, Reading) else rec.data.values()
                for v in values:
                    assert (
                        isinstance(v, bool | str)
                        or (isinstance(v, float) and math.isfinite(v))
                        or (isinstance(v, int) and -(2**63) <= v < 2**63)
                    ), (rec, v)

            # The store holds what was written.
            with sqlite3.connect(store.path) as conn:
                n_tel = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
                n_ev = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                n_rej = conn.execute("SELECT count(*) FROM rejections").fetchone()[0]
            assert n_tel == len({(r.device_id, r.ts_ms) for r in written.readings})
            assert n_ev == len({(e.device_id, e.ts_ms, e.type) for e in written.events})
            assert n_rej == len(written.rejections)
            assert seqs.staged_count() == 0

            # The writer goes on.
            nxt = [_raw(100, "lf/v1/meter-0001/telemetry", b'{"energy_kwh": 1, "ts": 1779999999999}')]
            _writer(store, seqs).write(nxt, DEVICES, build_batch(nxt, DEVICES, seqs))
            assert store.raw("meter-0001", "energy_kwh", 1779999999999, 1780000000000, 5) == [(1779999999999, 1.0)]
        finally:
            store.close()


# --- through a real Mosquitto ---------------------------------------------------------------------------------


def _publish_all(client: mqtt.Client, items: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(10)


def _burst(now: int, poison_seq: int) -> list[tuple[str, bytes]]:
    """40 good readings of three devices around one reading of gate-0001 with ``poison_seq``."""
    items: list[tuple[str, bytes]] = []
    for i in range(40):
        device = ("meter-0001", "meter-0002", "car-0001")[i % 3]
        doc: dict[str, Any] = {"ts": now - 20_000 + i, "seq": 1000 + i}
        doc.update({"lat": 23.1, "lon": 113.3} if device == "car-0001" else {"energy_kwh": float(i)})
        items.append((f"lf/v1/{device}/telemetry", json.dumps(doc).encode()))
        if i == 20:
            poison = {"ts": now - 20_000 + i, "seq": poison_seq, "occupancy": 3}
            items.append(("lf/v1/gate-0001/telemetry", json.dumps(poison).encode()))
    return items


def _stored(store: SqliteStore) -> int:
    return sum(store.count_readings(d) for d in ("meter-0001", "meter-0002", "car-0001"))


def test_seq_beyond_2_63_is_rejected_schema_and_other_devices_are_stored(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password)
    try:
        now = time.time_ns() // 1_000_000
        for poison_seq in (2**63, 2**63 + 12345, 2**64 - 1):
            _publish_all(sim, _burst(now, poison_seq))
            now += 100
        wait_until(lambda: svc.stats.acked >= 123, 10, what="every message acked")
        assert _stored(store) == 120  # every good message of the three bursts
        rejected = store.rejections("gate-0001", None, 10)
        assert sorted(r.reason for r in rejected) == ["schema"] * 3
        assert all(r.detail.startswith("$.seq:") for r in rejected)
        assert svc.status()["stalled"] is False and svc.stats.received == svc.stats.acked == 123
    finally:
        sim.loop_stop()
        sim.disconnect()


def _unchecked_seq_decoder() -> Callable[[str, bytes, DeviceInfo, int], tuple[list[Record], list[tuple[str, str]]]]:
    """The bug class the deeper fix is for: a decoder that lets a seq the store cannot hold through."""

    def unchecked(
        kind: str, payload: bytes, device: DeviceInfo, now_ms: int
    ) -> tuple[list[Record], list[tuple[str, str]]]:
        doc = orjson.loads(payload)
        seq = doc.pop("seq", None) if isinstance(doc, dict) else None
        records, errors = decode(kind, orjson.dumps(doc), device, now_ms)
        for rec in records:
            if isinstance(rec, Reading) and isinstance(seq, int):
                rec.seq = seq
        return records, errors

    return unchecked


def test_an_unwritable_value_is_isolated_the_rest_acked_and_its_seq_not_learnt(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore, sqlite_registry: Registry
) -> None:
    svc = make_ingest(decode=_unchecked_seq_decoder())
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password)
    try:
        now = time.time_ns() // 1_000_000
        burst = _burst(now, 2**63 + 1)
        _publish_all(sim, burst)
        wait_until(lambda: svc.stats.acked >= 41, 10, what="the burst acked")
        assert _stored(store) == 40
        (rej,) = store.rejections("gate-0001", None, 10)
        assert rej.reason == "internal_error" and "OverflowError" in rej.detail
        assert svc.stats.isolated == 1 and svc.status()["stalled"] is False
        assert svc.stats.received == svc.stats.acked == 41 and svc.seqs.staged_count() == 0
        # The writer goes on: later messages are stored, the same poison again is isolated again (its seq was
        # never learnt), and a good message with a seq that was stored is a duplicate.
        later = [
            ("lf/v1/meter-0001/telemetry", json.dumps({"ts": now - 5000, "seq": 2000, "energy_kwh": 1}).encode()),
            burst[21],  # gate-0001's poison
            burst[0],  # meter-0001 seq 1000 again
        ]
        _publish_all(sim, later)
        wait_until(lambda: svc.stats.acked >= 44, 10, what="later messages acked")
        assert store.count_readings("meter-0001") == 15
        assert [r.reason for r in store.rejections("gate-0001", None, 10)] == ["internal_error"] * 2
        assert svc.stats.duplicates == 1
    finally:
        sim.loop_stop()
        sim.disconnect()
