"""The Grafana dashboards, built with grafana-foundation-sdk, and the JSON files generated from them.

``python -m dashboards.build`` (or ``make dashboards``) writes ``dashboards/generated/<uid>.json``; the files are
committed, provisioned by compose (docker/grafana/) and pushed by ``lianfang dashboards push``.
tests/dashboards/test_dashboards.py fails when a committed file differs from what this module builds.

Telemetry panels query InfluxDB in InfluxQL (datasource uid ``lianfang-influxdb``), alerts, incidents, regions and
risk come from Lianfang's SQL database (PostgreSQL, uid ``lianfang-postgres``). Titles are in Chinese (zh-CN).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, geomap, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import geomap as gm

from dashboards import schema as s
from dashboards.queries import SQL, Influx, sql_ref

GENERATED = Path(__file__).parent / "generated"
TAGS = ["lianfang"]
TIMEZONE = "Asia/Shanghai"
R = s.REGION_MATCH  # "region_path" =~ /\/$region\//
OPEN_ALERT = "state <> 'resolved'"
OPEN_INCIDENT = "state IN ('open', 'investigating')"
IN_REGION_SQL = "region_path LIKE '%/$region/%'"
# The InfluxDB backend's side store in the SQL database (core/store/side.py, migration 0012_telemetry_side).
SIDE_STATE = "telemetry_device_state"
SIDE_REJECTIONS = "telemetry_rejections"
# An access event's result is inside its JSON data (core/store/influx.py writes it with orjson: no spaces).
GRANTED = f'"{s.EVENT_DATA}" =~ /"result":"granted"/'
DENIED = f'"{s.EVENT_DATA}" =~ /"result":"denied"/'

PanelBuilder = cogbuilder.Builder[dm.Panel]


# ---------------------------------------------------------------------------------------------------------- helpers


def _region_variable() -> dash.QueryVariable:
    """The region picker: every region of the tree by name, its id as the value (a path segment of region_path)."""
    return (
        dash.QueryVariable(s.REGION_VAR)
        .label("区域")
        .datasource(sql_ref())
        .query("SELECT name AS __text, id AS __value FROM regions ORDER BY path")
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.DISABLED)
    )


def _tiles_variable() -> dash.TextBoxVariable:
    """The basemap's tile server (an internal XYZ URL template); empty: no basemap, nothing from the internet."""
    return (
        dash.TextBoxVariable(s.TILES_VAR)
        .label("底图瓦片地址（内网 XYZ）")
        .description(
            "内网瓦片服务器的 XYZ 地址模板，例如 http://tiles.internal/{z}/{x}/{y}.png；留空则不加载底图，"
            "只按坐标绘制（不访问互联网）。Internal XYZ tile server URL template; empty: no basemap."
        )
        .default_value("")
    )


def _dashboard(
    uid: str,
    title: str,
    description: str,
    panels: Sequence[PanelBuilder],
    *,
    region: bool,
    variables: Sequence[cogbuilder.Builder[dm.VariableModel]] = (),
) -> dash.Dashboard:
    d = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone(TIMEZONE)
        .time("now-24h", "now")
        .refresh("1m")
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )
    if region:
        d = d.with_variable(_region_variable())
    for v in variables:
        d = d.with_variable(v)
    for i, p in enumerate(panels, start=1):
        p.build().id_val = i  # stable ids (Grafana would number them on load; links and repeats need them)
        d = d.with_panel(_with_datasource(p))
    return d


def _with_datasource(panel: PanelBuilder) -> PanelBuilder:
    """Give a panel the datasource of its queries (all of one datasource) as its own, as Grafana's editor does."""
    model = panel.build()
    refs = {json.dumps(t.to_json()["datasource"], sort_keys=True) for t in model.targets or []}  # type: ignore[attr-defined]
    if len(refs) == 1:
        model.datasource = dm.DataSourceRef(**_ref_args(json.loads(refs.pop())))
    return panel


