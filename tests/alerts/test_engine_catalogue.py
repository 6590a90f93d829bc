"""Pure engine tests (fixed ``now``, no sleeping) for the capabilities the catalogue's G2, E2, E4 and E5 need.

- threshold ``suppress_during``: a door scheduled unlocked (G2, G2.pre);
- delta ``flat_during``: a flat counter counted only while the building is occupied (E5.flat);
- baseline ``aggregate: daily_mean`` + ``consecutive_days``: the night's mean on N nights in a row (E2);
- kind ``demand``: interval demand above a streaming (P²) quantile x factor, and a CUSUM step test (E4, E4.step);
- kind ``clock_skew``: device time against the receive time (E5.skew).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from alerts import engine as eng
from alerts.calendar import BEIJING
from alerts.engine import (
    BaselineState,
    DeltaState,
    DemandState,
    ThresholdState,
    p2_add,
    p2_value,
    quiet_test,
    route,
    state_from_json,
    state_to_json,
)
from alerts.rules import RuleSet
from core.errors import UserError
from core.protocol import Reading, Status
from tests.alerts.engine_helpers import Run, event, make_rule, reading, subject

MONDAY = datetime(2026, 3, 2, tzinfo=BEIJING)  # 00:00 Beijing of an ordinary working Monday
MAKE_UP_SATURDAY = datetime(2026, 2, 14, tzinfo=BEIJING)  # 调休: a working day
NATIONAL_DAY = datetime(2026, 10, 1, tzinfo=BEIJING)  # a Thursday holiday
H = 3600

UNLOCKED = {"hours": "08:30-17:30", "days": "working"}


def door(base: datetime = MONDAY, **params: object) -> Run:
    p: dict[str, object] = {"field": "door_open", "op": "==", "value": True, "for_s": 45, **params}
    return Run(make_rule("threshold", p, "gate"), subject("gate-1", "gate"), base=base)


# --- threshold: suppress_during ----------------------------------------------------------------------------------


def test_door_held_open_suppressed_while_scheduled_unlocked() -> None:
    r = door(suppress_during=UNLOCKED)
    s = r.subj
    for t in range(0, 600, 60):  # Monday 10:00-10:10: open for 10 minutes, scheduled unlocked
        r.feed(reading(10 * H + t, s, base=MONDAY, door_open=True))
    r.tick(10 * H + 600)
    assert r.changes == [] and r.deadline() is None
    # the same at 22:00 fires after 45 s (on the timer)
    r.feed(reading(22 * H, s, base=MONDAY, door_open=False))
    r.feed(reading(22 * H + 1, s, base=MONDAY, door_open=True))
    assert r.deadline() == MONDAY + timedelta(hours=22, seconds=46)
    (fire,) = r.tick(22 * H + 46)
    assert fire.firing and fire.at == MONDAY + timedelta(hours=22, seconds=46)


def test_without_suppress_during_the_door_fires_at_any_hour() -> None:
    r = door()
    r.feed(reading(10 * H, r.subj, base=MONDAY, door_open=True))
    assert [c.firing for c in r.tick(10 * H + 45)] == [True]


def test_unlocked_schedule_follows_the_official_calendar() -> None:
    # 10:00 on a make-up working Saturday: unlocked, suppressed; on National Day (a Thursday): locked, fires
    for base, fires in ((MAKE_UP_SATURDAY, False), (NATIONAL_DAY, True)):
        r = door(base, suppress_during=UNLOCKED)
        r.feed(reading(10 * H, r.subj, base=base, door_open=True))
        r.feed(reading(10 * H + 50, r.subj, base=base, door_open=True))
        assert r.firing() == ([True] if fires else []), base


def test_held_open_through_the_end_of_the_unlocked_window_counts_from_its_end() -> None:
    r = door(suppress_during=UNLOCKED)
    s = r.subj
    for t in range(-600, 0, 60):  # open since 17:20, heartbeats every minute
        r.feed(reading(17.5 * H + t, s, base=MONDAY, door_open=True))
    r.feed(reading(17.5 * H + 20, s, base=MONDAY, door_open=True))  # first reading after 17:30, at 17:30:20
    assert r.deadline() == MONDAY + timedelta(hours=17, minutes=30, seconds=45)  # 45 s from 17:30:00
    assert r.tick(17.5 * H + 44) == []
    (fire,) = r.tick(17.5 * H + 45)
    assert fire.firing and fire.detail["since"] == eng.ms(MONDAY + timedelta(hours=17, minutes=30))


def test_unlocked_window_starting_clears_and_interrupts_the_held_for_period() -> None:
    r = door(suppress_during=UNLOCKED)
    s = r.subj
    r.feed(reading(8 * H, s, base=MONDAY, door_open=True))  # 08:00, locked
    (fire,) = r.tick(8 * H + 45)
    assert fire.firing
    (clear,) = r.feed(reading(8.5 * H + 10, s, base=MONDAY, door_open=True))  # 08:30:10: unlocked now
    assert not clear.firing and clear.detail["reason"] == "suppressed"
    # a held-for period running into the start of the window does not fire at its deadline
    r2 = door(suppress_during=UNLOCKED)
    r2.feed(reading(8.5 * H - 10, r2.subj, base=MONDAY, door_open=True))  # 08:29:50
    assert r2.deadline() == MONDAY + timedelta(hours=8, minutes=30, seconds=35)
    assert r2.tick(8.5 * H + 35) == [] and r2.deadline() is None


def test_overnight_unlocked_window_and_any_day() -> None:
    # a loading dock unlocked 22:00-06:00 every night, whatever the calendar
    r = door(suppress_during={"hours": "22:00-06:00", "days": "any"})
    s = r.subj
    r.feed(reading(2 * H, s, base=MONDAY, door_open=True))
    assert r.tick(2 * H + 100) == []
    r.feed(reading(12 * H, s, base=MONDAY, door_open=False))
    r.feed(reading(12 * H + 1, s, base=MONDAY, door_open=True))
    assert r.firing() == [] and [c.firing for c in r.tick(12 * H + 46)] == [True]


def test_suppressed_threshold_rules_leave_the_fast_path() -> None:
    plain = make_rule("threshold", {"field": "t", "op": ">", "value": 30})
    assert quiet_test(plain) is not None
    suppressed = make_rule("threshold", {"field": "t", "op": ">", "value": 30, "suppress_during": UNLOCKED})
    assert quiet_test(suppressed) is None


def test_threshold_state_round_trips_and_old_state_loads() -> None:
    r = door(suppress_during=UNLOCKED)
    r.feed(reading(17.5 * H - 30, r.subj, base=MONDAY, door_open=True))
    assert isinstance(r.state, ThresholdState) and r.state.suppressed_ms is not None
    r.restart()
    r.feed(reading(17.5 * H + 20, r.subj, base=MONDAY, door_open=True))
    assert r.deadline() == MONDAY + timedelta(hours=17, minutes=30, seconds=45)
    old: dict[str, object] = {"firing": False, "since_ms": None, "streak": 0, "last_ts_ms": 5, "known": {}}
    st = state_from_json("threshold", old)
    assert isinstance(st, ThresholdState) and st.suppressed_ms is None


def test_time_window_is_validated() -> None:
    with pytest.raises(UserError, match=r"params\.suppress_during\.hours"):
        make_rule("threshold", {"field": "t", "op": ">", "value": 1, "suppress_during": {"hours": "8-"}})
    with pytest.raises(UserError, match=r"params\.suppress_during\.days"):
        make_rule("threshold", {"field": "t", "op": ">", "value": 1, "suppress_during": {"days": "weekdays"}})


def test_suppress_during_is_inherited_and_can_be_switched_off_per_door() -> None:
    rule = {
        "id": "G2",
        "kind": "threshold",
        "device_types": ["gate"],
        "title_zh": "门",
        "title_en": "Door",
        "params": {"field": "door_open", "op": "==", "value": True, "suppress_during": UNLOCKED},
    }
    overrides = [
        {"rule": "G2", "region": "gz", "params": {"suppress_during": {"hours": "07:00-20:00", "days": "any"}}},
        {"rule": "G2", "device": "gate-vault", "params": {"suppress_during": None}},
    ]
    rs = RuleSet.from_documents([("r.yaml", {"rules": [rule], "overrides": overrides})])
    (in_gz,) = rs.for_device("gate-1", "gate", ("gd", "gz", "b1"))
    assert in_gz.params.suppress_during.hours == "07:00-20:00" and in_gz.sources["suppress_during"].endswith("[0]")
    (vault,) = rs.for_device("gate-vault", "gate", ("gd", "gz", "b1"))
    assert vault.params.suppress_during is None
    (elsewhere,) = rs.for_device("gate-2", "gate", ("gd", "sz"))
    assert elsewhere.params.suppress_during.hours == "08:30-17:30"


# --- delta: flat_during ------------------------------------------------------------------------------------------


def flat_rule(**params: object) -> Run:
    p: dict[str, object] = {"field": "energy_kwh", "flat_s": 6 * H, **params}
    return Run(make_rule("delta", p, "energy_meter"), subject("m-1", "energy_meter"), base=MONDAY)


def _feed_counter(r: Run, start_h: float, end_h: float, value: float, step_s: int = 900) -> None:
    t = int(start_h * H)
    while t <= end_h * H:
        r.feed(reading(t, r.subj, base=MONDAY, energy_kwh=value))
        t += step_s


def test_flat_counter_fires_after_six_occupied_hours() -> None:
    r = flat_rule(flat_during={"hours": "08:30-17:30"})
    _feed_counter(r, 10, 15.75, 100.0)  # flat from Monday 10:00: 5 h 45 min occupied
    assert r.changes == []
    (fire,) = r.feed(reading(16 * H, r.subj, base=MONDAY, energy_kwh=100.0))
    assert fire.firing and fire.detail["flat_s"] == 6 * H
    (clear,) = r.feed(reading(16 * H + 900, r.subj, base=MONDAY, energy_kwh=100.5))
    assert not clear.firing


def test_flat_counter_overnight_is_not_flagged_and_occupied_time_adds_up_across_days() -> None:
    r = flat_rule(flat_during={"hours": "08:30-17:30"})
    # flat from Monday 14:00: 3.5 h occupied until 17:30, nothing overnight, then Tuesday 08:30 + 2.5 h = 11:00
    _feed_counter(r, 14, 24 + 10.75, 100.0)
    assert r.changes == []
    (fire,) = r.feed(reading((24 + 11) * H, r.subj, base=MONDAY, energy_kwh=100.0))
    assert fire.firing
    # without flat_during the same counter fires 6 h after 14:00
    plain = flat_rule()
    _feed_counter(plain, 14, 24 + 11, 100.0)
    assert plain.firing() == [True] and plain.changes[0].at == MONDAY + timedelta(hours=20)


def test_flat_counter_a_night_and_a_weekend_are_never_occupied() -> None:
    r = flat_rule(flat_during={"hours": "08:30-17:30"})
    _feed_counter(r, 4 * 24 + 18, 7 * 24 + 8, 100.0)  # Friday 18:00 to Monday 08:00, flat: 62 h, none occupied
    assert r.changes == [] and isinstance(r.state, DeltaState) and r.state.flat_ms == 0


def test_flat_time_counts_the_overlap_of_a_long_gap_with_the_window() -> None:
    r = flat_rule(flat_during={"hours": "08:30-17:30"})
    r.feed(reading(7 * H, r.subj, base=MONDAY, energy_kwh=100.0))
    (fire,) = r.feed(reading(20 * H, r.subj, base=MONDAY, energy_kwh=100.0))  # one reading after 13 h: 9 h occupied
    assert fire.firing and fire.detail["flat_s"] == 9 * H


def test_flat_state_round_trips_and_old_state_loads() -> None:
    r = flat_rule(flat_during={"hours": "08:30-17:30"})
    _feed_counter(r, 10, 13, 100.0)
    r.restart()
    _feed_counter(r, 13.25, 16, 100.0)
    assert r.firing() == [True]
    st = state_from_json("delta", {"firing": False, "last_value": 1.0, "last_ts_ms": 1, "changed_ms": 1})
    assert isinstance(st, DeltaState) and st.flat_ms == 0


def test_flat_during_needs_flat_s() -> None:
    with pytest.raises(UserError, match="flat_during needs flat_s"):
        make_rule("delta", {"field": "x", "min_delta": 0, "flat_during": {"hours": "08:30-17:30"}})


# --- baseline: daily_mean over consecutive days -------------------------------------------------------------------

NIGHTS = {
    "field": "power_kw",
    "relative": 0.15,
    "absolute": 1,
    "hours": [0, 5],
    "aggregate": "daily_mean",
    "consecutive_days": 3,
    "min_samples": 4,
}


def night_rule(**params: object) -> Run:
    return Run(make_rule("baseline", {**NIGHTS, **params}, "energy_meter"), subject("m-1", "energy_meter"), MONDAY)


def _night(r: Run, day: int, kw: float | None, day_kw: float = 30.0) -> None:
    """One day from 00:00 (day offset from Monday): the night at ``kw`` (None: no data), then the day's load."""
    for q in range(24 * 4):
        t = day * 24 * H + q * 900
        value = kw if q < 5 * 4 else day_kw
        if value is not None:
            r.feed(reading(t, r.subj, base=MONDAY, power_kw=value))


