"""Query parameters shared by the routes: times, buckets, clear 422 errors. Pure: the caller passes ``now``."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import HTTPException, status

_BUCKET_RE = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DAY_MS = 86_400_000


def bad_param(name: str, msg: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["query", name], "msg": msg, "type": "value_error"}],
    )


def parse_time(value: str, name: str) -> int:
    """Epoch milliseconds (digits) or ISO 8601 with a UTC offset (``Z`` or ``+08:00``) -> epoch ms."""
    text = value.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise bad_param(name, f"{value!r} is neither epoch milliseconds nor an ISO 8601 time") from exc
    if dt.tzinfo is None:
        raise bad_param(name, f"{value!r} has no UTC offset; write e.g. 2026-11-26T08:00:00+08:00")
    return int(dt.timestamp() * 1000)


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
    """``30s``, ``5m``, ``1h``, ``1d``, ``500ms`` or plain seconds -> milliseconds (at least 1 s)."""
    m = _BUCKET_RE.match(value.strip())
    if m is None:
        raise bad_param("bucket", f"{value!r} is not a duration like 30s, 5m, 1h or 1d")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    if ms < 1000:
        raise bad_param("bucket", "bucket must be at least 1s")
    return ms


def iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
