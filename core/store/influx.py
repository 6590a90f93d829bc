"""InfluxDB telemetry store: telemetry and events in InfluxDB, device state and rejections in the SQL database.

Writes go through influxdb-client's synchronous write API to ``/api/v2/write`` (InfluxDB 2, InfluxDB 3, and
anything that speaks it, such as VictoriaMetrics): the line protocol of a batch is built once, here
(:func:`batch_lines`), sent gzip-compressed in chunks of ``chunk_lines`` lines, and ``write`` returns only when
every chunk was confirmed (204), so ingest acks only what the store holds. 429 and 503 are retried in place,
honouring ``Retry-After``, up to ``max_attempts``; an unreachable server, a timeout, an authentication failure, a
missing bucket or a 5xx is ``StoreUnavailable`` (ingest holds its messages unacked and retries with backoff). A
400 (a point the server refuses, "partial write", a field type conflict) or a 413 is :class:`PointRejected`, which
is not retryable: ingest's writer splits the batch to isolate the message and rejects it with the reason.

Reads use InfluxQL on ``/query`` (``core.store.influxql``), never Flux. The schema (docs/influxdb.md):

- measurement = device type (``gate``, ``vehicle``, ``energy_meter``, ``sensor``), one point per reading;
- measurement ``events``, one point per event, the event type a tag, its data one JSON string field ``data``;
- tags ``device_id``, ``region``, ``region_path``, ``device_type`` (and ``type`` on events);
- every point has the integer field ``seq`` (-1 when the message had none), so ``count(seq)`` counts points;
- a device field whose name is a reserved name (a tag key, ``seq``, ``data``, ``time``) or starts with ``f_`` is
  stored as ``f_<name>`` (:func:`stored_field`), so tag and field names never collide (InfluxDB 3 refuses that);
- numbers are written as floats (a field keeps one type; the SQLite store reads them as floats too), booleans as
  booleans.

Statuses, per-device counters and rejections are kept in the side store, :class:`~core.store.side.SqlSideStore`:
two tables of Lianfang's SQL database (``database_url``; PostgreSQL in production, shared by every ingest process),
written after InfluxDB confirmed the points, in one transaction: a retried batch rewrites its points (idempotent on
series + time) and counts its messages once. With ``store.side_flush_interval_s`` > 0 the counters and last-seen
times are added up in memory and flushed on an interval instead (core/store/side.py, "Aggregated mode"); ``close``
flushes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import orjson
import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from core.errors import LianfangError, StoreUnavailable
from core.protocol import DEVICE_TYPES, Event, Reading, Rejection
from core.store import Agg, Bucket, DeviceState, StoredEvent, WriteBatch
from core.store.influxql import InfluxQL, Series, ident, literal
from core.store.side import SqlSideStore

logger = logging.getLogger(__name__)

EVENTS = "events"
TAG_KEYS: tuple[str, ...] = ("device_id", "region", "region_path", "device_type")
RESERVED: frozenset[str] = frozenset({*TAG_KEYS, "type", "seq", "data", "time"})
FIELD_ESCAPE = "f_"
TELEMETRY_MEASUREMENTS: tuple[str, ...] = DEVICE_TYPES
CHUNK_LINES = 5000
MAX_RETRY_AFTER_S = 30.0
IDS_PER_QUERY = 200

_INFLUXQL_AGG = {"mean": "mean", "min": "min", "max": "max", "sum": "sum", "count": "count", "last": "last"}


class PointRejected(LianfangError):
    """InfluxDB refused a point of the batch (HTTP 400 partial write, bad line, field type conflict; or 413).

    Not retryable as it is: ingest's writer splits the batch to find the message and rejects it with this text."""


# --- line protocol ------------------------------------------------------------------------------------------


def stored_field(name: str) -> str:
    """The InfluxDB field key of a device field: reserved names and names starting with ``f_`` get ``f_``."""
    if name in RESERVED or name.startswith(FIELD_ESCAPE):
        return FIELD_ESCAPE + name
    return name


def device_field(key: str) -> str:
    """The inverse of :func:`stored_field`."""
    return key[len(FIELD_ESCAPE) :] if key.startswith(FIELD_ESCAPE) else key