def test_night_load_fires_after_the_third_qualifying_night_exactly_when_it_ends() -> None:
    r = night_rule()
    _night(r, 0, 10.0)  # learning: Monday night
    _night(r, 1, 10.0)
    for day in (2, 3):
        _night(r, day, 12.0)  # +20 % and +2 kW: qualifying
    assert r.changes == []
    for q in range(5 * 4):  # the third night, up to 04:45; the window ends at 05:00
        r.feed(reading(4 * 24 * H + q * 900, r.subj, base=MONDAY, power_kw=12.0))
    assert r.deadline() == MONDAY + timedelta(days=4, hours=5)
    (fire,) = r.tick(4 * 24 * H + 5 * H)
    assert fire.firing and fire.at == MONDAY + timedelta(days=4, hours=5)
    assert fire.detail["days"] == 3 and fire.detail["value"] == 12.0 and fire.detail["baseline"] == 10.0
    # a fourth high night: still firing, no new change; then a normal night clears
    _night(r, 5, 12.0)
    assert r.firing() == [True]
    _night(r, 6, 10.2)
    _night(r, 7, 10.2)  # the reading at 05:00 closes the night too (as well as a tick)
    assert r.firing() == [True, False]


def test_night_load_two_nights_then_a_normal_one_resets_the_count() -> None:
    r = night_rule()
    for day, kw in enumerate([10.0, 10.0, 12.0, 12.0, 10.0]):  # Monday to Friday
        _night(r, day, kw)
    assert r.changes == []
    assert isinstance(r.state, BaselineState) and r.state.streak == 0 and r.state.last_day is not None


