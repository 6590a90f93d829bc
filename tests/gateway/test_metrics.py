"""GET /metrics: Prometheus text with the gateway's HTTP latency and the counters other parts register."""

from __future__ import annotations

from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Api


def _samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _count(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, status: str) -> float:
    key = ("lianfang_http_request_duration_seconds_count", (("method", "GET"), ("route", route), ("status", status)))
    return samples.get(key, 0.0)


def test_metrics_expose_http_latency_by_route_template(api: Api) -> None:
    route = "/api/v1/devices/{device_id}"
    before = _samples(api)
    assert api.get("/api/v1/devices/meter-gz-0001").status_code == 200
    assert api.get("/api/v1/devices/gate-gz-0001").status_code == 200
    assert api.get("/api/v1/devices/nope").status_code == 404
    after = _samples(api)
    assert _count(after, route, "200") - _count(before, route, "200") == 2
    assert _count(after, route, "404") - _count(before, route, "404") == 1
    # one label per route template, never per device id
    assert not any("meter-gz-0001" in str(labels) for _, labels in after)


def test_metrics_expose_counters_registered_by_other_parts(api: Api) -> None:
    from ingest import metrics as ingest_metrics

    ingest_metrics.RECEIVED.inc(7)
    ingest_metrics.REJECTED.labels("schema").inc()
    own = Counter("lianfang_gateway_test_probe", "a counter registered elsewhere in the default registry")
    try:
        own.inc(3)
        samples = _samples(api)
        assert samples[("lianfang_gateway_test_probe_total", ())] == 3
        assert samples[("lianfang_ingest_messages_received_total", ())] >= 7
        assert samples[("lianfang_ingest_messages_rejected_total", (("reason", "schema"),))] >= 1
        assert ("lianfang_stream_subscribers", ()) in samples
    finally:
        from prometheus_client import REGISTRY

        REGISTRY.unregister(own)
