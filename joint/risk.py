"""Region risk: one number per region from its open alerts and incidents, rolled up the region tree. Pure.

Nothing here reads a clock, a database or a file: the caller hands in the region tree, the open items and
``now`` (``joint/risk_store.py`` reads them; docs/risk.md explains the formula for operators).

The formula (weights from ``risk.*`` settings, ``RiskWeights``):

* an open item (an alert, or an incident) is worth ``points = severity_weight x kind x handled x age``:

  - ``severity_weight``: critical 10, major 5, warning 2, info 0.5;
  - ``kind``: 1 for an alert, ``incident_factor`` (2) for an incident, which stands for correlated evidence
    from several devices;
  - ``handled``: 1 while nobody has taken it, ``acknowledged_factor`` (0.5) once acknowledged (an alert) or
    investigating (an incident): someone is on it, but it is still a risk;
  - ``age = min(1 + hours / age_growth_h, age_cap)`` (1 + h/4, at most 3): an item left unhandled grows more
    pressing, as a control room expects; the cap keeps one forgotten alert from outweighing fresh critical ones.
    The clock of an acknowledged alert stops when it was acknowledged (handled risk does not grow). A start in
    the future (a device clock ahead) counts as age 0.

* a region's ``own`` score is the sum of the points of the items raised in that region itself;
* its rolled-up ``score`` reflects its children:
  ``score = own + max(child scores) + rollup_spread x (sum(child scores) - max(child scores))``.
  With the default spread 0.5 a parent is at least as high as its worst child plus its own items, and several
  hot children add up, damped. Spread 1 makes it the plain subtree sum, spread 0 the worst child only. It is
  monotone (never decreasing) in every child's score.

Silenced alerts (a maintenance window: people know and expect them) and alerts muted under an incident (the
incident counts for them, X4) are left out by the reader, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

SEVERITIES: tuple[str, ...] = ("critical", "major", "warning", "info")
ItemKind = Literal["alert", "incident"]


class RiskSettingsLike(Protocol):
    """What ``RiskWeights.from_settings`` reads (``core.settings.RiskSettings``)."""

    weight_critical: float
    weight_major: float
    weight_warning: float
    weight_info: float
    incident_factor: float
    acknowledged_factor: float
    age_growth_h: float
    age_cap: float
    rollup_spread: float


@dataclass(frozen=True, slots=True)
class RiskWeights:
    critical: float = 10.0
    major: float = 5.0
    warning: float = 2.0
    info: float = 0.5
    incident_factor: float = 2.0
    acknowledged_factor: float = 0.5
    age_growth_h: float = 4.0
    age_cap: float = 3.0
    rollup_spread: float = 0.5

    @classmethod
    def from_settings(cls, s: RiskSettingsLike) -> RiskWeights:
        return cls(
            critical=s.weight_critical,
            major=s.weight_major,
            warning=s.weight_warning,
            info=s.weight_info,
            incident_factor=s.incident_factor,
            acknowledged_factor=s.acknowledged_factor,
            age_growth_h=s.age_growth_h,
            age_cap=s.age_cap,
            rollup_spread=s.rollup_spread,
        )

    def severity(self, severity: str) -> float:
        """The weight of a severity; an unknown one counts as info."""
        return {
            "critical": self.critical,
            "major": self.major,
            "warning": self.warning,
            "info": self.info,
        }.get(severity, self.info)


@dataclass(frozen=True, slots=True)
class RegionNode:
    """One region of the tree (``devices.models.Region`` has these fields)."""

    id: str
    parent_id: str | None
    level: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class RiskItem:
    """An open alert or incident as the score sees it."""

    kind: ItemKind
    id: int
    region_id: str
    severity: str
    since: datetime  # when the platform learned of it (alert) or opened it (incident)
    handled: bool = False  # acknowledged (alert) or investigating (incident)
    handled_at: datetime | None = None  # when it was acknowledged: the age clock stops there
    label: str = ""  # rule id (alert) or incident type
    title: str = ""


@dataclass(frozen=True, slots=True)
class Contribution:
    item: RiskItem
    points: float
    age_factor: float


@dataclass(slots=True)
class RegionRisk:
    id: str
    parent_id: str | None
    level: str
    name: str
    own: float = 0.0  # points of the items raised in this region itself
    score: float = 0.0  # rolled up: own and the children (see the module's formula)
    alerts: int = 0  # open alerts counted in this region itself
    incidents: int = 0
    subtree_alerts: int = 0  # ... in its whole subtree
    subtree_incidents: int = 0
    contributors: list[Contribution] = field(default_factory=list)  # its own items, highest points first
    children: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RiskPicture:
    at: datetime
    regions: dict[str, RegionRisk]  # parents before children
    roots: list[str]
    unplaced: int = 0  # items of a region the tree does not have (deleted since): not counted
    truncated: bool = False  # the reader hit its bound: some (the oldest) items were not counted

    def subtree(self, region_id: str) -> list[str]:
        """``region_id`` and every descendant, parents first; empty for an unknown region."""
        if region_id not in self.regions:
            return []
        out, stack = [], [region_id]
        while stack:
            rid = stack.pop()
            out.append(rid)
            stack.extend(reversed(self.regions[rid].children))
        return out


def age_factor(item: RiskItem, w: RiskWeights, now: datetime) -> float:
    """``min(1 + hours / age_growth_h, age_cap)``; an acknowledged alert's age ends when it was acknowledged."""
    end = item.handled_at if item.handled and item.handled_at is not None else now
    hours = max((end - item.since).total_seconds(), 0.0) / 3600.0
    return min(1.0 + hours / w.age_growth_h, w.age_cap)


