"""What the dashboards assume about the stores: datasource uids, the InfluxDB schema, the SQL tables.

The InfluxDB schema is the adapter's (core/store/influx.py, docs/influxdb.md): a measurement per device type
(``gate``, ``vehicle``, ``energy_meter``, ``sensor``) and ``events``; tags ``device_id``, ``region`` (the device's
region id), ``region_path`` and ``device_type`` (and ``type`` on events); every point has the integer field ``seq``
(-1 when the message had none), so ``count("seq")`` counts points; an event's data is one JSON string field
``data``; device fields keep the protocol's names (docs/protocol.md). Device state, counters and rejections live in
the SQL database (tables ``telemetry_device_state`` and ``telemetry_rejections``, core/store/side.py).
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
ALL_TELEMETRY = "/^(gate|vehicle|energy_meter|sensor)$/"  # an InfluxQL measurement regex

# Tags
TAG_DEVICE = "device_id"
TAG_REGION = "region_path"  # e.g. /gd/gd-gz/agency-1/building-3/ (devices/registry.py)
TAG_TYPE = "device_type"
TAG_EVENT_TYPE = "type"  # on the events measurement

# Fields every point has / events carry
SEQ = "seq"  # integer, -1 when the message had none
EVENT_FIELD = SEQ
EVENT_DATA = "data"  # the event's data as a JSON string (orjson: no spaces), e.g. {"credential":"c1","result":"denied"}

# The Grafana variable every region-scoped dashboard has: a region id, matched as a path segment of region_path, so
# a region selects its whole subtree. Region ids are [a-z0-9-] (no regex metacharacters).
REGION_VAR = "region"
REGION_MATCH = f'"{TAG_REGION}" =~ /\\/${REGION_VAR}\\//'

# The map's basemap: an XYZ tile server inside the bureau's network, as a dashboard variable (a URL template with
# {z}/{x}/{y}). Empty by default: no basemap at all, the markers are drawn from their coordinates on a blank map,
# and nothing is fetched from the internet. `lianfang dashboards push --tile-url URL` sets it.
TILES_VAR = "tiles"
