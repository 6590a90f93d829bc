"""`lianfang users add/list/disable` through typer's CliRunner against a temporary SQLite registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core.db import make_engine, migrate
from devices.registry import Registry
from gateway.auth import find_user
from lianfang.cli import app
from tests.gateway.conftest import NOW, REGIONS

Run = Callable[..., Result]


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    Registry(engine).upsert_regions(REGIONS, now=NOW)
    engine.dispose()
    return url


@pytest.fixture
def run(url: str) -> Run:
    runner = CliRunner()
    env = {"LIANFANG_DATABASE_URL": url, "LIANFANG_CONFIG": None}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_users_add_prints_a_working_token_once(run: Run, url: str) -> None:
    result = run("users", "add", "zhang.san", "--role", "operator", "--region", "gz")
    assert result.exit_code == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("lf_") and "\n" not in token
    assert "shown only once" in result.stderr
    engine = make_engine(url)
    user = find_user(engine, token)
    engine.dispose()
    assert user is not None and user.region_id == "gz"

    listed = run("users", "list", "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["region_id"], r["enabled"]) for r in rows] == [
        ("zhang.san", "operator", "gz", True)
    ]
    assert token not in listed.stdout
    assert "zhang.san" in run("users", "list").stdout


def test_users_add_whole_tree_and_disable(run: Run) -> None:
    assert run("users", "add", "boss", "--role", "admin", "--region", "*").exit_code == 0
    assert run("users", "disable", "boss").exit_code == 0
    rows = json.loads(run("users", "list", "--json").stdout)
    assert rows == [{**rows[0], "name": "boss", "region_id": "*", "enabled": False}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["users", "add", "x1", "--role", "root", "--region", "gz"], "error: role 'root' is not one of"),
        (["users", "add", "x1", "--role", "viewer", "--region", "mars"], "error: region 'mars' does not exist"),
        (["users", "disable", "ghost"], "error: user 'ghost' does not exist"),
    ],
)
def test_users_bad_input_exits_1_with_one_line(run: Run, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
