from __future__ import annotations

import json

import pytest

from core.errors import InvalidMessage
from core.protocol import DeviceInfo, Event, Reading, Status, decode, parse_topic

NOW = 1_780_000_000_000
METER = DeviceInfo("meter-0001", "energy_meter", "gz-a01-b1")
GATE = DeviceInfo("gate-0001", "gate", "gz-a01-b1")
CAR = DeviceInfo("car-0001", "vehicle", "gz-a01")
SENSOR = DeviceInfo("sensor-0001", "sensor", "gz-a01")


def _decode(kind: str, doc: object, device: DeviceInfo = METER) -> tuple[list, list]:  # type: ignore[type-arg]
    return decode(kind, json.dumps(doc).encode(), device, NOW)


def _reason(kind: str, payload: bytes | object, device: DeviceInfo = METER) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(InvalidMessage) as info:
        decode(kind, raw, device, NOW)
    return info.value.reason


def test_parse_topic_accepts_protocol_topics() -> None:
    assert parse_topic("lf/v1/gate-gz-0001/telemetry") == ("gate-gz-0001", "telemetry")
    assert parse_topic("lf/v1/gate-gz-0001/status") == ("gate-gz-0001", "status")


@pytest.mark.parametrize("topic", ["lf/v2/dev-1/telemetry", "lf/v1/dev-1/cmd", "lf/v1/dev-1", "x/lf/v1/a/b"])
def test_parse_topic_rejects_other_topics(topic: str) -> None:
    with pytest.raises(InvalidMessage):
        parse_topic(topic)


def test_telemetry_decodes_fields_and_defaults_ts_to_now() -> None:
    records, errors = _decode("telemetry", {"energy_kwh": 12.5, "power_kw": 3, "seq": 7})
    assert errors == []
    (r,) = records
    assert isinstance(r, Reading)
    assert r.ts_ms == NOW and r.seq == 7 and r.fields == {"energy_kwh": 12.5, "power_kw": 3.0}
    assert r.region_id == "gz-a01-b1"


def test_telemetry_accepts_rfc3339_with_offset() -> None:
    records, _ = _decode("telemetry", {"energy_kwh": 1, "ts": "2026-05-28T04:26:40+08:00"})
    assert records[0].ts_ms == 1_779_913_600_000


def test_unknown_numeric_and_boolean_fields_are_stored_and_counted() -> None:
    (r,), _ = _decode("telemetry", {"energy_kwh": 1, "frequency_hz": 50.01, "alarm": True})
    assert isinstance(r, Reading)
    assert r.fields["frequency_hz"] == 50.01 and r.fields["alarm"] is True and r.nonstandard == 2


@pytest.mark.parametrize(
    ("doc", "device", "reason"),
    [
        ({"power_kw": 1}, METER, "schema"),  # energy_kwh required
        ({"energy_kwh": "12"}, METER, "schema"),  # wrong type of a known field
        ({"energy_kwh": 1, "power_factor": 1.2}, METER, "schema"),
        ({"energy_kwh": 1, "Bad": 1}, METER, "schema"),
        ({"energy_kwh": 1, "note": "text"}, METER, "schema"),
        ({"energy_kwh": 1, "seq": -1}, METER, "schema"),
        ({"lat": 23.1}, CAR, "schema"),
        ({"lat": 23.1, "lon": 113.2, "speed_kmh": -3}, CAR, "schema"),
        ({"door_open": "yes"}, GATE, "schema"),
        ({"occupancy": 1.5}, GATE, "schema"),
        ({"ok": True}, SENSOR, "schema"),
        ({"energy_kwh": 1, "ts": NOW + 6 * 60_000}, METER, "bad_timestamp"),
        ({"energy_kwh": 1, "ts": NOW - 31 * 86_400_000}, METER, "bad_timestamp"),
        ({"energy_kwh": 1, "ts": "2026-05-28T04:26:40"}, METER, "bad_timestamp"),
        ({"energy_kwh": 1, "ts": 1.5e12}, METER, "bad_timestamp"),
        ({"energy_kwh": 1, "device_id": "meter-0002"}, METER, "forged_identity"),
        ({"energy_kwh": 1, "region": "bj"}, METER, "forged_identity"),
    ],
)
def test_telemetry_rejections(doc: object, device: DeviceInfo, reason: str) -> None:
    assert _reason("telemetry", doc, device) == reason


def test_not_json_not_object_too_large() -> None:
    assert _reason("telemetry", b"{nope") == "not_json"
    assert _reason("telemetry", b"\xff\xfe") == "not_json"
    assert _reason("telemetry", b'"a string"') == "not_object"
    assert _reason("telemetry", b"[]") == "not_object"
    assert _reason("telemetry", b"{" + b" " * 70_000 + b"}") == "too_large"
    assert _reason("telemetry", [{"energy_kwh": 1}] * 501) == "too_large"


def test_nan_and_infinity_are_rejected() -> None:
    assert _reason("telemetry", b'{"energy_kwh": NaN}') == "not_json"  # not JSON per RFC 8259
    assert _reason("telemetry", b'{"energy_kwh": Infinity}') == "not_json"
    assert _reason("telemetry", b'{"energy_kwh": 1e999}') == "schema"


def test_array_rejects_bad_objects_and_keeps_good_ones() -> None:
    records, errors = _decode("telemetry", [{"energy_kwh": 1, "seq": 1}, {"energy_kwh": "x"}, 5, {"energy_kwh": 2}])
    assert [r.fields["energy_kwh"] for r in records if isinstance(r, Reading)] == [1.0, 2.0]
    assert [e[0] for e in errors] == ["schema", "not_object"]
    assert errors[0][1].startswith("$[1].energy_kwh")