_MEASUREMENT_ESC = str.maketrans({",": "\\,", " ": "\\ ", "\n": "\\n", "\\": "\\\\"})
_KEY_ESC = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\\": "\\\\"})


def _key(s: str) -> str:
    return s.translate(_KEY_ESC)


def _str_field(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tags(device_id: str, region_id: str, region_path: str, device_type: str) -> str:
    parts = [f"device_id={_key(device_id)}", f"device_type={_key(device_type)}", f"region={_key(region_id)}"]
    if region_path:
        parts.append(f"region_path={_key(region_path)}")
    return ",".join(parts)  # sorted by key, as InfluxDB prefers


# Escaped prefixes ("measurement,tags ") per (device, region, path, type) and field keys per name: a batch is
# mostly devices and fields seen before. Bounded: cleared when full.
_CACHE_MAX = 200_000
_prefixes: dict[tuple[str, str, str, str], str] = {}
_field_keys: dict[str, str] = {}


def _prefix(measurement: str, device_id: str, region_id: str, region_path: str, device_type: str) -> str:
    k = (device_id, region_id, region_path, device_type)
    p = _prefixes.get(k)
    if p is None:
        if len(_prefixes) >= _CACHE_MAX:
            _prefixes.clear()
        p = _prefixes[k] = (
            f"{measurement.translate(_MEASUREMENT_ESC)},{_tags(device_id, region_id, region_path, device_type)} "
        )
    return p


def _field_key(name: str) -> str:
    k = _field_keys.get(name)
    if k is None:
        if len(_field_keys) >= _CACHE_MAX:
            _field_keys.clear()
        k = _field_keys[name] = _key(stored_field(name))
    return k


def reading_line(r: Reading, region_path: str = "") -> str:
    measurement = r.device_type if r.device_type in TELEMETRY_MEASUREMENTS else "sensor"
    fk = _field_key
    fields = ",".join(
        [f"{fk(k)}={'true' if v is True else 'false' if v is False else repr(float(v))}" for k, v in r.fields.items()]
    )
    seq = -1 if r.seq is None else r.seq
    head = _prefix(measurement, r.device_id, r.region_id, region_path, r.device_type)
    return f"{head}{fields},seq={seq}i {r.ts_ms}" if fields else f"{head}seq={seq}i {r.ts_ms}"


def event_line(e: Event, region_path: str = "") -> str:
    tags = _tags(e.device_id, e.region_id, region_path, e.device_type) + f",type={_key(e.type)}"
    data = _str_field(orjson.dumps(e.data).decode())
    return f"{EVENTS},{tags} data={data},seq={-1 if e.seq is None else e.seq}i {e.ts_ms}"


def batch_lines(
    readings: Iterable[Reading], events: Iterable[Event], region_path: Callable[[str], str] = lambda _r: ""
) -> list[str]:
    """The line protocol of a batch's telemetry and events, one line per point (timestamps in ms)."""
    lines = [reading_line(r, region_path(r.region_id)) for r in readings]
    lines.extend(event_line(e, region_path(e.region_id)) for e in events)
    return lines


# --- the store ----------------------------------------------------------------------------------------------


def _retry_after(exc: ApiException, default: float) -> float:
    headers: Any = exc.headers or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER_S) if raw is not None else default
    except ValueError:
        return default