def test_night_load_within_the_margin_is_a_near_miss() -> None:
    r = night_rule()
    for day, kw in enumerate([10.0, 10.0, 11.0, 11.0, 11.0, 11.0]):  # +10 %: never qualifies
        _night(r, day, kw)
    assert r.changes == []


def test_night_load_a_night_without_data_breaks_the_run() -> None:
    r = night_rule()
    for day, kw in enumerate([10.0, 10.0, 12.0, 12.0, None, 12.0, 10.0]):
        _night(r, day, kw)
    assert r.changes == []


def test_night_load_restart_mid_night_keeps_the_count_and_the_sums() -> None:
    r = night_rule()
    for day, kw in enumerate([10.0, 10.0, 12.0, 12.0]):
        _night(r, day, kw)
    for q in range(10):
        r.feed(reading(4 * 24 * H + q * 900, r.subj, base=MONDAY, power_kw=12.0))
    assert isinstance(r.state, BaselineState) and r.state.streak == 2
    r.restart()
    for q in range(10, 20):
        r.feed(reading(4 * 24 * H + q * 900, r.subj, base=MONDAY, power_kw=12.0))
    assert [c.firing for c in r.tick(4 * 24 * H + 5 * H)] == [True]


def test_daily_mean_can_watch_working_days_only_and_skips_weekends_in_the_count() -> None:
    # Thursday, Friday, (the weekend is not watched), Monday: three working nights in a row
    r = night_rule(days="working")
    for day, kw in enumerate([10.0, 10.0, 10.0, 12.0, 12.0, 12.0, 12.0]):
        _night(r, day, kw)
    assert r.firing() == []
    _night(r, 7, 12.0)
    assert r.firing() == [True] and r.changes[0].at == MONDAY + timedelta(days=7, hours=5)