def _ref_args(ref: dict[str, str]) -> dict[str, str]:
    return {"type_val": ref["type"], "uid": ref["uid"]}


def _stat(title: str, query: cogbuilder.Builder, *, unit: str = "none", w: int = 6, h: int = 4) -> stat.Panel:  # type: ignore[type-arg]
    return (
        stat.Panel()
        .title(title)
        .with_target(query)
        .unit(unit)
        .span(w)
        .height(h)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.NONE)
    )


def _series(title: str, *queries: cogbuilder.Builder, unit: str = "none", w: int = 12, h: int = 8) -> timeseries.Panel:  # type: ignore[type-arg]
    p = timeseries.Panel().title(title).unit(unit).span(w).height(h)
    for q in queries:
        p = p.with_target(q)
    return p


def _table(title: str, *queries: cogbuilder.Builder, w: int = 12, h: int = 8) -> table.Panel:  # type: ignore[type-arg]
    p = table.Panel().title(title).span(w).height(h)
    for q in queries:
        p = p.with_target(q)
    return p


def _bars(title: str, query: cogbuilder.Builder, *, unit: str = "none", w: int = 12, h: int = 8) -> bargauge.Panel:  # type: ignore[type-arg]
    return (
        bargauge.Panel()
        .title(title)
        .with_target(query)
        .unit(unit)
        .span(w)
        .height(h)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(True))
    )


def _alerts_table(title: str, where: str, *, w: int = 24) -> table.Panel:
    return _table(
        title,
        SQL(
            f"""SELECT started_at AS "开始时间", severity AS "级别", state AS "状态", title_zh AS "告警",
            device_id AS "设备", region_path AS "区域", rule_id AS "规则"
            FROM alerts WHERE {where} ORDER BY started_at DESC LIMIT 200"""
        ),
        w=w,
    )


# ------------------------------------------------------------------------------------------------------- dashboards


def overview() -> dash.Dashboard:
    """控制室总览: the whole tree at a glance."""
    return _dashboard(
        "lf-overview",
        "联防 · 控制室总览",
        "全辖区：在线设备、未处理告警、进行中的联防事件、消息速率、区域风险。",
        [
            _stat(
                "在线设备（10 分钟内有数据，按类型）",
                Influx(
                    f"""SELECT count("{s.SEQ}") FROM (SELECT last("{s.SEQ}") AS "{s.SEQ}" FROM {s.ALL_TELEMETRY}
                    WHERE time > now() - 10m GROUP BY "{s.TAG_DEVICE}")"""
                ).alias("$measurement"),
            ),
            _stat("未处理告警", SQL(f'SELECT count(*) AS "未处理告警" FROM alerts WHERE {OPEN_ALERT}')),
            _stat("进行中的联防事件", SQL(f'SELECT count(*) AS "事件" FROM joint_incidents WHERE {OPEN_INCIDENT}')),
            _stat(
                "24 小时内的设备事件",
                Influx(f'SELECT count("{s.EVENT_FIELD}") FROM "{s.EVENTS}" WHERE time > now() - 1d'),
            ),
            _series(
                "数据点数（按设备类型）",
                Influx(
                    f"""SELECT count("{s.SEQ}") FROM {s.ALL_TELEMETRY} WHERE $timeFilter
                    GROUP BY time($__interval) fill(0)"""
                ).alias("$measurement"),
                w=12,
            ),
            _series(
                "新告警（按级别）",
                SQL(
                    """SELECT $__timeGroupAlias(started_at, $__interval), severity AS metric, count(*) AS value
                    FROM alerts WHERE $__timeFilter(started_at) GROUP BY 1, 2 ORDER BY 1"""
                ).time_series(),
                w=12,
            ),
            _bars(
                "风险最高的区域",
                SQL(
                    """SELECT r.name AS "区域", h.score AS "风险" FROM region_risk_history h
                    JOIN regions r ON r.id = h.region_id
                    WHERE h.at = (SELECT max(at) FROM region_risk_history) AND h.score > 0
                    ORDER BY h.score DESC LIMIT 10"""
                ),
            ),
            _table(
                "进行中的联防事件",
                SQL(
                    f"""SELECT opened_at AS "发生时间", severity AS "级别", state AS "状态", title_zh AS "事件",
                    scope_level AS "范围", region_path AS "区域" FROM joint_incidents
                    WHERE {OPEN_INCIDENT} ORDER BY opened_at DESC LIMIT 50"""
                ),
            ),
            _alerts_table("最新未处理告警", OPEN_ALERT),
        ],
        region=False,
    )


