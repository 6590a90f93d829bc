"""Region risk and statistics, inside the caller's scope (docs/risk.md).

* ``GET /risk``: every visible region's score as a tree (own and rolled up, open alerts and incidents);
* ``GET /risk/top``: the riskiest regions now with what contributes most;
* ``GET /risk/history``: a region's score over a period (the snapshots of ``region_risk_history``);
* ``GET /stats/alerts`` and ``GET /stats/incidents``: counts, time to acknowledge and to resolve per group.

Scoping: a scoped caller's tree starts at their region; its score is made of their subtree only (a parent's or a
sibling's items never show, not even as a contributor), and a region outside the scope is 404 like everywhere
else. An incident scoped to a city is therefore not visible to a building's operator: it lies above their subtree.
Everything is read from the SQL database, so these endpoints work without the alert service running.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gateway.auth import Principal
from gateway.deps import NowDep, PrincipalDep, ReadRegistryDep, RegistryDep, SettingsDep
from gateway.params import DAY_MS, EPOCH, Limit, RegionQuery, TimeQuery, error_responses, iso_at, time_range
from gateway.routes import API_PREFIX
from gateway.scope import region_or_404
from joint.risk import Contribution, RegionRisk, RiskPicture, RiskWeights, top_risks
from joint.risk_store import RiskHistory, RiskReader, alert_records, incident_records, task_records
from joint.stats import Durations, GroupStats, Record, summarise

router = APIRouter(prefix=API_PREFIX, tags=["risk"], responses=error_responses(401, 404, 422, 503))

Level = Literal["province", "city", "agency", "building"]
DEFAULT_STATS_DAYS = 7
DEFAULT_HISTORY_MS = DAY_MS


# --- JSON shapes -------------------------------------------------------------------------------------------------


class Contributor(BaseModel):
    kind: Literal["alert", "incident"]
    id: int
    region_id: str
    severity: str
    label: str = Field(description="rule id (alert) or incident type")
    title: str
    since: str = Field(description="when the platform learned of it / opened it (UTC)")
    handled: bool = Field(description="acknowledged (alert) or investigating (incident)")
    age_factor: float
    points: float


class RiskNode(BaseModel):
    id: str
    name: str
    level: str
    own: float = Field(description="points of the open items raised in this region itself")
    score: float = Field(description="rolled up: own + max(children) + spread x (sum(children) - max(children))")
    alerts: int = Field(description="open alerts counted in this region itself")
    incidents: int
    subtree_alerts: int
    subtree_incidents: int
    children: list[RiskNode] = []


class RiskTree(BaseModel):
    at: str
    truncated: bool = Field(description="more open items than risk.max_items: the oldest were not counted")
    regions: list[RiskNode]


class TopEntry(BaseModel):
    id: str
    name: str
    level: str
    own: float
    score: float
    subtree_alerts: int
    subtree_incidents: int
    contributors: list[Contributor]


class TopRisks(BaseModel):
    at: str
    ranked_by: Literal["own", "score"]
    truncated: bool
    items: list[TopEntry]


class HistoryPointOut(BaseModel):
    at: str
    score: float
    own: float
    alerts: int
    incidents: int


class Series(BaseModel):
    region_id: str
    truncated: bool = Field(description="more points than limit in the period: the newest were cut")
    points: list[HistoryPointOut]


class RiskHistoryOut(BaseModel):
    start: str
    end: str
    series: list[Series]


class DurationsOut(BaseModel):
    n: int
    mean_s: float
    p50_s: float
    p90_s: float


class GroupOut(BaseModel):
    key: str
    count: int
    acknowledged: int
    resolved: int
    open: int
    tta: DurationsOut | None = Field(description="time to acknowledge, seconds")
    ttr: DurationsOut | None = Field(description="time to resolve, seconds")


class StatsOut(BaseModel):
    start: str
    end: str
    group_by: str
    truncated: bool = Field(description="more rows than risk.stats_max_rows in the period: the newest were left out")
    total_groups: int
    total: GroupOut
    groups: list[GroupOut]


def _r(x: float) -> float:
    return round(x, 4)


def _contributor(c: Contribution) -> Contributor:
    i = c.item
    return Contributor(
        kind=i.kind,
        id=i.id,
        region_id=i.region_id,
        severity=i.severity,
        label=i.label,
        title=i.title,
        since=iso_at(i.since) or "",
        handled=i.handled,
        age_factor=_r(c.age_factor),
        points=_r(c.points),
    )


def _node(p: RiskPicture, r: RegionRisk) -> RiskNode:
    return RiskNode(
        id=r.id,
        name=r.name,
        level=r.level,
        own=_r(r.own),
        score=_r(r.score),
        alerts=r.alerts,
        incidents=r.incidents,
        subtree_alerts=r.subtree_alerts,
        subtree_incidents=r.subtree_incidents,
        children=[_node(p, p.regions[c]) for c in r.children],
    )


def _group(g: GroupStats) -> GroupOut:
    def d(x: Durations | None) -> DurationsOut | None:
        if x is None:
            return None
        return DurationsOut(n=x.n, mean_s=_r(x.mean_s), p50_s=_r(x.p50_s), p90_s=_r(x.p90_s))

    return GroupOut(
        key=g.key,
        count=g.count,
        acknowledged=g.acknowledged,
        resolved=g.resolved,
        open=g.open,
        tta=d(g.tta),
        ttr=d(g.ttr),
    )


# --- helpers -----------------------------------------------------------------------------------------------------


def _picture(registry: RegistryDep, settings: SettingsDep, now: datetime, contributors: int) -> RiskPicture:
    r = settings.risk
    reader = RiskReader(registry.engine, registry.regions, max_items=r.max_items)
    return reader.picture(RiskWeights.from_settings(r), now=now, top_contributors=contributors)


def _roots(registry: RegistryDep, principal: Principal, region: str | None, p: RiskPicture) -> list[str]:
    """The tree roots the caller asked for and may see."""
    if region is not None:
        region_or_404(registry, principal, region)
        return [region] if region in p.regions else []
    if principal.region_id is None:
        return list(p.roots)
    return [principal.region_id] if principal.region_id in p.regions else []


def _period(
    start: str | None, end: str | None, now: datetime, default_ms: int, max_days: int
) -> tuple[datetime, datetime]:
    now_ms = (now - EPOCH) // timedelta(milliseconds=1)
    s, e = time_range(start, end, now_ms=now_ms, default_ms=default_ms, max_days=max_days)
    return EPOCH + timedelta(milliseconds=s), EPOCH + timedelta(milliseconds=e)


def _within(registry: RegistryDep, principal: Principal, region: str | None) -> str | None:
    """The subtree a statistics query covers: ``region`` (404 unless visible) or the caller's whole scope."""
    if region is not None:
        region_or_404(registry, principal, region)
        return region
    return principal.region_id


