"""`lianfang stats ...` and `lianfang risk top` through the real root app (CliRunner), on a SQLite database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from alerts.repository import AlertRepository
from alerts.types import Severity
from core import clock
from core.db import make_engine, migrate
from devices.registry import Registry
from lianfang.cli import app
from tests.gateway.conftest import REGIONS
from tests.joint.test_risk_api import make_alert

H = timedelta(hours=1)
Run = Callable[..., Result]


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    Registry(engine).upsert_regions(REGIONS, now=clock.now())
    t = clock.now().astimezone(UTC).replace(microsecond=0) - 3 * H
    AlertRepository(engine).save(
        alerts=[
            # acknowledged 2 h after it started: its age clock stopped at 1.5, whatever now is: 10 x 1.5 x 0.5
            make_alert(1, "gz-b1", Severity.CRITICAL, t, ack=t + 2 * H),
            make_alert(2, "sz-b1", Severity.MAJOR, t, ack=t + H, resolved=t + 2 * H, rule="E1"),
            make_alert(3, "gz-b1", Severity.WARNING, t, ack=t + 2 * H, rule="G6"),  # 2 x 1.5 x 0.5 = 1.5
        ],
        now=clock.now(),
    )
    engine.dispose()
    return url


@pytest.fixture
def run(db: str, tmp_path: Path) -> Run:
    env = {"LIANFANG_DATABASE_URL": db, "LIANFANG_DATA_DIR": str(tmp_path / "var"), "LIANFANG_CONFIG": None}
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args), env=env)


def _ok(r: Result) -> Result:
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def _period() -> list[str]:
    now = clock.now()
    return ["--start", (now - 24 * H).isoformat(), "--end", (now + H).isoformat()]


def test_stats_alerts_json_csv_and_table(run: Run) -> None:
    doc = json.loads(_ok(run("stats", "alerts", "--group-by", "rule", "--json", *_period())).stdout)
    assert {g["key"]: g["count"] for g in doc["groups"]} == {"G1": 1, "E1": 1, "G6": 1}
    e1 = next(g for g in doc["groups"] if g["key"] == "E1")
    assert e1["tta"] == {"n": 1, "mean_s": 3600.0, "p50_s": 3600.0, "p90_s": 3600.0}
    assert e1["ttr"]["p90_s"] == 7200.0
    assert doc["total"]["count"] == 3 and doc["truncated"] is False
    rows = list(csv.reader(io.StringIO(_ok(run("stats", "alerts", "--csv", "--region", "gz", *_period())).stdout)))
    assert rows[0][:2] == ["key", "count"]
    assert [r[:2] for r in rows[1:]] == [["gz-b1", "2"], ["total", "2"]]
    table = _ok(run("stats", "alerts", *_period())).stdout.splitlines()  # no terminal: TSV
    assert table[0].split("\t")[0] == "key" and len(table) == 4


def test_stats_incidents_on_an_empty_incident_table(run: Run) -> None:
    doc = json.loads(_ok(run("stats", "incidents", "--group-by", "department", "--json")).stdout)
    assert doc["kind"] == "tasks" and doc["groups"] == [] and doc["total"]["count"] == 0


def test_risk_top_json_and_table(run: Run) -> None:
    doc = json.loads(_ok(run("risk", "top", "--json")).stdout)
    assert doc["ranked_by"] == "own"
    assert [(i["id"], i["own"]) for i in doc["items"]] == [("gz-b1", 7.5 + 1.5)]  # sz-b1's alert is resolved
    assert [c["id"] for c in doc["items"][0]["contributors"]] == [1, 3]
    cities = json.loads(_ok(run("risk", "top", "--level", "city", "--json")).stdout)
    assert [(i["id"], i["score"]) for i in cities["items"]] == [("gz", 9.0)]
    lines = _ok(run("risk", "top")).stdout.splitlines()
    assert lines[0].split("\t")[:2] == ["#", "region"] and lines[1].split("\t")[1] == "gz-b1"


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "alerts", "--start", "2026-11-26T00:00:00"],  # no offset
        ["stats", "alerts", "--start", "yesterday"],
        ["stats", "alerts", "--start", "2026-11-27T00:00:00Z", "--end", "2026-11-26T00:00:00Z"],
        ["stats", "alerts", "--start", "2020-01-01T00:00:00Z", "--end", "2026-01-01T00:00:00Z"],  # too long
        ["stats", "alerts", "--json", "--csv"],
        ["stats", "alerts", "--region", "nowhere"],
        ["risk", "top", "--region", "nowhere"],
    ],
)
def test_user_errors_are_one_line_and_exit_1(run: Run, args: list[str]) -> None:
    r = run(*args)
    assert r.exit_code == 1, r.stdout
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_bad_group_is_a_usage_error(run: Run) -> None:
    assert run("stats", "alerts", "--group-by", "department").exit_code == 2