def region() -> dash.Dashboard:
    """区域详情: one region's subtree (the $region variable)."""
    return _dashboard(
        "lf-region",
        "联防 · 区域详情",
        "所选区域及其下级：告警、事件、风险走势、数据量、能耗、门禁与车辆。",
        [
            _stat("未处理告警", SQL(f'SELECT count(*) AS "告警" FROM alerts WHERE {OPEN_ALERT} AND {IN_REGION_SQL}')),
            _stat(
                "进行中的事件",
                SQL(f'SELECT count(*) AS "事件" FROM joint_incidents WHERE {OPEN_INCIDENT} AND {IN_REGION_SQL}'),
            ),
            _stat(
                "在线设备（10 分钟内有数据，按类型）",
                Influx(
                    f"""SELECT count("{s.SEQ}") FROM (SELECT last("{s.SEQ}") AS "{s.SEQ}" FROM {s.ALL_TELEMETRY}
                    WHERE time > now() - 10m AND {R} GROUP BY "{s.TAG_DEVICE}")"""
                ).alias("$measurement"),
            ),
            _stat(
                "当前总功率",
                Influx(
                    f"""SELECT sum("power_kw") FROM (SELECT last("power_kw") AS "power_kw" FROM "{s.ENERGY}"
                    WHERE $timeFilter AND {R} GROUP BY "{s.TAG_DEVICE}")"""
                ),
                unit="kwatt",
            ),
            _series(
                "区域风险走势",
                SQL(
                    """SELECT at AS time, score AS "风险", alerts AS "告警", incidents AS "事件"
                    FROM region_risk_history WHERE region_id = '$region' AND $__timeFilter(at) ORDER BY at"""
                ).time_series(),
            ),
            _series(
                "数据点数（按设备类型）",
                Influx(
                    f"""SELECT count("{s.SEQ}") FROM {s.ALL_TELEMETRY} WHERE $timeFilter AND {R}
                    GROUP BY time($__interval) fill(0)"""
                ).alias("$measurement"),
            ),
            _series(
                "功率（kW）",
                Influx(
                    f"""SELECT mean("power_kw") FROM "{s.ENERGY}" WHERE $timeFilter AND {R}
                    GROUP BY time($__interval), "{s.TAG_DEVICE}" fill(none)"""
                ).alias(f"$tag_{s.TAG_DEVICE}"),
                unit="kwatt",
            ),
            _series(
                "门禁通行次数",
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") FROM "{s.EVENTS}" WHERE $timeFilter AND {R}
                    AND "{s.TAG_EVENT_TYPE}" = 'access' GROUP BY time($__interval) fill(0)"""
                ).alias("通行"),
            ),
            _alerts_table("区域内告警", f"{IN_REGION_SQL} AND $__timeFilter(started_at)"),
        ],
        region=True,
    )


def gates() -> dash.Dashboard:
    """门禁: access, refusals, door alarms, occupancy."""
    access = f"""FROM "{s.EVENTS}" WHERE $timeFilter AND {R} AND "{s.TAG_EVENT_TYPE}" = 'access'"""
    return _dashboard(
        "lf-gates",
        "联防 · 门禁",
        "门禁通行（允许 / 拒绝）、强行开门、门长时间未关、防拆、在场人数。",
        [
            _series(
                "通行（允许 / 拒绝）",
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") {access} AND {GRANTED}
                    GROUP BY time($__interval) fill(0)"""
                )
                .alias("允许")
                .ref_id("A"),
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") {access} AND {DENIED}
                    GROUP BY time($__interval) fill(0)"""
                )
                .alias("拒绝")
                .ref_id("B"),
                unit="short",
            ),
            _series(
                "门禁报警事件",
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") FROM "{s.EVENTS}" WHERE $timeFilter AND {R}
                    AND "{s.TAG_EVENT_TYPE}" =~ /^(door_forced|door_held_open|tamper)$/
                    GROUP BY time($__interval), "{s.TAG_EVENT_TYPE}" fill(0)"""
                ).alias(f"$tag_{s.TAG_EVENT_TYPE}"),
                unit="short",
            ),
            _series(
                "在场人数",
                Influx(
                    f"""SELECT last("occupancy") FROM "{s.GATE}" WHERE $timeFilter AND {R}
                    GROUP BY time($__interval), "{s.TAG_DEVICE}" fill(previous)"""
                ).alias(f"$tag_{s.TAG_DEVICE}"),
            ),
            _table(
                "拒绝次数最多的门禁",
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") AS "拒绝次数" {access} AND {DENIED}
                    GROUP BY "{s.TAG_DEVICE}" """
                ).table(),
            ),
            _table(
                "最近的门禁报警",
                Influx(
                    f"""SELECT "{s.EVENT_DATA}", "{s.TAG_EVENT_TYPE}", "{s.TAG_DEVICE}" FROM "{s.EVENTS}"
                    WHERE $timeFilter AND {R} AND "{s.TAG_EVENT_TYPE}" =~ /^(door_forced|door_held_open|tamper)$/
                    ORDER BY time DESC LIMIT 100"""
                ).table(),
                w=24,
            ),
        ],
        region=True,
    )


def vehicles() -> dash.Dashboard:
    """公务车辆: positions on a map, trips, utilisation, speed."""
    positions = (
        geomap.Panel()
        .title("车辆位置（最新）")
        .span(24)
        .height(12)
        .with_target(
            Influx(
                f"""SELECT last("lat") AS "lat", last("lon") AS "lon", last("speed_kmh") AS "speed_kmh"
                FROM "{s.VEHICLE}" WHERE $timeFilter AND {R} GROUP BY "{s.TAG_DEVICE}" """
            ).table()
        )
        .view(geomap.MapViewConfig().id("fit").zoom(10))
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True))
        # An XYZ layer whose URL is the $tiles variable (Grafana interpolates it): empty draws no basemap. Never a
        # built-in internet basemap (osm-standard, carto, esri-xyz, or "default", which is CARTO unless the server
        # configures one): tests/dashboards/test_dashboards.py fails on any internet host.
        .basemap(
            common.MapLayerOptions().type("xyz").name("底图").config({"url": f"${s.TILES_VAR}", "attribution": ""})
        )
        .layers(
            [
                common.MapLayerOptions()
                .type("markers")
                .name("车辆")
                .location(
                    common.FrameGeometrySource()
                    .mode(cm.FrameGeometrySourceMode.COORDS)
                    .latitude("lat")
                    .longitude("lon")
                )
            ]
        )
        .tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS))
    )
    on = f"""FROM "{s.VEHICLE}" WHERE $timeFilter AND {R}"""
    utilisation = _table(
        "车辆使用率（点火时间占比）",
        Influx(f"""SELECT count("ignition") AS "on" {on} AND "ignition" = true GROUP BY "{s.TAG_DEVICE}" """)
        .table()
        .ref_id("A"),
        Influx(f"""SELECT count("ignition") AS "all" {on} GROUP BY "{s.TAG_DEVICE}" """).table().ref_id("B"),
        w=12,
    )
    utilisation = utilisation.with_transformation(
        dm.DataTransformerConfig(id_val="merge", options={})
    ).with_transformation(
        dm.DataTransformerConfig(
            id_val="calculateField",
            options={
                "alias": "使用率",
                "mode": "binary",
                "binary": {"left": "on", "operator": "/", "right": "all"},
                "replaceFields": False,
            },
        )
    )
    return _dashboard(
        "lf-vehicles",
        "联防 · 公务车辆",
        "车辆位置、出车次数（点火）、使用率、车速与急刹急加速。",
        [
            positions,
            _bars(
                "出车次数（点火次数）",
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") AS "出车次数" FROM "{s.EVENTS}" WHERE $timeFilter AND {R}
                    AND "{s.TAG_EVENT_TYPE}" = 'ignition_on' GROUP BY "{s.TAG_DEVICE}" """
                ).table(),
            ),
            utilisation,
            _series(
                "车速（km/h）",
                Influx(
                    f"""SELECT mean("speed_kmh") {on} GROUP BY time($__interval), "{s.TAG_DEVICE}" fill(none)"""
                ).alias(f"$tag_{s.TAG_DEVICE}"),
                unit="velocitykmh",
            ),
            _series(
                "急刹 / 急加速 / 断电",
                Influx(
                    f"""SELECT count("{s.EVENT_FIELD}") FROM "{s.EVENTS}" WHERE $timeFilter AND {R}
                    AND "{s.TAG_EVENT_TYPE}" =~ /^(harsh_brake|harsh_accel|power_cut)$/
                    GROUP BY time($__interval), "{s.TAG_EVENT_TYPE}" fill(0)"""
                ).alias(f"$tag_{s.TAG_EVENT_TYPE}"),
                unit="short",
            ),
        ],
        region=True,
        variables=[_tiles_variable()],
    )