# --- routes ------------------------------------------------------------------------------------------------------


@router.get("/risk", response_model=RiskTree)
def risk_tree(
    registry: ReadRegistryDep, settings: SettingsDep, principal: PrincipalDep, now: NowDep, region: RegionQuery = None
) -> RiskTree:
    """The risk score of every region the caller may see, as a tree (``region``: only that subtree)."""
    p = _picture(registry, settings, now, 0)
    roots = _roots(registry, principal, region, p)
    return RiskTree(at=iso_at(now) or "", truncated=p.truncated, regions=[_node(p, p.regions[r]) for r in roots])


@router.get("/risk/top", response_model=TopRisks)
def risk_top(
    registry: ReadRegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    now: NowDep,
    limit: Limit = 10,
    level: Annotated[
        Level | None,
        Query(description="rank the regions of this level by their rolled-up score (default: every region by own)"),
    ] = None,
    region: RegionQuery = None,
    contributors: Annotated[int, Query(ge=0, le=20, description="contributing items listed per region")] = 5,
) -> TopRisks:
    """Top risks now: without ``level``, the regions where the trouble sits (ranked by their own score); with it,
    that level's regions ranked by their rolled-up score. Each with its highest-scoring open alerts and
    incidents (the subtree's, with ``level``)."""
    p = _picture(registry, settings, now, max(contributors, 1))
    visible = [rid for root in _roots(registry, principal, region, p) for rid in p.subtree(root)]
    ranked = top_risks(p, limit, level=level, visible=visible, contributors=contributors)
    items = [
        TopEntry(
            id=r.id,
            name=r.name,
            level=r.level,
            own=_r(r.own),
            score=_r(r.score),
            subtree_alerts=r.subtree_alerts,
            subtree_incidents=r.subtree_incidents,
            contributors=[_contributor(c) for c in cs],
        )
        for r, cs in ranked
    ]
    return TopRisks(
        at=iso_at(now) or "", ranked_by="own" if level is None else "score", truncated=p.truncated, items=items
    )


