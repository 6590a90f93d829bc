"""Prometheus metrics of ingest (default registry; the gateway exposes /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.errors import REJECTION_REASONS
from core.store.side import FlushHooks, SqlSideStore

RECEIVED = Counter("lianfang_ingest_messages_received_total", "MQTT messages received by ingest")
STORED = Counter("lianfang_ingest_records_stored_total", "Records (readings, events, statuses) durably stored")
REJECTED = Counter("lianfang_ingest_messages_rejected_total", "Messages or objects rejected, by reason", ["reason"])
DUPLICATES = Counter("lianfang_ingest_duplicates_total", "Messages dropped as duplicates of a seen (device, seq)")
GAPS = Counter("lianfang_ingest_seq_gaps_total", "Missing seq numbers detected")
ACKED = Counter("lianfang_ingest_messages_acked_total", "MQTT messages acknowledged after a durable write")
QUEUE_DEPTH = Gauge("lianfang_ingest_queue_depth", "Messages waiting between the MQTT callback and the writer")
WRITE_QUEUE = Gauge("lianfang_ingest_write_queue_batches", "Decoded batches waiting for the telemetry writer")
EVALUATION_QUEUE = Gauge(
    "lianfang_ingest_evaluation_queue_batches", "Decoded batches waiting for the listeners (alert engine)"
)
CONNECTED = Gauge("lianfang_ingest_broker_connected", "1 when ingest is connected to the broker")
WRITE_SECONDS = Histogram(
    "lianfang_ingest_write_seconds",
    "Latency of one durable batch write",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "lianfang_ingest_batch_messages", "Messages per batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
)
STORE_ERRORS = Counter("lianfang_ingest_store_errors_total", "Failed batch writes (retried)")
# Stalls (ingest/stall.py): set at scrape time from the running service.
UNACKED = Gauge("lianfang_ingest_unacked_messages", "Messages received and not yet acknowledged (the backlog)")
OLDEST_UNACKED_AGE = Gauge(
    "lianfang_ingest_oldest_unacked_age_seconds", "Age of the oldest message received and not yet acknowledged"
)
STALLED = Gauge("lianfang_ingest_stalled", "1 while ingest makes no progress (see /health/ready for the reason)")
ISOLATED = Counter(
    "lianfang_ingest_isolated_messages_total", "Messages split out of a batch whose write failed (internal_error)"
)
# Resend (ingest/resend.py) and broker drops (ingest/broker_drops.py). No device label: per device in the status.
RESEND_COMMANDS = Counter("lianfang_ingest_resend_commands_total", "resend commands sent to devices for seq gaps")
SEQ_MISSING = Gauge("lianfang_ingest_seq_missing", "Missing seqs waiting to be resent (all devices)")
SEQ_LOST = Counter(
    "lianfang_ingest_seq_lost_total", "Records that could not be recovered by resend, by reason", ["reason"]
)
BROKER_DROPPED = Counter(
    "lianfang_broker_dropped_messages_total",
    "Messages the broker dropped (queue full: max_queued_messages), from $SYS/broker/publish/messages/dropped",
)
# The InfluxDB backend's side store in aggregated mode (core/store/side.py, store.side_flush_interval_s > 0): wired
# by observe_side_store; relayed like the other lianfang_ingest_* families when ingest runs in its own process.
SIDE_PENDING = Gauge(
    "lianfang_ingest_side_store_pending_devices",
    "Devices whose counters and last-seen times are held in memory, not yet flushed to the SQL database",
)
SIDE_FLUSHES = Counter("lianfang_ingest_side_store_flushes_total", "Side store flushes that committed their rows")
SIDE_FLUSH_FAILURES = Counter(
    "lianfang_ingest_side_store_flush_failures_total", "Side store flushes that failed (the aggregate kept, retried)"
)
SIDE_FLUSH_SECONDS = Histogram(
    "lianfang_ingest_side_store_flush_seconds",
    "Duration of one side store flush that committed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def observe_side_store(side: SqlSideStore) -> SqlSideStore:
    """Export an aggregated-mode side store's flushes and pending devices as lianfang_ingest_side_store_*
    (this process's registry; the newest store observed is the one the pending gauge reads)."""
    if side.flush_interval_s <= 0:
        return side

    def flushed(_rows: int, seconds: float) -> None:
        SIDE_FLUSHES.inc()
        SIDE_FLUSH_SECONDS.observe(seconds)

    side.hooks = FlushHooks(flushed=flushed, failed=SIDE_FLUSH_FAILURES.inc)
    SIDE_PENDING.set_function(lambda: float(side.pending_devices))
    return side


for _reason in REJECTION_REASONS:
    REJECTED.labels(_reason)