def energy() -> dash.Dashboard:
    """能耗: power against its baseline (the same hours a week before), daily consumption, baseline alerts."""
    power = f"""SELECT sum("power_kw") FROM (SELECT mean("power_kw") AS "power_kw" FROM "{s.ENERGY}"
        WHERE $timeFilter AND {R} GROUP BY time($__interval), "{s.TAG_DEVICE}") GROUP BY time($__interval) fill(none)"""
    return _dashboard(
        "lf-energy",
        "联防 · 能耗",
        "区域总功率与基线（上周同期）、每日用电量、功率因数、基线告警。",
        [
            _series("区域总功率（kW）", Influx(power).alias("本期"), unit="kwatt", w=12),
            _series("基线：上周同期总功率（kW）", Influx(power).alias("上周同期"), unit="kwatt", w=12).time_shift("7d"),
            _bars(
                "每日用电量（kWh，按电表）",
                Influx(
                    f"""SELECT spread("energy_kwh") AS "kWh" FROM "{s.ENERGY}" WHERE $timeFilter AND {R}
                    GROUP BY "{s.TAG_DEVICE}" """
                ).table(),
                unit="kwatth",
            ),
            _series(
                "功率因数",
                Influx(
                    f"""SELECT mean("power_factor") FROM "{s.ENERGY}" WHERE $timeFilter AND {R}
                    GROUP BY time($__interval), "{s.TAG_DEVICE}" fill(none)"""
                ).alias(f"$tag_{s.TAG_DEVICE}"),
            ),
            _alerts_table(
                "基线与需量告警",
                f"{IN_REGION_SQL} AND $__timeFilter(started_at)"
                " AND (rule_id LIKE '%baseline%' OR rule_id LIKE '%demand%')",
            ),
        ],
        region=True,
    )


