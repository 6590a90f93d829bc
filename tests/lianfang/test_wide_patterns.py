"""Patterns whose scope is wider than the engines' partition level (docs/scaling.md, *Partitions*): the pure check
that names them, as ``lianfang alerts`` / ``serve`` log it at start with several engine processes."""

from __future__ import annotations

from pathlib import Path

from joint.patterns import PatternFile, PatternOverride, PatternSet, PatternSpec
from lianfang.partitioned_joint import wide_patterns, wide_patterns_warning

PACKS = Path(__file__).resolve().parents[2] / "joint" / "packs"


def test_the_shipped_packs_at_each_partition_level() -> None:
    ps = PatternSet.load([PACKS])
    assert wide_patterns(ps, 1) == []  # one partition per province: every pattern exact
    # cities: X6 (province) and X5 (city, escalating to the province) span partitions
    assert wide_patterns(ps, 2) == [("X5", "province"), ("X6", "province")]
    assert [p for p, _ in wide_patterns(ps, 3)] == ["X5", "X6"]  # agencies: the city patterns too
    assert [p for p, _ in wide_patterns(ps, 4)] == ["X3", "X5", "X6", "X9"]  # buildings: the agency ones too
    msg = wide_patterns_warning(wide_patterns(ps, 2), 2)
    assert msg is not None and "X5 (province), X6 (province)" in msg and "level 2" in msg
    assert wide_patterns_warning([], 2) is None


def _spec(pid: str, scope: str, *, enabled: bool = True) -> PatternSpec:
    return PatternSpec.model_validate(
        {
            "id": pid,
            "kind": "group",
            "type": "t",
            "title_zh": "t",
            "title_en": "t",
            "scope": scope,
            "enabled": enabled,
            "params": {"min_alerts": 2},
        }
    )


def test_enabled_by_an_override_counts_and_disabled_does_not() -> None:
    off = PatternFile(patterns=[_spec("P1", "province", enabled=False), _spec("P2", "city")])
    assert wide_patterns(PatternSet.from_parsed([("f", off)]), 2) == []
    on = PatternFile(overrides=[PatternOverride(pattern="P1", region="gd-sz", enabled=True)])
    assert wide_patterns(PatternSet.from_parsed([("f", off), ("g", on)]), 2) == [("P1", "province")]
    # a tree with a country above the provinces (cities at depth 3): partitions at level 3 keep cities whole
    assert wide_patterns(PatternSet.from_parsed([("f", off)]), 3, {"city": 3}) == []
    assert wide_patterns(PatternSet.from_parsed([("f", off)]), 3) == [("P2", "city")]
