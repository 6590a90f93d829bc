"""The InfluxDB test servers (defined once, in tests/influx_servers.py)."""

from tests.influx_servers import influxdb, influxdb_module, side_store, victoria

__all__ = ["influxdb", "influxdb_module", "side_store", "victoria"]
