"""The durable write of one decoded batch, which never jams (used by ingest's writer thread).

- ``StoreUnavailable`` (the store as a whole: locked by another process, disk full, I/O error) is retried with
  backoff until the store is back; the first failure is logged with the number of messages held (the whole
  backlog, from ``backlog()``), then again every ``STILL_FAILING_LOG_S``, and the recovery too.
- Any other error belongs to some value of the batch (the store has rolled its transaction back). The messages
  are split in halves, each half decoded again (``build_batch``) and written on its own, recursively, down to the
  one message that fails: it is rejected as ``internal_error`` with the error kept. Everything else is stored.
- A full disk (``StoreFull``) is retried like any outage, but the writer also gives the WAL's space back after
  each failure and, for ``TIGHT_S`` after the last one, after every write (``SqliteStore.reclaim_log``), and a
  batch that still does not fit after ``SPLIT_AFTER`` attempts is written in halves, recursively: a held backlog
  then needs only the space of its data, not the log of one big transaction (nor a log grown by a burst).
- The duplicate tracker learns a batch's seqs when the batch is durable (``commit``) and forgets them when it is
  not (``abort``), so a failed batch never makes its own messages look like duplicates afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from core.errors import StoreFull, StoreUnavailable
from core.protocol import DeviceInfo
from core.store import TelemetryStore, WriteBatch
from ingest import metrics
from ingest.dedup import SeqTracker
from ingest.pipeline import Decoder, RawMessage, build_batch, rejection_batch

logger = logging.getLogger(__name__)

STILL_FAILING_LOG_S = 30.0  # while the store stays unavailable, say so again this often
SPLIT_AFTER = 3  # full-disk attempts of one batch before it is written in halves
TIGHT_S = 120.0  # after a full disk, give the log's space back after every write for this long


class _SplitNeeded(Exception):
    """The disk is too full for this batch in one transaction: write it in halves."""


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
        self.splits = 0  # batches written in halves because the disk was full
        self._tight_until = 0.0

    def write(self, msgs: list[RawMessage], devices: Mapping[str, DeviceInfo], batch: WriteBatch) -> WriteBatch:
        """Write ``batch`` (built from ``msgs`` on ``devices``); returns what was written: ``batch`` itself, or,
        when a message had to be isolated, the halves that were written plus its ``internal_error`` rejection."""
        try:
            self.write_until_durable(batch, may_split=len(msgs) > 1)
        except _SplitNeeded as exc:
            with self.seq_lock:
                self.seqs.abort(batch.seqs)
            logger.warning("store full: writing the batch of %d messages in smaller transactions", len(msgs))
            return self._bisect(msgs, devices, exc)
        except Exception as exc:
            with self.seq_lock:
                self.seqs.abort(batch.seqs)
            logger.error(
                "ingest: writing a batch of %d messages failed (%s: %s); splitting it to isolate the message",
                len(msgs),
                type(exc).__name__,
                exc,
            )
            return self._bisect(msgs, devices, exc)
        with self.seq_lock:
            self.seqs.commit(batch.seqs)
        return batch

    def _bisect(self, msgs: list[RawMessage], devices: Mapping[str, DeviceInfo], exc: Exception) -> WriteBatch:
        """Write ``msgs`` in halves, each decoded again, recursively. A single message reaches here only for an
        error that is not the store's (a full disk never splits a single message): it is rejected."""
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
                self.write_until_durable(batch, may_split=len(part) > 1)
            except Exception as part_exc:  # _SplitNeeded included: that half is split again
                with self.seq_lock:
                    self.seqs.abort(batch.seqs)
                written.extend(self._bisect(part, devices, part_exc))
                continue
            with self.seq_lock:
                self.seqs.commit(batch.seqs)
            written.extend(batch)
        return written

    def write_until_durable(self, batch: WriteBatch, *, may_split: bool = False) -> None:
        """Write, retrying StoreUnavailable with backoff (logged with the backlog); other errors propagate, and so
        does ``_SplitNeeded`` when ``may_split`` and the disk stays too full for this batch."""
        delay, max_delay = self.retry_backoff_s
        last_log = 0.0
        full_attempts = 0
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
                if isinstance(exc, StoreFull):
                    self._tight_until = time.monotonic() + TIGHT_S
                    self._reclaim()
                    full_attempts += 1
                    if may_split and full_attempts >= SPLIT_AFTER:
                        self.splits += 1
                        raise _SplitNeeded(str(exc)) from exc
                self._sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            if time.monotonic() < self._tight_until:
                self._reclaim()  # space is short: do not let the log grow over a burst of writes
            if self.store_error is not None:
                logger.warning(
                    "store back after %.1f s; writing the %d messages held", self._failing_for_s(), self.backlog()
                )
                self.store_error = None
                self.failing_since_ms = None
            return

    def _reclaim(self) -> None:
        reclaim = getattr(self.store, "reclaim_log", None)  # SqliteStore: truncate the WAL after a checkpoint
        if reclaim is not None:
            reclaim()

    def _failing_for_s(self) -> float:
        since = self.failing_since_ms
        return 0.0 if since is None else (_now_ms() - since) / 1000
