"""Ingest orchestration: MQTT consumer -> bounded queue -> decoder thread -> (writer thread: durable batch write)
and (evaluator thread: listeners, i.e. the alert engine), in parallel -> acknowledgements.

At-least-once: a batch is acked only when both are done with it: its records (or rejections) are committed to the
store, and every listener has processed it (the alert engine has committed what it raised). Neither waits for the
other, so a slow or stalled telemetry write (a WAL checkpoint, a disk stall, a store outage) does not hold up
alerts, and alerts do not hold up storage. If the process dies first, everything unacked is redelivered; the alert
engine recognises records it has already evaluated (``AlertService._replayed``), so a redelivery never raises an
alert twice.

With the alert engine in another process (``alerts.engine: separate``, ``forward``), the evaluator thread hands
the batch to the engine partitions over the broker instead (ingest/forward.py) and the batch is acked only once
the broker has PUBACKed every part: the store commit and the broker's hold for the engine, in parallel. The
duplicates of messages the broker redelivered travel with it (``_InFlight.replays``): their first copy may have
been stored and never forwarded.

A failed write never jams the stream:

- ``StoreUnavailable`` (the store as a whole: locked by another process, disk full, I/O error) is retried with
  backoff; nothing is acked meanwhile, and the log, ``store_errors_total``, the backlog metrics, ``/health/ready``
  and the platform alerts (``alerts/platform.py``) say so, with how many messages are held.
- Any other error belongs to some value of the batch. The store has rolled the transaction back; the writer
  (``ingest/writer.py``) splits the batch's messages in halves, decodes and writes each half on its own, and so on
  down to the one message that fails, which is rejected as ``internal_error`` with the error kept. Everything else
  is stored and acked.

The duplicate tracker learns a batch's seqs only once the batch is durable (``ingest/dedup.py``): a batch that
is not written leaves nothing behind that would make its messages look like duplicates later.

A message of a device the registry view does not know or has as disabled is rejected only on a view loaded after
the message arrived (``RegistryCache.screen``): one re-read, at most every ``miss_refresh_s``, and the message is
held back (unacked) until then, so a message sent just after ``devices enable`` is accepted.

On SIGTERM the decoder finishes what it holds, the writer and the evaluator drain, their batches are acked, and
whatever the broker sent after that is redelivered to the next session.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from core.errors import StoreUnavailable
from core.protocol import DEVICE_ID_RE, INBOUND_KINDS, DeviceInfo, Record
from core.protocol import decode as default_decoder
from core.settings import IngestSettings, MqttSettings
from core.store import BatchListener, TelemetryStore, WriteBatch
from ingest import metrics
from ingest.consumer import MqttConsumer
from ingest.dedup import SeqTracker
from ingest.pipeline import Decoder, RawMessage, build_batch
from ingest.stall import Progress, assess
from ingest.writer import BatchWriter

logger = logging.getLogger(__name__)

WARM_ROWS = 200_000

# Hands a decoded batch to the alert engine in another process (ingest/forward.py ``EngineForwarder.forward``):
# (batch, oldest received_ms, redelivered duplicates) -> True once the broker holds it for the engine.
Forward = Callable[[WriteBatch, int, list[Record]], bool]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RegistryCache:
    """The registry's view of every device. A background thread re-reads it every ``refresh_s``, so the
    per-message path never waits for the registry. A message of a device the view does not know, or has as
    disabled, is judged only on a view loaded after the message arrived: the decoder re-reads at once (at most
    every ``miss_refresh_s``) and holds such messages back until it has (``screen``). So a newly registered or
    just-enabled device's first messages are accepted rather than rejected."""

    def __init__(
        self,
        load: Callable[[], Mapping[str, DeviceInfo]],
        refresh_s: float,
        miss_refresh_s: float = 1.0,
        *,
        hold_max_s: float = 10.0,
    ):
        self._load = load
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self.hold_max_s = hold_max_s  # a registry that cannot be read: judge on the cached view after this
        self.devices: Mapping[str, DeviceInfo] = {}
        self._loaded_at = 0.0
        self.loaded_from_ms = 0  # wall time when the current view's read began: it knows every change before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-registry", daemon=True)

    def refresh(self) -> None:
        started_ms = _now_ms()
        self.devices = self._load()  # one reference swap: readers see the old view or the new one
        self.loaded_from_ms = started_ms
        self._loaded_at = time.monotonic()

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, self._loaded_at + self.refresh_s - time.monotonic())):
            if time.monotonic() - self._loaded_at < self.refresh_s:
                continue  # refreshed meanwhile by a miss
            self._try_refresh()

    def _try_refresh(self) -> None:
        try:
            self.refresh()
        except StoreUnavailable:
            self._loaded_at = time.monotonic()  # try again after another period
            logger.warning("registry unavailable; using the cached view of %d devices", len(self.devices))

    def view(self, device_ids: Sequence[str]) -> Mapping[str, DeviceInfo]:
        devices = self.devices
        if any(d not in devices for d in device_ids) and time.monotonic() - self._loaded_at > self.miss_refresh_s:
            self._try_refresh()
        return self.devices

    def screen(
        self, msgs: list[RawMessage], now_ms: int
    ) -> tuple[Mapping[str, DeviceInfo], list[RawMessage], list[RawMessage]]:
        """Split ``msgs`` into those that can be judged on the view and those held back for a fresher one.

        Returns ``(view, ready, held)``. A message is held when its device is unknown or disabled in a view that
        was read before the message arrived, and a re-read is not allowed yet (``miss_refresh_s``)."""
        devices = self.devices
        get = devices.get
        suspects: list[RawMessage] = []
        for m in msgs:  # the common case inline: a known, enabled device
            parts = m.topic.split("/")
            d = get(parts[2]) if len(parts) == 4 else None
            if (d is None or not d.enabled) and not self._accepts(devices, m.topic):
                suspects.append(m)
        if not suspects:
            return devices, msgs, []
        if max(m.received_ms for m in suspects) >= self.loaded_from_ms and (
            time.monotonic() - self._loaded_at >= self.miss_refresh_s
        ):
            self._try_refresh()
            devices = self.devices
        fresh_from = self.loaded_from_ms
        held = [
            m
            for m in suspects
            if m.received_ms >= fresh_from
            and now_ms - m.received_ms < self.hold_max_s * 1000
            and not self._accepts(devices, m.topic)
        ]
        if not held:
            return devices, msgs, []
        ids = {id(m) for m in held}
        return devices, [m for m in msgs if id(m) not in ids], held

    def ready_to_recheck(self) -> bool:
        return time.monotonic() - self._loaded_at >= self.miss_refresh_s

    @staticmethod
    def _accepts(devices: Mapping[str, DeviceInfo], topic: str) -> bool:
        """True unless the topic names a well-formed device id the view does not know or has as disabled."""
        parts = topic.split("/")
        if len(parts) != 4:
            return True  # not a device topic: rejected for what it is, no registry needed
        d = devices.get(parts[2])
        if d is not None and d.enabled:
            return True
        return parts[3] not in INBOUND_KINDS or DEVICE_ID_RE.match(parts[2]) is None  # rejected without the registry


