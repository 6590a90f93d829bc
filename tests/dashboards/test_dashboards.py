"""The generated dashboards: committed JSON equals the builder's output, structure, provisioning, compose wiring."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from dashboards import build, schema

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "docker" / "grafana" / "provisioning"
CJK = re.compile(r"[\u4e00-\u9fff]")
# Grafana's own variables and macros a query may use without defining them ($__from/$__to: the range in epoch ms)
GRAFANA_VARIABLES = {"timeFilter", "__interval", "__timeFilter", "__timeGroupAlias", "__from", "__to"}


def _models() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(build.GENERATED.glob("*.json"))}


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in model.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_generated_json_matches_the_builder() -> None:
    bad = build.stale_files()
    assert not bad, f"dashboards/generated is out of date (run `make dashboards`): {bad}"


def test_stale_files_finds_an_edited_a_missing_and_a_leftover_file(tmp_path: Path) -> None:
    build.write(tmp_path)
    assert build.stale_files(tmp_path) == []
    edited = tmp_path / "gates.json"
    edited.write_text(edited.read_text("utf-8").replace("门禁", "门禁X", 1), "utf-8")
    (tmp_path / "energy.json").unlink()
    shutil.copy(tmp_path / "alerts.json", tmp_path / "old.json")
    assert build.stale_files(tmp_path) == ["energy.json", "gates.json", "old.json"]
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.stale_files(tmp_path) == []


def test_every_dashboard_the_issue_asks_for_is_there_with_chinese_titles() -> None:
    models = _models()
    assert set(models) == {f"{n}.json" for n in build.DASHBOARDS}
    assert {m["uid"] for m in models.values()} == {
        "lf-overview",
        "lf-region",
        "lf-gates",
        "lf-vehicles",
        "lf-energy",
        "lf-alerts",
        "lf-data-quality",
    }
    for name, m in models.items():
        assert CJK.search(m["title"]), name
        assert m["timezone"] == "Asia/Shanghai"
        panels = _panels(m)
        assert panels, name
        assert sorted(p["id"] for p in panels) == list(range(1, len(panels) + 1)), name
        for p in panels:
            assert CJK.search(p["title"]), (name, p["title"])
            assert {"x", "y", "w", "h"} <= set(p["gridPos"]), (name, p["title"])


def test_every_query_uses_a_provisioned_datasource_and_variables_are_defined() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "lianfang.yaml").read_text("utf-8"))
    by_uid = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    assert by_uid == {schema.INFLUX_UID: schema.INFLUX_TYPE, schema.SQL_UID: schema.SQL_TYPE}
    for name, m in _models().items():
        variables = {v["name"] for v in m.get("templating", {}).get("list", [])}
        for v in m.get("templating", {}).get("list", []):
            if v["type"] == "textbox":  # the basemap's tile URL: no datasource
                continue
            assert by_uid[v["datasource"]["uid"]] == v["datasource"]["type"]
        for p in _panels(m):
            for t in p.get("targets", []):
                ref = t["datasource"]
                assert by_uid.get(ref["uid"]) == ref["type"], (name, p["title"])
                q = t.get("query") or t.get("rawSql") or ""
                assert q.strip(), (name, p["title"])
                used = set(re.findall(r"\$(\w+)", q)) - GRAFANA_VARIABLES
                assert used <= variables, (name, p["title"], used - variables)
            if len({json.dumps(t["datasource"]) for t in p.get("targets", [])}) == 1:
                assert p["datasource"] == p["targets"][0]["datasource"]


def test_dashboard_provisioning_points_where_compose_mounts_the_generated_json() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "lianfang.yaml").read_text("utf-8"))["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8"))
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./dashboards/generated"] == providers[0]["options"]["path"]
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    # the secrets the datasource file reads from Grafana's environment are passed in
    lines = (PROVISIONING / "datasources" / "lianfang.yaml").read_text("utf-8").splitlines()
    used = {v for line in lines if not line.lstrip().startswith("#") for v in re.findall(r"\$(\w+)", line)}
    assert used == {"INFLUXDB_TOKEN", "POSTGRES_PASSWORD"}
    for var in used:
        assert var in grafana["environment"], var


def test_compose_runs_the_grafana_the_sdk_is_pinned_to() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8"))
    image_version = compose["services"]["grafana"]["image"].rsplit(":", 1)[1]
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    pin = re.search(r'"grafana-foundation-sdk==\d+!([\d.]+)"', pyproject)
    assert pin is not None
    assert pin.group(1) == image_version


# Hosts a dashboard may name: compose service names (no dot), loopback, private addresses, internal suffixes.
_URL_HOST = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s\"'<>?#]*)", re.I)
_DOMAIN = re.compile(r"\b(?:[a-z0-9-]+\.)+(?:com|net|org|cn|io|info|gov|edu|arcgis|mapbox)\b", re.I)
_INTERNAL = re.compile(
    r"^(?:[a-z0-9-]+|localhost|127(?:\.\d+){3}|10(?:\.\d+){3}|192\.168(?:\.\d+){2}|172\.(?:1[6-9]|2\d|3[01])(?:\.\d+){2}"
    r"|[a-z0-9.-]+\.(?:internal|local|lan|svc|intranet))(?::\d+)?$",
    re.I,
)
# Grafana's basemaps that fetch internet tiles ("default" is CARTO unless the server configures another).
_INTERNET_BASEMAPS = {"default", "carto", "osm-standard", "esri-xyz", "esri-world-imagery", "maplibre"}


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _internet_hosts(model: dict[str, Any]) -> list[str]:
    found = []
    for text in _strings(model):
        found += [h for h in _URL_HOST.findall(text) if h and not _INTERNAL.match(h)]
        found += _DOMAIN.findall(text)
    return found


def test_no_generated_dashboard_references_an_internet_host() -> None:
    for name, model in _models().items():
        assert _internet_hosts(model) == [], name
        for p in _panels(model):
            opts = p.get("options", {})
            for layer in [opts.get("basemap"), *opts.get("layers", [])]:
                if layer is None:
                    continue
                assert layer["type"] not in _INTERNET_BASEMAPS, f"{name}: {p['title']}: {layer}"
                if layer["type"] == "xyz":
                    assert layer["config"]["url"] == f"${schema.TILES_VAR}", f"{name}: {p['title']}"
    (tiles,) = [v for v in _models()["vehicles.json"]["templating"]["list"] if v["name"] == schema.TILES_VAR]
    assert tiles["type"] == "textbox" and tiles["query"] == ""  # default: no basemap


def test_the_internet_host_check_can_fail() -> None:
    assert _internet_hosts({"options": {"basemap": {"config": {"url": "https://tile.openstreetmap.org/{z}"}}}})
    assert _internet_hosts({"description": "tiles from basemaps.cartocdn.com"})
    assert _internet_hosts({"x": "//services.arcgisonline.com/ArcGIS"})
    ok = {"a": "http://influxdb:8086", "b": "http://tiles.bureau.internal/{z}/{x}/{y}.png", "c": "http://10.1.2.3/t"}
    assert _internet_hosts(ok) == []
