"""The presence kinds (alerts/kinds_presence.py): ``passback`` (G3 anti-passback) and ``still_inside`` (G10)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.calendar import BEIJING
from alerts.engine import Subject, next_deadline
from alerts.kinds_presence import close_due_ms
from alerts.rule_check import check_files
from alerts.rules import PACKS_DIR, RuleSet, StillInsideParams
from core.errors import UserError
from tests.alerts.engine_helpers import T0, Run, at, event, make_rule, reading

GATE_A = Subject("gate-a", "gate", "b1", ("gd", "gz", "b1"))
GATE_B = Subject("gate-b", "gate", "b1", ("gd", "gz", "b1"))  # another door of the same building
GATE_X = Subject("gate-x", "gate", "b2", ("gd", "gz", "b2"))  # another building


def access(run: Run, t: float, subj: Subject, direction: str, card: str = "card-1", **data: Any) -> None:
    run.subj = subj
    data.setdefault("result", "granted")
    run.feed(event(t, subj, "access", credential=card, direction=direction, **data))


def pack_rule(rule_id: str) -> Any:
    """The pack's rule (off by default: regions whose doors read both ways turn it on)."""
    rs = RuleSet.load([PACKS_DIR])
    rule = next(r for r in rs.explain("gate-a", "gate", GATE_A.region_path) if r.rule_id == rule_id)
    assert not rule.enabled
    return rule


# --- passback (G3) -----------------------------------------------------------------------------------------------


def test_g3_in_twice_at_two_doors_of_one_building_fires_soft_logged() -> None:
    run = Run(pack_rule("G3"), GATE_A)
    access(run, 0, GATE_A, "in")
    access(run, 600, GATE_B, "in")  # entered again by the other door, never left
    assert run.firing() == [True, False]  # soft: logged, raised and resolved at once
    fire = run.changes[0]
    assert fire.device_id == "gate-b" and fire.dedup_key == "G3:card-1"
    assert fire.detail["violation"] == "entered twice" and fire.detail["area"] == "b1"


def test_g3_near_misses_in_out_in_other_building_other_card_denied() -> None:
    run = Run(pack_rule("G3"), GATE_A)
    access(run, 0, GATE_A, "in")
    access(run, 100, GATE_B, "out")
    access(run, 200, GATE_A, "in")  # in, out, in: fine
    access(run, 300, GATE_X, "in")  # another building: another area
    access(run, 400, GATE_A, "in", card="card-2")  # someone else
    access(run, 500, GATE_A, "in", result="denied")  # a denied card did not pass
    assert run.changes == []


def test_g3_left_twice_fires_and_presence_timeout_forgets() -> None:
    run = Run(pack_rule("G3"), GATE_A)
    access(run, 0, GATE_A, "out")  # first sighting: nothing is known, no alert
    access(run, 60, GATE_A, "out")
    assert [c.detail.get("violation") for c in run.changes if c.firing] == ["left twice"]
    run.changes.clear()
    access(run, 120 + 12 * 3600 + 1, GATE_A, "out")  # more than 12 h after the last: forgotten
    assert run.changes == []


def test_g3_hard_mode_stays_open_until_quiet_and_survives_restart() -> None:
    rule = make_rule("passback", {"mode": "hard", "clear_after_s": 600}, device_type="gate", dedup_key="{rule}:{group}")
    run = Run(rule, GATE_A)
    access(run, 0, GATE_A, "in")
    access(run, 30, GATE_B, "in")
    assert run.firing() == [True]
    run.restart()
    assert run.deadline() == at(630)
    assert run.tick(629) == []
    (cleared,) = run.tick(630)
    assert not cleared.firing and cleared.device_id == "gate-b" and cleared.dedup_key == "R1:card-1"


def test_g3_area_param_per_gate() -> None:
    rule = make_rule("passback", {"area": "lobby"}, device_type="gate")
    run = Run(rule, GATE_A)
    access(run, 0, GATE_A, "in")
    access(run, 10, GATE_X, "in")  # another region, but the same named area
    assert run.firing() == [True, False]
    assert run.changes[0].detail["area"] == "lobby"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["in", "out"]), st.integers(1, 7200)), min_size=1, max_size=30))
def test_g3_violations_are_consecutive_equal_directions(steps: list[tuple[str, int]]) -> None:
    rule = make_rule("passback", {"mode": "hard"}, device_type="gate")
    run = Run(rule, GATE_A)
    t, expected, last = 0, 0, None
    for direction, gap in steps:
        t += gap
        access(run, t, GATE_A if t % 2 else GATE_B, direction)
        expected += last == direction
        last = direction
    assert run.firing() == [True] * expected


