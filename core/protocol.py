"""Wire protocol v1 (docs/protocol.md): topics, payload validation, decoded message types.

Pure: no I/O, no clock. ``decode`` takes the receive time ``now_ms`` and the registry's view of the device and
returns decoded records plus per-object rejections. Validation is table-driven rather than a pydantic model per
message because it must map every problem to a protocol rejection reason with its field path, judge each object of
a gateway's array on its own and count non-standard fields (docs/adr/0004-table-driven-protocol-validation.md).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from core.errors import InvalidMessage

TOPIC_ROOT = "lf/v1"
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_PAYLOAD = 64 * 1024
MAX_ARRAY = 500
MAX_FUTURE_MS = 5 * 60 * 1000
MAX_AGE_MS = 30 * 24 * 3600 * 1000
RAW_KEEP = 4096
# v1.1 bounds: integers must fit a signed 64-bit integer (what the store keeps), seq is 0 <= seq < 2^63.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# orjson reads an integer literal outside the 64-bit range as a float. Such a float is at least this large, so a
# float that large makes ``decode`` parse the payload again with the standard parser, which keeps integers exact.
_HUGE = 9.2e18
_exact = threading.local()  # .on while decoding that exact parse (then a huge float is a real float literal)


class _MaybeBigInt(Exception):
    """A huge float that may have been an integer literal beyond 64 bits: decode again from an exact parse."""


DeviceType = Literal["gate", "vehicle", "energy_meter", "sensor"]
DEVICE_TYPES: tuple[str, ...] = ("gate", "vehicle", "energy_meter", "sensor")
Kind = Literal["telemetry", "event", "status", "cmd"]
INBOUND_KINDS = ("telemetry", "event", "status")

# Default expected reporting interval per type (seconds); the registry may override per device.
DEFAULT_INTERVAL_S: dict[str, int] = {"gate": 60, "vehicle": 30, "energy_meter": 60, "sensor": 300}


# device attributes the alert engine reads: a vehicle's depot and lot (alerts/kinds_vehicle), a meter's contracted
# capacity (E8, alerts/engine.py demand kind)
RULE_ATTRIBUTES: tuple[str, ...] = ("depot", "lot", "contracted_kw")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the pipeline needs to know about a device, from the registry cache."""

    device_id: str
    device_type: str
    region_id: str
    enabled: bool = True
    expected_interval_s: int = 60
    # The registry attributes rules read (``RULE_ATTRIBUTES``: a vehicle's depot and lot); None when it has none.
    attributes: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(slots=True)
class Reading:
    device_id: str
    region_id: str
    device_type: str
    ts_ms: int
    seq: int | None
    fields: dict[str, float | bool]
    nonstandard: int = 0
    ts_from_device: bool = True


@dataclass(slots=True)
class Event:
    device_id: str
    region_id: str
    device_type: str
    ts_ms: int
    seq: int | None
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    ts_from_device: bool = True


@dataclass(slots=True)
class Status:
    device_id: str
    region_id: str
    ts_ms: int
    state: Literal["online", "offline"]
    fw: str | None = None


Record = Reading | Event | Status


@dataclass(frozen=True, slots=True)
class Rejection:
    device_id: str
    topic: str
    reason: str
    detail: str
    payload: bytes
    received_ms: int


def topic_for(device_id: str, kind: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{kind}"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split ``lf/v1/{device_id}/{kind}``; raises InvalidMessage('schema') for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] not in INBOUND_KINDS:
        raise InvalidMessage("schema", f"topic {topic!r} is not lf/v1/<device_id>/telemetry|event|status")
    if not DEVICE_ID_RE.match(parts[2]):
        raise InvalidMessage("unregistered_device", f"device id {parts[2]!r} is not well formed")
    return parts[2], parts[3]


# --- field tables -------------------------------------------------------------------------------------------

_NUM = "number"
_BOOL = "bool"
_INT = "int"


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: str
    lo: float | None = None
    hi: float | None = None


TELEMETRY_FIELDS: dict[str, dict[str, _Spec]] = {
    "energy_meter": {
        "energy_kwh": _Spec(_NUM, 0),
        "power_kw": _Spec(_NUM),
        "voltage_v": _Spec(_NUM, 0),
        "current_a": _Spec(_NUM),
        "power_factor": _Spec(_NUM, 0, 1),
    },
    "vehicle": {
        "lat": _Spec(_NUM, -90, 90),
        "lon": _Spec(_NUM, -180, 180),
        "speed_kmh": _Spec(_NUM, 0),
        "heading_deg": _Spec(_NUM, 0, 360),
        "ignition": _Spec(_BOOL),
        "odometer_km": _Spec(_NUM, 0),
        "fuel_pct": _Spec(_NUM, 0, 100),
    },
    "gate": {"door_open": _Spec(_BOOL), "occupancy": _Spec(_INT, 0)},
    "sensor": {},
}
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "energy_meter": ("energy_kwh",),
    "vehicle": ("lat", "lon"),
    "gate": (),
    "sensor": (),
}