def test_daily_mean_weekend_nights_have_their_own_baseline() -> None:
    # days: any -- a Saturday night has no non-working-day baseline yet: it cannot be judged and breaks the run
    r = night_rule()
    for day, kw in enumerate([10.0, 10.0, 10.0, 12.0, 12.0, 12.0, 12.0, 12.0]):
        _night(r, day, kw)
    assert r.changes == []


def test_old_baseline_state_loads_and_reading_mode_is_unchanged() -> None:
    old = {"firing": False, "since_ms": None, "cond": False, "bins": {"1:0": [1.0, 3.0]}, "last_value": None}
    st = state_from_json("baseline", old)
    assert isinstance(st, BaselineState) and st.streak == 0 and st.day is None and st.bins == {"1:0": [1.0, 3.0]}


def test_daily_mean_is_validated() -> None:
    with pytest.raises(UserError, match="needs hours"):
        make_rule("baseline", {"field": "x", "aggregate": "daily_mean"})
    with pytest.raises(UserError, match="consecutive_days needs"):
        make_rule("baseline", {"field": "x", "hours": [0, 5], "consecutive_days": 3})
    with pytest.raises(UserError, match="hours must be"):
        make_rule("baseline", {"field": "x", "hours": [5, 0], "aggregate": "daily_mean"})


