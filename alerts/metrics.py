"""Prometheus metrics of the alert engine and its notifications (default registry; the gateway exposes /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

EVALUATION_SECONDS = Histogram(
    "lianfang_alert_evaluation_seconds",
    "Evaluating one ingest batch and storing what it changed (the alert latency added after ingest decoded it)",
    buckets=_FAST,
)
WRITE_SECONDS = Histogram(
    "lianfang_alert_write_seconds", "One alert-store transaction (alerts, rule states, lifecycle)", buckets=_FAST
)
TRIGGER_DELAY_SECONDS = Histogram(
    "lianfang_alert_trigger_delay_seconds",
    "From the triggering record's device time to the new alert being stored (includes device buffering and "
    "clock skew; held-for rules count from the end of their period)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
LIFECYCLE_EVENTS = Counter(
    "lianfang_alert_lifecycle_events_total", "Alert lifecycle events stored, by kind (created, resolved, ...)", ["kind"]
)
OPEN_ALERTS = Gauge("lianfang_alerts_open", "Alerts not resolved")
NOTIFY_QUEUE = Gauge("lianfang_notify_queue_depth", "Notifications handed over and not yet routed and logged")
NOTIFY_MESSAGES = Counter(
    "lianfang_notify_messages_total",
    "Notification messages by channel and outcome (sent, retry, failed)",
    ["channel", "outcome"],
)
