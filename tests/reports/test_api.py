"""GET /api/v1/reports/{kind}: scope (404 outside), formats, bounds, the audit record, over the gateway's seeded
registry and store (tests/gateway/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devices.audit import AuditLog
from gateway.app import create_app
from reports import registry as report_registry
from tests.gateway.conftest import Gateway

URL = "/api/v1/reports"
PERIOD = "2026-11-20..2026-11-26"  # ends 2026-11-27 00:00 Beijing, after the seeded NOW


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    def get(self, kind: str, user: str = "admin", **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.client.get(f"{URL}/{kind}", params=params, headers=headers)


@pytest.fixture
def api(gateway: Gateway) -> Iterator[Client]:
    with TestClient(create_app(gateway.ctx)) as client:
        yield Client(client, gateway.tokens)


def test_json_of_a_city(api: Client) -> None:
    r = api.get("coverage", region="gz", period=PERIOD)
    assert r.status_code == 200, r.text
    doc = r.json()
    summary = {s["key"]: s["value"] for s in doc["summary"]}
    # gate-gz-0001 (seen 10 min before NOW: stale), gate-gz-0002 (never; 2 rejections), meter-gz-0001 (online)
    assert (summary["expected"], summary["reporting"], summary["stale"], summary["rejected"]) == (3, 2, 2, 2)
    assert doc["period"] == {"start": "2026-11-20T00:00:00+08:00", "end": "2026-11-27T00:00:00+08:00"}
    assert "sz" not in {row["region"] for row in doc["tables"][0]["rows"]}


def test_scope(api: Client) -> None:
    assert api.get("coverage", "sz", region="gz", period=PERIOD).status_code == 404
    assert api.get("coverage", "sz", region="nowhere").status_code == 404
    own = api.get("coverage", "sz", period=PERIOD)
    assert own.status_code == 200 and own.json()["region"] == {"id": "sz", "name": "深圳市"}
    assert api.get("coverage", "gzb1", region="gz").status_code == 404  # a building's viewer cannot see the city


def test_csv_and_html(api: Client) -> None:
    r = api.get("coverage", region="gd", period=PERIOD, format="csv", table="rejections", lang="en")
    assert r.status_code == 200
    assert r.content.startswith(b"\xef\xbb\xbf") and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="coverage-gd-20261120-20261127.csv"'
    lines = r.content.decode("utf-8-sig").splitlines()
    assert lines[0] == "Reason,Meaning,Count" and len(lines) == 4  # schema 2, bad_timestamp 1, not_json 1
    page = api.get("coverage", region="gz", period=PERIOD, format="html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "广州市" in page.text and "https://" not in page.text


@pytest.mark.parametrize(
    ("kind", "params", "code"),
    [
        ("nonsense", {}, 404),
        ("coverage", {"period": "3661d"}, 422),
        ("coverage", {"period": "yesterday"}, 422),
        ("coverage", {"period": "2026-13"}, 422),
        ("coverage", {"format": "xls"}, 422),
        ("coverage", {"format": "csv", "table": "nope"}, 422),
        ("coverage", {"table": "x" * 65}, 422),
        ("coverage", {"region": "x" * 65}, 422),
    ],
)
def test_bounds(api: Client, kind: str, params: dict[str, str], code: int) -> None:
    assert api.get(kind, **params).status_code == code


def test_a_builder_not_installed_is_501(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(report_registry.BUILDERS, "energy", "reports.no_such_module:build")
    r = api.get("energy", region="gz")
    assert r.status_code == 501 and "not available" in r.json()["detail"]


def test_each_report_read_is_audited(api: Client, gateway: Gateway) -> None:
    assert api.get("coverage", "sz", period=PERIOD).status_code == 200
    rec = AuditLog(gateway.ctx.registry.session).records(limit=1)[0]
    assert rec.action == "GET /reports/{kind}"
    assert f"{URL}/coverage" in str(rec.target)
    assert "sz-viewer" in rec.actor
    assert json.dumps(rec.detail).find("period=") >= 0
