"""The REST API against a real migrated SQLite registry and a real SQLite telemetry store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import StoreUnavailable
from core.settings import ApiSettings, Settings
from core.store import DeviceState
from core.store.sqlite import SqliteStore
from gateway.deps import get_store
from tests.gateway.conftest import MIN_MS, NOW_MS, Api


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [x["id"] for x in items]


def _walk(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n in nodes:
        out[n["id"]] = n
        out.update(_walk(n["children"]))
    return out


# --- health -----------------------------------------------------------------------------------------------------


def test_health_liveness_needs_no_token(api: Api) -> None:
    r = api.get("/api/v1/health", user=None)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_ready_reports_every_component(api: Api) -> None:
    r = api.get("/api/v1/health/ready", user=None)
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"store", "registry", "broker", "ingest"}
    assert body["checks"]["ingest"] == {"connected": True, "queue_depth": 0, "ok": True}


@pytest.mark.parametrize("component", ["broker", "ingest"])
def test_ready_is_503_when_a_component_is_down(api: Api, component: str) -> None:
    api.health[component] = {"connected": False, "detail": "down"}
    r = api.get("/api/v1/health/ready", user=None)
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert r.json()["checks"][component]["ok"] is False


def test_ready_is_503_when_a_callback_raises(api: Api) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    api.ctx.broker_status = broken
    r = api.get("/api/v1/health/ready", user=None)
    assert r.status_code == 503
    assert r.json()["checks"]["broker"] == {"ok": False, "error": "boom"}


class _UnreachableStore(SqliteStore):
    """The real adapter whose reads fail as they do when the database file is gone or locked."""

    def ping(self) -> bool:
        return False

    def device_states(self, device_ids: list[str] | None = None) -> dict[str, DeviceState]:
        raise StoreUnavailable("telemetry store read failed: database is locked")


@pytest.fixture
def unreachable_store(api: Api, tmp_path: Path) -> Iterator[None]:
    down = _UnreachableStore(tmp_path / "down.db")
    api.app.dependency_overrides[get_store] = lambda: down
    yield
    api.app.dependency_overrides.clear()
    down.close()


@pytest.mark.usefixtures("unreachable_store")
def test_ready_is_503_when_the_store_is_down(api: Api) -> None:
    r = api.get("/api/v1/health/ready", user=None)
    assert r.status_code == 503
    assert r.json()["checks"]["store"]["ok"] is False


# --- auth -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/regions", "/api/v1/devices", "/api/v1/events", "/api/v1/rejections"])
def test_api_refuses_requests_without_a_valid_token(api: Api, path: str) -> None:
    assert api.get(path, user=None).status_code == 401
    r = api.client.get(path, headers={"Authorization": "Bearer lf_not-a-real-token"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


# --- regions ----------------------------------------------------------------------------------------------------


def test_regions_tree_for_admin_with_rolled_up_counts(api: Api) -> None:
    r = api.get("/api/v1/regions")
    assert r.status_code == 200
    roots = r.json()["regions"]
    assert [n["id"] for n in roots] == ["gd"]
    nodes = _walk(roots)
    assert set(nodes) == {"gd", "gz", "sz", "gz-jgj", "sz-jgj", "gz-b1", "sz-b1"}
    # online: meter-gz-0001, gate-sz-0001; offline: gate-gz-0001 (stale), gate-gz-0002 (never), car-sz-0001 (LWT)
    assert nodes["gd"]["devices"] == {"total": 5, "online": 2, "offline": 3, "disabled": 0}
    assert nodes["gz"]["devices"] == {"total": 3, "online": 1, "offline": 2, "disabled": 0}
    assert nodes["gz-b1"]["devices"] == {"total": 2, "online": 0, "offline": 2, "disabled": 0}
    assert nodes["sz"]["devices"] == {"total": 2, "online": 1, "offline": 1, "disabled": 0}
    assert nodes["gz"]["name"] == "广州市"


def test_regions_tree_of_a_city_operator_is_only_their_city(api: Api) -> None:
    roots = api.get("/api/v1/regions", user="gz").json()["regions"]
    assert [n["id"] for n in roots] == ["gz"]
    assert set(_walk(roots)) == {"gz", "gz-jgj", "gz-b1"}


def test_region_subtree_and_404_outside_scope(api: Api) -> None:
    r = api.get("/api/v1/regions/gz-jgj", user="gz")
    assert r.status_code == 200
    assert r.json()["id"] == "gz-jgj"
    assert [c["id"] for c in r.json()["children"]] == ["gz-b1"]
    assert r.json()["devices"]["total"] == 3
    # another city and an unknown id answer the same way
    for rid in ("sz", "sz-b1", "gd", "nowhere"):
        r = api.get(f"/api/v1/regions/{rid}", user="gz")
        assert r.status_code == 404, rid
    assert api.get("/api/v1/regions/nowhere", user="gz").json() == {"detail": "region 'nowhere' not found"}
    assert api.get("/api/v1/regions/sz", user="gz").json() == {"detail": "region 'sz' not found"}


# --- devices ----------------------------------------------------------------------------------------------------


def test_devices_list_is_scoped(api: Api) -> None:
    assert _ids(api.get("/api/v1/devices").json()["items"]) == [
        "car-sz-0001",
        "gate-gz-0001",
        "gate-gz-0002",
        "gate-sz-0001",
        "meter-gz-0001",
    ]
    gz = api.get("/api/v1/devices", user="gz").json()
    assert gz["total"] == 3
    assert _ids(gz["items"]) == ["gate-gz-0001", "gate-gz-0002", "meter-gz-0001"]
    assert _ids(api.get("/api/v1/devices", user="gzb1").json()["items"]) == ["gate-gz-0001", "gate-gz-0002"]
    # a region filter outside the scope is 404, not an empty list
    assert api.get("/api/v1/devices", user="gz", region="sz").status_code == 404


def test_devices_pagination_reports_the_total(api: Api) -> None:
    pages = [api.get("/api/v1/devices", limit=2, offset=o).json() for o in (0, 2, 4)]
    assert [p["total"] for p in pages] == [5, 5, 5]
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    seen = [d for p in pages for d in _ids(p["items"])]
    assert len(set(seen)) == 5
    assert api.get("/api/v1/devices", limit=0).status_code == 422
    assert api.get("/api/v1/devices", limit=1001).status_code == 422


def test_devices_filters(api: Api) -> None:
    assert _ids(api.get("/api/v1/devices", region="gz-b1").json()["items"]) == ["gate-gz-0001", "gate-gz-0002"]
    assert _ids(api.get("/api/v1/devices", type="gate", region="gd").json()["items"]) == [
        "gate-gz-0001",
        "gate-gz-0002",
        "gate-sz-0001",
    ]
    online = api.get("/api/v1/devices", online="true").json()
    assert online["total"] == 2
    assert _ids(online["items"]) == ["gate-sz-0001", "meter-gz-0001"]
    offline = api.get("/api/v1/devices", online="false", limit=2, offset=2).json()
    assert offline["total"] == 3
    assert _ids(offline["items"]) == ["gate-gz-0002"]
    assert api.get("/api/v1/devices", enabled="false").json()["total"] == 0
    assert _ids(api.get("/api/v1/devices", user="gz", online="true").json()["items"]) == ["meter-gz-0001"]
    assert api.get("/api/v1/devices", type="toaster").status_code == 422


def test_device_detail_with_last_values_and_online_state(api: Api) -> None:
    r = api.get("/api/v1/devices/meter-gz-0001", user="gz")
    assert r.status_code == 200
    d = r.json()
    assert d["online"] is True
    assert d["last_seen_ms"] == NOW_MS - MIN_MS
    assert d["last_seen"] == "2026-11-26T07:59:00.000Z"
    assert d["expected_interval_s"] == 60
    assert d["region_path"] == ["gz", "gz-jgj"]  # "gd" is above the operator's scope
    assert d["last_values"]["power_kw"]["value"] == 119
    assert d["last_values"]["energy_kwh"]["ts_ms"] == NOW_MS - MIN_MS
    assert d["counters"]["messages"] == 120
    car = api.get("/api/v1/devices/car-sz-0001", user="sz").json()
    assert car["online"] is False
    assert car["status"] == "offline"


@pytest.mark.parametrize("device", ["gate-sz-0001", "car-sz-0001", "no-such-device"])
def test_device_outside_scope_is_404(api: Api, device: str) -> None:
    for path in (f"/api/v1/devices/{device}", f"/api/v1/devices/{device}/telemetry?field=power_kw"):
        r = api.get(path, user="gz")
        assert r.status_code == 404, path
        assert r.json() == {"detail": f"device '{device}' not found"}


# --- telemetry ---------------------------------------------------------------------------------------------------


def test_telemetry_raw_points(api: Api) -> None:
    start = NOW_MS - 10 * MIN_MS
    r = api.get("/api/v1/devices/meter-gz-0001/telemetry", user="gz", field="power_kw", start=str(start))
    assert r.status_code == 200
    body = r.json()
    assert body["bucket_ms"] is None
    assert body["end_ms"] == NOW_MS
    assert body["points"] == [[NOW_MS - (10 - i) * MIN_MS, 110.0 + i] for i in range(10)]


def test_telemetry_accepts_iso_8601_with_offset(api: Api) -> None:
    r = api.get(
        "/api/v1/devices/meter-gz-0001/telemetry",
        field="power_kw",
        start="2026-11-26T15:55:00+08:00",
        end="2026-11-26T07:57:00Z",
    )
    assert r.status_code == 200
    assert [p[0] for p in r.json()["points"]] == [NOW_MS - 5 * MIN_MS, NOW_MS - 4 * MIN_MS]


def test_telemetry_aggregated_by_bucket(api: Api) -> None:
    start = NOW_MS - 60 * MIN_MS  # 07:00, aligned to the hour
    r = api.get("/api/v1/devices/meter-gz-0001/telemetry", field="power_kw", start=str(start), bucket="30m", agg="max")
    assert r.status_code == 200
    body = r.json()
    assert body["bucket_ms"] == 30 * MIN_MS
    assert body["buckets"] == [
        {"ts_ms": start, "value": 89.0, "count": 30},
        {"ts_ms": start + 30 * MIN_MS, "value": 119.0, "count": 30},
    ]
    mean = api.get(
        "/api/v1/devices/meter-gz-0001/telemetry", field="power_kw", start=str(start), bucket="1h", agg="mean"
    ).json()
    assert mean["buckets"] == [{"ts_ms": start, "value": 89.5, "count": 60}]


def _error(r: Any) -> str:
    assert r.status_code == 422, r.text
    return str(r.json()["detail"])


def test_telemetry_bounds_and_bad_parameters_are_clear_422s(api: Api) -> None:
    path = "/api/v1/devices/meter-gz-0001/telemetry"
    assert "92 days" in _error(api.get(path, field="power_kw", start=str(NOW_MS - 93 * 86_400_000)))
    assert "before end" in _error(api.get(path, field="power_kw", start=str(NOW_MS), end=str(NOW_MS - 1)))
    assert "no UTC offset" in _error(api.get(path, field="power_kw", start="2026-11-26T07:00:00"))
    assert "neither epoch" in _error(api.get(path, field="power_kw", start="yesterday"))
    assert "duration" in _error(api.get(path, field="power_kw", bucket="fortnight"))
    assert "at least 1s" in _error(api.get(path, field="power_kw", bucket="10ms"))
    assert _error(api.get(path, field="power_kw", agg="median"))
    assert _error(api.get(path))  # field is required
    assert _error(api.get(path, field="Power-KW"))


def test_telemetry_row_limits_come_from_settings(api: Api) -> None:
    api.ctx.settings = Settings(api=ApiSettings(max_points=50, max_range_days=1))
    path = "/api/v1/devices/meter-gz-0001/telemetry"
    assert "more than 50 points" in _error(api.get(path, field="power_kw", start=str(NOW_MS - 60 * MIN_MS)))
    ok = api.get(path, field="power_kw", start=str(NOW_MS - 50 * MIN_MS))
    assert ok.status_code == 200
    assert len(ok.json()["points"]) == 50
    assert "buckets exceed the limit of 50" in _error(api.get(path, field="power_kw", bucket="1m"))
    assert api.get(path, field="power_kw", bucket="30m").status_code == 200
    assert "1 days" in _error(api.get(path, field="power_kw", start=str(NOW_MS - 86_400_001)))


# --- events and rejections -----------------------------------------------------------------------------------------


def test_events_are_scoped_and_newest_first(api: Api) -> None:
    everything = api.get("/api/v1/events").json()["items"]
    assert [(e["device_id"], e["type"]) for e in everything] == [
        ("car-sz-0001", "ignition_on"),
        ("gate-sz-0001", "tamper"),
        ("gate-gz-0001", "access"),
        ("gate-gz-0001", "door_forced"),
    ]
    assert everything[0]["device_name"] == "粤B00001"
    gz = api.get("/api/v1/events", user="gz").json()["items"]
    assert [e["type"] for e in gz] == ["access", "door_forced"]
    sz = api.get("/api/v1/events", user="sz").json()["items"]
    assert {e["device_id"] for e in sz} == {"car-sz-0001", "gate-sz-0001"}


def test_events_filters(api: Api) -> None:
    assert [e["type"] for e in api.get("/api/v1/events", type="tamper").json()["items"]] == ["tamper"]
    both = api.client.get(
        "/api/v1/events?type=tamper&type=door_forced", headers={"Authorization": f"Bearer {api.tokens['admin']}"}
    ).json()["items"]
    assert [e["type"] for e in both] == ["tamper", "door_forced"]
    assert [e["type"] for e in api.get("/api/v1/events", region="sz-b1").json()["items"]] == ["tamper"]
    assert len(api.get("/api/v1/events", device="gate-gz-0001", limit=1).json()["items"]) == 1
    old = api.get("/api/v1/events", start=str(NOW_MS - 10 * 86_400_000), device="gate-sz-0001").json()["items"]
    assert [e["data"].get("credential") for e in old] == [None, "old"]
    recent = api.get("/api/v1/events", start=str(NOW_MS - 3 * MIN_MS)).json()["items"]
    assert [e["type"] for e in recent] == ["tamper", "ignition_on"][::-1]


def test_events_of_another_city_are_404_or_filtered(api: Api) -> None:
    assert api.get("/api/v1/events", user="gz", device="gate-sz-0001").status_code == 404
    assert api.get("/api/v1/events", user="gz", region="sz").status_code == 404
    # a device inside the scope but outside the region filter gives nothing
    assert api.get("/api/v1/events", user="gz", device="gate-gz-0001", region="gz-jgj").json()["items"] != []
    assert api.get("/api/v1/events", device="gate-gz-0001", region="sz").json()["items"] == []


def test_rejections_for_admin_include_unregistered_devices(api: Api) -> None:
    body = api.get("/api/v1/rejections").json()
    assert body["total"] == 5
    assert body["counts"] == {"bad_timestamp": 1, "not_json": 1, "schema": 2, "unregistered_device": 1}
    assert [x["device_id"] for x in body["items"]] == [
        "gate-sz-0001",
        "ghost-0001",
        "gate-sz-0001",
        "gate-gz-0002",
        "gate-gz-0002",
    ]
    big = body["items"][0]
    assert big["payload_bytes"] == 5000
    assert len(big["payload"]) == 4096
    assert big["payload_truncated"] is True
    bad_utf8 = body["items"][3]
    assert bad_utf8["payload"] == "\ufffd\ufffd{"
    assert api.get("/api/v1/rejections", device="ghost-0001").json()["total"] == 1


def test_rejections_are_scoped(api: Api) -> None:
    gz = api.get("/api/v1/rejections", user="gz").json()
    assert gz["counts"] == {"not_json": 1, "schema": 1}
    assert {x["device_id"] for x in gz["items"]} == {"gate-gz-0002"}
    assert [x["received_ms"] for x in gz["items"]] == [NOW_MS + 1, NOW_MS]
    sz = api.get("/api/v1/rejections", user="sz", reason="schema").json()
    assert sz["counts"] == {"bad_timestamp": 1, "schema": 1}
    assert [x["reason"] for x in sz["items"]] == ["schema"]
    for device in ("gate-sz-0001", "ghost-0001"):
        assert api.get("/api/v1/rejections", user="gz", device=device).status_code == 404
    assert api.get("/api/v1/rejections", reason="because").status_code == 422


@pytest.mark.usefixtures("unreachable_store")
def test_storage_failure_is_a_503_not_a_traceback(api: Api) -> None:
    r = api.get("/api/v1/devices/meter-gz-0001")
    assert r.status_code == 503
    assert r.json() == {"detail": "storage is unavailable, retry later"}
