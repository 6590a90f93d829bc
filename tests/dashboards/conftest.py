"""The InfluxDB test server (defined once, in tests/influx_servers.py)."""

from tests.influx_servers import influxdb_module

__all__ = ["influxdb_module"]
