#!/bin/bash
# InfluxDB 2.7 init script (run once, after DOCKER_INFLUXDB_INIT_MODE=setup created the org, bucket and admin
# token; the image runs /docker-entrypoint-initdb.d/*.sh only on first start with an empty data volume).
#
# Lianfang reads telemetry in InfluxQL on /query (docs/influxdb.md), which InfluxDB 2 answers only through a
# DBRP mapping: database LIANFANG_INFLUX_DATABASE, retention policy "autogen" -> the telemetry bucket. The
# database name must equal the service's LIANFANG_STORE__INFLUX_DATABASE and Grafana's datasource dbName
# ("telemetry"). `lianfang store check` then reports "influxql database ... autogen (default)".
#
# The influx CLI inside the container is already configured by the setup step (host, org and admin token), so
# no token appears on a command line.
set -euo pipefail

db="${LIANFANG_INFLUX_DATABASE:-telemetry}"
org="${DOCKER_INFLUXDB_INIT_ORG:?}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET:?}"
bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID:-}"
if [ -z "$bucket_id" ]; then
  bucket_id="$(influx bucket list --org "$org" --name "$bucket" --hide-headers | awk 'NR == 1 { print $1 }')"
fi
if [ -z "$bucket_id" ]; then
  echo "create-dbrp: bucket $bucket not found in org $org" >&2
  exit 1
fi

if influx v1 dbrp list --org "$org" --db "$db" --hide-headers 2>/dev/null | grep -q .; then
  echo "create-dbrp: a mapping for database $db exists; left alone"
  exit 0
fi
influx v1 dbrp create --org "$org" --db "$db" --rp autogen --bucket-id "$bucket_id" --default
echo "create-dbrp: database $db / rp autogen -> bucket $bucket ($bucket_id)"
