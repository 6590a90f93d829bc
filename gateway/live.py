"""Live stream: fan a durable write batch out to the SSE subscribers, each seeing only its own regions.

``Broadcaster.publish`` is a ``core.store.BatchListener``: ingest's writer thread calls it after every durable
batch. It must be quick and must never block or raise, so each subscriber has a bounded queue; when a slow client
falls behind, the oldest message is dropped and counted (the client is told how many it missed). The async side
(``Subscriber.next``) is woken with ``loop.call_soon_threadsafe``, which does not block the writer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from core.store import WriteBatch

logger = logging.getLogger(__name__)

STREAM_SUBSCRIBERS = Gauge("lianfang_stream_subscribers", "Open live-stream (SSE) connections")
STREAM_DROPPED = Counter(
    "lianfang_stream_dropped_total", "Live-stream messages dropped because a subscriber fell behind"
)

# Per batch and subscriber, at most this many items of each kind are sent; the rest is summarised as counts.
MAX_ITEMS = 200
_MAX_DATA_KEYS = 16


Message = dict[str, Any]


class Rendered(dict[str, Any]):
    """A message with its SSE text made once: every subscriber of the same region scope gets the same object, so a
    batch is summarised, scoped and serialised once per scope, not once per open stream."""

    __slots__ = ("text",)

    def __init__(self, message: Message) -> None:
        super().__init__(message)
        self.text = sse("incident" if "incidents" in message else "batch", message)


def sse(event: str, data: Message) -> str:
    """One Server-Sent Event (compact JSON, UTF-8 as is)."""
    return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"


class StreamLimit(Exception):
    """Too many live streams open (for one API user, or for the server); the message says which limit."""


class Subscriber:
    """One SSE connection: a bounded queue filled by the writer thread, drained by the event loop."""

    def __init__(
        self,
        region_ids: frozenset[str] | None,
        loop: asyncio.AbstractEventLoop,
        max_queue: int,
        owner: str | None = None,
    ) -> None:
        self.region_ids = region_ids
        self.owner = owner
        self._loop = loop
        self._queue: deque[Message] = deque()
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def sees(self, region_id: str) -> bool:
        return self.region_ids is None or region_id in self.region_ids

    def offer(self, message: Message) -> None:
        """Called from any thread; never blocks. Drops the oldest message when full."""
        with self._lock:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self.dropped += 1
                STREAM_DROPPED.inc()
            self._queue.append(message)
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: the connection is gone
            self.closed = True

    def drain(self) -> list[Message]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        return items

    async def next(self, timeout: float) -> list[Message]:
        """Messages queued so far, waiting up to ``timeout`` seconds for the first; [] on timeout or close."""
        items = self.drain()
        if items or self.closed:
            return items
        self._wake.clear()
        items = self.drain()  # a message may have arrived between the two lines above
        if items:
            return items
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return []
        return self.drain()


class Broadcaster:
    """Holds the live subscribers; ``publish`` is the ingest BatchListener."""

    def __init__(self, *, max_queue: int = 256, max_items: int = MAX_ITEMS) -> None:
        self.max_queue = max_queue
        self.max_items = max_items
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self.closed = False
        # More BatchListeners fed by ``publish`` (the linkage actions' cmd_result watcher, gateway/routes/incidents.py)
        self._listeners: list[Callable[[WriteBatch], None]] = []

    def subscribe(
        self,
        region_ids: frozenset[str] | None,
        loop: asyncio.AbstractEventLoop,
        *,
        owner: str | None = None,
        max_per_owner: int | None = None,
        max_total: int | None = None,
    ) -> Subscriber:
        """A new subscriber; ``StreamLimit`` when ``owner`` already holds ``max_per_owner`` streams or the server
        ``max_total`` (checked and added under one lock, so concurrent requests cannot pass a limit together)."""
        sub = Subscriber(region_ids, loop, self.max_queue, owner)
        with self._lock:
            if max_total is not None and len(self._subscribers) >= max_total:
                raise StreamLimit(
                    f"the server already serves {len(self._subscribers)} live streams, its limit"
                    " (api.stream_max_total); retry later"
                )
            if max_per_owner is not None and owner is not None:
                held = sum(1 for s in self._subscribers if s.owner == owner)
                if held >= max_per_owner:
                    raise StreamLimit(
                        f"user {owner!r} already holds {held} live streams, the limit per user"
                        " (api.stream_max_per_user); close one first"
                    )
            if self.closed:
                sub.closed = True
            self._subscribers.add(sub)
        STREAM_SUBSCRIBERS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            if sub not in self._subscribers:
                return
            self._subscribers.discard(sub)
        STREAM_SUBSCRIBERS.dec()

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End every stream (at shutdown)."""
        with self._lock:
            self.closed = True
            subs = list(self._subscribers)
        for sub in subs:
            sub.close()

    def add_listener(self, listener: Callable[[WriteBatch], None]) -> None:
        """Another BatchListener called with every batch ``publish`` gets (before the stream's summary)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[WriteBatch], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish_incident(self, item: Message, region_path: Iterable[str], member_regions: Iterable[str] = ()) -> None:
        """An incident change (``{"incidents": [item]}``) for the subscribers who see the incident: its scope region
        lies in their subtree, or one of its member alerts does. Never raises; any thread."""
        try:
            path, members = tuple(region_path), tuple(member_regions)
            with self._lock:
                subs = [s for s in self._subscribers if not s.closed]
            message: Rendered | None = None
            for sub in subs:
                if _incident_seen(sub, path, members):
                    message = message or Rendered({"incidents": [item]})
                    sub.offer(message)
        except Exception:
            logger.exception("live stream: publishing an incident change failed")

    def publish(self, batch: WriteBatch) -> None:
        """BatchListener: queue a region-scoped summary of the batch for every subscriber. Never raises."""
        for listener in list(self._listeners):
            try:
                listener(batch)
            except Exception:
                logger.exception("live stream: batch listener %r failed", listener)
        try:
            with self._lock:
                subs = [s for s in self._subscribers if not s.closed]
            if subs:
                self._fan(summarise(batch), subs)
        except Exception:
            logger.exception("live stream: publishing a batch failed")

    def publish_summary(self, items: dict[str, list[Message]]) -> None:
        """A batch summarised by another process (``summarise``'s shape; lianfang/engine_live.py), region-scoped
        for every subscriber as a local batch. Never raises; any thread."""
        try:
            with self._lock:
                subs = [s for s in self._subscribers if not s.closed]
            if subs:
                full = {k: list(items.get(k) or []) for k in ("readings", "events", "statuses", "rejections")}
                self._fan(full, subs)
        except Exception:
            logger.exception("live stream: publishing a relayed batch failed")

    def _fan(self, items: dict[str, list[Message]], subs: list[Subscriber]) -> None:
        by_scope: dict[frozenset[str] | None, Rendered | None] = {}
        for sub in subs:
            if sub.region_ids in by_scope:
                message = by_scope[sub.region_ids]
            else:
                found = scoped(items, sub, self.max_items)
                message = by_scope[sub.region_ids] = None if found is None else Rendered(found)
            if message is not None:
                sub.offer(message)


def _incident_seen(sub: Subscriber, region_path: Iterable[str], member_regions: Iterable[str]) -> bool:
    """An incident is live for a subscriber who sees its scope region, or one of its members (docs/joint-api.md)."""
    if sub.region_ids is None:
        return True
    return any(r in sub.region_ids for r in region_path) or any(r in sub.region_ids for r in member_regions)


def summarise(batch: WriteBatch) -> dict[str, list[Message]]:
    """The batch as small JSON-ready items, each with its region (rejections have none: the device may be unknown)."""
    last_reading: dict[str, Message] = {}
    for r in batch.readings:
        prev = last_reading.get(r.device_id)
        if prev is None or r.ts_ms >= prev["ts_ms"]:
            last_reading[r.device_id] = {
                "device_id": r.device_id,
                "region_id": r.region_id,
                "device_type": r.device_type,
                "ts_ms": r.ts_ms,
                "fields": dict(r.fields),
            }
    events = [
        {
            "device_id": e.device_id,
            "region_id": e.region_id,
            "device_type": e.device_type,
            "ts_ms": e.ts_ms,
            "type": e.type,
            "data": _small(e.data),
        }
        for e in batch.events
    ]
    statuses = [
        {"device_id": s.device_id, "region_id": s.region_id, "ts_ms": s.ts_ms, "state": s.state} for s in batch.statuses
    ]
    rejections = [
        {"device_id": x.device_id, "reason": x.reason, "detail": x.detail[:200], "received_ms": x.received_ms}
        for x in batch.rejections
    ]
    return {"readings": list(last_reading.values()), "events": events, "statuses": statuses, "rejections": rejections}


def scoped(items: dict[str, list[Message]], sub: Subscriber, limit: int = MAX_ITEMS) -> Message | None:
    """What one subscriber may see of a summarised batch, or None when nothing. Rejections carry no region, so
    only subscribers with the whole tree get them live (scoped users read them through the REST API)."""
    out: Message = {}
    for kind in ("events", "statuses", "readings"):
        visible = [x for x in items[kind] if sub.sees(x["region_id"])]
        if visible:
            out[kind] = visible[-limit:]
            if len(visible) > limit:
                out[f"{kind}_omitted"] = len(visible) - limit
    if sub.region_ids is None and items["rejections"]:
        out["rejections"] = items["rejections"][-limit:]
    if not out:
        return None
    return out


def _small(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (k, v) in enumerate(data.items()):
        if i >= _MAX_DATA_KEYS:
            break
        out[k] = v[:200] if isinstance(v, str) else v
    return out
