"""`lianfang dispatches list|add|approve|close` against a fresh SQLite registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core.db import make_engine, migrate
from devices.audit import AuditLog
from devices.registry import DeviceSpec, RegionSpec, Registry
from lianfang.cli import app

NOW = datetime(2026, 12, 4, 1, 0, tzinfo=UTC)
CLERK = ("--by", "clerk", "--json")
PLAN = ("--start", "2026-12-07T09:00+08:00", "--end", "2026-12-07T10:00+08:00")


def _setup(tmp_path: Path) -> tuple[Registry, dict[str, str | None]]:
    reg = Registry(make_engine(f"sqlite:///{tmp_path}/registry.db"))
    migrate(reg.engine)
    reg.upsert_regions([RegionSpec("gd", "广东省", "province"), RegionSpec("gz", "广州市", "city", "gd")], now=NOW)
    reg.add_devices([DeviceSpec("car-gz-0001", "vehicle", "gz"), DeviceSpec("gate-gz-0001", "gate", "gz")], now=NOW)
    env: dict[str, str | None] = {
        "LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db",
        "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
        "LIANFANG_DATA_DIR": str(tmp_path / "var"),
        "LIANFANG_CONFIG": None,
    }
    return reg, env


def _run(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def _json(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_add_approve_close_list(tmp_path: Path) -> None:
    reg, env = _setup(tmp_path)
    plan = ["--start", "2026-12-07T09:00+08:00", "--end", "2026-12-07T12:00+08:00"]
    d = _json(
        _run(
            env,
            "dispatches",
            "add",
            "car-gz-0001",
            "--driver",
            "张三",
            "--purpose",
            "会议",
            *plan,
            "--by",
            "clerk",
            "--json",
        )
    )
    assert d["status"] == "pending" and d["requested_by"] == "clerk" and d["region_id"] == "gz"
    assert d["planned_start_ms"] == int(datetime(2026, 12, 7, 1, tzinfo=UTC).timestamp() * 1000)
    refused = _run(env, "dispatches", "approve", str(d["id"]), "--by", "clerk")
    assert refused.exit_code == 1 and "申请人" in refused.stderr
    ok = _json(_run(env, "dispatches", "approve", str(d["id"]), "--by", "chief", "--json"))
    assert ok["status"] == "approved" and ok["approver"] == "chief"
    closed = _json(_run(env, "dispatches", "close", str(d["id"]), "--ended", "2026-12-07T11:00+08:00", "--json"))
    assert closed["status"] == "closed"
    listed = _json(_run(env, "dispatches", "list", "--region", "gz", "--status", "closed", "--json"))
    assert listed["total"] == 1 and listed["items"][0]["id"] == d["id"]
    table = _run(env, "dispatches", "list")
    assert table.exit_code == 0 and "car-gz-0001" in table.stdout
    actions = sorted(r.action for r in AuditLog(reg.session).records(action=None) if r.action.startswith("dispatch"))
    assert actions == ["dispatch.approve", "dispatch.close", "dispatch.create"]


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    _, env = _setup(tmp_path)
    plan = ["--start", "2026-12-07T09:00", "--end", "2026-12-07T12:00+08:00"]
    r = _run(env, "dispatches", "add", "car-gz-0001", "--driver", "张三", "--purpose", "会议", *plan)
    assert r.exit_code == 1 and "needs a UTC offset" in r.stderr
    r = _run(
        env,
        "dispatches",
        "add",
        "gate-gz-0001",
        "--driver",
        "a",
        "--purpose",
        "b",
        "--start",
        "2026-12-07T09:00+08:00",
        "--end",
        "2026-12-07T10:00+08:00",
    )
    assert r.exit_code == 1 and "not a registered vehicle" in r.stderr
    r = _run(env, "dispatches", "approve", "99")
    assert r.exit_code == 1 and "does not exist" in r.stderr
    r = _run(env, "dispatches", "list", "--status", "open")
    assert r.exit_code == 1
