"""The API contract (issue 9): bounded parameters, times with any offset, the error model in the OpenAPI
document, empty query values, paging, live-stream limits, region_path scoping and the offline Swagger UI.

Over the real app on the seeded registry and store, with a real AlertService (default packs)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from core.protocol import Event
from core.settings import ApiSettings, Settings
from gateway.app import PAGE_CSP, create_app
from gateway.live import Broadcaster, StreamLimit
from gateway.params import MAX_INSTANT, MIN_INSTANT
from tests.gateway.conftest import NOW, NOW_MS, Gateway

API = "/api/v1"


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def _h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str = "admin", **params: Any) -> Any:
        return self.client.get(API + path, params=params or None, headers=self._h(user))

    def raw(self, path_and_query: str, user: str = "admin") -> Any:
        return self.client.get(API + path_and_query, headers=self._h(user))

    def post(self, path: str, body: dict[str, Any], user: str = "admin") -> Any:
        return self.client.post(API + path, json=body, headers=self._h(user))


@pytest.fixture
def svc(gateway: Gateway) -> AlertService:
    reg = gateway.ctx.registry
    service = AlertService(
        reg.engine, RuleSet.load([PACKS_DIR]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    service.load(now=NOW)
    service.process([Event("gate-gz-0001", "gz-b1", "gate", NOW_MS - 60_000, 1, "tamper", {})], now=NOW)
    return service


@pytest.fixture
def api(gateway: Gateway, svc: AlertService) -> Iterator[Client]:
    gateway.ctx.alerts = svc
    with TestClient(create_app(gateway.ctx)) as client:
        yield Client(client, gateway.tokens)


# --- numbers -------------------------------------------------------------------------------------------------

OUT_OF_RANGE = [
    "/devices?offset=9223372036854775808",
    "/devices?limit=1e20",
    "/alerts?offset=1e20",
    "/alerts?offset=9223372036854775807",
    "/silences?offset=9223372036854775808",
    "/events?start=1e23",
    "/events?start=-9223372036854775808",
    "/events?end=99999999999999999999",
    "/events?start=9999-12-31T23:59:59-23:59",
    "/events?start=0001-01-01T00:00:00%2B00:01",
    "/devices/meter-gz-0001/telemetry?field=power_kw&bucket=9223372036854775807s",
    "/devices/meter-gz-0001/telemetry?field=power_kw&bucket=99999999999d",
    "/devices/meter-gz-0001/telemetry?field=power_kw&start=-9223372036854775808",
    "/devices/meter-gz-0001/telemetry?field=power_kw&end=9223372036854775807",
    "/alerts/5518787791339668897792",
    "/alerts/0",
    "/rejections?limit=100000",
    f"/devices/{'x' * 65}",
    f"/regions/{'r' * 65}",
    "/events?type=door_opened_by_ghost",
    "/rejections?reason=because",
]


@pytest.mark.parametrize("url", OUT_OF_RANGE)
def test_out_of_range_parameters_are_422_naming_the_parameter(api: Client, url: str) -> None:
    resp = api.raw(url)
    assert resp.status_code == 422, (url, resp.status_code, resp.text)
    [problem, *_] = resp.json()["detail"]
    assert problem["loc"][0] in ("query", "path") and problem["msg"]


def test_out_of_range_ids_in_actions_are_422(api: Client) -> None:
    assert api.post("/alerts/5518787791339668897792/ack", {}).status_code == 422
    assert api.post("/silences/9223372036854775808/end", {"reason": "test"}).status_code == 422


# --- empty query values, unknown filters, paging ---------------------------------------------------------------


def test_empty_query_values_mean_absent(api: Client) -> None:
    for path in ("/devices", "/alerts", "/events", "/silences", "/rejections"):
        plain = api.raw(path)
        blank = api.raw(f"{path}?region=&device=&type=&state=&limit=&offset=&rule=&reason=&kind=&active=")
        assert plain.status_code == 200, (path, plain.text)
        assert blank.status_code == 200, (path, blank.text)
        assert blank.json() == plain.json(), path
    assert api.raw("/devices?region=&type=gate").json()["total"] == 3


def test_unknown_event_type_filter_is_422_known_one_filters(api: Client) -> None:
    bad = api.raw("/events?type=door_opened&type=tamper")
    assert bad.status_code == 422
    assert "door_opened" in bad.json()["detail"][0]["msg"] and "door_forced" in bad.json()["detail"][0]["msg"]
    items = api.raw("/events?type=tamper").json()["items"]
    assert [e["type"] for e in items] == ["tamper"]


def test_silences_are_paged(api: Client) -> None:
    until = (NOW + timedelta(hours=1)).isoformat()
    made = [
        api.post("/silences", {"device_id": d, "reason": "检修", "ends_at": until}).json()["id"]
        for d in ("gate-gz-0001", "gate-gz-0002", "gate-sz-0001")
    ]
    api.post(f"/silences/{made[0]}/end", {"reason": "test"})
    page = api.get("/silences", active="false", limit=2, offset=1).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
    assert [s["id"] for s in page["items"]] == made[1:]
    assert [s["id"] for s in api.get("/silences").json()["items"]] == made[1:]
    assert api.get("/silences", limit=1001).status_code == 422
    scoped = api.get("/silences", user="gz", active="false", limit=1, offset=1).json()  # Guangzhou's two
    assert scoped["total"] == 2 and [s["id"] for s in scoped["items"]] == [made[1]]


# --- times ---------------------------------------------------------------------------------------------------


def test_silence_with_an_offset_is_stored_as_the_instant(api: Client, svc: AlertService) -> None:
    beijing = timezone(timedelta(hours=8))
    ends = datetime(2026, 11, 26, 20, 5, tzinfo=beijing)  # 12:05Z
    made = api.post("/silences", {"device_id": "gate-gz-0001", "reason": "r", "ends_at": ends.isoformat()})
    assert made.status_code == 201, made.text
    assert made.json()["ends_at"] == "2026-11-26T12:05:00.000Z"
    [listed] = api.get("/silences").json()["items"]
    assert listed["ends_at"] == "2026-11-26T12:05:00.000Z"
    stored = svc.repo.silence(made.json()["id"])
    assert stored is not None and stored.ends_at == ends


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-23:59",  # past year 9999 in UTC
        "9999-06-01T00:00:00Z",
        "0001-01-01T00:00:00+00:01",
        "1999-12-31T23:59:59Z",
        "2026-11-26T20:05:00",  # no offset
        "tomorrow",
    ],
)
def test_out_of_range_or_naive_times_are_422(api: Client, value: str) -> None:
    resp = api.post("/silences", {"device_id": "gate-gz-0001", "reason": "r", "ends_at": value})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][:2] == ["body", "ends_at"]
    assert api.get("/silences").json()["items"] == []  # nothing stored


offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start_s=st.integers(min_value=-3 * 86_400, max_value=3 * 86_400),
    length_s=st.integers(min_value=1, max_value=24 * 3600),
    start_tz=offsets,
    end_tz=offsets,
    micros=st.integers(min_value=0, max_value=999).map(lambda ms: ms * 1000),
)
def test_silence_times_round_trip_with_any_offset(
    api: Client, svc: AlertService, start_s: int, length_s: int, start_tz: timezone, end_tz: timezone, micros: int
) -> None:
    """Any offset in, the same instants stored, answered and listed (in UTC, with Z); active as the instants say."""
    starts = (NOW + timedelta(seconds=start_s, microseconds=micros)).astimezone(start_tz)
    ends = (starts + timedelta(seconds=length_s)).astimezone(end_tz)
    body = {"device_id": "gate-gz-0001", "reason": "r", "starts_at": starts.isoformat(), "ends_at": ends.isoformat()}
    made = api.post("/silences", body, user="gz")
    assert made.status_code == 201, made.text
    out = made.json()
    for key, want in (("starts_at", starts), ("ends_at", ends)):
        assert out[key].endswith("Z")
        assert datetime.fromisoformat(out[key]) == want
    assert out["active"] == (starts <= NOW < ends)
    listed = {s["id"]: s for s in api.get("/silences", limit=1000).json()["items"]}[out["id"]]
    assert listed == out
    stored = svc.repo.silence(out["id"])
    assert stored is not None and stored.starts_at == starts and stored.ends_at == ends


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    back_s=st.integers(min_value=60, max_value=80 * 86_400),
    micros=st.integers(min_value=0, max_value=999_999),
    start_tz=offsets,
    end_tz=offsets,
)
def test_query_times_with_any_offset_name_the_same_instants(
    api: Client, back_s: int, micros: int, start_tz: timezone, end_tz: timezone
) -> None:
    """events and telemetry read start/end with any offset as the instant they name, and answer it in UTC."""
    end = NOW + timedelta(microseconds=micros)
    start = end - timedelta(seconds=back_s)
    params = {"start": start.astimezone(start_tz).isoformat(), "end": end.astimezone(end_tz).isoformat()}
    ms = timedelta(milliseconds=1)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for path in ("/events", "/devices/meter-gz-0001/telemetry"):
        extra = {"field": "power_kw", "bucket": "1d"} if "telemetry" in path else {}
        body = api.get(path, **params, **extra).json()
        assert body["start_ms"] == (start - epoch) // ms and body["end_ms"] == (end - epoch) // ms, path
    if back_s > 5 * 60 + 1:  # the event 5 minutes before NOW lies inside the range
        assert "door_forced" in [e["type"] for e in api.get("/events", **params).json()["items"]]


def test_time_bounds_are_the_documented_years() -> None:
    assert MIN_INSTANT.year == 2000 and datetime(9999, 1, 1, tzinfo=UTC) == MAX_INSTANT


# --- scope ---------------------------------------------------------------------------------------------------


def test_alert_region_path_starts_at_the_callers_scope(api: Client) -> None:
    [whole] = api.get("/alerts").json()["items"]
    assert whole["region_path"] == ["gd", "gz", "gz-jgj", "gz-b1"]
    [scoped] = api.get("/alerts", user="gz").json()["items"]
    assert scoped["region_path"] == ["gz", "gz-jgj", "gz-b1"]
    assert api.get(f"/alerts/{scoped['id']}", user="gzb1").json()["region_path"] == ["gz-b1"]


# --- the OpenAPI document ------------------------------------------------------------------------------------


def test_openapi_declares_every_error_status_with_the_error_body(api: Client) -> None:
    doc = api.client.get(f"{API}/openapi.json").json()
    assert "ErrorBody" in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            where = f"{method.upper()} {path}"
            assert "503" in codes, where
            if not path.startswith(f"{API}/health"):
                assert "401" in codes, where
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in codes, where
            if op.get("requestBody"):
                assert "400" in codes, where  # a body that is not UTF-8
            for code, resp in op["responses"].items():
                if code.startswith("4"):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (where, code)
    ops = doc["paths"]
    assert {"403", "404", "409"} <= set(ops[f"{API}/alerts/{{alert_id}}/ack"]["post"]["responses"])
    assert {"403", "404", "409"} <= set(ops[f"{API}/rules/{{rule_id}}/overrides"]["put"]["responses"])
    assert "429" in ops[f"{API}/stream"]["get"]["responses"]
    assert {"400", "413"} <= set(ops[f"{API}/ingest/{{device_id}}/{{kind}}"]["post"]["responses"])
    offset = next(p for p in ops[f"{API}/devices"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] <= 2**53


# --- the live stream's limits --------------------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_broadcaster_limits_streams_per_owner_and_in_total(loop: asyncio.AbstractEventLoop) -> None:
    b = Broadcaster()
    a1 = b.subscribe(None, loop, owner="a", max_per_owner=2, max_total=3)
    b.subscribe(None, loop, owner="a", max_per_owner=2, max_total=3)
    with pytest.raises(StreamLimit, match=r"user 'a' already holds 2 live streams.*stream_max_per_user"):
        b.subscribe(None, loop, owner="a", max_per_owner=2, max_total=3)
    b.subscribe(None, loop, owner="b", max_per_owner=2, max_total=3)
    with pytest.raises(StreamLimit, match=r"already serves 3 live streams.*stream_max_total"):
        b.subscribe(None, loop, owner="c", max_per_owner=2, max_total=3)
    b.unsubscribe(a1)
    b.subscribe(None, loop, owner="a", max_per_owner=2, max_total=3)  # a slot is free again
    assert b.subscriber_count == 3


def test_stream_over_the_limit_is_429_saying_which(gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
    gateway.ctx.settings = Settings(api=ApiSettings(stream_max_per_user=2, stream_max_total=3))
    b = gateway.ctx.broadcaster
    for _ in range(2):
        b.subscribe(frozenset({"sz"}), loop, owner="sz-viewer")
    with TestClient(create_app(gateway.ctx)) as client:
        headers = {"Authorization": f"Bearer {gateway.tokens['sz']}"}
        resp = client.get(f"{API}/stream", headers=headers)
        assert resp.status_code == 429
        assert "sz-viewer" in resp.json()["detail"] and "api.stream_max_per_user" in resp.json()["detail"]
        b.subscribe(None, loop, owner="admin")
        headers = {"Authorization": f"Bearer {gateway.tokens['gz']}"}
        resp = client.get(f"{API}/stream", headers=headers)
        assert resp.status_code == 429 and "api.stream_max_total" in resp.json()["detail"]
    assert b.subscriber_count == 3  # the refused ones were never added


# --- Swagger UI, offline -------------------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s\"'<>)]+")


def test_docs_load_nothing_from_outside_and_carry_the_page_csp(api: Client) -> None:
    page = api.client.get(f"{API}/docs")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == PAGE_CSP
    init = api.client.get(f"{API}/docs/init.js")
    assert init.status_code == 200 and "SwaggerUIBundle" in init.text
    for text in (page.text, init.text):
        outside = [u for u in _URL.findall(text) if not u.startswith(("http://127.0.0.1", "https://127.0.0.1"))]
        assert outside == []
        assert "<script>" not in text  # no inline script: the CSP allows only files of this origin
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert srcs and all(s.startswith("/") for s in srcs)
    for src in srcs:
        asset = api.client.get(src)
        assert asset.status_code == 200, src
    assert len(api.client.get(f"{API}/docs/assets/swagger-ui-bundle.js").content) > 100_000