@router.get("/risk/history", response_model=RiskHistoryOut)
def risk_history(
    registry: ReadRegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    now: NowDep,
    region: RegionQuery = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    limit: Limit = 1000,
) -> RiskHistoryOut:
    """A region's risk score over [start, end) (default: the last 24 h), oldest first, from the snapshots taken
    every ``risk.snapshot_interval_s``; a missing point means 0. Without ``region``: the caller's region (or, for
    an unscoped caller, each root of the tree)."""
    t0, t1 = _period(start, end, now, DEFAULT_HISTORY_MS, settings.api.max_range_days)
    if region is not None:
        region_or_404(registry, principal, region)
        ids = [region]
    elif principal.region_id is not None:
        ids = [principal.region_id]
    else:
        ids = [r.id for r in registry.regions() if r.parent_id is None]
    history = RiskHistory(registry.engine)
    series = []
    for rid in ids:
        pts, cut = history.series(rid, t0, t1, limit=limit)
        series.append(
            Series(
                region_id=rid,
                truncated=cut,
                points=[
                    HistoryPointOut(
                        at=iso_at(x.at) or "", score=_r(x.score), own=_r(x.own), alerts=x.alerts, incidents=x.incidents
                    )
                    for x in pts
                ],
            )
        )
    return RiskHistoryOut(start=iso_at(t0) or "", end=iso_at(t1) or "", series=series)


def _stats(records: list[Record], truncated: bool, group_by: str, t0: datetime, t1: datetime, limit: int) -> StatsOut:
    groups, total = summarise(records, group_by)
    return StatsOut(
        start=iso_at(t0) or "",
        end=iso_at(t1) or "",
        group_by=group_by,
        truncated=truncated,
        total_groups=len(groups),
        total=_group(total),
        groups=[_group(g) for g in groups[:limit]],
    )


@router.get("/stats/alerts", response_model=StatsOut)
def alert_stats(
    registry: ReadRegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    now: NowDep,
    group_by: Annotated[Literal["region", "rule", "severity"], Query(description="one row per ...")] = "region",
    start: TimeQuery = None,
    end: TimeQuery = None,
    region: RegionQuery = None,
    limit: Limit = 100,
) -> StatsOut:
    """Alerts raised in [start, end) (default: the last 7 days) in the caller's scope (``region``: that subtree):
    counts, time to acknowledge and to resolve (mean, p50, p90, seconds) per group, largest groups first.
    ``region`` groups are the region where each alert was raised (not rolled up)."""
    t0, t1 = _period(start, end, now, DEFAULT_STATS_DAYS * DAY_MS, settings.api.max_range_days)
    within = _within(registry, principal, region)
    records, cut = alert_records(registry.engine, t0, t1, within=within, limit=settings.risk.stats_max_rows)
    return _stats(records, cut, group_by, t0, t1, limit)


@router.get("/stats/incidents", response_model=StatsOut)
def incident_stats(
    registry: ReadRegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    now: NowDep,
    group_by: Annotated[
        Literal["region", "type", "department", "severity"], Query(description="one row per ...")
    ] = "type",
    start: TimeQuery = None,
    end: TimeQuery = None,
    region: RegionQuery = None,
    limit: Limit = 100,
) -> StatsOut:
    """Incidents opened in [start, end) (default: the last 7 days) in the caller's scope: counts, time to
    acknowledge (the first department task acknowledged) and to resolve, per group. ``department`` counts the
    department tasks of those incidents instead: each task's time to acknowledge and to close."""
    t0, t1 = _period(start, end, now, DEFAULT_STATS_DAYS * DAY_MS, settings.api.max_range_days)
    within = _within(registry, principal, region)
    read = task_records if group_by == "department" else incident_records
    records, cut = read(registry.engine, t0, t1, within=within, limit=settings.risk.stats_max_rows)
    return _stats(records, cut, group_by, t0, t1, limit)
