"""The security policy (gateway/policy.py, gateway/routes/security.py, `lianfang users policy`): stored in SQL
(migration 0013, SQLite and PostgreSQL), set only by the security administrator of the whole tree, enforced at
once (passwords, lockout, idle and absolute session limits, token lifetime), every change audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core.db import make_engine, migrate
from core.errors import UserError
from devices.audit import AuditLog
from devices.registry import Registry
from gateway.app import create_app
from gateway.auth import authenticate, create_user, issue_token, update_user
from gateway.policy import default_policy, load_policy, password_problem, save_policy
from lianfang.cli import app as cli_app
from tests.gateway.conftest import NOW, REGIONS, Gateway

API = "/api/v1"
STRONG = "Correct-Horse-9-battery"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def officers(gateway: Gateway) -> Iterator[tuple[TestClient, dict[str, str], Clock]]:
    engine = gateway.ctx.registry.engine
    tokens = dict(gateway.tokens)
    tokens["sys"] = create_user(engine, "sys", "sysadmin", None, NOW)
    tokens["sec"] = create_user(engine, "sec", "secadmin", None, NOW)
    tokens["aud"] = create_user(engine, "aud", "auditor", None, NOW)
    tokens["gzsec"] = create_user(engine, "gz-sec", "secadmin", "gz", NOW)
    clock = Clock()
    gateway.ctx.clock = clock
    with TestClient(create_app(gateway.ctx)) as client:
        yield client, tokens, clock


def _h(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def test_policy_is_stored_on_each_database(registry: Registry) -> None:
    engine = registry.engine
    assert load_policy(engine) == default_policy()
    stored = save_policy(engine, {"password_min_length": 12, "lockout_failures": 3}, now=NOW, by="sec")
    assert (stored.policy.password_min_length, stored.policy.lockout_failures) == (12, 3)
    assert stored.set_fields == {"password_min_length", "lockout_failures"}
    again = save_policy(engine, {"password_min_length": None}, now=NOW, by="sec")
    assert again.policy.password_min_length == default_policy().password_min_length
    assert load_policy(engine).lockout_failures == 3
    with pytest.raises(UserError, match="from 8 to 128"):
        save_policy(engine, {"password_min_length": 4}, now=NOW, by="sec")
    with pytest.raises(UserError, match="unknown"):
        save_policy(engine, {"root": 1}, now=NOW, by="sec")


def test_password_rules_are_pure() -> None:
    p = default_policy()
    assert password_problem("short", p) is not None
    assert password_problem("a long password", p) is None
    strict = type(p)(**{**p.as_json(), "password_min_length": 12, "password_classes": 3})
    assert "mix at least 3" in (password_problem("a long password", strict) or "")
    assert password_problem(STRONG, strict) is None


@pytest.mark.parametrize(
    ("who", "read", "write"),
    [
        ("sec", 200, 200),
        ("sys", 200, 403),
        ("aud", 200, 403),
        ("gzsec", 200, 403),  # a scoped secadmin: the policy is tree-wide
        ("admin", 403, 403),
        ("gz", 403, 403),
        ("sz", 403, 403),
    ],
)
def test_only_the_security_administrator_sets_the_policy(
    officers: tuple[TestClient, dict[str, str], Clock], who: str, read: int, write: int
) -> None:
    client, tokens, _ = officers
    assert client.get(f"{API}/security/policy", headers=_h(tokens, who)).status_code == read
    r = client.patch(f"{API}/security/policy", json={"lockout_failures": 7}, headers=_h(tokens, who))
    assert r.status_code == write, r.text
    if write == 200:
        assert r.json()["lockout_failures"] == 7 and r.json()["set"] == ["lockout_failures"]


def test_bounds_are_in_the_schema(officers: tuple[TestClient, dict[str, str], Clock]) -> None:
    client, tokens, _ = officers
    for bad in ({"lockout_failures": 0}, {"password_classes": 5}, {"token_max_days": 99999}, {"x": 1}):
        assert client.patch(f"{API}/security/policy", json=bad, headers=_h(tokens, "sec")).status_code == 422


def test_policy_applies_at_once_and_is_audited(
    officers: tuple[TestClient, dict[str, str], Clock], gateway: Gateway
) -> None:
    client, tokens, clock = officers
    engine = gateway.ctx.registry.engine
    change = {"password_min_length": 14, "password_classes": 3, "lockout_failures": 2, "session_absolute_minutes": 60}
    assert client.patch(f"{API}/security/policy", json=change, headers=_h(tokens, "sec")).status_code == 200
    rec = AuditLog(gateway.ctx.registry.session).records(action="security.policy")[0]
    assert (rec.actor, rec.outcome, rec.detail) == ("sec (secadmin)", "ok", change)
    # Passwords: the API answers 422, the library refuses too (the CLI goes through it).
    weak = {"name": "new.user", "password": "a long password"}
    r = client.post(f"{API}/users", json=weak, headers=_h(tokens, "sys"))
    assert r.status_code == 422 and "mix at least 3" in r.json()["detail"]
    with pytest.raises(UserError, match="mix at least 3"):
        update_user(engine, "sz-viewer", password="a long password", now=NOW)
    ok = client.post(f"{API}/users", json={"name": "new.user", "password": STRONG}, headers=_h(tokens, "sys"))
    assert ok.status_code == 201
    # Lockout after two failures.
    for _ in range(2):
        assert client.post(f"{API}/auth/login", json={"name": "new.user", "password": "wrong"}).status_code == 401
    locked = client.post(f"{API}/auth/login", json={"name": "new.user", "password": STRONG})
    assert locked.status_code == 401
    assert AuditLog(gateway.ctx.registry.session).records(action="auth.lockout")[0].target == "new.user"
    # Absolute session limit: used every 20 minutes (never idle), it still ends 60 minutes after login.
    clock.now = NOW + timedelta(hours=1)  # the lockout (15 min) is over
    login = client.post(f"{API}/auth/login", json={"name": "new.user", "password": STRONG})
    assert login.status_code == 200
    session = {"Authorization": f"Bearer {login.json()['token']}"}
    for minutes in (20, 40, 59):
        clock.now = NOW + timedelta(hours=1, minutes=minutes)
        assert client.get(f"{API}/me", headers=session).status_code == 200
    clock.now = NOW + timedelta(hours=2)
    assert client.get(f"{API}/me", headers=session).status_code == 401
    # A shorter idle limit cuts the sessions already open.
    clock.now = NOW + timedelta(hours=3)
    login = client.post(f"{API}/auth/login", json={"name": "new.user", "password": STRONG})
    session = {"Authorization": f"Bearer {login.json()['token']}"}
    assert (
        client.patch(f"{API}/security/policy", json={"session_idle_minutes": 5}, headers=_h(tokens, "sec")).status_code
        == 200
    )
    clock.now = NOW + timedelta(hours=3, minutes=6)
    assert client.get(f"{API}/me", headers=session).status_code == 401


def test_token_lifetime_is_capped(registry: Registry) -> None:
    registry.upsert_regions(REGIONS, now=NOW)
    engine = registry.engine
    create_user(engine, "int.user", "viewer", "gz", NOW)
    _, token, _ = issue_token(engine, "int.user", now=NOW, expires_days=30)
    save_policy(engine, {"token_max_days": 7}, now=NOW, by="sec")
    with pytest.raises(UserError, match="at most 7 days"):
        issue_token(engine, "int.user", now=NOW, expires_days=30)

    def check(at: datetime) -> bool:
        found = authenticate(
            engine, token, now=at, session_minutes=10, sliding=True, audit_every=timedelta(hours=1), token_max_days=7
        )
        return found is not None

    # The token issued before the stricter policy is refused once it is older than the new limit.
    assert check(NOW + timedelta(days=6)) and not check(NOW + timedelta(days=7))


def test_cli_shows_and_sets_the_policy_and_audits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    Registry(engine).upsert_regions(REGIONS, now=NOW)
    env = {"LIANFANG_DATABASE_URL": url, "LIANFANG_CONFIG": None}
    runner = CliRunner()
    r = runner.invoke(
        cli_app, ["users", "policy", "set", "lockout_failures=3", "totp_required_for_admins=true"], env=env
    )
    assert r.exit_code == 0, r.stderr
    assert "lockout_failures=3" in r.stdout and "totp_required_for_admins=true" in r.stdout
    bad = runner.invoke(cli_app, ["users", "policy", "set", "lockout_failures=0"], env=env)
    assert bad.exit_code == 1 and bad.stderr.startswith("error: lockout_failures must be an integer from 1 to 100")
    shown = runner.invoke(cli_app, ["users", "policy", "show", "--json"], env=env)
    assert '"lockout_failures": 3' in shown.stdout and '"totp_required_for_admins"' in shown.stdout
    back = runner.invoke(cli_app, ["users", "policy", "set", "lockout_failures=default"], env=env)
    assert back.exit_code == 0 and "lockout_failures=5" in back.stdout
    records = AuditLog(Registry(engine).session).records(action="security.policy")
    assert [(r.outcome, r.detail.get("lockout_failures")) for r in reversed(records)] == [
        ("ok", 3),
        ("refused", 0),
        ("ok", None),
    ]
    user = runner.invoke(cli_app, ["users", "add", "a.b", "-r", "viewer", "--region", "gz"], env=env)
    assert user.exit_code == 0
    assert AuditLog(Registry(engine).session).records(action="user.create")[0].target == "a.b"
    engine.dispose()