def alerts() -> dash.Dashboard:
    """告警与联防事件: from Lianfang's SQL database."""
    return _dashboard(
        "lf-alerts",
        "联防 · 告警与事件",
        "告警（按级别、规则、状态）、处置时长、联防事件与部门任务。",
        [
            _series(
                "新告警（按级别）",
                SQL(
                    f"""SELECT $__timeGroupAlias(started_at, $__interval), severity AS metric, count(*) AS value
                    FROM alerts WHERE $__timeFilter(started_at) AND {IN_REGION_SQL} GROUP BY 1, 2 ORDER BY 1"""
                ).time_series(),
            ),
            _bars(
                "告警最多的规则",
                SQL(
                    f"""SELECT rule_id AS "规则", count(*) AS "告警数" FROM alerts
                    WHERE $__timeFilter(started_at) AND {IN_REGION_SQL}
                    GROUP BY rule_id ORDER BY count(*) DESC LIMIT 10"""
                ),
            ),
            piechart.Panel()
            .title("未处理告警状态")
            .span(8)
            .height(8)
            .with_target(
                SQL(
                    f"""SELECT state AS "状态", count(*) AS "数量" FROM alerts WHERE {OPEN_ALERT} AND {IN_REGION_SQL}
                    GROUP BY state"""
                )
            )
            .reduce_options(common.ReduceDataOptions().values(True).calcs(["lastNotNull"])),
            _table(
                "平均确认 / 解决时长（分钟，按级别）",
                SQL(
                    f"""SELECT severity AS "级别", count(*) AS "告警数",
                    avg(EXTRACT(EPOCH FROM (acknowledged_at - started_at))) / 60 AS "平均确认",
                    avg(EXTRACT(EPOCH FROM (resolved_at - started_at))) / 60 AS "平均解决"
                    FROM alerts WHERE $__timeFilter(started_at) AND {IN_REGION_SQL} GROUP BY severity"""
                ),
                w=16,
            ),
            _table(
                "联防事件",
                SQL(
                    f"""SELECT opened_at AS "发生时间", severity AS "级别", state AS "状态", title_zh AS "事件",
                    type AS "类型", scope_level AS "范围", region_path AS "区域",
                    (SELECT count(*) FROM joint_incident_members m WHERE m.incident_id = i.id) AS "关联告警"
                    FROM joint_incidents i WHERE $__timeFilter(opened_at) AND {IN_REGION_SQL}
                    ORDER BY opened_at DESC LIMIT 100"""
                ),
                w=24,
            ),
            _table(
                "未完成的部门任务",
                SQL(
                    f"""SELECT t.department AS "部门", t.state AS "状态", t.deadline AS "期限",
                    i.title_zh AS "事件", i.region_path AS "区域" FROM joint_tasks t
                    JOIN joint_incidents i ON i.id = t.incident_id
                    WHERE t.state <> 'closed' AND i.{IN_REGION_SQL} ORDER BY t.deadline"""
                ),
            ),
            _alerts_table("告警列表", f"$__timeFilter(started_at) AND {IN_REGION_SQL}", w=12),
        ],
        region=True,
    )


