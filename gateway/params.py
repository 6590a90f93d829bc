"""Parameters shared by the routes: bounded types for every path, query and body value, times, buckets, and
clear 422 errors. Pure: the caller passes ``now``.

Every value the API accepts is bounded in its schema, so a fuzzer (or a careless script) gets a 422 that names
the parameter instead of a 500 from SQLite's 64-bit integers or Python's date range:

* times: ``Instant`` (bodies) is an ISO 8601 time **with** a UTC offset (any offset, ``Z`` or ``+08:00`` or
  ``-23:59``) between ``MIN_INSTANT`` and ``MAX_INSTANT``, turned into UTC at once; query times (``start``,
  ``end``) are such a time or epoch milliseconds in the same range (``parse_time``). A time without an offset is
  a 422: the server never guesses a time zone.
* numbers: ``Limit`` and ``Offset`` for every list, ``ObjectId`` for integer ids in paths (at most 2^53 - 1, what
  a browser's JavaScript holds exactly).
* names: region, device, rule and field ids carry the registry's patterns and lengths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, status
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from alerts.rules import RULE_ID_RE
from core.protocol import DEVICE_ID_RE, FIELD_RE
from devices.registry import REGION_ID_RE

DAY_MS = 86_400_000

# Times the API accepts: years 2000 to 9998 (UTC), so that any offset of up to +-24 h stays inside Python's range
# and every instant fits SQLite's and PostgreSQL's columns.
MIN_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)  # exclusive
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MIN_MS = (MIN_INSTANT - EPOCH) // _MS
MAX_MS = (MAX_INSTANT - EPOCH) // _MS

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_ID = 2**53 - 1
MAX_BUCKET_MS = 366 * DAY_MS

_BUCKET_RE = re.compile(r"^(\d{1,12})(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EPOCH_MS_RE = re.compile(r"-?\d{1,20}")


# --- errors --------------------------------------------------------------------------------------------------


class ErrorItem(BaseModel):
    """One problem of a 422: where (``["query", "start"]``, ``["body", "ends_at"]``), what, and its kind."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error the API answers: ``detail`` is a sentence, or (422) a list of problems with their location.
    The HTTP ingress adds a machine-readable ``reason`` (``not_json``, ``too_large``, ``schema``, ...)."""

    model_config = ConfigDict(extra="allow")

    detail: str | list[ErrorItem]
    reason: str | None = None


_DESCRIPTIONS = {
    400: "the body cannot be parsed (not UTF-8, or for the HTTP ingress not JSON)",
    401: "missing or invalid API token",
    403: "the caller's role or region scope does not allow this",
    404: "no such object, or outside the caller's region scope",
    409: "conflicts with the object's state",
    413: "body too large",
    422: "a parameter or the body is invalid; detail names each problem's location",
    429: "too many open live streams (per token or per server)",
    503: "a dependency (store, alert service, broker) is unavailable; retry later",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router or route: each status with its description and the one error body."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def bad_param(name: str, msg: str, where: str = "query") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": [where, name], "msg": msg, "type": "value_error"}],
    )


# --- times ---------------------------------------------------------------------------------------------------


def to_instant(value: datetime) -> datetime:
    """An aware datetime as UTC, inside [MIN_INSTANT, MAX_INSTANT); ValueError otherwise."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a time needs a UTC offset, e.g. 2026-11-26T08:00:00+08:00")
    try:
        utc = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is out of range") from exc
    if not MIN_INSTANT <= utc < MAX_INSTANT:
        raise ValueError(
            f"{value.isoformat()} is out of range: times must lie between {MIN_INSTANT.year} and"
            f" {MAX_INSTANT.year - 1} (UTC)"
        )
    return utc


Instant = Annotated[
    AwareDatetime,
    AfterValidator(to_instant),
    Field(description="ISO 8601 with a UTC offset (Z, +08:00, ...), years 2000 to 9998; answered in UTC (Z)"),
]


def parse_time(value: str, name: str) -> int:
    """Epoch milliseconds (digits) or ISO 8601 with a UTC offset (``Z`` or ``+08:00``) -> epoch ms, inside
    [MIN_INSTANT, MAX_INSTANT)."""
    text = value.strip()
    if _EPOCH_MS_RE.fullmatch(text):
        ms = int(text)
        if not MIN_MS <= ms < MAX_MS:
            raise bad_param(name, f"{value!r} is out of range: epoch milliseconds from {MIN_MS} to {MAX_MS - 1}")
        return ms
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise bad_param(name, f"{value!r} is neither epoch milliseconds nor an ISO 8601 time") from exc
    if dt.tzinfo is None:
        raise bad_param(name, f"{value!r} has no UTC offset; write e.g. 2026-11-26T08:00:00+08:00")
    try:
        utc = to_instant(dt)
    except ValueError as exc:
        raise bad_param(name, str(exc)) from exc
    return (utc - EPOCH) // _MS  # exact: a float timestamp loses milliseconds after the year 2255


