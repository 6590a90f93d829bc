"""Pure tests of the kinds' scopes and windows with a fixed ``now`` (joint/kinds): which region an alert's scope
is at each level, and when a window forgets an alert or an absence watch falls due."""

from __future__ import annotations

from joint.kinds import KINDS
from joint.kinds.base import building_of, scope_path, since
from tests.joint.helpers import LEVELS, T0, fact, pack, path_of, s

PATH = path_of("gz-a1-b2")  # gd > gz > gz-a1 > gz-a1-b2


def test_scope_path_is_the_prefix_ending_at_the_level() -> None:
    assert scope_path(PATH, "building", LEVELS) == ("gd", "gz", "gz-a1", "gz-a1-b2")
    assert scope_path(PATH, "agency", LEVELS) == ("gd", "gz", "gz-a1")
    assert scope_path(PATH, "city", LEVELS) == ("gd", "gz")
    assert scope_path(PATH, "province", LEVELS) == ("gd",)
    above = path_of("gz-a1")  # a device registered at the agency has no building scope
    assert scope_path(above, "building", LEVELS) is None and building_of(above, LEVELS) == "gz-a1"
    assert scope_path(("nowhere",), "city", LEVELS) is None and building_of((), LEVELS) == ""


def test_since_keeps_entries_at_or_after_the_horizon() -> None:
    entries = [[1, "G1", "d", "r", "b", at, "major", 1, True] for at in (100, 200, 300)]
    assert [e[5] for e in since(entries, 200)] == [200, 300] and since(entries, 301) == []


def test_a_sequence_window_forgets_alerts_older_than_twice_its_window() -> None:
    ps = pack()
    p = ps.effective("X2", PATH)
    state: dict[str, object] = {}
    kind = KINDS["sequence"]
    door = fact("G1", "gate-1", "gz-a1-b2", T0)
    assert kind.observe(p, door, PATH, state, LEVELS, T0) == []  # a forced door alone: waiting for the other door
    [slot] = state["windows"].values()  # type: ignore[attr-defined]
    assert len(slot["first"]) == 1
    kind.tick(lambda scope: ps.effective("X2", scope), state, T0 + s(2 * p.window_s))
    assert len(slot["first"]) == 1, "still inside twice the window"
    kind.tick(lambda scope: ps.effective("X2", scope), state, T0 + s(2 * p.window_s + 1))
    assert state["windows"] == {}, "forgotten after twice the window"


def test_an_absence_watch_falls_due_exactly_after_after_s() -> None:
    ps = pack()
    scope = PATH[:3]  # X3 is about the agency
    p = ps.effective("X3", scope)
    state: dict[str, object] = {}
    kind = KINDS["absence"]
    car = fact("V1", "car-1", "gz-a1-b2", T0, device_type="vehicle")
    assert kind.observe(p, car, scope, state, LEVELS, T0) == []
    due = T0 + s(p.params.after_s)
    assert kind.tick(lambda _s: p, state, due - s(1)) == []
    [hit] = kind.tick(lambda _s: p, state, due)
    assert hit.scope == scope and [m.alert_id for m in hit.members] == [car.alert_id]
    assert kind.tick(lambda _s: p, state, due + s(60)) == [], "once"