@dataclass(eq=False)
class _InFlight:
    """A decoded batch on its way through the writer and the evaluator; acked when ``pending`` reaches 0."""

    msgs: list[RawMessage]
    batch: WriteBatch
    pending: int
    devices: Mapping[str, DeviceInfo]
    oldest_ms: int
    written: WriteBatch | None = None  # what the writer stored (differs from ``batch`` when a message was isolated)
    replays: list[Record] = field(default_factory=list)  # redelivered duplicates, forwarded to the engine again


@dataclass
class IngestStats:
    acked: int = 0
    batches: int = 0
    records: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    store_errors: int = 0  # failed write attempts (retried)
    isolated: int = 0  # messages rejected internal_error after their batch's write failed
    arrivals: Callable[[], int] = field(default=lambda: 0, repr=False)

    @property
    def received(self) -> int:
        """Messages that arrived from the broker (counted on arrival, not at ack)."""
        return self.arrivals()


class IngestService:
    def __init__(
        self,
        mqtt_settings: MqttSettings,
        ingest_settings: IngestSettings,
        store: TelemetryStore,
        load_devices: Callable[[], Mapping[str, DeviceInfo]],
        *,
        listeners: Sequence[BatchListener] = (),
        forward: Forward | None = None,
        decode: Decoder = default_decoder,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        client_id: str | None = None,
    ) -> None:
        self.settings = ingest_settings
        self.store = store
        self.listeners = list(listeners)
        self.forward = forward
        self.forward_failures = 0
        self.decode = decode
        self.retry_backoff_s = retry_backoff_s
        # Bounded by MQTT flow control: every queued message is unacked, and the broker never has more than the
        # session's Receive Maximum unacked messages out to us. A lock-free SimpleQueue keeps the hand-off cheap.
        self.queue: queue.SimpleQueue[RawMessage] = queue.SimpleQueue()
        self.consumer = MqttConsumer(mqtt_settings, self.queue, client_id=client_id)
        self.registry = RegistryCache(load_devices, ingest_settings.registry_refresh_s)
        self.seqs = SeqTracker()
        self._seq_lock = threading.Lock()  # the decoder and the writer both use the tracker, one batch at a time
        self.stats = IngestStats(arrivals=lambda: self.consumer.received)
        self._stop = threading.Event()
        # Batches in flight are unacked, so MQTT flow control bounds these queues too.
        self._writes: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._evaluations: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._done_lock = threading.Lock()
        self._inflight: dict[int, _InFlight] = {}  # id -> item, until acked (for the oldest unacked message)
        self._held: list[RawMessage] = []  # waiting for a fresher registry view (decoder thread only)
        self._decoding_since_ms: int | None = None
        self._writing_since_ms: int | None = None
        self.writer = BatchWriter(
            store,
            self.seqs,
            decode,
            seq_lock=self._seq_lock,
            retry_backoff_s=retry_backoff_s,
            backlog=lambda: self.backlog,
        )
        self._threads = [
            threading.Thread(target=self._run, name="ingest-decoder", daemon=True),
            threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True),
            threading.Thread(target=self._evaluate_loop, name="ingest-evaluator", daemon=True),
        ]
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.registry.start()
        warmed = self.store.recent_seqs(WARM_ROWS)
        for device_id, seq, ts in reversed(warmed):  # oldest first
            self.seqs.warm(device_id, seq, ts)
        logger.info("ingest starting: %d devices known, %d recent seqs warmed", len(self.registry.devices), len(warmed))
        for t in self._threads:
            t.start()
        self._started = True
        metrics.UNACKED.set_function(lambda: self.backlog)
        metrics.OLDEST_UNACKED_AGE.set_function(self._oldest_age_s)
        metrics.STALLED.set_function(lambda: 1.0 if self.stall_reasons() else 0.0)
        self.consumer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: stop taking messages, write and ack what is held, then disconnect."""
        if not self._started:
            return
        self.consumer.stop_accepting()
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:  # the decoder first: it hands the writer and the evaluator their end marks
            t.join(max(0.0, deadline - time.monotonic()))
        self.consumer.stop()
        self.registry.stop()
        self._started = False
        for gauge in (metrics.UNACKED, metrics.OLDEST_UNACKED_AGE, metrics.STALLED):
            gauge.set_function(lambda: 0.0)
        logger.info("ingest stopped: %d received, %d acked", self.stats.received, self.stats.acked)

    # --- progress and health ----------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Messages received and not acknowledged: queued, held, being decoded, written or evaluated."""
        return max(0, self.consumer.received - self.stats.acked)

    def _oldest_ms(self) -> int | None:
        with self._done_lock:
            candidates = [item.oldest_ms for item in self._inflight.values()]
        decoding = self._decoding_since_ms
        if decoding is not None:
            candidates.append(decoding)
        held = self._held
        if held:
            candidates.append(min(m.received_ms for m in held))
        return min(candidates) if candidates else None

    def _oldest_age_s(self) -> float:
        oldest = self._oldest_ms()
        return 0.0 if oldest is None or not self.backlog else max(0.0, (_now_ms() - oldest) / 1000)

    def progress(self) -> Progress:
        return Progress(
            backlog=self.backlog,
            oldest_ms=self._oldest_ms(),
            writing_since_ms=self._writing_since_ms,
            store_error=self.writer.store_error,
            store_failing_since_ms=self.writer.failing_since_ms,
            threads_alive=not self._started or all(t.is_alive() for t in self._threads),
        )

    def stall_reasons(self, now_ms: int | None = None) -> list[str]:
        return assess(self.progress(), now_ms=now_ms or _now_ms(), stall_after_s=self.settings.stall_after_s)

    def status(self) -> dict[str, object]:
        reasons = self.stall_reasons()
        return {
            "connected": self.consumer.connected.is_set(),
            "queue_depth": self.queue.qsize(),
            "received": self.stats.received,
            "acked": self.stats.acked,
            "backlog": self.backlog,
            "oldest_unacked_age_s": round(self._oldest_age_s(), 3),
            "records": self.stats.records,
            "duplicates": self.stats.duplicates,
            "rejected": dict(self.stats.rejected),
            "store_errors": self.writer.store_errors,
            "store_unavailable": self.writer.store_error,
            "isolated": self.writer.isolated,
            # the store's own note (the InfluxDB side store's flushes failing), for /health/ready's store check
            "store_note": note() if callable(note := getattr(self.store, "health_note", None)) else None,
            "writer_alive": all(t.is_alive() for t in self._threads),
            "stalled": bool(reasons),
            "reason": "; ".join(reasons) if reasons else None,
        }

    # --- decoder thread ---------------------------------------------------------------------------------

    def _take(self) -> list[RawMessage]:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        msgs = [first]
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        while len(msgs) < self.settings.batch_size:
            try:
                msgs.append(self.queue.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    msgs.append(self.queue.get(timeout=remaining))
                except queue.Empty:
                    break
        return msgs

    def _run(self) -> None:
        """Decoder: take what is queued, build the batch, hand it to the writer and the evaluator."""
        try:
            while True:
                msgs = self._take()
                if self._held and self.registry.ready_to_recheck():
                    msgs = self._held + msgs
                    self._held = []
                if not msgs:
                    if self._stop.is_set():
                        return
                    continue
                self._decoding_since_ms = msgs[0].received_ms
                try:
                    devices, msgs, held = self.registry.screen(msgs, _now_ms())
                    self._held.extend(held)
                    if not msgs:
                        continue
                    replays: list[Record] | None = [] if self.forward is not None else None
                    with self._seq_lock:
                        batch = build_batch(msgs, devices, self.seqs, decode=self.decode, replays=replays)
                except Exception:  # the thread must not die; nothing was acked, so the broker will redeliver
                    logger.exception("ingest batch of %d failed unexpectedly; not acked", len(msgs))
                    continue
                finally:
                    self._decoding_since_ms = None
                # msgs[0] is the oldest: the queue is FIFO and held messages go back in front
                evaluated = bool(self.listeners) or self.forward is not None
                item = _InFlight(
                    msgs, batch, 2 if evaluated else 1, devices, msgs[0].received_ms, replays=replays or []
                )
                with self._done_lock:
                    self._inflight[id(item)] = item
                self._writes.put(item)
                if evaluated:
                    self._evaluations.put(item)
                metrics.QUEUE_DEPTH.set(self.queue.qsize())
                metrics.WRITE_QUEUE.set(self._writes.qsize())
                metrics.EVALUATION_QUEUE.set(self._evaluations.qsize())
        finally:
            self._writes.put(None)
            self._evaluations.put(None)

    # --- writer thread ----------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            self._writing_since_ms = _now_ms()
            try:
                item.written = self._write_item(item)
            except Exception:  # a bug in the code below: keep the thread; the item stays unacked and shows as stalled
                logger.exception("ingest write of %d messages failed unexpectedly; not acked", len(item.msgs))
                with self._seq_lock:
                    self.seqs.abort(item.batch.seqs)
                continue
            finally:
                self._writing_since_ms = None
            self._stage_done(item)

    def _write_item(self, item: _InFlight) -> WriteBatch:
        return self.writer.write(item.msgs, item.devices, item.batch)

    # --- evaluator thread and acks ----------------------------------------------------------------------

    def _evaluate_loop(self) -> None:
        while (item := self._evaluations.get()) is not None:
            for listener in self.listeners:
                try:
                    listener(item.batch)
                except Exception:
                    logger.exception("batch listener %r failed", listener)
            if self.forward is not None and not self._forward(item):
                continue  # not acked: the broker redelivers it to the next session
            self._stage_done(item)

    def _forward(self, item: _InFlight) -> bool:
        """Hand the batch to the engine partitions; False (never acked) only when stopping without a broker."""
        assert self.forward is not None
        while True:
            try:
                if self.forward(item.batch, item.oldest_ms, item.replays):
                    return True
            except Exception:
                logger.exception("forwarding a batch of %d messages to the alert engine failed", len(item.msgs))
                self.forward_failures += 1
                if not self._stop.wait(1.0):
                    continue
            logger.warning(
                "stopping: %d messages not forwarded to the alert engine stay unacknowledged", len(item.msgs)
            )
            with self._done_lock:
                self._inflight.pop(id(item), None)
            return False

    def _stage_done(self, item: _InFlight) -> None:
        """The writer or the evaluator is done with ``item``; the second one to finish acks it."""
        with self._done_lock:
            item.pending -= 1
            if item.pending:
                return
            self.consumer.ack_many([(m.mid, m.qos) for m in item.msgs])
            self._account(item.msgs, item.written if item.written is not None else item.batch)
            del self._inflight[id(item)]

    def _account(self, msgs: list[RawMessage], batch: WriteBatch) -> None:
        n = len(msgs)
        records = len(batch.readings) + len(batch.events) + len(batch.statuses)
        dups = sum(c.duplicates for c in batch.counters.values())
        gaps = sum(c.gaps for c in batch.counters.values())
        self.stats.acked += n
        self.stats.batches += 1
        self.stats.store_errors = self.writer.store_errors
        self.stats.isolated = self.writer.isolated
        self.stats.records += records
        self.stats.duplicates += dups
        for rej in batch.rejections:
            self.stats.rejected[rej.reason] = self.stats.rejected.get(rej.reason, 0) + 1
            metrics.REJECTED.labels(rej.reason).inc()
        metrics.ACKED.inc(n)
        metrics.STORED.inc(records)
        metrics.DUPLICATES.inc(dups)
        metrics.GAPS.inc(gaps)
        metrics.BATCH_SIZE.observe(n)