def test_events_by_device_type() -> None:
    (e,), _ = _decode("event", {"type": "access", "credential": "c-1", "result": "granted", "direction": "in"}, GATE)
    assert isinstance(e, Event) and e.type == "access" and e.data["credential"] == "c-1"
    assert _reason("event", {"type": "access"}, GATE) == "schema"
    assert _reason("event", {"type": "access", "credential": "c", "result": "maybe"}, GATE) == "schema"
    assert _reason("event", {"type": "ignition_on"}, GATE) == "unknown_event"
    assert _reason("event", {"type": "door_forced"}, METER) == "unknown_event"
    assert _reason("event", {"credential": "c"}, GATE) == "schema"
    (f,), _ = _decode("event", {"type": "fault", "code": "E1", "message": "fan"}, METER)
    assert isinstance(f, Event) and f.type == "fault"


def test_status() -> None:
    (s,), _ = _decode("status", {"state": "offline"}, GATE)
    assert isinstance(s, Status) and s.state == "offline"
    assert _reason("status", {"state": "sleeping"}, GATE) == "schema"
    assert _reason("status", [{"state": "online"}], GATE) == "not_object"


# --- v1.1 bounds: every one is `schema` with the field path, never a write failure ----------------------------


def _detail(kind: str, doc: object, device: DeviceInfo = METER) -> tuple[str, str]:
    with pytest.raises(InvalidMessage) as info:
        decode(kind, json.dumps(doc).encode(), device, NOW)
    return info.value.reason, info.value.detail


@pytest.mark.parametrize("seq", [2**63, 2**63 + 1, 2**64 - 1, 2**64, 10**30, -1, 1.0, True, "7"])
def test_seq_outside_0_to_2_63_is_schema_with_its_path(seq: object) -> None:
    reason, detail = _detail("telemetry", {"energy_kwh": 1, "seq": seq})
    assert reason == "schema" and detail.startswith("$.seq:")


def test_the_largest_valid_seq_is_accepted() -> None:
    (r,), _ = _decode("telemetry", {"energy_kwh": 1, "seq": 2**63 - 1})
    assert r.seq == 2**63 - 1


@pytest.mark.parametrize(
    ("kind", "doc", "device", "path"),
    [
        ("telemetry", {"energy_kwh": 2**63}, METER, "$.energy_kwh"),
        ("telemetry", {"energy_kwh": 1, "extra_count": 2**64 - 1}, METER, "$.extra_count"),
        ("telemetry", {"occupancy": 2**64 - 1}, GATE, "$.occupancy"),
        ("telemetry", {"reading": 2**63}, SENSOR, "$.reading"),
        ("event", {"type": "door_held_open", "duration_s": 2**63}, GATE, "$.duration_s"),
        ("event", {"type": "fault", "code": "E1", "counter": 2**64 - 1}, METER, "$.counter"),
        ("event", {"type": "fault", "nested": {"a": 1}}, METER, "$.nested"),
        ("event", {"type": "fault", "Bad_Name": 1}, METER, "$.Bad_Name"),
    ],
)
def test_integers_must_fit_signed_64_bits_and_fields_be_scalars(
    kind: str, doc: object, device: DeviceInfo, path: str
) -> None:
    reason, detail = _detail(kind, doc, device)
    assert reason == "schema" and detail.startswith(path)


def test_signed_64_bit_limits_themselves_are_accepted() -> None:
    (r,), _ = _decode("telemetry", {"energy_kwh": 1, "big": 2**63 - 1, "small": -(2**63)})
    assert isinstance(r, Reading) and r.fields["big"] == float(2**63 - 1)
    (e,), _ = _decode("event", {"type": "fault", "counter": -(2**63)}, METER)
    assert isinstance(e, Event) and e.data["counter"] == -(2**63)


def test_an_array_element_out_of_bounds_is_rejected_with_its_index() -> None:
    records, errors = _decode("telemetry", [{"energy_kwh": 1, "seq": 1}, {"energy_kwh": 1, "seq": 2**63}])
    assert len(records) == 1
    assert errors == [("schema", "$[1].seq: must be below 2^63")]


@pytest.mark.parametrize(
    ("kind", "raw", "device", "path"),
    [
        ("event", b'{"type": "tamper", "code": 1180591620717411303424}', GATE, "$.code"),  # 2^70, the fault suite's
        ("telemetry", b'{"energy_kwh": 1, "big": -9223372036854775809}', METER, "$.big"),
        ("telemetry", b'{"energy_kwh": 18446744073709551617}', METER, "$.energy_kwh"),
        ("telemetry", b'{"energy_kwh": 1, "seq": 18446744073709551617}', METER, "$.seq"),
    ],
)
def test_integer_literals_beyond_64_bits_are_not_read_as_floats(
    kind: str, raw: bytes, device: DeviceInfo, path: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(kind, raw, device, NOW)
    assert info.value.reason == "schema" and info.value.detail.startswith(path)


def test_long_float_literals_are_still_floats() -> None:
    (r,), _ = decode("telemetry", b'{"energy_kwh": 0.12345678901234567890123, "x": 1.5e300}', METER, NOW)
    assert isinstance(r, Reading) and r.fields["energy_kwh"] == 0.12345678901234568 and r.fields["x"] == 1.5e300
