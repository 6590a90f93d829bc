"""Roles: the three officers of 三员分立 (nobody holds two), region_admin as admin, and the role matrix of the
users endpoints (403 for the role, 404 outside the scope), through the API and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
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
from gateway.auth import ROLES, create_user, update_user, user_by_name
from lianfang.cli import app as cli_app
from tests.gateway.conftest import NOW, REGIONS, Gateway

PASSWORD = "correct horse battery"


def test_one_person_cannot_hold_two_officer_roles(sqlite_registry: Registry) -> None:
    sqlite_registry.upsert_regions(REGIONS, now=NOW)
    engine = sqlite_registry.engine
    create_user(engine, "zhao.sys", "sysadmin", None, NOW, person_id="zhao")
    with pytest.raises(UserError, match="三员"):
        create_user(engine, "zhao.sec", "secadmin", None, NOW, person_id="zhao")
    with pytest.raises(UserError, match="三员"):
        create_user(engine, "zhao", "auditor", None, NOW)  # person_id defaults to the name
    # Another role of the same person that is not an officer role is allowed; so is the same officer role twice.
    create_user(engine, "zhao.view", "viewer", None, NOW, person_id="zhao")
    create_user(engine, "zhao.sys2", "sysadmin", "gz", NOW, person_id="zhao")
    with pytest.raises(UserError, match="三员"):
        update_user(engine, "zhao.view", role="auditor", now=NOW)
    assert user_by_name(engine, "zhao.sec") is None


def test_region_admin_is_stored_as_admin(sqlite_registry: Registry) -> None:
    sqlite_registry.upsert_regions(REGIONS, now=NOW)
    create_user(sqlite_registry.engine, "gz.admin", "region_admin", "gz", NOW)
    user = user_by_name(sqlite_registry.engine, "gz.admin")
    assert user is not None and user.role == "admin"
    with pytest.raises(UserError, match="role"):
        create_user(sqlite_registry.engine, "x.y", "root", None, NOW)


def test_cli_refuses_a_second_officer_role(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    Registry(engine).upsert_regions(REGIONS, now=NOW)
    engine.dispose()
    runner = CliRunner()
    env = {"LIANFANG_DATABASE_URL": url, "LIANFANG_CONFIG": None}
    ok = runner.invoke(
        cli_app, ["users", "add", "qian.sys", "-r", "sysadmin", "--region", "*", "--person", "qian"], env=env
    )
    assert ok.exit_code == 0, ok.stderr
    bad = runner.invoke(
        cli_app, ["users", "add", "qian.aud", "-r", "auditor", "--region", "*", "--person", "qian"], env=env
    )
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: person 'qian' already holds sysadmin") and "Traceback" not in bad.stderr
    expiring = runner.invoke(
        cli_app, ["users", "add", "li.int", "-r", "viewer", "--region", "sz", "--expires-days", "3"], env=env
    )
    assert expiring.exit_code == 0, expiring.stderr
    engine = make_engine(url)
    li = user_by_name(engine, "li.int")
    engine.dispose()
    assert li is not None and li.token_expires_at is not None
    tok = runner.invoke(cli_app, ["users", "token", "qian.sys", "--expires-days", "7"], env=env)
    assert tok.exit_code == 0 and tok.stdout.strip().startswith("lf_")
    revoked = runner.invoke(cli_app, ["users", "revoke-token", "qian.sys", "--all"], env=env)
    assert revoked.exit_code == 0 and revoked.stdout.startswith("2 token(s)")
    neither = runner.invoke(cli_app, ["users", "revoke-token", "qian.sys"], env=env)
    assert neither.exit_code == 1
    viewer = runner.invoke(
        cli_app, ["users", "add", "qian.view", "-r", "viewer", "--region", "gz", "--person", "qian"], env=env
    )
    assert viewer.exit_code == 0, viewer.stderr
    promote = runner.invoke(cli_app, ["users", "set", "qian.view", "--role", "secadmin"], env=env)
    assert promote.exit_code == 1 and "already holds sysadmin" in promote.stderr
    moved = runner.invoke(cli_app, ["users", "set", "qian.view", "--role", "region_admin", "--region", "*"], env=env)
    assert moved.exit_code == 0, moved.stderr
    assert moved.stdout.strip() == "user qian.view: admin, region *, enabled yes"
    listed = json.loads(runner.invoke(cli_app, ["users", "list", "--json"], env=env).stdout)
    assert {(u["name"], u["role"], u["person_id"], u["password"]) for u in listed} == {
        ("qian.sys", "sysadmin", "qian", False),
        ("qian.view", "admin", "qian", False),
        ("li.int", "viewer", "li.int", False),
    }


@pytest.fixture
def officers(gateway: Gateway) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The fixture users plus a whole-tree sysadmin, secadmin and auditor, and a Guangzhou sysadmin."""
    engine = gateway.ctx.registry.engine
    tokens = dict(gateway.tokens)
    tokens["sys"] = create_user(engine, "sys", "sysadmin", None, NOW)
    tokens["sec"] = create_user(engine, "sec", "secadmin", None, NOW)
    tokens["aud"] = create_user(engine, "aud", "auditor", None, NOW)
    tokens["gzsys"] = create_user(engine, "gz-sys", "sysadmin", "gz", NOW)
    with TestClient(create_app(gateway.ctx)) as client:
        yield client, tokens