# --- demand: streaming quantile and CUSUM -------------------------------------------------------------------------


def test_p2_quantile_estimate_is_close_to_the_exact_one_and_survives_json() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(3, 0.4) for _ in range(20_000)]
    for p in (0.5, 0.9, 0.99):
        m: dict[str, list[float]] = {}
        for i, x in enumerate(values):
            p2_add(m, p, x)
            if i == 10_000:
                m = json.loads(json.dumps(m))
        exact = sorted(values)[int(p * len(values))]
        est = p2_value(m, p)
        assert est is not None and abs(est - exact) / exact < 0.02, (p, est, exact)
        assert sorted(m) == ["n", "np", "q"] and all(len(v) == 5 for v in m.values())


def test_p2_first_values_are_exact() -> None:
    m: dict[str, list[float]] = {}
    assert p2_value(m, 0.99) is None
    for x in (5.0, 1.0, 3.0):
        p2_add(m, 0.99, x)
    assert p2_value(m, 0.99) == 5.0 and p2_value(m, 0.0001) == 1.0


SPIKE = {
    "field": "power_kw",
    "source": "value",
    "interval_s": 900,
    "quantile": 0.99,
    "factor": 1.2,
    "clear_intervals": 2,
}


@dataclass
class Load:
    """A meter's readings every ``step_s`` seconds from Monday 00:00, with seeded noise."""

    run: Run
    step_s: int = 300
    t: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def until(self, hours: float, kw: float, noise: float = 0.02) -> None:
        while self.t < hours * H:
            self.run.feed(reading(self.t, self.run.subj, base=MONDAY, power_kw=kw * (1 + self.rng.gauss(0, noise))))
            self.t += self.step_s


