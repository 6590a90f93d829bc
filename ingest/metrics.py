"""Prometheus metrics of ingest (default registry; the gateway exposes /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.errors import REJECTION_REASONS

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

for _reason in REJECTION_REASONS:
    REJECTED.labels(_reason)
