"""The risk and statistics endpoints (gateway/routes/risk.py) on the seeded gateway of tests/gateway/conftest.py:
numbers through the real app and database, region scoping (a sibling is invisible), bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.repository import AlertRepository
from alerts.types import Alert, AlertState, Severity
from joint.models import Incident, IncidentMember, IncidentState, ScopeLevel, Task, TaskState
from joint.risk import RiskWeights
from joint.risk_store import RiskHistory, RiskReader, RiskSnapshotter
from joint.store import JointStore
from tests.gateway.conftest import NOW, Api, api, gateway, seeded  # noqa: F401  (fixtures)

H = timedelta(hours=1)
END = "2026-11-27T00:00:00Z"  # after NOW: [start, end) includes what opened at NOW
PATHS = {"gz-b1": ("gd", "gz", "gz-jgj", "gz-b1"), "sz-b1": ("gd", "sz", "sz-jgj", "sz-b1"), "sz": ("gd", "sz")}


def make_alert(
    aid: int,
    region: str,
    severity: Severity,
    started: datetime,
    *,
    rule: str = "G1",
    ack: datetime | None = None,
    resolved: datetime | None = None,
    silenced: bool = False,
) -> Alert:
    state = AlertState.RESOLVED if resolved else AlertState.ACKNOWLEDGED if ack else AlertState.FIRING
    return Alert(
        id=aid,
        dedup_key=f"{rule}|{aid}",
        rule_id=rule,
        device_id="gate-gz-0001",
        region_id=region,
        severity=severity,
        state=state,
        title_zh=f"告警{aid}",
        title_en=f"alert {aid}",
        started_at=started,
        updated_at=started,
        acknowledged_by="duty" if ack else None,
        acknowledged_at=ack,
        resolved_at=resolved,
        silenced=silenced,
        region_path=PATHS[region],
        learned_at=started.astimezone(UTC),  # alert_to_row writes learned_at as is (not as UTC)
    )


def make_incident(iid: int, region: str, severity: Severity, opened: datetime, **kw: object) -> Incident:
    inc = Incident(
        id=iid,
        pattern_id="X5",
        type=str(kw.get("type", "regional_cluster")),
        title_zh=f"事件{iid}",
        title_en=f"incident {iid}",
        severity=severity,
        state=IncidentState(str(kw.get("state", "open"))),
        scope_level=ScopeLevel.BUILDING if region.endswith("b1") else ScopeLevel.CITY,
        region_id=region,
        group_key=f"X5|{region}|{iid}",
        opened_at=opened,
        updated_at=opened,
        region_path=PATHS[region],
    )
    resolved = kw.get("resolved_at")
    if isinstance(resolved, datetime):
        inc.resolved_at = resolved
    return inc


@pytest.fixture
def filled(api: Api) -> Api:  # noqa: F811
    engine = api.ctx.registry.engine
    AlertRepository(engine).save(
        alerts=[
            make_alert(1, "gz-b1", Severity.CRITICAL, NOW - 2 * H),  # 10 x 1.5 = 15
            make_alert(2, "sz-b1", Severity.MAJOR, NOW - 4 * H, ack=NOW - 2 * H, rule="E1"),  # 5 x 1.5 x 0.5 = 3.75
            make_alert(3, "gz-b1", Severity.CRITICAL, NOW - H, silenced=True),  # silenced: not counted
            make_alert(4, "gz-b1", Severity.MAJOR, NOW - H, rule="G6"),  # muted under incident 2: not counted
            make_alert(5, "gz-b1", Severity.WARNING, NOW - 3 * H, ack=NOW - 2 * H, resolved=NOW - H, rule="G6"),
        ],
        now=NOW,
    )
    store = JointStore(engine)
    sz_city = make_incident(1, "sz", Severity.MAJOR, NOW)  # 5 x 1 x 2 = 10, in Shenzhen only
    gz_site = make_incident(2, "gz-b1", Severity.WARNING, NOW - 4 * H, type="site_outage", state="investigating")
    gz_site.members[4] = IncidentMember(4, NOW - H, "G6", "gate-gz-0001", "gz-b1", muted=True)
    store.save(incidents=[sz_city, gz_site], now=NOW)  # gz_site: 2 x 2 x 2 x 0.5 = 4
    store.save_tasks(
        [
            Task(1, 2, "security", TaskState.ACKNOWLEDGED, NOW - 4 * H, NOW, acknowledged_at=NOW - 3 * H),
            Task(2, 2, "it", TaskState.OPEN, NOW - 4 * H, NOW),
            Task(3, 1, "security", TaskState.OPEN, NOW, NOW + H),
        ],
        now=NOW,
    )
    return api


def _ids(nodes: list[dict[str, object]]) -> set[str]:
    out: set[str] = set()
    for n in nodes:
        out.add(str(n["id"]))
        out |= _ids(n["children"])  # type: ignore[arg-type]
    return out


def test_risk_tree_scores_for_an_unscoped_caller(filled: Api) -> None:
    r = filled.get("/api/v1/risk")
    assert r.status_code == 200, r.text
    body = r.json()
    (gd,) = body["regions"]
    assert gd["id"] == "gd"
    # gz: gz-b1 owns 15 + 4 = 19; sz: own 10 + sz-b1's 3.75; gd = max 19 + 0.5 x 13.75
    assert gd["score"] == 19 + 0.5 * 13.75
    gz = next(c for c in gd["children"] if c["id"] == "gz")
    sz = next(c for c in gd["children"] if c["id"] == "sz")
    assert (gz["score"], sz["own"], sz["score"]) == (19, 10, 13.75)
    assert (gd["subtree_alerts"], gd["subtree_incidents"]) == (2, 2)
    assert body["truncated"] is False


def test_risk_tree_of_a_scoped_caller_never_shows_a_sibling(filled: Api) -> None:
    body = filled.get("/api/v1/risk", user="gz").json()
    assert [n["id"] for n in body["regions"]] == ["gz"]
    assert _ids(body["regions"]) == {"gz", "gz-jgj", "gz-b1"}
    assert body["regions"][0]["score"] == 19
    for path in ("/api/v1/risk", "/api/v1/risk/top", "/api/v1/risk/history", "/api/v1/stats/alerts"):
        assert filled.get(path, user="gz", region="sz").status_code == 404, path
        assert filled.get(path, user="gz", region="nowhere").status_code == 404, path
    top = filled.get("/api/v1/risk/top", user="gz").json()
    assert [i["id"] for i in top["items"]] == ["gz-b1"]
    shown = {c["region_id"] for i in top["items"] for c in i["contributors"]}
    assert shown == {"gz-b1"}
    # a building's viewer does not see the city-level incident above it either
    top_b1 = filled.get("/api/v1/risk/top", user="gzb1", level="city").json()
    assert top_b1["items"] == []


def test_risk_top_ranks_and_lists_contributors(filled: Api) -> None:
    top = filled.get("/api/v1/risk/top").json()
    assert top["ranked_by"] == "own"
    assert [(i["id"], i["own"]) for i in top["items"]] == [("gz-b1", 19), ("sz", 10), ("sz-b1", 3.75)]
    first = top["items"][0]["contributors"]
    assert [(c["kind"], c["id"], c["points"], c["age_factor"]) for c in first] == [
        ("alert", 1, 15, 1.5),
        ("incident", 2, 4, 2),
    ]
    cities = filled.get("/api/v1/risk/top", level="city", limit=1, contributors=1).json()
    assert cities["ranked_by"] == "score"
    assert [(i["id"], i["score"], len(i["contributors"])) for i in cities["items"]] == [("gz", 19, 1)]


def test_risk_history_from_snapshots(filled: Api) -> None:
    engine = filled.ctx.registry.engine
    clock = [NOW - 2 * H]
    snap = RiskSnapshotter(
        RiskReader(engine, filled.ctx.registry.regions),
        RiskHistory(engine),
        RiskWeights(),
        clock=lambda: clock[0],
        keep=timedelta(days=1),
        max_regions=100,
    )
    assert snap.run() > 0
    clock[0] = NOW
    snap.run()
    r = filled.get("/api/v1/risk/history", region="gz", start="2026-11-26T00:00:00Z", end="2026-11-26T09:00:00Z")
    assert r.status_code == 200, r.text
    (series,) = r.json()["series"]
    assert series["region_id"] == "gz"
    assert [p["at"] for p in series["points"]] == ["2026-11-26T06:00:00.000Z", "2026-11-26T08:00:00.000Z"]
    assert series["points"][1]["score"] == 19
    # scoped: the caller's own region by default, a sibling's is 404
    mine = filled.get("/api/v1/risk/history", user="sz", start="2026-11-26T00:00:00Z").json()["series"]
    assert [s["region_id"] for s in mine] == ["sz"]
    # limit cuts the newest
    cut = filled.get(
        "/api/v1/risk/history", region="gz", start="2026-11-26T00:00:00Z", end="2026-11-26T09:00:00Z", limit=1
    ).json()["series"][0]
    assert cut["truncated"] is True and len(cut["points"]) == 1


def test_stats_alerts_and_incidents_in_scope(filled: Api) -> None:
    body = filled.get("/api/v1/stats/alerts", group_by="rule", start="2026-11-25T00:00:00Z").json()
    assert body["total"]["count"] == 5
    g6 = next(g for g in body["groups"] if g["key"] == "G6")
    assert g6["count"] == 2 and g6["resolved"] == 1
    assert g6["ttr"] == {"n": 1, "mean_s": 7200, "p50_s": 7200, "p90_s": 7200}
    assert g6["tta"]["mean_s"] == 3600
    scoped = filled.get("/api/v1/stats/alerts", user="gz", group_by="region", start="2026-11-25T00:00:00Z").json()
    assert [g["key"] for g in scoped["groups"]] == ["gz-b1"]
    assert scoped["total"]["count"] == 4
    inc = filled.get("/api/v1/stats/incidents", group_by="type", start="2026-11-25T00:00:00Z", end=END).json()
    assert {g["key"]: g["count"] for g in inc["groups"]} == {"regional_cluster": 1, "site_outage": 1}
    site = next(g for g in inc["groups"] if g["key"] == "site_outage")
    assert site["tta"]["mean_s"] == 3600  # its first task acknowledged 1 h after it opened
    dept = filled.get("/api/v1/stats/incidents", group_by="department", start="2026-11-25T00:00:00Z", end=END).json()
    assert {g["key"]: g["count"] for g in dept["groups"]} == {"security": 2, "it": 1}
    dept_gz = filled.get(
        "/api/v1/stats/incidents", user="gz", group_by="department", start="2026-11-25T00:00:00Z", end=END
    ).json()
    assert {g["key"]: g["count"] for g in dept_gz["groups"]} == {"security": 1, "it": 1}


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/risk/top", {"limit": 0}),
        ("/api/v1/risk/top", {"limit": 1001}),
        ("/api/v1/risk/top", {"level": "planet"}),
        ("/api/v1/risk/top", {"contributors": 21}),
        ("/api/v1/risk", {"region": "NOT A REGION"}),
        ("/api/v1/risk/history", {"start": "2026-11-26T00:00:00"}),  # no offset
        ("/api/v1/risk/history", {"start": "2026-11-27T00:00:00Z", "end": "2026-11-26T00:00:00Z"}),
        ("/api/v1/stats/alerts", {"start": "2020-01-01T00:00:00Z"}),  # longer than api.max_range_days
        ("/api/v1/stats/alerts", {"group_by": "department"}),
        ("/api/v1/stats/incidents", {"group_by": "rule"}),
        ("/api/v1/stats/alerts", {"end": "99999-01-01T00:00:00Z"}),
    ],
)
def test_every_parameter_is_bounded(filled: Api, path: str, params: dict[str, object]) -> None:
    r = filled.get(path, **params)
    assert r.status_code == 422, r.text


def test_without_a_token_is_401(filled: Api) -> None:
    assert filled.get("/api/v1/risk", user=None).status_code == 401


def test_endpoints_are_in_the_openapi_document(filled: Api) -> None:
    doc = filled.get("/api/v1/openapi.json").json()
    for p in ("/api/v1/risk", "/api/v1/risk/top", "/api/v1/risk/history", "/api/v1/stats/alerts"):
        assert "422" in doc["paths"][p]["get"]["responses"], p
    assert "/api/v1/stats/incidents" in doc["paths"]
