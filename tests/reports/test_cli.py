"""`lianfang report coverage` through typer's CliRunner against a seeded SQLite registry and telemetry store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core.db import make_engine, migrate
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from lianfang.cli import app
from reports import registry as report_registry
from reports.render import pdf_browser
from tests.reports.seed import seed

Run = Callable[..., Result]
PERIOD = ["--period", "2026-11-01..2026-11-07"]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    store = SqliteStore(tmp_path / "telemetry.db")
    seed(Registry(engine), store)
    store.close()
    engine.dispose()
    runner = CliRunner()
    env = {"LIANFANG_DATA_DIR": str(tmp_path), "LIANFANG_CONFIG": None}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, ["report", *args], env=env)

    return invoke


def test_json(run: Run) -> None:
    r = run("coverage", "--region", "js", *PERIOD, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["period"]["start"] == "2026-11-01T00:00:00+08:00"
    assert {s["key"]: s["value"] for s in doc["summary"]}["expected"] == 8


def test_terminal_summary_names_findings(run: Run) -> None:
    r = run("coverage", "-r", "nj", *PERIOD, "--lang", "en")
    assert r.exit_code == 0, r.output
    assert "Devices expected\t3" in r.stdout
    assert "never reported (meter-1)" in r.stdout


def test_files(run: Run, tmp_path: Path) -> None:
    html, csv = tmp_path / "r.html", tmp_path / "r.csv"
    assert run("coverage", "-r", "js", *PERIOD, "--out", str(html)).exit_code == 0
    assert "数据覆盖与质量报告" in html.read_text(encoding="utf-8")
    r = run("coverage", "-r", "js", *PERIOD, "--out", str(csv), "--table", "rejections", "--lang", "en")
    assert r.exit_code == 0, r.output
    assert csv.read_bytes().decode("utf-8-sig").splitlines()[1] == "bad_timestamp,时间戳错误,3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["coverage", "-r", "js", "--period", "someday"], "period 'someday'"),
        (["coverage", "-r", "nope", *PERIOD], "region 'nope' does not exist"),
        (["coverage", "-r", "js", "--format", "xls"], "--format 'xls'"),
        (["coverage", "-r", "js", "--format", "pdf"], "needs --out"),
        (["coverage", "-r", "js", *PERIOD, "--format", "csv", "--table", "zz"], "no table 'zz'"),
    ],
)
def test_bad_input_is_one_line(run: Run, args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 1
    assert message in r.stderr and "Traceback" not in r.output


def test_a_missing_builder_is_not_available(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(report_registry.BUILDERS, "scorecard", "reports.no_such_module:build")
    r = run("scorecard", "-r", "js", "--period", "week")
    assert r.exit_code == 1
    assert "report 'scorecard' is not available" in r.stderr


@pytest.mark.skipif(pdf_browser() is None, reason="no chromium on PATH")
def test_pdf_file(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "r.pdf"
    r = run("coverage", "-r", "js", *PERIOD, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(b"%PDF")