def demand_rule(**params: object) -> Load:
    rule = make_rule("demand", {**SPIKE, **params}, "energy_meter")
    return Load(Run(rule, subject("m-1", "energy_meter"), MONDAY), rng=random.Random(1))


def test_demand_spike_above_the_learned_p99_times_factor_fires_and_clears() -> None:
    ld = demand_rule(min_history=24)
    ld.until(8, 10.0)  # 32 quarter hours of ~10 kW: p99 ~ 10.3, limit ~ 12.4
    ld.until(8.25, 12.0)  # 12 kW for a quarter hour: a near miss
    ld.until(8.5, 10.0)
    assert ld.run.changes == []
    ld.until(8.75, 14.0)  # above the limit
    (fire,) = ld.run.feed(reading(8.75 * H, ld.run.subj, base=MONDAY, power_kw=10.0))  # closes the quarter
    assert fire.firing and fire.detail["reason"] == "spike" and fire.at == MONDAY + timedelta(hours=8, minutes=45)
    assert 10.0 < float(fire.detail["quantile"]) < 10.6 and abs(float(fire.detail["demand"]) - 14) < 0.3  # type: ignore[arg-type]
    ld.until(9.25, 10.0)
    assert ld.run.firing() == [True]  # one normal quarter is not enough
    ld.until(9.5, 10.0)
    assert ld.run.firing() == [True, False]


def test_demand_does_not_judge_before_its_history() -> None:
    ld = demand_rule(min_history=24)
    ld.until(2, 10.0)
    ld.until(2.5, 100.0)  # a spike in the first hours: nothing to judge it against yet
    ld.until(3, 10.0)
    st = ld.run.state
    assert ld.run.changes == [] and isinstance(st, DemandState) and st.seen == 11  # quarters closed and learned


def test_demand_learns_nothing_while_firing() -> None:
    ld = demand_rule(min_history=24)
    ld.until(8, 10.0)
    ld.until(8.25, 14.0)
    ld.until(8.26, 10.0)
    st = ld.run.state
    assert ld.run.firing() == [True] and isinstance(st, DemandState)
    seen, p2 = st.seen, json.dumps(st.p2)
    ld.until(8.76, 10.0)  # two normal quarters clear it; neither is learned
    assert ld.run.firing() == [True, False] and (st.seen, json.dumps(st.p2)) == (seen, p2)
    ld.until(9.01, 10.0)
    assert st.seen == seen + 1


def test_demand_from_an_energy_counter() -> None:
    rule = make_rule("demand", {"field": "energy_kwh", "quantile": 0.99, "min_history": 5}, "energy_meter")
    r = Run(rule, subject("m-1", "energy_meter"), MONDAY)
    kwh = 0.0
    for i in range(4 * 4 + 1):  # 40 kW for four hours and a bit, a reading every minute
        for j in range(15):
            r.feed(reading(i * 900 + j * 60, r.subj, base=MONDAY, energy_kwh=kwh))
            kwh += 40 / 60
    st = r.state
    assert isinstance(st, DemandState) and st.demand is not None and abs(st.demand - 40) < 1e-6


CUSUM = {"quantile": None, "cusum_h": 5, "cusum_k": 0.5, "min_history": 96, "clear_intervals": 4}


def test_demand_cusum_catches_a_small_step_a_spike_test_misses() -> None:
    step = demand_rule(**CUSUM)
    spike = demand_rule(min_history=96)
    for ld in (step, spike):
        ld.until(24 + 10, 10.0)  # a day and a morning of ~10 kW
        ld.until(24 + 13, 10.4)  # +4 %: far under p99 x 1.2, a lasting shift
    assert spike.run.changes == []
    (fire,) = step.run.changes
    assert fire.firing and fire.detail["reason"] == "step" and float(fire.detail["cusum"]) > 5  # type: ignore[arg-type]
    assert fire.at <= MONDAY + timedelta(hours=24 + 11)  # within an hour of the step
    step.until(24 + 14, 10.0)
    assert step.run.firing() == [True, False]  # back at the baseline: clears


