"""The durable write of one decoded batch, which never jams (used by ingest's writer thread).

- ``StoreUnavailable`` (the store as a whole: locked by another process, disk full, I/O error) is retried with
  backoff until the store is back; the first failure is logged with the number of messages held (the whole
  backlog, from ``backlog()``), then again every ``STILL_FAILING_LOG_S``, and the recovery too.
- Any other error belongs to some value of the batch (the store has rolled its transaction back). The messages
  are split in halves, each half decoded again (``build_batch``) and written on its own, recursively, down to the
  one message that fails: it is rejected as ``internal_error`` with the error kept. Everything else is stored.
- The duplicate tracker learns a batch's seqs when the batch is durable (``commit``) and forgets them when it is
  not (``abort``), so a failed batch never makes its own messages look like duplicates afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from core.errors import StoreUnavailable
from core.protocol import DeviceInfo
from core.store import TelemetryStore, WriteBatch
from ingest import metrics
from ingest.dedup import SeqTracker
from ingest.pipeline import Decoder, RawMessage, build_batch, rejection_batch

logger = logging.getLogger(__name__)

STILL_FAILING_LOG_S = 30.0  # while the store stays unavailable, say so again this often


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BatchWriter:
    """Writes decoded batches to ``store``; one caller thread. ``seq_lock`` guards ``seqs`` (shared with the
    decoder). Counters and the store's failure state are read by status and health from other threads."""

    def __init__(
        self,
        store: TelemetryStore,
        seqs: SeqTracker,
        decode: Decoder,
        *,
        seq_lock: threading.Lock | None = None,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        backlog: Callable[[], int] = lambda: 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.seqs = seqs
        self.decode = decode
        self.seq_lock = seq_lock or threading.Lock()
        self.retry_backoff_s = retry_backoff_s
        self.backlog = backlog
        self._sleep = sleep
        self.store_errors = 0
        self.isolated = 0
        self.store_error: str | None = None  # the last StoreUnavailable, until a write succeeds
        self.failing_since_ms: int | None = None

    def write(self, msgs: list[RawMessage], devices: Mapping[str, DeviceInfo], batch: WriteBatch) -> WriteBatch:
        """Write ``batch`` (built from ``msgs`` on ``devices``); returns what was written: ``batch`` itself, or,
        when a message had to be isolated, the halves that were written plus its ``internal_error`` rejection."""
        try:
            self.write_until_durable(batch)
        except Exception as exc:
            with self.seq_lock:
                self.seqs.abort(batch.seqs)
            logger.error(
                "ingest: writing a batch of %d messages failed (%s: %s); splitting it to isolate the message",
                len(msgs),
                type(exc).__name__,
                exc,
            )
            return self._isolate(msgs, devices, exc)
        with self.seq_lock:
            self.seqs.commit(batch.seqs)
        return batch

    def _isolate(self, msgs: list[RawMessage], devices: Mapping[str, DeviceInfo], exc: Exception) -> WriteBatch:
        if len(msgs) == 1:
            msg = msgs[0]
            rejected = rejection_batch(msg, "internal_error", f"store write failed: {type(exc).__name__}: {exc}"[:500])
            logger.error("ingest: the message on %s is isolated and rejected internal_error: %s", msg.topic, exc)
            self.isolated += 1
            metrics.ISOLATED.inc()
            try:
                self.write_until_durable(rejected)
            except Exception:  # acked anyway: a message that cannot even be kept as a rejection must not jam
                logger.exception("ingest: even the rejection of the message on %s could not be stored", msg.topic)
            return rejected
        written = WriteBatch()
        half = len(msgs) // 2
        for part in (msgs[:half], msgs[half:]):
            with self.seq_lock:
                batch = build_batch(part, devices, self.seqs, decode=self.decode)
            try:
                self.write_until_durable(batch)
            except Exception as part_exc:
                with self.seq_lock:
                    self.seqs.abort(batch.seqs)
                written.extend(self._isolate(part, devices, part_exc))
                continue
            with self.seq_lock:
                self.seqs.commit(batch.seqs)
            written.extend(batch)
        return written

    def write_until_durable(self, batch: WriteBatch) -> None:
        """Write, retrying StoreUnavailable with backoff (logged with the backlog); other errors propagate."""
        delay, max_delay = self.retry_backoff_s
        last_log = 0.0
        while True:
            started = time.perf_counter()
            try:
                self.store.write(batch)
            except StoreUnavailable as exc:
                metrics.STORE_ERRORS.inc()
                self.store_errors += 1
                now = time.monotonic()
                if self.store_error is None:
                    self.failing_since_ms = _now_ms()
                    logger.error(
                        "store unavailable, holding %d messages unacked (%d records in this batch): %s",
                        self.backlog(),
                        len(batch),
                        exc,
                    )
                    last_log = now
                elif now - last_log >= STILL_FAILING_LOG_S:
                    logger.error(
                        "store still unavailable after %.0f s, holding %d messages unacked: %s",
                        self._failing_for_s(),
                        self.backlog(),
                        exc,
                    )
                    last_log = now
                self.store_error = str(exc)[:300]
                self._sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            if self.store_error is not None:
                logger.warning(
                    "store back after %.1f s; writing the %d messages held", self._failing_for_s(), self.backlog()
                )
                self.store_error = None
                self.failing_since_ms = None
            return

    def _failing_for_s(self) -> float:
        since = self.failing_since_ms
        return 0.0 if since is None else (_now_ms() - since) / 1000
