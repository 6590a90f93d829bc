"""The telemetry-store port: what ingest and the API need from a time-series store, and nothing more.

Adapters: ``core.store.sqlite`` (embedded, one machine). A batch write is durable when ``write`` returns; only
then does ingest acknowledge the MQTT messages in it. Writes are idempotent on device + time + field (telemetry)
and device + time + type (events), so redelivery is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from core.protocol import Event, Reading, Rejection, Status

Agg = Literal["mean", "min", "max", "sum", "count", "last"]


@dataclass(slots=True)
class DeviceCounters:
    """Per-device counters accumulated over one batch."""

    last_seen_ms: int = 0
    messages: int = 0
    gaps: int = 0
    duplicates: int = 0
    nonstandard: int = 0
    rejected: int = 0


@dataclass(slots=True)
class WriteBatch:
    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    counters: dict[str, DeviceCounters] = field(default_factory=dict)
    # (device, seq, device ts) this batch adds to ingest's duplicate tracker once it is durable (ingest/dedup.py)
    seqs: list[tuple[str, int, int | None]] = field(default_factory=list)

    def counter(self, device_id: str) -> DeviceCounters:
        c = self.counters.get(device_id)
        if c is None:
            c = self.counters[device_id] = DeviceCounters()
        return c

    def __len__(self) -> int:
        return len(self.readings) + len(self.events) + len(self.statuses) + len(self.rejections)

    def extend(self, other: WriteBatch) -> None:
        """Add ``other``'s records, rejections and counters to this batch."""
        self.readings.extend(other.readings)
        self.events.extend(other.events)
        self.statuses.extend(other.statuses)
        self.rejections.extend(other.rejections)
        self.seqs.extend(other.seqs)
        for device_id, c in other.counters.items():
            mine = self.counter(device_id)
            mine.last_seen_ms = max(mine.last_seen_ms, c.last_seen_ms)
            mine.messages += c.messages
            mine.gaps += c.gaps
            mine.duplicates += c.duplicates
            mine.nonstandard += c.nonstandard
            mine.rejected += c.rejected


@dataclass(frozen=True, slots=True)
class Bucket:
    ts_ms: int
    value: float | None
    count: int


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    last_seen_ms: int | None
    status: str | None
    status_ms: int | None
    fw: str | None
    messages: int
    gaps: int
    duplicates: int
    nonstandard: int
    rejected: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    device_id: str
    region_id: str
    ts_ms: int
    type: str
    seq: int | None
    data: dict[str, object]


class TelemetryStore(Protocol):
    def write(self, batch: WriteBatch) -> None:
        """Persist the batch atomically and durably; raise StoreUnavailable if it could not."""

    def raw(self, device_id: str, fld: str, start_ms: int, end_ms: int, limit: int) -> list[tuple[int, float]]:
        """Points of one field in [start, end), oldest first, at most ``limit``."""

    def aggregate(
        self, device_id: str, fld: str, start_ms: int, end_ms: int, bucket_ms: int, agg: Agg, limit: int
    ) -> list[Bucket]:
        """One value per time bucket in [start, end), oldest first, at most ``limit`` buckets."""

    def last_values(self, device_id: str) -> dict[str, tuple[int, float | bool]]:
        """The newest value of each field of a device: field -> (ts_ms, value)."""

    def device_states(self, device_ids: list[str] | None = None) -> dict[str, DeviceState]:
        """Last seen, status and data-quality counters per device."""

    def events(
        self, device_ids: list[str] | None, start_ms: int, end_ms: int, types: list[str] | None, limit: int
    ) -> list[StoredEvent]:
        """Events newest first."""

    def rejections(self, device_id: str | None, reason: str | None, limit: int) -> list[Rejection]:
        """Rejected messages newest first."""

    def rejection_counts(self) -> dict[tuple[str, str], int]:
        """(device_id, reason) -> count."""

    def recent_seqs(self, max_rows: int) -> list[tuple[str, int, int]]:
        """(device_id, seq, ts_ms) of the most recently written messages, to warm duplicate detection."""

    def prune(self, older_than_ms: int) -> int:
        """Delete data older than the retention horizon; returns rows deleted."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


# Called by ingest after a batch is durable (alert engine, live stream). Must be quick and must not raise.
BatchListener = Callable[[WriteBatch], None]
