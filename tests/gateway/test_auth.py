"""API users and tokens: hashed at rest, region scope, dev bypass only when explicitly allowed."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.errors import UserError
from core.settings import Settings
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from gateway.app import GatewayContext, create_app
from gateway.auth import create_user, find_user, list_users, set_user_enabled
from tests.gateway.conftest import NOW, REGIONS, Api


def test_create_user_stores_only_the_sha256_of_the_token(registry: Registry) -> None:
    """On SQLite and PostgreSQL: migration 0004 creates the table; the token itself is nowhere in it."""
    registry.upsert_regions(REGIONS, now=NOW)
    token = create_user(registry.engine, "zhang.san", "operator", "gz", NOW)
    other = create_user(registry.engine, "li.si", "viewer", None, NOW)
    assert token.startswith("lf_") and len(token) > 40
    assert token != other
    with registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_users")).all()
    dumped = repr(rows)
    assert token not in dumped and token[3:] not in dumped
    assert hashlib.sha256(token.encode()).hexdigest() in dumped
    user = find_user(registry.engine, token)
    assert user is not None and (user.name, user.role, user.region_id) == ("zhang.san", "operator", "gz")
    assert find_user(registry.engine, token + "x") is None
    assert [u.name for u in list_users(registry.engine)] == ["li.si", "zhang.san"]


@pytest.mark.parametrize(
    ("name", "role", "region", "message"),
    [
        ("bad name", "viewer", None, "user name"),
        ("wang", "superuser", None, "role 'superuser' is not one of admin, operator, viewer"),
        ("wang", "viewer", "atlantis", "region 'atlantis' does not exist"),
        ("admin", "viewer", None, "user 'admin' already exists"),
    ],
)
def test_create_user_refuses_bad_input(
    sqlite_registry: Registry, name: str, role: str, region: str | None, message: str
) -> None:
    sqlite_registry.upsert_regions(REGIONS, now=NOW)
    create_user(sqlite_registry.engine, "admin", "admin", None, NOW)
    with pytest.raises(UserError, match=message):
        create_user(sqlite_registry.engine, name, role, region, NOW)


def test_disabled_user_is_locked_out_at_once(api: Api) -> None:
    assert api.get("/api/v1/devices", user="gz").status_code == 200
    set_user_enabled(api.ctx.registry.engine, "gz-duty", False)
    assert api.get("/api/v1/devices", user="gz").status_code == 401
    with pytest.raises(UserError, match="does not exist"):
        set_user_enabled(api.ctx.registry.engine, "nobody", False)


def test_scope_follows_regions_added_later(api: Api) -> None:
    from devices.registry import DeviceSpec, RegionSpec

    api.ctx.registry.upsert_regions([RegionSpec("gz-b2", "二号楼", "building", "gz-jgj")], now=NOW)
    api.ctx.registry.add_devices([DeviceSpec("gate-gz-0009", "gate", "gz-b2")], now=NOW)
    assert api.get("/api/v1/devices/gate-gz-0009", user="gz").status_code == 200
    assert api.get("/api/v1/devices/gate-gz-0009", user="sz").status_code == 404


def _open_ctx(registry: Registry, store: SqliteStore, *, env: str, dev_open: bool) -> GatewayContext:
    return GatewayContext(
        settings=Settings(env=env),  # type: ignore[arg-type]
        registry=registry,
        store=store,
        broker_status=lambda: {"ok": True},
        ingest_status=lambda: {"ok": True},
        dev_open=dev_open,
    )


def test_dev_bypass_only_in_dev_with_no_users(sqlite_registry: Registry, store: SqliteStore) -> None:
    sqlite_registry.upsert_regions(REGIONS, now=NOW)
    with TestClient(create_app(_open_ctx(sqlite_registry, store, env="dev", dev_open=True))) as client:
        r = client.get("/api/v1/regions")
        assert r.status_code == 200
        assert [n["id"] for n in r.json()["regions"]] == ["gd"]
        create_user(sqlite_registry.engine, "first", "admin", None, NOW)
        assert client.get("/api/v1/regions").status_code == 401  # closed as soon as a user exists


@pytest.mark.parametrize(("env", "dev_open"), [("dev", False), ("prod", True)])
def test_no_bypass_unless_dev_and_enabled(
    sqlite_registry: Registry, store: SqliteStore, env: str, dev_open: bool
) -> None:
    with TestClient(create_app(_open_ctx(sqlite_registry, store, env=env, dev_open=dev_open))) as client:
        assert client.get("/api/v1/regions").status_code == 401
        assert client.get("/api/v1/stream").status_code == 401


def test_passwords_sessions_and_tokens_on_each_database(registry: Registry) -> None:
    """On SQLite and PostgreSQL: migration 0011 adds the columns and api_sessions; login counts failures and
    locks, sessions and integration tokens expire and are revoked; nothing secret is stored in clear."""
    from datetime import datetime, timedelta

    from gateway.auth import Authenticated, LoginResult, authenticate, end_session, issue_token, login, revoke_tokens

    registry.upsert_regions(REGIONS, now=NOW)
    engine = registry.engine
    create_user(engine, "zhou.qi", "sysadmin", None, NOW, password="a long password", person_id="zhou")
    with pytest.raises(UserError, match="三员"):
        create_user(engine, "zhou.aud", "auditor", None, NOW, person_id="zhou")

    def try_login(password: str) -> LoginResult:
        return login(
            engine,
            "zhou.qi",
            password,
            None,
            now=NOW,
            session_minutes=10,
            lockout_failures=2,
            lockout_minutes=5,
            totp_required_for_admins=False,
        )

    def check(token: str, at: datetime) -> Authenticated | None:
        return authenticate(engine, token, now=at, session_minutes=10, sliding=False, audit_every=timedelta(hours=1))

    assert try_login("wrong").outcome == "denied"
    ok = try_login("a long password")
    assert ok.outcome == "ok" and ok.token is not None and ok.expires_at == NOW + timedelta(minutes=10)
    assert [try_login("wrong").outcome for _ in range(2)] == [
        "denied",
        "lockout",
    ]
    assert try_login("a long password").outcome == "locked"
    found = check(ok.token, NOW + timedelta(minutes=9))
    assert found is not None and found.kind == "session" and found.user.name == "zhou.qi"
    assert check(ok.token, NOW + timedelta(minutes=10)) is None
    assert end_session(engine, ok.token, now=NOW) is True
    assert check(ok.token, NOW) is None
    token_id, token, _ = issue_token(engine, "zhou.qi", now=NOW, expires_days=1)
    first = check(token, NOW)
    again = check(token, NOW + timedelta(minutes=1))
    assert first is not None and first.audit_due and again is not None and not again.audit_due
    assert revoke_tokens(engine, "zhou.qi", now=NOW, token_id=token_id) == 1
    assert check(token, NOW) is None
    with engine.connect() as conn:
        dumped = repr(conn.execute(text("SELECT * FROM api_users")).all())
        dumped += repr(conn.execute(text("SELECT * FROM api_sessions")).all())
    assert "a long password" not in dumped and token[3:] not in dumped and ok.token[3:] not in dumped
