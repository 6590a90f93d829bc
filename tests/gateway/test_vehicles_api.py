"""GET /api/v1/vehicles/positions: the map's vehicles in one answer, scoped, paged, following live batches; and
the pure position rule (``gateway.fleet.next_pos``)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from core.protocol import Reading
from core.store import WriteBatch
from devices.registry import DeviceSpec
from gateway.app import create_app
from gateway.fleet import VehiclePos, next_pos
from tests.gateway.conftest import NOW, NOW_MS, Gateway

API = "/api/v1"


def _get(c: TestClient, token: str, **params: Any) -> Any:
    return c.get(f"{API}/vehicles/positions", params=params, headers={"Authorization": f"Bearer {token}"})


def test_positions_scoped_paged_and_live(gateway: Gateway) -> None:
    reg = gateway.ctx.registry
    reg.add_devices([DeviceSpec("car-gz-0001", "vehicle", "gz-b1", "粤A00001")], now=NOW)
    tok = gateway.tokens
    with TestClient(create_app(gateway.ctx)) as c:
        body = _get(c, tok["admin"]).json()
        assert body["total"] == 2
        by_id = {v["id"]: v for v in body["items"]}
        # car-sz-0001: lat/lon 20 s before NOW (from the store at build), announced offline after it
        sz = by_id["car-sz-0001"]
        assert (sz["lat"], sz["lon"], sz["name"], sz["online"]) == (22.5, 114.0, "粤B00001", False)
        assert sz["position_at"] == "2026-11-26T07:59:40.000Z" and sz["last_seen"] == sz["position_at"]
        assert by_id["car-gz-0001"]["lat"] is None and by_id["car-gz-0001"]["last_seen"] is None
        assert _get(c, tok["admin"], with_position="true").json()["total"] == 1
        # a live batch moves the Guangzhou car; it is online and in use
        batch = WriteBatch()
        fields: dict[str, float | bool] = {"lat": 23.1, "lon": 113.3, "speed_kmh": 42.0, "ignition": True}
        batch.readings.append(Reading("car-gz-0001", "gz-b1", "vehicle", NOW_MS - 1000, None, fields))
        batch.counter("car-gz-0001").last_seen_ms = NOW_MS - 1000
        gateway.ctx.broadcaster.publish(batch)
        gz = _get(c, tok["gz"]).json()
        assert [v["id"] for v in gz["items"]] == ["car-gz-0001"]  # the Guangzhou operator sees only its own
        car = gz["items"][0]
        assert (car["lat"], car["lon"], car["speed_kmh"], car["ignition"], car["online"], car["in_use"]) == (
            23.1,
            113.3,
            42.0,
            True,
            True,
            True,
        )
        # scope: a Shenzhen viewer asking for Guangzhou is 404; paging and bounds
        assert _get(c, tok["sz"], region="gz").status_code == 404
        assert _get(c, tok["sz"]).json()["total"] == 1
        page = _get(c, tok["admin"], limit=1, offset=1).json()
        assert page["total"] == 2 and [v["id"] for v in page["items"]] == ["car-sz-0001"]
        assert _get(c, tok["admin"], limit=2001).status_code == 422
        assert _get(c, tok["admin"], limit=0).status_code == 422


_num = st.floats(min_value=-90, max_value=90, allow_nan=False)


@given(st.integers(0, 10**6), st.integers(0, 10**6), _num, _num, st.booleans())
def test_next_pos_keeps_the_newest(ts_old: int, ts_new: int, lat: float, lon: float, ignition: bool) -> None:
    old = VehiclePos(ts_old, 1.0, 2.0, 10.0, False, 90.0)
    new = next_pos(old, ts_new, {"lat": lat, "lon": lon, "ignition": ignition})
    if ts_new < ts_old:
        assert new is old
    else:
        assert new == VehiclePos(ts_new, lat, lon, 10.0, ignition, 90.0)  # speed and heading kept
    assert next_pos(old, ts_new + ts_old, {"speed_kmh": 5.0}) is old  # no position: nothing moves
    assert next_pos(None, ts_new, {"lat": True, "lon": lon}) is None  # a bool is not a coordinate