def test_g3_params_validated() -> None:
    for bad in ({"mode": "sometimes"}, {"presence_timeout_s": 0}, {"match": {"field": "door_open"}}):
        with pytest.raises(UserError):
            make_rule("passback", bad, device_type="gate")


# --- still inside at close (G10) ---------------------------------------------------------------------------------

MONDAY_10 = T0  # Monday 2026-03-02 10:00 Beijing time


def bj(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=BEIJING)


def secs(t: datetime) -> float:
    return (t - MONDAY_10).total_seconds()


def test_g10_no_exit_by_close_plus_30_min_fires_at_18_00() -> None:
    run = Run(pack_rule("G10"), GATE_A)
    access(run, 0, GATE_A, "in")
    assert run.deadline() == bj(2, 18)  # close 17:30 + 30 min
    run.restart()
    assert run.tick(secs(bj(2, 17, 59))) == []
    (fire,) = run.tick(secs(bj(2, 18)))
    assert fire.firing and fire.dedup_key == "G10:card-1" and fire.device_id == "gate-a"
    assert fire.at == bj(2, 18).astimezone(UTC)
    run.changes.clear()
    access(run, secs(bj(2, 19)), GATE_B, "out")  # leaves by the other door: resolved
    assert run.firing() == [False] and run.changes[0].detail["reason"] == "left"
    assert run.deadline() is None


def test_g10_near_miss_leaves_before_the_deadline() -> None:
    run = Run(pack_rule("G10"), GATE_A)
    access(run, 0, GATE_A, "in")
    access(run, secs(bj(2, 17, 55)), GATE_B, "out")  # after close, within the 30 min
    run.tick(secs(bj(2, 23)))
    assert run.changes == []


def test_g10_device_time_of_the_area_fires_a_backlog() -> None:
    # A recorded day arrives hours late: the engine's clock says nothing; a later record of the same building does.
    run = Run(pack_rule("G10"), GATE_A)
    late = secs(bj(3, 9))
    access_rec = event(0, GATE_A, "access", credential="card-1", direction="in", result="granted")
    run.feed(access_rec, now_s=late)
    run.subj = GATE_X
    run.feed(reading(secs(bj(2, 18, 5)), GATE_X, door_open=False), now_s=late)  # another building: no
    assert run.changes == []
    assert run.deadline() == bj(2, 18) + (bj(3, 9) - bj(2, 10))  # moved by the lag
    run.subj = GATE_B
    run.feed(reading(secs(bj(2, 18, 1)), GATE_B, door_open=False), now_s=late)
    assert run.firing() == [True]


def test_g10_due_at_the_next_close_of_the_calendar() -> None:
    p = StillInsideParams()
    cal = Run(pack_rule("G10"), GATE_A).env.calendar
    path = GATE_A.region_path

    def due(t: datetime, params: StillInsideParams = p) -> datetime:
        return datetime.fromtimestamp(close_due_ms(params, cal, int(t.timestamp() * 1000), path) / 1000, BEIJING)

    assert due(bj(2, 2)) == bj(2, 18)  # at night or early: that working day's close
    assert due(bj(2, 17, 45)) == bj(2, 18)  # after the close, inside the grace: still that close
    assert due(bj(2, 20)) == bj(3, 18)  # after it: the next working day's
    assert due(bj(6, 20)) == bj(9, 18)  # Friday evening: Monday's close
    assert due(bj(7, 10)) == bj(9, 18)  # a Saturday: Monday's close
    # National Day 2026 (holidays.China): 1-7 October off; Thursday 8 October is the next working day
    assert due(datetime(2026, 9, 30, 20, tzinfo=BEIJING)) == datetime(2026, 10, 8, 18, tzinfo=BEIJING)
    makeup = datetime(2026, 9, 20, 10, tzinfo=BEIJING)  # Sunday 2026-09-20, a 调休 working day
    assert due(makeup) == datetime(2026, 9, 20, 18, tzinfo=BEIJING)
    night = StillInsideParams.model_validate({"open_hours": {"hours": "22:00-06:00", "days": "any"}})
    assert due(bj(3, 2), night) == bj(3, 6, 30)  # inside the overnight window that began the day before
    assert due(bj(3, 12), night) == bj(4, 6, 30)


def test_g10_re_entry_resolves_the_old_alert_and_starts_again() -> None:
    run = Run(pack_rule("G10"), GATE_A)
    access(run, 0, GATE_A, "in")
    run.tick(secs(bj(2, 18)))
    access(run, secs(bj(3, 9)), GATE_A, "in")  # the exit was missed: a new presence
    assert run.firing() == [True, False]
    assert run.changes[1].detail["reason"] == "entered again"
    assert run.deadline() == bj(3, 18)


