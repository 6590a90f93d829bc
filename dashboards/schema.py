"""What the dashboards assume about the stores: datasource uids, the InfluxDB schema, the SQL tables.

One place to change when the InfluxDB adapter (core/store/influx.py, docs/influxdb.md) settles its names. The
InfluxDB schema (issue 12): a measurement per device type and one for events; tags ``device``, ``region_path``,
``device_type``; fields are the protocol's field names (docs/protocol.md), so tag and field names never collide.
The data-quality measurements (``rejections`` and ``device_quality``) are what these dashboards expect the adapter to
write beside the telemetry (the embedded store keeps the same facts in its ``rejections`` and ``device_state``
tables); docs/dashboards.md lists them.
"""

from __future__ import annotations

# Datasource uids: the provisioning files (docker/grafana/provisioning/datasources/) create them with these uids.
INFLUX_UID = "lianfang-influxdb"
INFLUX_TYPE = "influxdb"
SQL_UID = "lianfang-postgres"
SQL_TYPE = "grafana-postgresql-datasource"  # the core PostgreSQL plugin's id since Grafana 10.3 (old alias: postgres)

# Measurements
GATE = "gate"
VEHICLE = "vehicle"
ENERGY = "energy_meter"
SENSOR = "sensor"
EVENTS = "events"
TELEMETRY_MEASUREMENTS = (GATE, VEHICLE, ENERGY, SENSOR)
REJECTIONS = "rejections"  # one point per rejected message: tags device, reason; field detail (string)
QUALITY = "device_quality"  # per device and batch: fields messages, gaps, duplicates, nonstandard, rejected

# Tags
TAG_DEVICE = "device"
TAG_REGION = "region_path"  # e.g. /gd/gz/agency-1/building-3/ (devices/registry.py); a subtree is /\/ID\//
TAG_TYPE = "device_type"
TAG_EVENT_TYPE = "event_type"  # on the events measurement
TAG_REASON = "reason"  # on the rejections measurement

# The Grafana variable every region-scoped dashboard has: a region id, matched as a path segment.
REGION_VAR = "region"
REGION_MATCH = f'"{TAG_REGION}" =~ /\\/${REGION_VAR}\\//'

# A field every events point carries (events like door_forced have no data of their own): the message's seq.
EVENT_FIELD = "seq"