def time_range(start: str | None, end: str | None, *, now_ms: int, default_ms: int, max_days: int) -> tuple[int, int]:
    """[start, end) in epoch ms. Defaults: end = now, start = end - default_ms. At most ``max_days`` long."""
    end_ms = now_ms if end is None else parse_time(end, "end")
    start_ms = end_ms - min(default_ms, max_days * DAY_MS) if start is None else parse_time(start, "start")
    if start_ms >= end_ms:
        raise bad_param("start", "start must be before end")
    if end_ms - start_ms > max_days * DAY_MS:
        raise bad_param("start", f"the range is longer than the limit of {max_days} days (api.max_range_days)")
    return start_ms, end_ms


def parse_bucket(value: str) -> int:
    """``30s``, ``5m``, ``1h``, ``1d``, ``500ms`` or plain seconds -> milliseconds (1 s to 366 d)."""
    m = _BUCKET_RE.match(value.strip())
    if m is None:
        raise bad_param("bucket", f"{value!r} is not a duration like 30s, 5m, 1h or 1d")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    if ms < 1000:
        raise bad_param("bucket", "bucket must be at least 1s")
    if ms > MAX_BUCKET_MS:
        raise bad_param("bucket", "bucket must be at most 366d")
    return ms


def iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    try:
        at = EPOCH + timedelta(milliseconds=ts_ms)
    except OverflowError:  # a stored value outside Python's range: shown as epoch ms only
        return None
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_at(at: datetime | None) -> str | None:
    """A datetime as ISO 8601 in UTC with ``Z``; naive ones (SQLite) were written in UTC."""
    if at is None:
        return None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- numbers -------------------------------------------------------------------------------------------------


def finite_json(value: Any, path: str = "") -> Any:
    """``value`` unchanged if every number in it is finite; ValueError naming the path otherwise (JSON bodies
    may carry ``Infinity``, ``NaN`` or ``1e999``, which Python's parser turns into non-finite floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'}: {value} is not a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            finite_json(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for i, v in enumerate(value):
            finite_json(v, f"{path}[{i}]")
    return value


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, at most {MAX_LIMIT}")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
ObjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="integer id")]
# Why a person does something: required (not blank) where the action must be explained, written to the audit log.
REASON_MAX = 2000
Reason = Annotated[str, Field(min_length=1, max_length=REASON_MAX, pattern=r"\S", description="why (audited)")]
ReasonQuery = Annotated[
    str, Query(min_length=1, max_length=REASON_MAX, pattern=r"\S", description="why (required, audited)")
]

# --- names ---------------------------------------------------------------------------------------------------

REGION_PATTERN = REGION_ID_RE.pattern
DEVICE_PATTERN = DEVICE_ID_RE.pattern
RULE_PATTERN = RULE_ID_RE
FIELD_PATTERN = FIELD_RE.pattern

RegionPath = Annotated[str, Path(max_length=64, pattern=REGION_PATTERN, description="region id")]
DevicePath = Annotated[str, Path(max_length=64, pattern=DEVICE_PATTERN, description="device id")]
RulePath = Annotated[str, Path(max_length=64, pattern=RULE_PATTERN, description="rule id, e.g. G1")]
RuleOrAllPath = Annotated[
    str, Path(max_length=64, pattern=rf"^\*$|{RULE_PATTERN}", description="rule id, or * for every rule")
]
RegionQuery = Annotated[
    str | None, Query(max_length=64, pattern=REGION_PATTERN, description="region id: its whole subtree")
]
DeviceQuery = Annotated[str | None, Query(max_length=64, pattern=DEVICE_PATTERN, description="device id")]
RuleQuery = Annotated[str | None, Query(max_length=64, pattern=RULE_PATTERN, description="rule id, e.g. G1")]
TimeQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO 8601 with a UTC offset, or epoch milliseconds; years 2000 to 9998",
    ),
]
BucketQuery = Annotated[
    str | None,
    Query(max_length=16, description="aggregate per bucket: 500ms, 30s, 5m, 1h, 1d (1 s to 366 d)"),
]