def test_g10_state_key_is_rule_scoped() -> None:
    run = Run(pack_rule("G10"), GATE_A)
    access(run, 0, GATE_A, "in", card="card-1")
    access(run, 60, GATE_B, "in", card="card-2")
    assert next_deadline(run.rule, run.state, GATE_X) is not None
    assert len(run.state.inside["b1"]) == 2  # type: ignore[union-attr]


# --- rules check -------------------------------------------------------------------------------------------------


def test_rules_check_finds_a_presence_rule_typo(tmp_path: Any) -> None:
    f = tmp_path / "site.yaml"
    f.write_text(
        "rules:\n"
        "  - {id: P1, kind: passback, device_types: [gate], title_zh: 测试, title_en: Test,\n"
        "     params: {match: {event: acess}}}\n"
        "  - {id: P2, kind: still_inside, device_types: [gate], title_zh: 测试, title_en: Test,\n"
        "     params: {key: credentail}}\n",
        encoding="utf-8",
    )
    docs = RuleSet.read([PACKS_DIR, f])
    findings = check_files(docs, RuleSet.from_parsed(docs).rules)
    text = "\n".join(str(x) for x in findings)
    assert "unknown event type 'acess'" in text
    assert "no field 'credentail'" in text
    assert [x.origin for x in findings] == [str(f), str(f)]  # the packs' G3 and G10 are clean


def test_every_alert_kind_is_known_to_the_correlation_patterns() -> None:
    from alerts.engine import KINDS, STATE_TYPES
    from alerts.rules import PARAMS
    from joint.patterns import ALERT_RULE_KINDS

    assert set(PARAMS) == set(KINDS) == set(STATE_TYPES) == set(ALERT_RULE_KINDS)


# --- through the service: the rule-scoped state survives a restart ----------------------------------------------


def test_g10_and_g3_hard_survive_a_service_restart(sqlite_registry: Any, tmp_path: Any) -> None:
    from alerts.service import AlertService, regions_from_registry
    from core.protocol import Event
    from devices.registry import DeviceSpec, RegionSpec

    reg = sqlite_registry
    reg.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gz", "广州市", "city", "gd"),
            RegionSpec("b1", "一号楼", "building", "gz"),
        ],
        now=T0,
    )
    reg.add_devices([DeviceSpec("gate-a", "gate", "b1"), DeviceSpec("gate-b", "gate", "b1")], now=T0)
    only = tmp_path / "only.yaml"
    only.write_text(
        "overrides:\n  - {rule: '*', enabled: false}\n  - {rule: G10, enabled: true}\n"
        "  - {rule: G3, enabled: true, severity: major, params: {mode: hard, clear_after_s: 3600}}\n",
        encoding="utf-8",
    )
    rules = RuleSet.load([PACKS_DIR, only])
    clock = [T0]

    def service() -> AlertService:
        svc = AlertService(reg.engine, rules, reg.snapshot, regions_from_registry(reg), clock_fn=lambda: clock[0])
        svc.load(clock[0])
        return svc

    def access(svc: AlertService, t: datetime, gate: str, direction: str) -> None:
        clock[0] = t
        ev = Event(
            gate,
            "b1",
            "gate",
            int(t.timestamp() * 1000),
            None,
            "access",
            {"credential": "c1", "direction": direction, "result": "granted"},
        )
        svc.process([ev], now=t)

    svc = service()
    access(svc, bj(2, 10), "gate-a", "in")
    access(svc, bj(2, 10, 5), "gate-b", "in")  # G3 (hard): stays open
    # a crash (no stop): what decides firing was written with each batch; who is inside is learning state, written
    # in chunks (flush(everything=True) writes it, as the snapshot timer does)
    svc.flush(everything=True)
    svc2 = service()

    def open_alerts() -> set[tuple[str, str]]:
        return {(a.rule_id, a.device_id) for a in svc2.repo.alerts() if a.resolved_at is None}

    clock[0] = bj(2, 10, 30)
    svc2.tick(clock[0])
    assert open_alerts() == {("G3", "gate-b")}
    clock[0] = bj(2, 18)
    svc2.tick(clock[0])  # both timers were re-armed from the restored rule-wide states
    assert open_alerts() == {("G10", "gate-b")}  # G3 quiet for an hour: resolved; G10 due at 17:30 + 30 min
    access(svc2, bj(2, 18, 10), "gate-a", "out")
    assert open_alerts() == set()  # the exit resolved G10