def test_demand_cusum_a_short_blip_is_a_near_miss() -> None:
    ld = demand_rule(**CUSUM)
    ld.until(24 + 10, 10.0)
    ld.until(24 + 10.25, 10.4)  # the same +4 %, for one quarter hour only
    ld.until(24 + 14, 10.0)
    assert ld.run.changes == []


def test_demand_state_is_bounded_and_json_native_after_weeks() -> None:
    ld = demand_rule(**{**CUSUM, "quantile": 0.99})
    ld.step_s = 900
    ld.until(3 * 7 * 24, 10.0)
    st = ld.run.state
    assert isinstance(st, DemandState)
    assert len(st.bins) <= 336 and all(len(v) == 5 for v in st.p2.values())
    assert len(json.dumps(state_to_json(st))) < 20_000
    ld.run.restart()
    assert ld.run.state == st


def test_demand_needs_a_test() -> None:
    with pytest.raises(UserError, match="set quantile"):
        make_rule("demand", {"field": "x", "quantile": None})


# --- clock skew -------------------------------------------------------------------------------------------------


def skew_rule(**params: object) -> Run:
    p: dict[str, object] = {"max_ahead_s": 120, "max_behind_s": 300, "count": 3, **params}
    return Run(make_rule("clock_skew", p, "energy_meter"), subject("m-1", "energy_meter"), MONDAY)


def test_clock_ahead_fires_after_three_records_and_clears_after_three_good_ones() -> None:
    r = skew_rule()
    s = r.subj
    for i in range(2):
        r.feed(reading(60 * i + 200, s, base=MONDAY, energy_kwh=1.0), now_s=60 * i)  # 200 s ahead
    assert r.changes == []
    (fire,) = r.feed(event(120 + 200, s, "power_loss", base=MONDAY), now_s=120)  # events count too
    assert fire.firing and fire.detail == {"skew_s": 200.0, "direction": "ahead", "device_ts": eng.ms(MONDAY) + 320_000}
    assert fire.at == MONDAY + timedelta(seconds=120)  # the receive time, not the device's
    for i in range(3, 5):
        r.feed(reading(60 * i + 5, s, base=MONDAY, energy_kwh=1.0), now_s=60 * i)
    assert r.firing() == [True]
    r.feed(reading(60 * 5 + 5, s, base=MONDAY, energy_kwh=1.0), now_s=60 * 5)
    assert r.firing() == [True, False]


def test_clock_behind_needs_the_skew_to_last_so_a_flushed_backlog_is_not_a_skewed_clock() -> None:
    r = skew_rule(for_s=600)
    s = r.subj
    # a backlog: 20 buffered readings from the last 20 minutes, all received at once
    for i in range(20):
        r.feed(reading(i * 60, s, base=MONDAY, energy_kwh=1.0), now_s=1200 + i * 0.01)
    assert r.changes == []
    r.feed(reading(1260, s, base=MONDAY, energy_kwh=1.0), now_s=1260)  # live again
    # a clock 400 s behind: fires once it has lasted 10 minutes
    for i in range(12):
        r.feed(reading(2000 + i * 60 - 400, s, base=MONDAY, energy_kwh=1.0), now_s=2000 + i * 60)
    assert r.firing() == [True] and r.changes[0].at == MONDAY + timedelta(seconds=2600)
    assert r.changes[0].detail["direction"] == "behind"


