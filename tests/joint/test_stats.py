"""Statistics (joint/stats.py) and the SQL side of risk (joint/risk_store.py) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import pytest
from sqlalchemy import inspect

from alerts.repository import AlertRepository
from alerts.types import Severity
from devices.registry import Registry
from joint.models import IncidentMember, Task, TaskState
from joint.risk import RiskWeights
from joint.risk_store import (
    HistoryPoint,
    NoIncidents,
    RiskHistory,
    RiskReader,
    alert_records,
    incident_records,
    task_records,
)
from joint.stats import Record, durations, percentile, summarise
from joint.store import JointStore
from tests.gateway.conftest import NOW, REGIONS
from tests.joint.test_risk_api import make_alert, make_incident

H = timedelta(hours=1)
DAY = timedelta(days=1)


# --- pure --------------------------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    vals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert (percentile(vals, 0.5), percentile(vals, 0.9), percentile(vals, 1.0)) == (5.0, 9.0, 10.0)
    assert percentile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
    assert durations([]) is None
    d = durations([30.0, 10.0, 20.0])
    assert d is not None and (d.n, d.mean_s, d.p50_s, d.p90_s) == (3, 20.0, 20.0, 30.0)


def test_summarise_groups_counts_and_durations() -> None:
    t = NOW
    recs = [
        Record({"rule": "G1"}, t, t + timedelta(seconds=60), t + timedelta(seconds=600)),
        Record({"rule": "G1"}, t, t + timedelta(seconds=180), None),
        Record({"rule": "G1"}, t, None, t + timedelta(seconds=300)),
        Record({"rule": "E1"}, t, t - timedelta(seconds=5), None),  # ack before raised (clock skew): 0
        Record({}, t),
    ]
    groups, total = summarise(recs, "rule")
    assert [(g.key, g.count, g.acknowledged, g.resolved, g.open) for g in groups] == [
        ("G1", 3, 2, 2, 1),
        ("-", 1, 0, 0, 1),
        ("E1", 1, 1, 0, 1),
    ]
    g1 = groups[0]
    assert g1.tta is not None and (g1.tta.mean_s, g1.tta.p50_s, g1.tta.p90_s) == (120.0, 60.0, 180.0)
    assert g1.ttr is not None and (g1.ttr.mean_s, g1.ttr.p50_s, g1.ttr.p90_s) == (450.0, 300.0, 600.0)
    assert groups[2].tta is not None and groups[2].tta.mean_s == 0.0
    assert (total.count, total.acknowledged, total.resolved, total.open) == (5, 3, 2, 3)


# --- SQL (SQLite and PostgreSQL) ---------------------------------------------------------------------------------


@pytest.fixture
def reg(registry: Registry) -> Registry:
    registry.upsert_regions(REGIONS, now=NOW)
    return registry


def test_migration_creates_the_history_table_on_every_head(reg: Registry) -> None:
    insp = inspect(reg.engine)
    assert "region_risk_history" in insp.get_table_names()
    assert {"region_id", "at", "score", "own", "alerts", "incidents"} <= {
        c["name"] for c in insp.get_columns("region_risk_history")
    }
    assert "joint_incidents" in insp.get_table_names()  # 0008_joint's branch is upgraded too


def test_alert_records_cover_the_period_and_the_subtree(reg: Registry) -> None:
    cst = timezone(timedelta(hours=8))
    AlertRepository(reg.engine).save(
        alerts=[
            make_alert(1, "gz-b1", Severity.CRITICAL, NOW - 2 * H, ack=NOW - H, resolved=NOW),
            make_alert(2, "gz-b1", Severity.MAJOR, (NOW - DAY).astimezone(cst)),  # +08:00 stored as the instant
            make_alert(3, "sz-b1", Severity.MAJOR, NOW - H),
            make_alert(4, "gz-b1", Severity.MAJOR, NOW),  # at end: outside [start, end)
            make_alert(5, "gz-b1", Severity.MAJOR, NOW - 3 * DAY),  # before start
        ],
        now=NOW,
    )
    recs, cut = alert_records(reg.engine, NOW - 2 * DAY, NOW, within=None, limit=100)
    assert not cut
    assert sorted(r.keys["region"] for r in recs) == ["gz-b1", "gz-b1", "sz-b1"]
    first = min(recs, key=lambda r: r.raised_at)
    assert first.raised_at == NOW - DAY and first.raised_at.tzinfo is not None
    gz, _ = alert_records(reg.engine, NOW - 2 * DAY, NOW, within="gz", limit=100)
    assert {r.keys["region"] for r in gz} == {"gz-b1"}
    groups, _ = summarise(gz, "severity")
    crit = next(g for g in groups if g.key == "critical")
    assert crit.tta is not None and crit.tta.mean_s == 3600 and crit.ttr is not None and crit.ttr.mean_s == 7200
    few, cut = alert_records(reg.engine, NOW - 2 * DAY, NOW, within=None, limit=2)
    assert len(few) == 2 and cut
    assert [r.raised_at for r in few] == [NOW - DAY, NOW - 2 * H]  # oldest first: the newest are left out


def test_incident_and_task_records(reg: Registry) -> None:
    store = JointStore(reg.engine)
    a = make_incident(1, "gz-b1", Severity.CRITICAL, NOW - 3 * H, type="intrusion", resolved_at=NOW - H)
    b = make_incident(2, "sz", Severity.MAJOR, NOW - 2 * H)
    store.save(incidents=[a, b], now=NOW)
    store.save_tasks(
        [
            Task(
                1,
                1,
                "security",
                TaskState.CLOSED,
                NOW - 3 * H,
                NOW,
                acknowledged_at=NOW - 150 * timedelta(minutes=1),
                closed_at=NOW - H,
            ),
            Task(2, 1, "it", TaskState.ACKNOWLEDGED, NOW - 3 * H, NOW, acknowledged_at=NOW - 2 * H),
            Task(3, 2, "energy", TaskState.OPEN, NOW - 2 * H, NOW),
        ],
        now=NOW,
    )
    incs, _ = incident_records(reg.engine, NOW - DAY, NOW, within=None, limit=10)
    by_type, total = summarise(incs, "type")
    intr = next(g for g in by_type if g.key == "intrusion")
    # acknowledged when the first task was (30 min after it opened); resolved 2 h after
    assert intr.tta is not None and intr.tta.mean_s == 1800 and intr.ttr is not None and intr.ttr.mean_s == 7200
    assert (total.count, total.open) == (2, 1)
    tasks, _ = task_records(reg.engine, NOW - DAY, NOW, within=None, limit=10)
    by_dept, _ = summarise(tasks, "department")
    assert {g.key: (g.count, g.acknowledged, g.resolved) for g in by_dept} == {
        "security": (1, 1, 1),
        "it": (1, 1, 0),
        "energy": (1, 0, 0),
    }
    only_sz, _ = task_records(reg.engine, NOW - DAY, NOW, within="sz", limit=10)
    assert [r.keys["department"] for r in only_sz] == ["energy"]


def test_risk_reader_on_the_database(reg: Registry) -> None:
    AlertRepository(reg.engine).save(
        alerts=[
            make_alert(1, "gz-b1", Severity.CRITICAL, NOW - 2 * H),  # 15
            make_alert(2, "gz-b1", Severity.MAJOR, NOW - H),  # muted below
            make_alert(3, "sz-b1", Severity.WARNING, NOW - H, silenced=True),
            make_alert(4, "sz-b1", Severity.WARNING, NOW - 3 * H, resolved=NOW - H),  # resolved: not open
        ],
        now=NOW,
    )
    inc = make_incident(1, "gz-b1", Severity.MAJOR, NOW - 4 * H)  # 5 x 2 x 2 = 20
    inc.members[2] = IncidentMember(2, NOW - H, "G1", "gate-gz-0001", "gz-b1", muted=True)
    JointStore(reg.engine).save(incidents=[inc], now=NOW)
    p = RiskReader(reg.engine, reg.regions).picture(RiskWeights(), now=NOW)
    assert p.regions["gz-b1"].own == 35 and p.regions["gd"].score == 35
    assert (p.regions["gd"].subtree_alerts, p.regions["gd"].subtree_incidents) == (1, 1)
    alerts_only = RiskReader(reg.engine, reg.regions, NoIncidents()).picture(RiskWeights(), now=NOW)
    assert alerts_only.regions["gz-b1"].own == 15 + 5 * 1.25  # without incidents nothing is muted
    bounded = RiskReader(reg.engine, reg.regions, NoIncidents(), max_items=1).picture(RiskWeights(), now=NOW)
    assert bounded.truncated


def test_history_write_series_and_prune(reg: Registry) -> None:
    h = RiskHistory(reg.engine)
    h.write([HistoryPoint("gz", NOW - i * H, float(i), 0.5, i, 0) for i in range(5)])
    pts, cut = h.series("gz", NOW - 3 * H, NOW, limit=10)
    assert [p.score for p in pts] == [3.0, 2.0, 1.0] and not cut
    assert pts[0].at == NOW - 3 * H and pts[0].at.tzinfo == UTC
    assert h.series("gz", NOW - 3 * H, NOW, limit=2)[1] is True
    assert h.series("sz", NOW - DAY, NOW, limit=10) == ([], False)
    assert h.prune(NOW - 2 * H) == 2
    assert h.count() == 3