_STR = "str"
_REQ = True
_OPT = False
# event type -> {field: (kind, required, allowed values)}
_EventFields = dict[str, tuple[str, bool, tuple[str, ...]]]
_COMMON_EVENTS: dict[str, _EventFields] = {
    "fault": {"code": (_STR, _OPT, ()), "message": (_STR, _OPT, ())},
    "cmd_result": {"cmd_id": (_STR, _REQ, ()), "ok": (_BOOL, _REQ, ()), "detail": (_STR, _OPT, ())},
}
EVENT_TYPES: dict[str, dict[str, _EventFields]] = {
    "gate": {
        "access": {
            "credential": (_STR, _REQ, ()),
            "direction": (_STR, _OPT, ("in", "out")),
            "result": (_STR, _OPT, ("granted", "denied")),
            "method": (_STR, _OPT, ("card", "face", "qr", "password", "remote")),
            "person_id": (_STR, _OPT, ()),
        },
        "door_forced": {},
        "door_held_open": {"duration_s": (_NUM, _OPT, ())},
        "door_closed": {},
        "request_to_exit": {},
        "tamper": {},
    },
    "vehicle": {
        "ignition_on": {},
        "ignition_off": {},
        "harsh_brake": {},
        "harsh_accel": {},
        "power_cut": {},
        "driver_login": {"driver_id": (_STR, _REQ, ())},
    },
    "energy_meter": {"power_loss": {}, "power_restore": {}, "reset": {}, "tamper": {}},
    "sensor": {},
}
for _table in EVENT_TYPES.values():
    _table.update(_COMMON_EVENTS)


# --- decoding -----------------------------------------------------------------------------------------------


def parse_ts(value: object, now_ms: int, path: str) -> int:
    """Integer epoch ms or RFC 3339 with offset; within [now-30d, now+5min]."""
    if value is None:
        return now_ms
    if isinstance(value, bool):
        raise InvalidMessage("bad_timestamp", f"{path}: must be epoch milliseconds or RFC 3339")
    if isinstance(value, int):
        ts = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidMessage("bad_timestamp", f"{path}: {value!r} is not RFC 3339") from exc
        if dt.tzinfo is None:
            raise InvalidMessage("bad_timestamp", f"{path}: {value!r} has no UTC offset")
        ts = int(dt.timestamp() * 1000)
    else:
        raise InvalidMessage("bad_timestamp", f"{path}: must be integer epoch milliseconds or RFC 3339")
    if ts > now_ms + MAX_FUTURE_MS:
        raise InvalidMessage("bad_timestamp", f"{path}: more than 5 minutes in the future")
    if ts < now_ms - MAX_AGE_MS:
        raise InvalidMessage("bad_timestamp", f"{path}: more than 30 days old")
    return ts