def test_clock_skew_within_bounds_and_server_stamped_records_are_fine() -> None:
    r = skew_rule()
    s = r.subj
    for i in range(10):
        r.feed(reading(60 * i + 100, s, base=MONDAY, energy_kwh=1.0), now_s=60 * i)  # 100 s ahead: within 120
        r.feed(reading(60 * i - 250, s, base=MONDAY, energy_kwh=1.0), now_s=60 * i + 1)  # 250 s behind: within 300
    stamped = Reading("m-1", s.region_id, "energy_meter", eng.ms(MONDAY), None, {"energy_kwh": 1.0}, 0, False)
    for i in range(5):
        r.feed(stamped, now_s=3600 * (i + 1))  # no ts from the device: ingest's clock, nothing to say
    r.feed(Status("m-1", s.region_id, eng.ms(MONDAY), "online"), now_s=7200)
    assert r.changes == []


@dataclass(slots=True)
class _Received(Reading):
    received_ms: int = 0


def test_clock_skew_prefers_the_records_receive_time_over_now() -> None:
    r = skew_rule(count=1)
    s = r.subj
    rec = _Received("m-1", s.region_id, "energy_meter", eng.ms(MONDAY), None, {"energy_kwh": 1.0})
    rec.received_ms = eng.ms(MONDAY) + 10_000  # received 10 s after its device time; evaluated an hour later
    assert r.feed(rec, now_s=3600) == []
    rec2 = _Received("m-1", s.region_id, "energy_meter", eng.ms(MONDAY), None, {"energy_kwh": 1.0})
    rec2.received_ms = eng.ms(MONDAY) + 400_000
    assert [c.firing for c in r.feed(rec2, now_s=401)] == [True]


def test_clock_skew_is_validated_and_routed_to_every_reading_and_event() -> None:
    with pytest.raises(UserError, match="set max_ahead_s"):
        make_rule("clock_skew", {"max_ahead_s": None, "max_behind_s": None})
    rule = make_rule("clock_skew", {})
    assert route(rule) == eng.Route(None, True, False)
    assert eng.interested(rule, event(0, subject(), "x")) and not rule.inhibitable
    demand = make_rule("demand", {"field": "energy_kwh"})
    assert route(demand) == eng.Route(("energy_kwh",), False) and demand.inhibitable


def test_new_kinds_in_explain_rows() -> None:
    from alerts.rules import PACKS_DIR, explain_rows

    rs = RuleSet.load([PACKS_DIR])
    rows = explain_rows(rs.for_device("m-1", "energy_meter", ("gd",)))
    by = {(r["rule"], r["setting"]): r for r in rows}
    assert by[("E4", "quantile")]["value"] == 0.99 and by[("E4.step", "cusum_h")]["value"] == 5
    assert by[("E2", "consecutive_days")]["value"] == 3 and by[("E5.skew", "max_ahead_s")]["value"] == 120
    assert by[("E5.flat", "flat_during")]["value"] == {"hours": "08:30-17:30", "days": "working"}
    assert by[("E4", "min_history")]["source"] == "default of kind demand"


def test_new_states_survive_the_services_text_snapshots() -> None:
    """``state_dumps`` / ``state_loads`` (the service's snapshot path) keep every new field."""
    night = night_rule()
    for day, kw in enumerate([10.0, 10.0, 12.0]):
        _night(night, day, kw)
    demand = demand_rule(**{**CUSUM, "quantile": 0.99})
    demand.until(30, 10.0)
    skew = skew_rule()
    skew.feed(reading(500, skew.subj, base=MONDAY, energy_kwh=1.0), now_s=0)
    held = door(suppress_during=UNLOCKED)
    held.feed(reading(10 * H, held.subj, base=MONDAY, door_open=True))
    flat = flat_rule(flat_during={"hours": "08:30-17:30"})
    _feed_counter(flat, 10, 12, 100.0)
    for r in (night, demand.run, skew, held, flat):
        text = eng.state_dumps(r.state)
        assert eng.state_loads(r.rule.kind, text) == r.state, r.rule.kind
    assert isinstance(night.state, BaselineState) and night.state.streak == 1
    assert isinstance(flat.state, DeltaState) and flat.state.flat_ms == 2 * H * 1000