def item_points(item: RiskItem, w: RiskWeights, now: datetime) -> Contribution:
    age = age_factor(item, w, now)
    points = w.severity(item.severity) * age
    if item.kind == "incident":
        points *= w.incident_factor
    if item.handled:
        points *= w.acknowledged_factor
    return Contribution(item, points, age)


def rollup(own: float, child_scores: Sequence[float], spread: float) -> float:
    """``own + max + spread * (sum - max)`` of the children's rolled-up scores."""
    if not child_scores:
        return own
    top = max(child_scores)
    return own + top + spread * (sum(child_scores) - top)


def _depth(rid: str, parents: Mapping[str, str | None]) -> int:
    depth, seen, cur = 0, {rid}, parents.get(rid)
    while cur is not None and cur in parents and cur not in seen:
        seen.add(cur)
        depth += 1
        cur = parents.get(cur)
    return depth


def compute(
    regions: Iterable[RegionNode],
    items: Iterable[RiskItem],
    weights: RiskWeights,
    *,
    now: datetime,
    top_contributors: int = 5,
    truncated: bool = False,
) -> RiskPicture:
    """Every region's own and rolled-up score at ``now``."""
    nodes = list(regions)
    parents = {n.id: n.parent_id for n in nodes}
    depth = {n.id: _depth(n.id, parents) for n in nodes}
    ordered = sorted(nodes, key=lambda n: (depth[n.id], n.id))
    out: dict[str, RegionRisk] = {n.id: RegionRisk(n.id, n.parent_id, n.level, n.name) for n in ordered}
    roots: list[str] = []
    for n in ordered:
        parent = out.get(n.parent_id) if n.parent_id is not None else None
        if parent is None:
            roots.append(n.id)
        else:
            parent.children.append(n.id)
    own_items: dict[str, list[Contribution]] = {}
    unplaced = 0
    for item in items:
        region = out.get(item.region_id)
        if region is None:
            unplaced += 1
            continue
        c = item_points(item, weights, now)
        region.own += c.points
        if item.kind == "alert":
            region.alerts += 1
        else:
            region.incidents += 1
        own_items.setdefault(item.region_id, []).append(c)
    for rid, contribs in own_items.items():
        contribs.sort(key=lambda c: (-c.points, c.item.since, c.item.kind, c.item.id))
        out[rid].contributors = contribs[:top_contributors]
    for n in reversed(ordered):  # children before parents
        r = out[n.id]
        kids = [out[c] for c in r.children]
        r.score = rollup(r.own, [k.score for k in kids], weights.rollup_spread)
        r.subtree_alerts = r.alerts + sum(k.subtree_alerts for k in kids)
        r.subtree_incidents = r.incidents + sum(k.subtree_incidents for k in kids)
    return RiskPicture(now, out, roots, unplaced, truncated)


def subtree_contributors(picture: RiskPicture, region_id: str, n: int) -> list[Contribution]:
    """The ``n`` highest-scoring items anywhere in the region's subtree (from each region's own top list)."""
    found = [c for rid in picture.subtree(region_id) for c in picture.regions[rid].contributors]
    found.sort(key=lambda c: (-c.points, c.item.since, c.item.kind, c.item.id))
    return found[:n]


def top_risks(
    picture: RiskPicture,
    n: int,
    *,
    level: str | None = None,
    visible: Iterable[str] | None = None,
    contributors: int = 5,
) -> list[tuple[RegionRisk, list[Contribution]]]:
    """The ``n`` riskiest regions with what contributes most, zero scores left out.

    Without ``level``: regions ranked by their ``own`` score, i.e. where the trouble sits (ranking by the
    rolled-up score would always put the province first, then its city, ...); each with its own contributors.
    With ``level`` (``city``, ``building``, ...): the regions of that level ranked by their rolled-up ``score``,
    each with the top contributors of its subtree. ``visible``: only these region ids (the caller's scope).
    Ties: higher rolled-up score, then region id."""
    allowed = None if visible is None else set(visible)
    cands = [
        r
        for r in picture.regions.values()
        if (allowed is None or r.id in allowed) and (level is None or r.level == level)
    ]
    if level is None:
        ranked = sorted((r for r in cands if r.own > 0), key=lambda r: (-r.own, -r.score, r.id))
        return [(r, r.contributors[:contributors]) for r in ranked[:n]]
    ranked = sorted((r for r in cands if r.score > 0), key=lambda r: (-r.score, r.id))
    return [(r, subtree_contributors(picture, r.id, contributors)) for r in ranked[:n]]
