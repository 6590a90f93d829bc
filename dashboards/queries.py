"""Typed data queries for the two datasources the dashboards use.

grafana-foundation-sdk (the build pinned to the Grafana that compose runs) ships typed queries for Prometheus, Loki
and others but not for InfluxDB (InfluxQL) or the SQL datasources. Its extension point is a ``Dataquery`` variant
with a ``Builder``: these two are that, so panels take them like the SDK's own queries and the JSON is what Grafana
11's InfluxDB (InfluxQL mode, raw query) and PostgreSQL datasources save.
"""

from __future__ import annotations

from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from dashboards import schema

InfluxFormat = Literal["time_series", "table"]
SQLFormat = Literal["time_series", "table"]


def influx_ref() -> DataSourceRef:
    return DataSourceRef(type_val=schema.INFLUX_TYPE, uid=schema.INFLUX_UID)


def sql_ref() -> DataSourceRef:
    return DataSourceRef(type_val=schema.SQL_TYPE, uid=schema.SQL_UID)


class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL query of the InfluxDB datasource (InfluxQL mode)."""

    def __init__(self, query: str, ref_id: str = "A", result_format: InfluxFormat = "time_series", alias: str = ""):
        self.query = query
        self.ref_id = ref_id
        self.result_format = result_format
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "datasource": influx_ref().to_json(),
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


class SQLQuery(cogvariants.Dataquery):
    """A raw SQL query of the PostgreSQL datasource (code mode)."""

    def __init__(self, sql: str, ref_id: str = "A", result_format: SQLFormat = "table"):
        self.sql = sql
        self.ref_id = ref_id
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": sql_ref().to_json(),
            "editorMode": "code",
            "format": self.result_format,
            "rawQuery": True,
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


class Influx(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of an :class:`InfluxQLQuery`."""

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(" ".join(query.split()))

    def build(self) -> cogvariants.Dataquery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self

    def alias(self, alias: str) -> Self:
        self._internal.alias = alias
        return self


class SQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of a :class:`SQLQuery`."""

    def __init__(self, sql: str) -> None:
        self._internal = SQLQuery(" ".join(sql.split()))

    def build(self) -> cogvariants.Dataquery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def time_series(self) -> Self:
        self._internal.result_format = "time_series"
        return self