def _h(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


@pytest.mark.parametrize(
    ("who", "code"),
    [("admin", 403), ("gz", 403), ("sz", 403), ("sys", 200), ("sec", 200), ("aud", 200), ("gzsys", 200)],
)
def test_list_users_by_role(officers: tuple[TestClient, dict[str, str]], who: str, code: int) -> None:
    client, tokens = officers
    r = client.get("/api/v1/users", headers=_h(tokens, who))
    assert r.status_code == code, r.text
    if code == 200:
        names = {u["name"] for u in r.json()}
        if who == "gzsys":  # only users inside Guangzhou
            assert names == {"gz-duty", "gz-b1-guard", "gz-sys"}
        else:
            assert {"admin", "sz-viewer", "sys", "sec", "aud"} <= names
        assert all("token" not in k and "hash" not in k for u in r.json() for k in u)


@pytest.mark.parametrize(("who", "code"), [("admin", 403), ("gz", 403), ("sec", 403), ("aud", 403), ("sys", 201)])
def test_create_user_by_role(officers: tuple[TestClient, dict[str, str]], who: str, code: int) -> None:
    client, tokens = officers
    body = {"name": "new.user", "password": PASSWORD, "region_id": "gz"}
    r = client.post("/api/v1/users", json=body, headers=_h(tokens, who))
    assert r.status_code == code, r.text
    if code == 201:
        assert (r.json()["role"], r.json()["region_id"], r.json()["has_password"]) == ("viewer", "gz", True)
        login = client.post("/api/v1/auth/login", json={"name": "new.user", "password": PASSWORD})
        assert login.status_code == 200
        assert client.post("/api/v1/users", json=body, headers=_h(tokens, who)).status_code == 409


def test_scoped_sysadmin_gets_404_outside_their_subtree(officers: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = officers
    h = _h(tokens, "gzsys")
    body = {"name": "sz.user", "password": PASSWORD, "region_id": "sz"}
    assert client.post("/api/v1/users", json=body, headers=h).status_code == 404
    assert client.patch("/api/v1/users/sz-viewer", json={"enabled": False}, headers=h).status_code == 404
    assert client.patch("/api/v1/users/admin", json={"enabled": False}, headers=h).status_code == 404
    assert client.patch("/api/v1/users/gz-duty", json={"enabled": False}, headers=h).status_code == 200


def test_only_secadmin_changes_roles_and_only_sysadmin_resets_passwords(
    officers: tuple[TestClient, dict[str, str]], gateway: Gateway
) -> None:
    client, tokens = officers
    change = {"role": "operator", "region_id": "sz"}
    for who in ("sys", "aud", "admin", "gz"):
        assert client.patch("/api/v1/users/sz-viewer", json=change, headers=_h(tokens, who)).status_code == 403
    r = client.patch("/api/v1/users/sz-viewer", json=change, headers=_h(tokens, "sec"))
    assert r.status_code == 200 and (r.json()["role"], r.json()["region_id"]) == ("operator", "sz")
    pw = {"password": PASSWORD}
    assert client.patch("/api/v1/users/sz-viewer", json=pw, headers=_h(tokens, "sec")).status_code == 403
    assert client.patch("/api/v1/users/sz-viewer", json=pw, headers=_h(tokens, "sys")).status_code == 200
    # Nobody changes their own role; 三员 conflicts are a 409.
    assert client.patch("/api/v1/users/sec", json={"role": "auditor"}, headers=_h(tokens, "sec")).status_code == 403
    create_user(gateway.ctx.registry.engine, "sun.view", "viewer", None, NOW, person_id="sys")
    r = client.patch("/api/v1/users/sun.view", json={"role": "auditor"}, headers=_h(tokens, "sec"))
    assert r.status_code == 409 and "三员" in r.json()["detail"]
    assert client.patch("/api/v1/users/nobody", json={"enabled": False}, headers=_h(tokens, "sec")).status_code == 404
    records = AuditLog(gateway.ctx.registry.session).records(action="user.update")
    assert [(r.actor, r.target, r.outcome) for r in reversed(records)] == [
        ("sec (secadmin)", "sz-viewer", "ok"),
        ("sys (sysadmin)", "sz-viewer", "ok"),
        ("sec (secadmin)", "sun.view", "refused"),
    ]
    assert all("password" not in r.detail for r in records)


def test_the_page_names_every_role_in_both_languages() -> None:
    js = (Path(__file__).resolve().parents[2] / "gateway" / "static" / "app.js").read_text(encoding="utf-8")
    zh_block = js[js.index("zh: {") : js.index("en: {")]
    en_block = js[js.index("en: {") : js.index("const CRITICAL")]
    for role in ROLES:
        assert f"role_{role}:" in zh_block and f"role_{role}:" in en_block, role