def data_quality() -> dash.Dashboard:
    """数据质量: points per type, messages without seq, seq span against points, devices that went quiet."""
    every = "/^(gate|vehicle|energy_meter|sensor|events)$/"
    # Ingest's exact counters and its rejections (the InfluxDB backend keeps them in the SQL database,
    # core/store/side.py), scoped to the region through the registry; a rejection of an unknown device has no
    # region and shows in no region's view ($__from/$__to: the time range in epoch ms).
    in_region = (
        "JOIN devices d ON d.id = x.device_id JOIN regions r ON r.id = d.region_id WHERE r.path LIKE '%/$region/%'"
    )
    return _dashboard(
        "lf-data-quality",
        "联防 · 数据质量",
        "数据点数、未带序号的消息、序号跨度与点数之差（缺口估计）、拒收消息与 ingest 的精确统计、长时间无数据的设备。",
        [
            _series(
                "数据点数（按类型）",
                Influx(
                    f"""SELECT count("{s.SEQ}") FROM {every} WHERE $timeFilter AND {R}
                    GROUP BY time($__interval) fill(0)"""
                ).alias("$measurement"),
                unit="short",
            ),
            _series(
                "未带 seq 的数据点（无法判断重复与缺口）",
                Influx(
                    f"""SELECT count("{s.SEQ}") FROM {every} WHERE $timeFilter AND {R} AND "{s.SEQ}" < 0
                    GROUP BY time($__interval) fill(0)"""
                ).alias("$measurement"),
                unit="short",
            ),
            _table(
                "序号缺口估计（seq 跨度 + 1 − 点数；遥测与事件分别计算）",
                Influx(
                    f"""SELECT spread("{s.SEQ}") + 1 - count("{s.SEQ}") AS "缺口估计", count("{s.SEQ}") AS "点数",
                    min("{s.SEQ}") AS "最小 seq", max("{s.SEQ}") AS "最大 seq" FROM {every}
                    WHERE $timeFilter AND {R} AND "{s.SEQ}" >= 0 GROUP BY "{s.TAG_DEVICE}" """
                ).table(),
            ),
            _table(
                "拒收消息（按原因）",
                SQL(
                    f"""SELECT x.reason AS "原因", count(*) AS "次数", count(DISTINCT x.device_id) AS "设备数"
                    FROM {SIDE_REJECTIONS} x {in_region} AND x.received_ms >= $__from AND x.received_ms < $__to
                    GROUP BY x.reason ORDER BY 2 DESC"""
                ),
            ),
            _table(
                "ingest 精确统计（缺口、重复、非标准、拒收；累计）",
                SQL(
                    f"""SELECT x.device_id AS "设备", x.messages AS "消息", x.gaps AS "缺口", x.duplicates AS "重复",
                    x.nonstandard AS "非标准", x.rejected AS "拒收" FROM {SIDE_STATE} x {in_region}
                    ORDER BY x.gaps DESC, x.rejected DESC LIMIT 100"""
                ),
            ),
            _table(
                "设备最后一次上报（最早的在前：久未上报）",
                Influx(
                    f"""SELECT last("{s.SEQ}") AS "最后 seq" FROM {s.ALL_TELEMETRY} WHERE time > now() - 30d AND {R}
                    GROUP BY "{s.TAG_DEVICE}" """
                ).table(),
                w=24,
            ).with_transformation(
                dm.DataTransformerConfig(id_val="sortBy", options={"sort": [{"field": "Time", "desc": False}]})
            ),
        ],
        region=True,
    )


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "overview": overview,
    "region": region,
    "gates": gates,
    "vehicles": vehicles,
    "energy": energy,
    "alerts": alerts,
    "data-quality": data_quality,
}


