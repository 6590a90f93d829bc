"""Every panel's query and every variable of the generated dashboards runs against real servers on seeded data.

InfluxQL: a real InfluxDB 1.6 (Debian's ``influxd``, InfluxQL on ``/query``) on free ports with a temporary
config, seeded through its ``/write`` with the line protocol of the InfluxDB adapter itself
(``core.store.influx.batch_lines``), so the dashboards read what the adapter writes. SQL: Lianfang's migrated
database (SQLite, and PostgreSQL where it runs), seeded through SQLAlchemy. Grafana's variables and macros are
replaced by concrete values first, as Grafana would; the SQL macros are expanded the way Grafana's PostgreSQL
datasource expands them (and into SQLite's equivalents on SQLite). No Grafana server runs here: this checks the
queries, not the rendering.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, MetaData, insert, text

from core.db import make_engine, migrate
from core.protocol import Event, Reading
from core.store.influx import batch_lines
from dashboards import build
from tests.influx_servers import Server, seed_influxd

DB = "telemetry"
REGION = "gz"  # the value the $region variable gets: a region id, a path segment of region_path
PATHS = {"b1": "/gd/gz/b1/", "b2": "/gd/gz/b2/", "s1": "/gd/sz/s1/"}
INTERVAL = "10m"


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref_id: str
    kind: str  # influxql | sql
    text: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref_id}"


def _queries() -> list[Query]:
    out = []
    for path in sorted(build.GENERATED.glob("*.json")):
        model = json.loads(path.read_text("utf-8"))
        for v in model.get("templating", {}).get("list", []):
            if v["type"] != "query":
                continue  # a textbox (the basemap's tile URL) queries nothing
            kind = "sql" if "postgres" in v["datasource"]["type"] else "influxql"
            out.append(Query(path.stem, f"variable {v['name']}", "-", kind, v["query"]))
        for p in model["panels"]:
            for t in p.get("targets", []):
                if "rawSql" in t:
                    out.append(Query(path.stem, p["title"], t["refId"], "sql", t["rawSql"]))
                else:
                    out.append(Query(path.stem, p["title"], t["refId"], "influxql", t["query"]))
    return out


QUERIES = _queries()
INFLUX_QUERIES = [q for q in QUERIES if q.kind == "influxql"]
SQL_QUERIES = [q for q in QUERIES if q.kind == "sql"]


def _meaningful(values: list[Any]) -> bool:
    return any(v not in (None, 0, "", False) for v in values)


# --- InfluxQL ------------------------------------------------------------------------------------------------


def _seed_lines(now_ms: int) -> list[str]:
    readings: list[Reading] = []
    events: list[Event] = []
    t0 = now_ms - 90 * 60_000
    for i in range(90):
        t = t0 + i * 60_000
        seq = i if i != 40 else None  # one message without seq
        readings.append(
            Reading(
                "meter-b1-1",
                "b1",
                "energy_meter",
                t,
                seq,
                {"energy_kwh": 1000.0 + i * 0.5, "power_kw": 10.0 + i % 7, "power_factor": 0.95},
            )
        )
        readings.append(Reading("meter-b2-1", "b2", "energy_meter", t, i, {"energy_kwh": 50.0 + i, "power_kw": 3.0}))
        readings.append(Reading("gate-b1-1", "b1", "gate", t, 2 * i, {"door_open": i % 10 == 0, "occupancy": 4.0}))
        events.append(
            Event(
                "gate-b1-1",
                "b1",
                "gate",
                t + 10,
                2 * i + 1,
                "access",
                {"credential": f"card:{i}", "result": "denied" if i % 4 == 0 else "granted", "direction": "in"},
            )
        )
        readings.append(
            Reading(
                "car-b1-1",
                "b1",
                "vehicle",
                t,
                3 * i if i != 50 else 3 * i + 2,  # a gap
                {"lat": 23.12 + i / 1000, "lon": 113.26, "speed_kmh": 30.0 + i % 20, "ignition": i % 3 != 0},
            )
        )
        if i % 15 == 0:
            events.append(Event("car-b1-1", "b1", "vehicle", t + 20, 3 * i + 1, "ignition_on", {}))
    readings.append(Reading("sensor-s1-1", "s1", "sensor", t0, 1, {"temperature_c": 21.5}))
    for k, kind in enumerate(("door_forced", "door_held_open", "tamper")):
        events.append(
            Event("gate-b1-1", "b1", "gate", t0 + 30_000 + k, None, kind, {"duration_s": 90} if k == 1 else {})
        )
    for k, kind in enumerate(("harsh_brake", "harsh_accel", "power_cut")):
        events.append(Event("car-b1-1", "b1", "vehicle", t0 + 40_000 + k, None, kind, {}))
    return batch_lines(readings, events, lambda r: PATHS[r])


@pytest.fixture(scope="module")
def influxdb(influxdb_module: Server) -> str:
    """The shared InfluxDB 1.6 (tests/influx_servers.py), database ``telemetry`` seeded like the adapter writes."""
    seed_influxd(influxdb_module, DB, _seed_lines(time.time_ns() // 1_000_000))
    return influxdb_module.url


def _influxql(q: str) -> str:
    """Grafana's substitutions of the InfluxDB datasource, with concrete values."""
    q = q.replace("$timeFilter", "time > now() - 6h").replace("$__interval", INTERVAL)
    q = q.replace("$region", REGION)
    assert not re.search(r"\$[A-Za-z_{]", q), q  # every Grafana variable replaced ($/ ends a regex)
    return q


