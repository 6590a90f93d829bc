"""serve's relayed ingest metrics: a relay that no longer holds (stale, or the broker it travels through is gone)
does not keep saying that ingest is connected."""

from __future__ import annotations

from lianfang.engine_role import CONNECTED_METRIC, RelayedIngestMetrics

TEXT = (
    "# HELP lianfang_ingest_broker_connected 1 when ingest is connected to the broker\n"
    "# TYPE lianfang_ingest_broker_connected gauge\n"
    "lianfang_ingest_broker_connected 1.0\n"
    "# HELP lianfang_ingest_received_total messages received\n"
    "# TYPE lianfang_ingest_received_total counter\n"
    "lianfang_ingest_received_total 42.0\n"
)


def _samples(relay: RelayedIngestMetrics) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["ingest"]): s.value for m in relay.collect() for s in m.samples}


def test_relayed_connected_holds_only_while_the_relay_is_current() -> None:
    relay = RelayedIngestMetrics(lambda: {"ingest-a": (TEXT, True), "ingest-b": (TEXT, False)})
    got = _samples(relay)
    assert got[(CONNECTED_METRIC, "ingest-a")] == 1.0
    assert got[(CONNECTED_METRIC, "ingest-b")] == 0.0  # stale: not known to be connected
    # other figures are the last ones relayed, labelled by process
    assert got[("lianfang_ingest_received_total", "ingest-b")] == 42.0


def test_install_takes_out_only_the_relayed_families() -> None:
    from prometheus_client import REGISTRY

    relay = RelayedIngestMetrics(lambda: {}).install()
    try:
        # this process's own broker-drop counter stays exposed; its idle ingest gauges do not
        assert REGISTRY.get_sample_value("lianfang_broker_dropped_messages_total") is not None
        assert REGISTRY.get_sample_value(CONNECTED_METRIC) is None
    finally:
        relay.uninstall()
    assert REGISTRY.get_sample_value(CONNECTED_METRIC) is not None