# -------------------------------------------------------------------------------------------------------- rendering


def render(name: str) -> str:
    """One dashboard's JSON, as committed: sorted keys, two-space indent, a final newline."""
    model = DASHBOARDS[name]().build()
    return json.dumps(json.loads(JSONEncoder().encode(model)), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    """file name -> JSON text, for every dashboard."""
    return {f"{name}.json": render(name) for name in DASHBOARDS}


def write(directory: Path = GENERATED) -> list[Path]:
    """Write every dashboard's JSON into ``directory``; remove generated files of dashboards that are gone."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render_all()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    out = []
    for fname, body in files.items():
        path = directory / fname
        path.write_text(body, encoding="utf-8")
        out.append(path)
    return out


def stale_files(directory: Path = GENERATED) -> list[str]:
    """Names of committed files that differ from what the builder makes (or are missing, or left over)."""
    files = render_all()
    bad = [
        f for f, text in files.items() if not (directory / f).is_file() or (directory / f).read_text("utf-8") != text
    ]
    bad += [p.name for p in directory.glob("*.json") if p.name not in files]
    return sorted(bad)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs from the builder")
    parser.add_argument("--out", type=Path, default=GENERATED)
    args = parser.parse_args(argv)
    if args.check:
        bad = stale_files(args.out)
        if bad:
            print("dashboards out of date (run `make dashboards`): " + ", ".join(bad), file=sys.stderr)
            return 1
        return 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
