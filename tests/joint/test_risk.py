"""Region risk (joint/risk.py): the formula pinned on a fixed tree, fixed items and a fixed ``now``; the roll-up's
monotonicity under hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import RiskSettings
from joint.risk import RegionNode, RiskItem, RiskWeights, age_factor, compute, item_points, rollup, top_risks

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)

TREE = [
    RegionNode("gd", None, "province", "广东省"),
    RegionNode("gz", "gd", "city", "广州市"),
    RegionNode("sz", "gd", "city", "深圳市"),
    RegionNode("gz-jgj", "gz", "agency", "广州市机关事务管理局"),
    RegionNode("gz-b1", "gz-jgj", "building", "一号楼"),
    RegionNode("gz-b2", "gz-jgj", "building", "二号楼"),
    RegionNode("sz-b1", "sz", "building", "市民中心"),
]

ITEMS = [
    # critical, unhandled, 2 h old: 10 x (1 + 2/4) = 15
    RiskItem("alert", 1, "gz-b1", "critical", NOW - 2 * H, label="G1"),
    # major, acknowledged 4 h after it started (its clock stops then): 5 x (1 + 4/4) x 0.5 = 5
    RiskItem("alert", 2, "gz-b1", "major", NOW - 12 * H, handled=True, handled_at=NOW - 8 * H, label="E1"),
    # warning, just now: 2 x 1 = 2
    RiskItem("alert", 3, "gz-b2", "warning", NOW, label="G6"),
    # critical incident, investigating, 1 h old: 10 x 1.25 x 2 (incident) x 0.5 (handled) = 12.5
    RiskItem("incident", 1, "gz-jgj", "critical", NOW - H, handled=True, label="intrusion"),
    # info, 40 h old: age capped at 3: 0.5 x 3 = 1.5
    RiskItem("alert", 4, "sz-b1", "info", NOW - 40 * H, label="E5"),
    # warning from a device clock 1 h ahead: age 0, factor 1: 2
    RiskItem("alert", 5, "sz", "warning", NOW + H, label="V6"),
    # a region the tree no longer has: not counted
    RiskItem("alert", 6, "gone", "critical", NOW - H, label="G1"),
]


def test_compute_pins_the_formula_on_a_fixed_tree() -> None:
    p = compute(TREE, ITEMS, RiskWeights(), now=NOW)
    own = {rid: r.own for rid, r in p.regions.items()}
    score = {rid: r.score for rid, r in p.regions.items()}
    assert own == {"gd": 0, "gz": 0, "sz": 2, "gz-jgj": 12.5, "gz-b1": 20, "gz-b2": 2, "sz-b1": 1.5}
    # parent = own + max(children) + 0.5 x (sum(children) - max(children))
    assert score == {
        "gz-b1": 20,
        "gz-b2": 2,
        "gz-jgj": 12.5 + 20 + 0.5 * 2,  # 33.5
        "gz": 33.5,
        "sz-b1": 1.5,
        "sz": 2 + 1.5,  # 3.5
        "gd": 33.5 + 0.5 * 3.5,  # 35.25
    }
    assert p.unplaced == 1
    assert p.roots == ["gd"]
    gd = p.regions["gd"]
    assert (gd.subtree_alerts, gd.subtree_incidents, gd.alerts) == (5, 1, 0)
    assert [(c.item.id, c.points) for c in p.regions["gz-b1"].contributors] == [(1, 15.0), (2, 5.0)]
    assert [c.age_factor for c in p.regions["gz-b1"].contributors] == [1.5, 2.0]


def test_top_risks_ranks_where_the_trouble_sits_or_a_level_by_its_subtree() -> None:
    p = compute(TREE, ITEMS, RiskWeights(), now=NOW)
    by_own = top_risks(p, 10)
    # gz-b2 and sz both own 2: the higher rolled-up score (sz, 3.5) first
    assert [(r.id, r.own) for r, _ in by_own] == [
        ("gz-b1", 20),
        ("gz-jgj", 12.5),
        ("sz", 2),
        ("gz-b2", 2),
        ("sz-b1", 1.5),
    ]
    cities = top_risks(p, 10, level="city", contributors=2)
    assert [(r.id, r.score) for r, _ in cities] == [("gz", 33.5), ("sz", 3.5)]
    assert [(c.item.kind, c.item.id, c.points) for c in cities[0][1]] == [("alert", 1, 15.0), ("incident", 1, 12.5)]
    # a caller who sees only Shenzhen gets nothing of Guangzhou
    scoped = top_risks(p, 10, visible={"sz", "sz-b1"})
    assert [r.id for r, _ in scoped] == ["sz", "sz-b1"]
    assert top_risks(p, 1) == by_own[:1]


def test_weights_come_from_settings() -> None:
    s = RiskSettings(weight_critical=7, incident_factor=3, acknowledged_factor=1, age_growth_h=2, rollup_spread=1)
    w = RiskWeights.from_settings(s)
    assert (w.critical, w.major, w.incident_factor, w.rollup_spread) == (7, 5, 3, 1)
    # 7 x (1 + 1/2) x 3 = 31.5; spread 1: the parent is the plain sum
    inc = RiskItem("incident", 9, "gz-b1", "critical", NOW - H, handled=True)
    assert item_points(inc, w, NOW).points == 31.5
    p = compute(TREE, [inc, RiskItem("alert", 1, "gz-b2", "major", NOW)], w, now=NOW)
    assert p.regions["gz-jgj"].score == 31.5 + 5


def test_age_factor_grows_linearly_then_caps_and_never_goes_below_one() -> None:
    w = RiskWeights()
    assert age_factor(RiskItem("alert", 1, "x", "info", NOW - 6 * H), w, NOW) == 2.5
    assert age_factor(RiskItem("alert", 1, "x", "info", NOW - 100 * H), w, NOW) == 3.0
    assert age_factor(RiskItem("alert", 1, "x", "info", NOW + 100 * H), w, NOW) == 1.0
    assert RiskWeights().severity("unknown") == 0.5


@pytest.mark.parametrize("spread", [0.0, 0.5, 1.0])
def test_rollup_bounds(spread: float) -> None:
    assert rollup(3, [], spread) == 3
    assert rollup(1, [4, 2], spread) == 1 + 4 + spread * 2


_score = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    own=_score,
    children=st.lists(_score, min_size=1, max_size=8),
    index=st.integers(min_value=0, max_value=7),
    bump=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    spread=st.floats(min_value=0, max_value=1),
)
def test_rollup_is_monotone_in_each_child(
    own: float, children: list[float], index: int, bump: float, spread: float
) -> None:
    i = index % len(children)
    higher = list(children)
    higher[i] += bump
    before = rollup(own, children, spread)
    assert rollup(own, higher, spread) >= before - 1e-9 * max(1.0, before)
    assert before >= own + max(children) - 1e-9 * max(1.0, before)  # at least the worst child


_item = st.builds(
    RiskItem,
    kind=st.sampled_from(["alert", "incident"]),
    id=st.integers(min_value=1, max_value=10**6),
    region_id=st.sampled_from([n.id for n in TREE]),
    severity=st.sampled_from(["critical", "major", "warning", "info"]),
    since=st.integers(min_value=-100, max_value=100).map(lambda h: NOW - h * H),
    handled=st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(items=st.lists(_item, max_size=20), extra=_item)
def test_a_parent_never_drops_when_a_descendant_gets_another_item(items: list[RiskItem], extra: RiskItem) -> None:
    before = compute(TREE, items, RiskWeights(), now=NOW)
    after = compute(TREE, [*items, extra], RiskWeights(), now=NOW)
    for rid, r in after.regions.items():
        assert r.score >= before.regions[rid].score - 1e-9
    assert after.regions["gd"].score > before.regions["gd"].score
