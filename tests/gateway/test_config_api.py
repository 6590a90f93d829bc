"""The system administrator's configuration API (gateway/routes/config.py): read with secrets redacted, change the
runtime settings with a reason (applied at once, audited), 三员分立 respected."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.settings import MqttSettings, Settings
from devices.audit import AuditLog
from gateway.app import create_app
from gateway.auth import create_user
from gateway.routes.config import REDACTED, redact
from tests.gateway.conftest import NOW, Gateway

API = "/api/v1"


def test_redact_hides_every_secret() -> None:
    data = {
        "database_url": "postgresql+psycopg://lf:s3cret@db:5432/lianfang",
        "mqtt": {"password": "x", "admin_password": None, "host": "h"},
        "store": {"influx_token": "t", "influx_url": "http://influx:8086"},
        "list": [{"api_key": "k"}],
    }
    out = redact(data)
    assert out["database_url"] == f"postgresql+psycopg://lf:{REDACTED}@db:5432/lianfang"
    assert out["mqtt"] == {"password": REDACTED, "admin_password": None, "host": "h"}
    assert out["store"] == {"influx_token": REDACTED, "influx_url": "http://influx:8086"}
    assert out["list"] == [{"api_key": REDACTED}]
    assert "s3cret" not in str(out)


def test_sysadmin_reads_and_changes_runtime_settings(gateway: Gateway) -> None:
    gateway.ctx.settings = Settings(
        database_url="sqlite:///x.db", mqtt=MqttSettings(password=SecretStr("platform-secret-123"))
    )
    engine = gateway.ctx.registry.engine
    tok = {
        role: create_user(engine, f"c.{role}", role, None, NOW, person_id=f"p.{role}")
        for role in ("sysadmin", "secadmin", "auditor")
    }
    tok["sz.sysadmin"] = create_user(engine, "c.sz.sysadmin", "sysadmin", "sz", NOW, person_id="p.sz")

    def h(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok.get(who) or gateway.tokens[who]}"}

    with TestClient(create_app(gateway.ctx)) as c:

        def patch(body: dict[str, Any], who: str = "sysadmin") -> Any:
            return c.patch(f"{API}/config", json=body, headers=h(who))

        got = c.get(f"{API}/config", headers=h("sysadmin"))
        assert got.status_code == 200, got.text
        assert "platform-secret-123" not in got.text
        assert got.json()["runtime"]["api.max_points"]["value"] == 10000
        # 三员分立 and scope: only a sysadmin of the whole tree
        for who in ("secadmin", "auditor", "admin", "sz.sysadmin"):
            assert c.get(f"{API}/config", headers=h(who)).status_code == 403, who
            assert patch({"api.max_points": 5, "reason": "r"}, who).status_code == 403, who
        # a reason, a known runtime key, a valid value
        assert patch({"api.max_points": 5000}).status_code == 422
        assert patch({"reason": "nothing"}).status_code == 422
        assert patch({"auth.lockout_failures": 3, "reason": "r"}).status_code == 422  # the secadmin's
        assert patch({"api.port": 9000, "reason": "r"}).status_code == 422  # read at start only
        assert patch({"api.max_points": 0, "reason": "r"}).status_code == 422
        assert patch({"api.max_points": None, "reason": "r"}).status_code == 422
        assert patch({"api.map_tile_url": "ftp://tiles/{z}/{x}/{y}", "reason": "r"}).status_code == 422
        ok = patch({"api.max_points": 5000, "api.map_tile_url": "http://tiles.lan/{z}/{x}/{y}.png", "reason": "扩容"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["runtime"]["api.max_points"]["value"] == 5000
        assert ok.json()["changed"][0]["by"] == "c.sysadmin"
        assert gateway.ctx.settings.api.max_points == 5000
        # in force at once: the page's CSP allows the tile server now
        assert "http://tiles.lan" in c.get("/").headers["Content-Security-Policy"]
        assert patch({"api.map_tile_url": None, "reason": "停用底图"}).status_code == 200
        assert gateway.ctx.settings.api.map_tile_url is None
    records = AuditLog(gateway.ctx.registry.session).records(action="config.change")
    first = records[-1]
    assert first.actor == "c.sysadmin (sysadmin)" and first.outcome == "ok"
    assert first.detail["api.max_points"] == {"from": 10000, "to": 5000} and first.detail["reason"] == "扩容"
