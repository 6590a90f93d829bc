"""Logging in: passwords (argon2), sessions that expire and are revoked, lockout, TOTP, and the audit of each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.settings import AuthSettings, Settings
from devices.audit import AuditLog
from devices.registry import Registry
from gateway.app import GatewayContext, create_app
from gateway.auth import create_user, enable_totp, issue_token, revoke_tokens
from tests.gateway.conftest import NOW, Gateway
from tests.gateway.test_page import CHROMIUM, NODE, _in_browser

PASSWORD = "correct horse battery"
UNAUTHORIZED = {"detail": "missing or invalid API token"}


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Site:
    client: TestClient
    registry: Registry
    clock: Clock

    def login(self, name: str, password: str = PASSWORD, totp: str | None = None) -> tuple[int, dict[str, object]]:
        body: dict[str, object] = {"name": name, "password": password}
        if totp is not None:
            body["totp"] = totp
        r = self.client.post("/api/v1/auth/login", json=body)
        return r.status_code, r.json()

    def me(self, token: str) -> int:
        return self.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code

    def audit(self, action: str) -> list[tuple[str, str, str]]:
        rows = AuditLog(self.registry.session).records(action=action, limit=1000)
        return [(r.actor, r.origin, r.outcome) for r in reversed(rows)]


def make_site(gateway: Gateway, auth: AuthSettings) -> Iterator[Site]:
    clock = Clock(NOW)
    ctx = GatewayContext(
        settings=Settings(auth=auth),
        registry=gateway.ctx.registry,
        store=gateway.ctx.store,
        broker_status=lambda: {"ok": True},
        ingest_status=lambda: {"connected": True, "queue_depth": 0},
        clock=clock,
    )
    create_user(gateway.ctx.registry.engine, "wang.wu", "operator", "gz", NOW, password=PASSWORD)
    with TestClient(create_app(ctx)) as client:
        yield Site(client, gateway.ctx.registry, clock)


@pytest.fixture
def site(gateway: Gateway) -> Iterator[Site]:
    yield from make_site(gateway, AuthSettings(session_minutes=30, lockout_failures=3, lockout_minutes=10))


def test_login_opens_a_session_whose_token_works_and_is_stored_only_hashed(site: Site) -> None:
    code, body = site.login("wang.wu")
    assert code == 200, body
    token = str(body["token"])
    assert body["name"] == "wang.wu" and body["role"] == "operator"
    assert datetime.fromisoformat(str(body["expires_at"])) == NOW + timedelta(minutes=30)
    assert site.me(token) == 200
    with site.registry.engine.connect() as conn:
        dumped = repr(conn.execute(text("SELECT * FROM api_sessions")).all())
        users = repr(conn.execute(text("SELECT password_hash FROM api_users WHERE name = 'wang.wu'")).all())
    assert token not in dumped and token[3:] not in dumped
    assert PASSWORD not in users and "$argon2id$" in users
    assert site.audit("auth.login") == [("wang.wu (operator)", "api from testclient", "ok")]


@pytest.mark.parametrize(
    ("name", "password"), [("wang.wu", "wrong password!"), ("nobody", PASSWORD), ("admin", PASSWORD)]
)
def test_login_wrong_name_or_password_is_one_401(site: Site, name: str, password: str) -> None:
    """A wrong password, an unknown name, and a user without a password all get the same answer."""
    assert site.login(name, password) == (401, UNAUTHORIZED)
    assert [outcome for _, _, outcome in site.audit("auth.login")] == ["denied"]


def test_lockout_after_failures_then_unlock_after_time(site: Site) -> None:
    for _ in range(3):
        assert site.login("wang.wu", "wrong password!")[0] == 401
    assert len(site.audit("auth.lockout")) == 1
    # Locked: even the right password is refused, until lockout_minutes have passed.
    assert site.login("wang.wu") == (401, UNAUTHORIZED)
    site.clock.now = NOW + timedelta(minutes=9, seconds=59)
    assert site.login("wang.wu")[0] == 401
    site.clock.now = NOW + timedelta(minutes=10)
    assert site.login("wang.wu")[0] == 200
    outcomes = [o for _, _, o in site.audit("auth.login")]
    assert outcomes == ["denied"] * 5 + ["ok"]


def test_a_success_resets_the_failure_count(site: Site) -> None:
    for _ in range(2):
        assert site.login("wang.wu", "wrong password!")[0] == 401
    assert site.login("wang.wu")[0] == 200
    for _ in range(2):
        assert site.login("wang.wu", "wrong password!")[0] == 401
    assert site.login("wang.wu")[0] == 200
    assert site.audit("auth.lockout") == []


def test_session_expires_and_slides_with_use(site: Site) -> None:
    token = str(site.login("wang.wu")[1]["token"])
    site.clock.now = NOW + timedelta(minutes=29)
    assert site.me(token) == 200  # slides to 29 + 30 minutes
    site.clock.now = NOW + timedelta(minutes=58)
    assert site.me(token) == 200
    site.clock.now = NOW + timedelta(minutes=58 + 30)
    assert site.me(token) == 401


def test_fixed_session_expires_from_login(gateway: Gateway) -> None:
    for site in make_site(gateway, AuthSettings(session_minutes=30, session_sliding=False)):
        token = str(site.login("wang.wu")[1]["token"])
        site.clock.now = NOW + timedelta(minutes=20)
        assert site.me(token) == 200
        site.clock.now = NOW + timedelta(minutes=30)
        assert site.me(token) == 401


def test_logout_revokes_the_session(site: Site) -> None:
    token = str(site.login("wang.wu")[1]["token"])
    headers = {"Authorization": f"Bearer {token}"}
    assert site.client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert site.me(token) == 401
    assert site.client.post("/api/v1/auth/logout", headers=headers).json() == UNAUTHORIZED
    assert [(a, o) for a, _, o in site.audit("auth.logout")] == [("wang.wu (operator)", "ok")]


def test_logout_with_an_api_token_is_refused_and_keeps_it(site: Site, gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.tokens['admin']}"}
    assert site.client.post("/api/v1/auth/logout", headers=headers).status_code == 400
    assert site.me(gateway.tokens["admin"]) == 200


def test_forged_and_missing_tokens_are_401(site: Site) -> None:
    token = str(site.login("wang.wu")[1]["token"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for headers in ({"Authorization": f"Bearer {forged}"}, {"Authorization": "Bearer lf_x"}, {}):
        r = site.client.get("/api/v1/me", headers=headers)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


def test_integration_token_expires_is_revoked_and_its_use_is_audited_once_per_window(site: Site) -> None:
    engine = site.registry.engine
    token_id, token, expires = issue_token(engine, "wang.wu", now=NOW, expires_days=2)
    assert expires == NOW + timedelta(days=2)
    assert site.me(token) == 200
    assert site.me(token) == 200
    site.clock.now = NOW + timedelta(minutes=61)
    assert site.me(token) == 200
    assert len(site.audit("auth.token_use")) == 2  # audit_minutes default 60
    site.clock.now = NOW + timedelta(days=2)
    assert site.me(token) == 401
    site.clock.now = NOW
    other_id, other, _ = issue_token(engine, "wang.wu", now=NOW, expires_days=2)
    assert revoke_tokens(engine, "wang.wu", now=NOW, token_id=other_id) == 1
    assert site.me(other) == 401
    assert token_id != other_id


def test_legacy_token_without_expiry_keeps_working_until_revoked(site: Site, gateway: Gateway) -> None:
    token = gateway.tokens["gz"]
    site.clock.now = NOW + timedelta(days=3650)
    assert site.me(token) == 200
    assert revoke_tokens(site.registry.engine, "gz-duty", now=site.clock.now, legacy=True) == 1
    assert site.me(token) == 401


def test_disabled_user_cannot_log_in(site: Site) -> None:
    from gateway.auth import set_user_enabled

    token = str(site.login("wang.wu")[1]["token"])
    set_user_enabled(site.registry.engine, "wang.wu", False)
    assert site.login("wang.wu")[0] == 401
    assert site.me(token) == 401


def test_totp_second_factor(site: Site) -> None:
    secret = enable_totp(site.registry.engine, "wang.wu")
    code = pyotp.TOTP(secret).at(NOW)
    assert site.login("wang.wu")[0] == 401  # the code is needed
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert site.login("wang.wu", totp=wrong)[0] == 401
    assert site.login("wang.wu", totp=code)[0] == 200
    assert site.login("wang.wu", totp=code)[0] == 401  # a code is good once
    site.clock.now = NOW + timedelta(seconds=30)
    assert site.login("wang.wu", totp=pyotp.TOTP(secret).at(site.clock.now))[0] == 200


def test_totp_required_for_admins(gateway: Gateway) -> None:
    for site in make_site(gateway, AuthSettings(totp_required_for_admins=True)):
        create_user(site.registry.engine, "sec.one", "secadmin", None, NOW, password=PASSWORD)
        assert site.login("sec.one")[0] == 401  # no TOTP enrolled: refused
        assert site.login("wang.wu")[0] == 200  # operators are not administrators
        secret = enable_totp(site.registry.engine, "sec.one")
        assert site.login("sec.one", totp=pyotp.TOTP(secret).at(NOW))[0] == 200
        reasons = [r.detail.get("reason") for r in AuditLog(site.registry.session).records(action="auth.login")]
        assert "totp_required" in reasons


@pytest.mark.skipif(CHROMIUM is None or NODE is None, reason="needs chromium and node")
def test_page_shows_the_login_form_without_a_token_and_logs_in(gateway: Gateway, served: str, tmp_path: Path) -> None:
    create_user(gateway.ctx.registry.engine, "wang.wu", "operator", "gz", NOW, password=PASSWORD)
    fill = (
        "(() => { const $ = (i) => document.getElementById(i);"
        " $('login-name').value = 'wang.wu'; $('login-password').value = %s;"
        " $('login-form').requestSubmit(); return true; })()"
    )
    steps = [
        "document.getElementById('login-dialog').open",
        fill % json.dumps("wrong password!"),
        "document.getElementById('login-error').textContent",
        fill % json.dumps(PASSWORD),
        "!document.getElementById('login-dialog').open && document.getElementById('user').textContent",
        "localStorage.getItem('lianfang.token')",
    ]
    opened, _, error, _, user, token = _in_browser(served + "/", steps, tmp_path)
    assert opened is True
    assert error == "登录失败：用户名、密码或验证码错误，或账号已锁定。"
    assert user is not None and user.startswith("wang.wu")
    assert token is not None and token.startswith("lf_") and token not in gateway.tokens.values()