def _parse_seq(value: object, path: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise InvalidMessage("schema", f"{path}: must be a non-negative integer")
    if value > INT64_MAX:
        raise InvalidMessage("schema", f"{path}: must be below 2^63")
    return value


def _check_value(spec: _Spec, value: object, path: str) -> float | bool:
    kind = spec.kind
    if kind == _BOOL:
        if value is not True and value is not False:
            raise InvalidMessage("schema", f"{path}: must be a boolean")
        return value
    t = type(value)
    if t is float:
        assert isinstance(value, float)
        if (value >= _HUGE or value <= -_HUGE) and not getattr(_exact, "on", False):
            raise _MaybeBigInt(path)
        if kind == _INT:
            raise InvalidMessage("schema", f"{path}: must be an integer")
        if not math.isfinite(value):
            raise InvalidMessage("schema", f"{path}: must be finite")
        number = value
    elif t is int:
        assert isinstance(value, int)
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidMessage("schema", f"{path}: integer does not fit a signed 64-bit integer")
        number = float(value)
    else:
        raise InvalidMessage("schema", f"{path}: must be {'an integer' if kind == _INT else 'a number'}")
    if spec.lo is not None and number < spec.lo:
        raise InvalidMessage("schema", f"{path}: must be >= {spec.lo:g}")
    if spec.hi is not None and number > spec.hi:
        raise InvalidMessage("schema", f"{path}: must be <= {spec.hi:g}")
    return number


_NAMES_OK: set[str] = {"ts", "seq", "type", "state", "fw"}
for _fields in TELEMETRY_FIELDS.values():
    _NAMES_OK.update(_fields)
_NAMES_CACHE_MAX = 10_000


def _name_ok(key: str) -> bool:
    if key in _NAMES_OK:
        return True
    if FIELD_RE.match(key) is None:
        return False
    if len(_NAMES_OK) < _NAMES_CACHE_MAX:
        _NAMES_OK.add(key)
    return True


def _common(obj: Mapping[str, Any], path: str) -> None:
    if "device_id" in obj or "region" in obj:
        raise InvalidMessage("forged_identity", f"{path}: payload must not carry device_id or region")
    for key in obj:
        if not _name_ok(key):
            raise InvalidMessage("schema", f"{path}.{key}: field name must match ^[a-z][a-z0-9_]{{0,63}}$")


_ANY_NUMBER = _Spec(_NUM)
_NON_NEGATIVE = _Spec(_NUM, 0)


def decode_telemetry(obj: Mapping[str, Any], device: DeviceInfo, now_ms: int, path: str) -> Reading:
    _common(obj, path)
    ts = parse_ts(obj.get("ts"), now_ms, f"{path}.ts")
    seq = _parse_seq(obj.get("seq"), f"{path}.seq")
    known = TELEMETRY_FIELDS.get(device.device_type, {})
    fields: dict[str, float | bool] = {}
    nonstandard = 0
    for key, value in obj.items():
        if key == "ts" or key == "seq":
            continue
        spec = known.get(key)
        if spec is not None:
            fields[key] = _check_value(spec, value, f"{path}.{key}")
        elif value is True or value is False:
            fields[key] = value
            nonstandard += 1
        elif type(value) is float or type(value) is int:
            fields[key] = _check_value(_ANY_NUMBER, value, f"{path}.{key}")
            nonstandard += 1
        else:
            raise InvalidMessage("schema", f"{path}.{key}: unknown fields must be numeric or boolean")
    for req in REQUIRED_FIELDS.get(device.device_type, ()):
        if req not in fields:
            raise InvalidMessage("schema", f"{path}.{req}: required for {device.device_type}")
    if device.device_type == "sensor":
        if all(isinstance(v, bool) for v in fields.values()):
            raise InvalidMessage("schema", f"{path}: a sensor reading needs at least one numeric field")
        nonstandard = 0  # a sensor's fields are free-form by definition
    return Reading(device.device_id, device.region_id, device.device_type, ts, seq, fields, nonstandard, "ts" in obj)


def decode_event(obj: Mapping[str, Any], device: DeviceInfo, now_ms: int, path: str) -> Event:
    _common(obj, path)
    etype = obj.get("type")
    if not isinstance(etype, str):
        raise InvalidMessage("schema", f"{path}.type: required string")
    table = EVENT_TYPES.get(device.device_type, {})
    spec = table.get(etype)
    if spec is None:
        raise InvalidMessage("unknown_event", f"{path}.type: {etype!r} is not an event of a {device.device_type}")
    ts = parse_ts(obj.get("ts"), now_ms, f"{path}.ts")
    seq = _parse_seq(obj.get("seq"), f"{path}.seq")
    data: dict[str, Any] = {}
    for key, (kind, required, allowed) in spec.items():
        value = obj.get(key)
        p = f"{path}.{key}"
        if value is None:
            if required:
                raise InvalidMessage("schema", f"{p}: required for {etype}")
            continue
        if kind == _STR and not isinstance(value, str):
            raise InvalidMessage("schema", f"{p}: must be a string")
        if kind == _BOOL and not isinstance(value, bool):
            raise InvalidMessage("schema", f"{p}: must be a boolean")
        if kind == _NUM:
            _check_value(_NON_NEGATIVE, value, p)
        if allowed and value not in allowed:
            raise InvalidMessage("schema", f"{p}: must be one of {', '.join(allowed)}")
        data[key] = value
    for key, value in obj.items():
        if key in ("type", "ts", "seq") or key in spec:
            continue
        t = type(value)
        if t is str or t is bool:
            data[key] = value
        elif t is int or t is float:
            _check_value(_ANY_NUMBER, value, f"{path}.{key}")  # finite, and an integer fits 64 bits
            data[key] = value
        else:
            raise InvalidMessage("schema", f"{path}.{key}: extra event fields must be scalars")
    return Event(device.device_id, device.region_id, device.device_type, ts, seq, etype, data, "ts" in obj)


def decode_status(obj: Mapping[str, Any], device: DeviceInfo, now_ms: int, path: str) -> Status:
    _common(obj, path)
    state = obj.get("state")
    if state not in ("online", "offline"):
        raise InvalidMessage("schema", f"{path}.state: must be 'online' or 'offline'")
    fw = obj.get("fw")
    if fw is not None and not isinstance(fw, str):
        raise InvalidMessage("schema", f"{path}.fw: must be a string")
    ts = parse_ts(obj.get("ts"), now_ms, f"{path}.ts")
    return Status(device.device_id, device.region_id, ts, state, fw)


_Decoder = Callable[[Mapping[str, Any], DeviceInfo, int, str], Record]
_DECODERS: dict[str, _Decoder] = {"telemetry": decode_telemetry, "event": decode_event, "status": decode_status}


def check_device(device_id: str, device: DeviceInfo | None) -> DeviceInfo:
    if device is None:
        raise InvalidMessage("unregistered_device", f"device {device_id!r} is not in the registry")
    if not device.enabled:
        raise InvalidMessage("disabled_device", f"device {device_id!r} is disabled")
    return device


def load_json(payload: bytes) -> Any:
    """Parse a payload; raises InvalidMessage(too_large | not_json | schema)."""
    if len(payload) > MAX_PAYLOAD:
        raise InvalidMessage("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD}")
    try:
        return orjson.loads(payload)  # strict RFC 8259: NaN / Infinity literals and bad UTF-8 are not JSON
    except orjson.JSONDecodeError as exc:
        if "infinity" in str(exc):
            raise InvalidMessage("schema", f"a number is not finite: {exc}") from exc
        raise InvalidMessage("not_json", str(exc)[:200]) from exc


def decode(kind: str, payload: bytes, device: DeviceInfo, now_ms: int) -> tuple[list[Record], list[tuple[str, str]]]:
    """Decode one MQTT message of a known, enabled device.

    Returns the records and a list of ``(reason, detail)`` for objects of an array that were rejected; an error
    of the message as a whole raises InvalidMessage.
    """
    doc = load_json(payload)
    try:
        return _decode_doc(kind, doc, device, now_ms)
    except _MaybeBigInt:
        pass
    # A huge number: parse exactly (the JSON was validated above), so an integer beyond 64 bits stays an int and
    # meets the integer bound, and decode again.
    try:
        exact = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("not_json", str(exc)[:200]) from exc
    _exact.on = True
    try:
        return _decode_doc(kind, exact, device, now_ms)
    finally:
        _exact.on = False


def _decode_doc(kind: str, doc: Any, device: DeviceInfo, now_ms: int) -> tuple[list[Record], list[tuple[str, str]]]:
    """``decode`` of a parsed payload."""
    decoder = _DECODERS[kind]
    if isinstance(doc, dict):
        return [decoder(doc, device, now_ms, "$")], []
    if isinstance(doc, list) and kind != "status":
        if len(doc) > MAX_ARRAY:
            raise InvalidMessage("too_large", f"array of {len(doc)} objects > {MAX_ARRAY}")
        if not doc:
            raise InvalidMessage("not_object", "empty array")
        records: list[Record] = []
        errors: list[tuple[str, str]] = []
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                errors.append(("not_object", f"$[{i}]: must be a JSON object"))
                continue
            try:
                records.append(decoder(item, device, now_ms, f"$[{i}]"))
            except InvalidMessage as exc:
                errors.append((exc.reason, exc.detail))
        return records, errors
    raise InvalidMessage("not_object", "payload must be a JSON object" + ("" if kind == "status" else " or array"))