def _run_influxql(url: str, q: str) -> list[dict[str, Any]]:
    r = httpx.get(url + "/query", params={"db": DB, "q": q, "epoch": "ms"}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and "error" not in body, (q, body)
    out = []
    for result in body["results"]:
        assert "error" not in result, (q, result["error"])
        out.extend(result.get("series", []))
    return out


@pytest.mark.parametrize("query", INFLUX_QUERIES, ids=[q.id for q in INFLUX_QUERIES])
def test_influxql_query_runs_and_returns_the_seeded_data(influxdb: str, query: Query) -> None:
    series = _run_influxql(influxdb, _influxql(query.text))
    assert series, f"no rows for {query.id}: {query.text}"
    values = [v for s in series for row in s["values"] for v in row[1:]]
    assert _meaningful(values), f"only empty values for {query.id}: {series}"


def test_influxql_region_filter_selects_the_subtree_only(influxdb: str) -> None:
    q = next(q for q in INFLUX_QUERIES if q.dashboard == "data-quality" and q.panel.startswith("设备最后一次上报"))
    devices = {s["tags"]["device_id"] for s in _run_influxql(influxdb, _influxql(q.text))}
    assert devices == {"meter-b1-1", "meter-b2-1", "gate-b1-1", "car-b1-1"}  # not sensor-s1-1 of sz
    devices_b2 = {s["tags"]["device_id"] for s in _run_influxql(influxdb, _influxql(q.text).replace("gz", "b2"))}
    assert devices_b2 == {"meter-b2-1"}


def test_influxql_a_broken_query_is_reported(influxdb: str) -> None:
    """The check above can fail: a query with an unknown function is an error, not an empty answer."""
    with pytest.raises(AssertionError):
        _run_influxql(influxdb, 'SELECT nosuchfunc("seq") FROM "gate" WHERE time > now() - 1h')


def test_gate_denied_filter_reads_the_adapters_json_data(influxdb: str) -> None:
    q = next(q for q in INFLUX_QUERIES if q.panel == "拒绝次数最多的门禁")
    series = _run_influxql(influxdb, _influxql(q.text))
    assert [(s["tags"]["device_id"], s["values"][0][1]) for s in series] == [("gate-b1-1", 23)]  # i % 4 == 0 of 90


# --- SQL -------------------------------------------------------------------------------------------------------


def _seed_sql(engine: Engine, now: datetime) -> None:
    meta = MetaData()
    meta.reflect(engine)
    t = meta.tables
    ms = int(now.timestamp() * 1000)
    with engine.begin() as conn:
        regions = [
            ("gd", "广东省", "province", None, "/gd/"),
            ("gz", "广州市", "city", "gd", "/gd/gz/"),
            ("b1", "一号楼", "building", "gz", "/gd/gz/b1/"),
            ("sz", "深圳市", "city", "gd", "/gd/sz/"),
        ]
        for rid, name, level, parent, path in regions:
            conn.execute(
                insert(t["regions"]).values(id=rid, name=name, level=level, parent_id=parent, path=path, created_at=now)
            )
        alerts = [
            (1, "threshold-temp", "firing", "critical", None, None, "b1", "/gd/gz/b1/"),
            (2, "energy-baseline", "acknowledged", "warning", 5, None, "b1", "/gd/gz/b1/"),
            (3, "gate-forced", "resolved", "critical", 2, 30, "b1", "/gd/gz/b1/"),
            (4, "threshold-temp", "firing", "info", None, None, "sz", "/gd/sz/"),
        ]
        for aid, rule, state, sev, ack_min, res_min, region, path in alerts:
            started = now - timedelta(hours=aid)
            conn.execute(
                insert(t["alerts"]).values(
                    id=aid,
                    dedup_key=f"k{aid}",
                    open_key=None if state == "resolved" else f"k{aid}",
                    rule_id=rule,
                    device_id=f"dev-{aid}",
                    region_id=region,
                    region_path=path,
                    severity=sev,
                    state=state,
                    title_zh=f"告警{aid}",
                    title_en=f"alert {aid}",
                    started_at=started,
                    updated_at=started,
                    detail={},
                    acknowledged_at=None if ack_min is None else started + timedelta(minutes=ack_min),
                    resolved_at=None if res_min is None else started + timedelta(minutes=res_min),
                    learned_at=started,
                )
            )
        conn.execute(
            insert(t["joint_incidents"]).values(
                id=1,
                pattern_id="x2",
                type="intrusion",
                title_zh="联防事件一",
                title_en="incident 1",
                severity="critical",
                state="open",
                scope_level="city",
                region_id="gz",
                region_path="/gd/gz/",
                group_key="x2:gz",
                open_key="x2:gz",
                opened_at=now - timedelta(hours=1),
                updated_at=now,
                detail={},
            )
        )
        conn.execute(
            insert(t["joint_incident_members"]).values(
                incident_id=1, alert_id=1, added_at=now, rule_id="threshold-temp", device_id="dev-1", region_id="b1"
            )
        )
        conn.execute(
            insert(t["joint_tasks"]).values(
                id=1,
                incident_id=1,
                department="保卫处",
                state="open",
                created_at=now,
                deadline=now + timedelta(hours=1),
            )
        )
        # the InfluxDB backend's side store (core/store/side.py): a device of gz's building and one of sz
        for dev, region in (("gate-b1-1", "b1"), ("meter-sz-1", "sz")):
            conn.execute(
                insert(t["devices"]).values(
                    id=dev, type="gate", region_id=region, attributes={}, created_at=now, updated_at=now
                )
            )
            conn.execute(
                insert(t["telemetry_device_state"]).values(
                    device_id=dev, last_seen_ms=ms, messages=90, gaps=3, duplicates=1, nonstandard=0, rejected=2
                )
            )
            for reason in ("schema", "schema", "timestamp"):
                conn.execute(
                    insert(t["telemetry_rejections"]).values(
                        received_ms=ms - 60_000,
                        device_id=dev,
                        topic=f"lf/v1/{dev}/telemetry",
                        reason=reason,
                        detail="",
                        payload=b"{}",
                    )
                )
        for k in range(3):
            at = now - timedelta(minutes=10 * k)
            for rid, score in (("gz", 5.0 + k), ("sz", 1.0)):
                conn.execute(
                    insert(t["region_risk_history"]).values(
                        region_id=rid, at=at, score=score, own=score, alerts=2, incidents=1
                    )
                )


def _sql(q: str, dialect: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros expanded (on SQLite into SQLite's equivalents), variables replaced."""
    q = q.replace("$__interval", INTERVAL).replace("$region", REGION)
    # Grafana's global $__from / $__to: the time range in epoch milliseconds
    q = q.replace("$__from", str(int(start.timestamp() * 1000))).replace("$__to", str(int(end.timestamp() * 1000)))
    seconds = 600

    def group(m: re.Match[str]) -> str:
        col = m.group(1)
        if dialect == "postgresql":
            return f'floor(extract(epoch from {col})/{seconds})*{seconds} AS "time"'
        return f"(CAST(strftime('%s', {col}) AS INTEGER) / {seconds}) * {seconds} AS \"time\""

    q = re.sub(r"\$__timeGroupAlias\((\w+),\s*\w+\)", group, q)
    fmt = "%Y-%m-%dT%H:%M:%SZ" if dialect == "postgresql" else "%Y-%m-%d %H:%M:%S"
    q = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: f"{m.group(1)} BETWEEN '{start:{fmt}}' AND '{end:{fmt}}'", q)
    if dialect == "sqlite":
        q = re.sub(
            r"EXTRACT\(EPOCH FROM \((\w+) - (\w+)\)\)", r"((julianday(\1) - julianday(\2)) * 86400)", q, flags=re.I
        )
    assert "$" not in q, q
    return q


@pytest.fixture
def sql_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    _seed_sql(engine, datetime.now(UTC).replace(microsecond=0))
    yield engine
    engine.dispose()


def test_sql_queries_run_and_return_the_seeded_rows(sql_engine: Engine) -> None:
    """Every SQL panel and variable, on this database (one test per backend: the database is made once)."""
    dialect = sql_engine.dialect.name
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=6), now + timedelta(minutes=1)
    failures = []
    with sql_engine.connect() as conn:
        for q in SQL_QUERIES:
            stmt = _sql(q.text, dialect, start, end)
            try:
                rows = conn.execute(text(stmt)).fetchall()
            except Exception as exc:  # collected, so one run names every broken query
                failures.append(f"{q.id}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                conn.rollback()
                continue
            if not rows or not _meaningful([v for row in rows for v in row]):
                failures.append(f"{q.id}: no rows ({stmt})")
    assert not failures, "\n".join(failures)


def test_sql_region_variable_resolves_to_region_ids(sql_engine: Engine) -> None:
    q = next(q for q in SQL_QUERIES if q.panel == "variable region")
    with sql_engine.connect() as conn:
        rows = conn.execute(text(q.text)).mappings().fetchall()
    assert [(r["__value"], r["__text"]) for r in rows] == [
        ("gd", "广东省"),
        ("gz", "广州市"),
        ("b1", "一号楼"),
        ("sz", "深圳市"),
    ]


def test_sql_region_scope_leaves_other_regions_out(sql_engine: Engine) -> None:
    q = next(q for q in SQL_QUERIES if q.dashboard == "region" and q.panel == "未处理告警")
    now = datetime.now(UTC)
    with sql_engine.connect() as conn:
        (n,) = conn.execute(text(_sql(q.text, sql_engine.dialect.name, now, now))).one()
    assert n == 2  # alerts 1 and 2 of gz's building; not 3 (resolved) nor 4 (sz)


def test_every_panel_query_is_checked() -> None:
    """A dashboard that grows a query of another kind must grow a check too."""
    models = [json.loads(p.read_text("utf-8")) for p in build.GENERATED.glob("*.json")]
    targets = sum(len(p.get("targets", [])) for m in models for p in m["panels"])
    variables = sum(1 for m in models for v in m.get("templating", {}).get("list", []) if v["type"] == "query")
    assert len(INFLUX_QUERIES) + len(SQL_QUERIES) == targets + variables
    assert len(SQL_QUERIES) > 10 and len(INFLUX_QUERIES) > 20


def test_sql_side_store_panels_are_scoped_to_the_region(sql_engine: Engine) -> None:
    """Rejections by reason and ingest's counters come from the side store's tables, for the region's devices only."""
    now = datetime.now(UTC)
    by_panel = {q.panel: q for q in SQL_QUERIES if q.dashboard == "data-quality"}
    dialect = sql_engine.dialect.name
    rejections = by_panel["拒收消息（按原因）"].text
    exact = by_panel["ingest 精确统计（缺口、重复、非标准、拒收；累计）"].text
    day = timedelta(days=1)
    with sql_engine.connect() as conn:
        reasons = conn.execute(text(_sql(rejections, dialect, now - timedelta(hours=1), now))).all()
        counters = conn.execute(text(_sql(exact, dialect, now, now))).all()
        before = conn.execute(text(_sql(rejections, dialect, now - 2 * day, now - day))).all()
    assert [tuple(r) for r in reasons] == [("schema", 2, 1), ("timestamp", 1, 1)]  # gz's gate only, not sz's meter
    assert [(r[0], r[2], r[5]) for r in counters] == [("gate-b1-1", 3, 2)]
    assert before == []  # outside the time range
