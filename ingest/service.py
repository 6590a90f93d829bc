"""Ingest orchestration: MQTT consumer -> bounded queue -> decoder thread -> (writer thread: durable batch write)
and (evaluator thread: listeners, i.e. the alert engine), in parallel -> acknowledgements.

At-least-once: a batch is acked only when both are done with it: its records (or rejections) are committed to the
store, and every listener has processed it (the alert engine has committed what it raised). Neither waits for the
other, so a slow or stalled telemetry write (a WAL checkpoint, a disk stall, a store outage) does not hold up
alerts, and alerts do not hold up storage. A failed write is retried with backoff and nothing is acked meanwhile.
If the process dies first, everything unacked is redelivered; the alert engine recognises records it has already
evaluated (``AlertService._replayed``), so a redelivery never raises an alert twice.

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
from core.protocol import DeviceInfo
from core.protocol import decode as default_decoder
from core.settings import IngestSettings, MqttSettings
from core.store import BatchListener, TelemetryStore, WriteBatch
from ingest import metrics
from ingest.consumer import MqttConsumer
from ingest.dedup import SeqTracker
from ingest.pipeline import Decoder, RawMessage, build_batch

logger = logging.getLogger(__name__)

WARM_ROWS = 200_000


class RegistryCache:
    """The registry's view of every device. A background thread re-reads it every ``refresh_s``, so the
    per-message path never waits for the registry; only a device it does not know yet makes the decoder re-read
    it at once (at most every ``miss_refresh_s``), so that a newly registered device's first messages are
    accepted rather than rejected as unknown."""

    def __init__(self, load: Callable[[], Mapping[str, DeviceInfo]], refresh_s: float, miss_refresh_s: float = 1.0):
        self._load = load
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self.devices: Mapping[str, DeviceInfo] = {}
        self._loaded_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-registry", daemon=True)

    def refresh(self) -> None:
        self.devices = self._load()  # one reference swap: readers see the old view or the new one
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


@dataclass(eq=False)
class _InFlight:
    """A decoded batch on its way through the writer and the evaluator; acked when ``pending`` reaches 0."""

    msgs: list[RawMessage]
    batch: WriteBatch
    pending: int


@dataclass
class IngestStats:
    received: int = 0
    acked: int = 0
    batches: int = 0
    records: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    store_errors: int = 0


class IngestService:
    def __init__(
        self,
        mqtt_settings: MqttSettings,
        ingest_settings: IngestSettings,
        store: TelemetryStore,
        load_devices: Callable[[], Mapping[str, DeviceInfo]],
        *,
        listeners: Sequence[BatchListener] = (),
        decode: Decoder = default_decoder,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        client_id: str | None = None,
    ) -> None:
        self.settings = ingest_settings
        self.store = store
        self.listeners = list(listeners)
        self.decode = decode
        self.retry_backoff_s = retry_backoff_s
        # Bounded by MQTT flow control: every queued message is unacked, and the broker never has more than the
        # session's Receive Maximum unacked messages out to us. A lock-free SimpleQueue keeps the hand-off cheap.
        self.queue: queue.SimpleQueue[RawMessage] = queue.SimpleQueue()
        self.consumer = MqttConsumer(mqtt_settings, self.queue, client_id=client_id)
        self.registry = RegistryCache(load_devices, ingest_settings.registry_refresh_s)
        self.seqs = SeqTracker()
        self.stats = IngestStats()
        self._stop = threading.Event()
        # Batches in flight are unacked, so MQTT flow control bounds these queues too.
        self._writes: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._evaluations: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._done_lock = threading.Lock()
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
        logger.info("ingest stopped: %d received, %d acked", self.stats.received, self.stats.acked)

    def status(self) -> dict[str, object]:
        return {
            "connected": self.consumer.connected.is_set(),
            "queue_depth": self.queue.qsize(),
            "received": self.stats.received,
            "acked": self.stats.acked,
            "records": self.stats.records,
            "duplicates": self.stats.duplicates,
            "rejected": dict(self.stats.rejected),
            "store_errors": self.stats.store_errors,
            "writer_alive": all(t.is_alive() for t in self._threads),
        }

    # --- writer thread ----------------------------------------------------------------------------------

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
                if not msgs:
                    if self._stop.is_set():
                        return
                    continue
                try:
                    devices = self.registry.view([m.topic.split("/")[2] for m in msgs if m.topic.count("/") == 3])
                    batch = build_batch(msgs, devices, self.seqs, decode=self.decode)
                except Exception:  # the thread must not die; nothing was acked, so the broker will redeliver
                    logger.exception("ingest batch of %d failed unexpectedly; not acked", len(msgs))
                    continue
                item = _InFlight(msgs, batch, 2 if self.listeners else 1)
                self._writes.put(item)
                if self.listeners:
                    self._evaluations.put(item)
                metrics.QUEUE_DEPTH.set(self.queue.qsize())
                metrics.WRITE_QUEUE.set(self._writes.qsize())
                metrics.EVALUATION_QUEUE.set(self._evaluations.qsize())
        finally:
            self._writes.put(None)
            self._evaluations.put(None)

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            try:
                self._write_until_durable(item.batch)
            except Exception:
                logger.exception("ingest write of %d messages failed unexpectedly; not acked", len(item.msgs))
                continue
            self._stage_done(item)

    def _evaluate_loop(self) -> None:
        while (item := self._evaluations.get()) is not None:
            for listener in self.listeners:
                try:
                    listener(item.batch)
                except Exception:
                    logger.exception("batch listener %r failed", listener)
            self._stage_done(item)

    def _stage_done(self, item: _InFlight) -> None:
        """The writer or the evaluator is done with ``item``; the second one to finish acks it."""
        with self._done_lock:
            item.pending -= 1
            if item.pending:
                return
            self.consumer.ack_many([(m.mid, m.qos) for m in item.msgs])
            self._account(item.msgs, item.batch)

    def _write_until_durable(self, batch: WriteBatch) -> None:
        delay, max_delay = self.retry_backoff_s
        failing = False
        while True:
            started = time.perf_counter()
            try:
                self.store.write(batch)
            except StoreUnavailable as exc:
                metrics.STORE_ERRORS.inc()
                self.stats.store_errors += 1
                if not failing:
                    logger.error("store unavailable, holding %d records unacked: %s", len(batch), exc)
                    failing = True
                time.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            if failing:
                logger.warning("store back; batch of %d records written", len(batch))
            return

    def _account(self, msgs: list[RawMessage], batch: WriteBatch) -> None:
        n = len(msgs)
        records = len(batch.readings) + len(batch.events) + len(batch.statuses)
        dups = sum(c.duplicates for c in batch.counters.values())
        gaps = sum(c.gaps for c in batch.counters.values())
        self.stats.received += n
        self.stats.acked += n
        self.stats.batches += 1
        self.stats.records += records
        self.stats.duplicates += dups
        for rej in batch.rejections:
            self.stats.rejected[rej.reason] = self.stats.rejected.get(rej.reason, 0) + 1
            metrics.REJECTED.labels(rej.reason).inc()
        metrics.RECEIVED.inc(n)
        metrics.ACKED.inc(n)
        metrics.STORED.inc(records)
        metrics.DUPLICATES.inc(dups)
        metrics.GAPS.inc(gaps)
        metrics.BATCH_SIZE.observe(n)
