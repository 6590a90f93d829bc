"""The risk snapshot job (joint/risk_store.py ``RiskSnapshotter``) on SQLite and PostgreSQL: what it writes, the
single 0 after a region calms down (also after a restart), retention, the bound on regions, store errors."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine

from alerts.repository import AlertRepository
from alerts.types import Severity
from core.settings import RiskSettings, Settings
from devices.registry import Registry
from joint.risk import RiskWeights
from joint.risk_store import NoIncidents, RiskHistory, RiskReader, RiskSnapshotter, snapshotter_from_settings
from tests.gateway.conftest import NOW, REGIONS
from tests.joint.test_risk_api import make_alert

H = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def reg(registry: Registry) -> Registry:
    registry.upsert_regions(REGIONS, now=NOW)
    return registry


def _snapshotter(reg: Registry, clock: list[datetime], *, max_regions: int = 100) -> RiskSnapshotter:
    return RiskSnapshotter(
        RiskReader(reg.engine, reg.regions),
        RiskHistory(reg.engine),
        RiskWeights(),
        clock=lambda: clock[0],
        keep=DAY,
        max_regions=max_regions,
    )


def _points(reg: Registry, region: str) -> list[tuple[datetime, float]]:
    pts, _ = RiskHistory(reg.engine).series(region, NOW - 10 * DAY, NOW + 10 * DAY, limit=1000)
    return [(p.at, p.score) for p in pts]


def test_snapshots_write_scores_then_one_zero_then_nothing(reg: Registry) -> None:
    repo = AlertRepository(reg.engine)
    repo.save(alerts=[make_alert(1, "gz-b1", Severity.CRITICAL, NOW)], now=NOW)
    clock = [NOW]
    snap = _snapshotter(reg, clock)
    assert snap.run() == 4  # gz-b1, gz-jgj, gz, gd
    repo.save(alerts=[make_alert(1, "gz-b1", Severity.CRITICAL, NOW, resolved=NOW + H)], now=NOW + H)
    clock[0] = NOW + H
    assert snap.run() == 4  # each falls to 0 once
    clock[0] = NOW + 2 * H
    assert snap.run() == 0
    assert _points(reg, "gz") == [(NOW, 10.0), (NOW + H, 0.0)]
    assert _points(reg, "sz") == []


def test_a_restarted_job_still_writes_the_zero(reg: Registry) -> None:
    repo = AlertRepository(reg.engine)
    repo.save(alerts=[make_alert(1, "sz-b1", Severity.MAJOR, NOW)], now=NOW)
    _snapshotter(reg, [NOW]).run()
    repo.save(alerts=[make_alert(1, "sz-b1", Severity.MAJOR, NOW, resolved=NOW + H)], now=NOW + H)
    restarted = _snapshotter(reg, [NOW + H])
    assert restarted.run() == 4
    assert _points(reg, "sz-b1") == [(NOW, 5.0), (NOW + H, 0.0)]


def test_retention_and_the_bound_on_regions(reg: Registry) -> None:
    AlertRepository(reg.engine).save(alerts=[make_alert(1, "gz-b1", Severity.CRITICAL, NOW)], now=NOW)
    clock = [NOW]
    snap = _snapshotter(reg, clock, max_regions=2)
    assert snap.run() == 2  # the two highest: gd and gz (ties broken by id)
    assert [r for r in ("gd", "gz", "gz-jgj", "gz-b1") if _points(reg, r)] == ["gd", "gz"]
    clock[0] = NOW + 2 * DAY
    snap.run()
    assert [at for at, _ in _points(reg, "gd")] == [NOW + 2 * DAY]  # the first snapshot is past risk.history_days


def test_store_errors_are_logged_and_the_next_run_retries(reg: Registry, caplog: pytest.LogCaptureFixture) -> None:
    broken = create_engine("sqlite:////nonexistent-dir/x.db")
    snap = RiskSnapshotter(
        RiskReader(broken, reg.regions, NoIncidents()),
        RiskHistory(broken),
        RiskWeights(),
        clock=lambda: NOW,
        keep=DAY,
        max_regions=10,
    )
    assert snap.run() == 0
    assert "risk snapshot: store unavailable" in caplog.text
    broken.dispose()


def test_snapshotter_from_settings_uses_the_risk_section(reg: Registry) -> None:
    s = Settings(risk=RiskSettings(weight_critical=4, history_days=2, history_max_regions=3))
    snap = snapshotter_from_settings(reg.engine, reg.regions, s, lambda: NOW)
    assert (snap.weights.critical, snap.keep, snap.max_regions) == (4, 2 * DAY, 3)
    AlertRepository(reg.engine).save(alerts=[make_alert(1, "gz-b1", Severity.CRITICAL, NOW)], now=NOW)
    assert snap.run() == 3
    assert _points(reg, "gd") == [(NOW, 4.0)]
