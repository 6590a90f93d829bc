"""`lianfang incidents ...` through the real root app (CliRunner) against the real gateway on a uvicorn server with
the real joint service: the state machine open -> investigating -> resolved -> closed with a cause code, and the
server's refusals (409 wrong state, 403 role, 404 scope, 422 input) as one line and exit 1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from joint.models import ScopeLevel, Task, TaskState
from joint.patterns import PatternSet
from joint.service import JointService, RegionTree
from lianfang.cli import app
from tests.gateway.conftest import NOW, Gateway, gateway, seeded, served  # noqa: F401
from tests.joint.test_api import _incident


@pytest.fixture
def joint_here(gateway: Gateway) -> Iterator[JointService]:  # noqa: F811
    reg = gateway.ctx.registry
    svc = JointService(
        reg.engine, PatternSet(), RegionTree(reg.regions, reg.snapshot), lambda _r: "", clock_fn=lambda: NOW
    )
    b1 = _incident(1, "gz-b1", ("gd", "gz", "gz-jgj", "gz-b1"), ScopeLevel.BUILDING, [(101, "gate-gz-0001", "gz-b1")])
    sz = _incident(3, "sz-b1", ("gd", "sz", "sz-jgj", "sz-b1"), ScopeLevel.BUILDING, [(104, "gate-sz-0001", "sz-b1")])
    task = Task(11, 1, "security", TaskState.OPEN, NOW, NOW + timedelta(minutes=30))
    svc.store.save(incidents=[b1, sz], tasks=[task], now=NOW)
    svc.load()
    gateway.ctx.joint = svc  # type: ignore[attr-defined]
    yield svc


def run(url: str, token: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["incidents", *args, "--url", url, "--token", token])


def doc(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_state_machine_from_the_cli(joint_here: JointService, served: str, gateway: Gateway) -> None:  # noqa: F811
    gz, admin = gateway.tokens["gz"], gateway.tokens["admin"]
    listed = doc(run(served, gz, "list", "--state", "active", "--json"))
    assert [i["id"] for i in listed["items"]] == [1], "the Shenzhen incident is not in Guangzhou's scope"
    assert doc(run(served, gz, "investigate", "1", "--json"))["state"] == "investigating"
    again = run(served, gz, "investigate", "1")
    assert again.exit_code == 1 and "409: incident 1 is investigating, not open" in again.output
    resolved = doc(run(served, gz, "resolve", "1", "--reason", "门已修复", "--json"))
    assert resolved["state"] == "resolved" and [t["state"] for t in resolved["tasks"]] == ["open"]
    closed = doc(run(served, gz, "close", "1", "--cause", "handled", "--note", "已复位", "--json"))
    assert closed["state"] == "closed" and closed["cause_code"] == "handled"
    shown = doc(run(served, gz, "show", "1", "--json"))
    texts = [e["text"] for e in shown["timeline"]]
    assert "已复位" in texts and "人工解除：门已修复" in texts
    table = run(served, gz, "show", "1")
    assert table.exit_code == 0 and "closed" in table.stdout and "handled" in table.stdout
    # the refusals, each one line
    assert "404: incident '3' not found" in run(served, gz, "resolve", "3", "--reason", "x").output
    viewer = run(served, gateway.tokens["gzb1"], "resolve", "1", "--reason", "x")
    assert viewer.exit_code == 1 and viewer.output.startswith("error: 403")
    bad = run(served, admin, "close", "3", "--cause", "because")
    assert bad.exit_code == 1 and "422: body.cause_code" in bad.output
    assert doc(run(served, admin, "close", "3", "--cause", "false_alarm", "--json"))["state"] == "closed"
    gone = run(served, admin, "close", "3", "--cause", "other")
    assert gone.exit_code == 1 and "409" in gone.output


def test_an_unreachable_server_is_one_line(gateway: Gateway) -> None:  # noqa: F811
    from devices.broker import free_port

    r = run(f"http://127.0.0.1:{free_port()}", "x", "list")
    assert r.exit_code == 1 and r.output.startswith("error: cannot reach the server at http://127.0.0.1:")