class InfluxStore:
    """The TelemetryStore port on InfluxDB (see the module docstring for the schema and the error mapping)."""

    def __init__(
        self,
        url: str,
        *,
        org: str,
        bucket: str,
        token: str,
        database: str,
        side: SqlSideStore,
        query_url: str | None = None,
        region_paths: Callable[[], Mapping[str, str]] | None = None,
        chunk_lines: int = CHUNK_LINES,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self.database = database
        self.chunk_lines = chunk_lines
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._region_paths = region_paths
        self._paths: Mapping[str, str] = {}
        self._paths_at = float("-inf")
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000), enable_gzip=True)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self.ql = InfluxQL(query_url or url, database, token=token or None, timeout_s=timeout_s)
        self.side = side

    # --- write ------------------------------------------------------------------------------------------

    def region_path(self, region_id: str) -> str:
        """The materialised path of a region (the tag region_path), from the registry, refreshed every 30 s."""
        if self._region_paths is None:
            return ""
        now = time.monotonic()
        if now - self._paths_at > 30.0:
            try:
                self._paths = self._region_paths()
            except Exception:  # the registry being down must not stop telemetry; keep the last known paths
                logger.warning("influx store: region paths could not be refreshed", exc_info=True)
            self._paths_at = now
        return self._paths.get(region_id, "")

    def write(self, batch: WriteBatch) -> None:
        lines = batch_lines(batch.readings, batch.events, self.region_path)
        for i in range(0, len(lines), self.chunk_lines):
            self._post("\n".join(lines[i : i + self.chunk_lines]).encode())
        self.side.write(batch)  # its statuses, counters and rejections (nothing when it has none)

    def write_lines(self, lines: list[str]) -> None:
        """Write ready line protocol (``lianfang store migrate``), in chunks, with the same error mapping."""
        for i in range(0, len(lines), self.chunk_lines):
            self._post("\n".join(lines[i : i + self.chunk_lines]).encode())

    def _post(self, body: bytes) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                self._write_api.write(
                    bucket=self.bucket,
                    org=self.org,
                    record=body,
                    write_precision=cast(WritePrecision, WritePrecision.MS),
                )
                return
            except ApiException as exc:
                status = int(exc.status or 0)
                text = (exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body))[:500]
                if status in (400, 413, 422):
                    raise PointRejected(f"InfluxDB refused the write (HTTP {status}): {text}") from exc
                if status in (429, 503) and attempt < self.max_attempts:
                    wait = _retry_after(exc, delay)
                    logger.info("influx store: HTTP %d, retrying in %.1f s", status, wait)
                    self._sleep(wait)
                    delay *= 2
                    continue
                raise StoreUnavailable(f"InfluxDB write failed: HTTP {status}: {text}") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise StoreUnavailable(f"InfluxDB unreachable at {self.url}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- read -------------------------------------------------------------------------------------------

    def _from_telemetry(self) -> str:
        return ",".join(ident(m) for m in TELEMETRY_MEASUREMENTS)

    @staticmethod
    def _where(device_id: str, start_ms: int, end_ms: int) -> str:
        return f"{ident('device_id')} = {literal(device_id)} AND time >= {start_ms}ms AND time < {end_ms}ms"

    def raw(self, device_id: str, fld: str, start_ms: int, end_ms: int, limit: int) -> list[tuple[int, float]]:
        f = ident(stored_field(fld))
        q = f"SELECT {f} FROM {self._from_telemetry()} WHERE {self._where(device_id, start_ms, end_ms)} LIMIT {limit}"
        out = [(int(v[0]), float(v[1])) for s in self.ql.query(q) for v in s.values if v[1] is not None]
        out.sort()
        return out[:limit]

    def aggregate(
        self, device_id: str, fld: str, start_ms: int, end_ms: int, bucket_ms: int, agg: Agg, limit: int
    ) -> list[Bucket]:
        f = ident(stored_field(fld))
        q = (
            f"SELECT {_INFLUXQL_AGG[agg]}({f}), count({f}) FROM {self._from_telemetry()} "
            f"WHERE {self._where(device_id, start_ms, end_ms)} GROUP BY time({bucket_ms}ms) fill(none) LIMIT {limit}"
        )
        out: list[Bucket] = []
        for s in self.ql.query(q):
            for ts, value, n in s.values:
                if not n:
                    continue
                out.append(Bucket(int(ts), None if value is None else float(value), int(n)))
        out.sort(key=lambda b: b.ts_ms)
        return out[:limit]

    def last_values(self, device_id: str) -> dict[str, tuple[int, float | bool]]:
        q = (
            f"SELECT * FROM {self._from_telemetry()} WHERE {ident('device_id')} = {literal(device_id)} "
            f"ORDER BY time DESC LIMIT 200"
        )
        rows = [row for s in self.ql.query(q) for row in s.rows()]
        rows.sort(key=lambda r: -int(r["time"]))
        skip = {"time", "seq", *TAG_KEYS}
        out: dict[str, tuple[int, float | bool]] = {}
        for row in rows:  # newest first: the first time a field appears is its last value
            for key, value in row.items():
                if key in skip or value is None or isinstance(value, str):
                    continue
                out.setdefault(device_field(key), (int(row["time"]), value))
        return out

    def device_states(self, device_ids: list[str] | None = None) -> dict[str, DeviceState]:
        return self.side.device_states(device_ids)

    def events(
        self, device_ids: list[str] | None, start_ms: int, end_ms: int, types: list[str] | None, limit: int
    ) -> list[StoredEvent]:
        if device_ids is not None and not device_ids:
            return []
        base = f"time >= {start_ms}ms AND time < {end_ms}ms"
        if types:
            base += " AND (" + " OR ".join(f"{ident('type')} = {literal(t)}" for t in types) + ")"
        groups: list[list[str] | None] = [None]
        if device_ids is not None:
            groups = [device_ids[i : i + IDS_PER_QUERY] for i in range(0, len(device_ids), IDS_PER_QUERY)]
        out: list[StoredEvent] = []
        for ids in groups:
            where = base
            if ids is not None:
                where += " AND (" + " OR ".join(f"{ident('device_id')} = {literal(d)}" for d in ids) + ")"
            q = f"SELECT * FROM {ident(EVENTS)} WHERE {where} ORDER BY time DESC LIMIT {limit}"
            out.extend(_event(row) for s in self.ql.query(q) for row in s.rows())
        out.sort(key=lambda e: -e.ts_ms)
        return out[:limit]

    def rejections(self, device_id: str | None, reason: str | None, limit: int) -> list[Rejection]:
        return self.side.rejections(device_id, reason, limit)

    def rejection_counts(self) -> dict[tuple[str, str], int]:
        return self.side.rejection_counts()

    def recent_seqs(self, max_rows: int) -> list[tuple[str, int, int]]:
        q = (
            f"SELECT {ident('seq')}, {ident('device_id')} FROM {self._from_telemetry()},{ident(EVENTS)} "
            f"WHERE {ident('seq')} >= 0 ORDER BY time DESC LIMIT {max_rows}"
        )
        out = [(str(d), int(seq), int(ts)) for s in self.ql.query(q) for ts, seq, d in s.values if seq is not None]
        out.sort(key=lambda x: -x[2])
        return out[: 2 * max_rows]

    def count_readings(self, device_id: str | None = None) -> int:
        where = "" if device_id is None else f" WHERE {ident('device_id')} = {literal(device_id)}"
        q = f"SELECT count({ident('seq')}) FROM {self._from_telemetry()}{where}"
        return sum(int(v[1]) for s in self.ql.query(q) for v in s.values if v[1] is not None)

    def counts_by_device(self) -> dict[str, int]:
        """Telemetry points per device (``lianfang store migrate`` verifies against the SQLite store with it)."""
        q = f"SELECT count({ident('seq')}) FROM {self._from_telemetry()} GROUP BY {ident('device_id')}"
        out: dict[str, int] = {}
        for s in self.ql.query(q):
            dev = s.tags.get("device_id", "")
            out[dev] = out.get(dev, 0) + sum(int(v[1]) for v in s.values if v[1] is not None)
        return out

    def prune(self, older_than_ms: int) -> int:
        """Only the side store's rejections: InfluxDB expires points by the bucket's retention (docs/influxdb.md)."""
        return self.side.prune(older_than_ms)

    def ping(self) -> bool:
        return self.ql.ping() and self.side.ping()

    def health_note(self) -> str | None:
        """The side store's aggregated mode: a note while its flushes have failed for over two intervals."""
        return self.side.health_note()

    def close(self) -> None:
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]
        self.ql.close()
        self.side.close()


def _event(row: dict[str, Any]) -> StoredEvent:
    seq = row.get("seq")
    data_raw = row.get("data")
    data = orjson.loads(data_raw) if isinstance(data_raw, str) and data_raw else {}
    return StoredEvent(
        str(row.get("device_id") or ""),
        str(row.get("region") or ""),
        int(row["time"]),
        str(row.get("type") or ""),
        None if seq is None or int(seq) < 0 else int(seq),
        data if isinstance(data, dict) else {},
    )


def series_rows(series: list[Series]) -> list[dict[str, Any]]:
    return [row for s in series for row in s.rows()]
