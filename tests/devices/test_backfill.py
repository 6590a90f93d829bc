"""History back-fill (devices/backfill.py): counts per device per day, the official calendar (holidays and make-up
working days), meters monotonic and sub-meters summing to their parent, vehicles parked at their depot at night,
determinism with the seed, and the write path into the SQLite store."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.backfill import BackfillOptions, agency_usage, backfill, backfill_once, generate
from devices.simulator import BEIJING, SimDevice, Site

SITES = (Site("b2", 23.14, 113.30), Site("b3", 23.10, 113.25))
DEVICES = [
    SimDevice("gate-1", "gate", "b1", 23.12, 113.26),
    SimDevice("gate-2", "gate", "b1", 23.12, 113.26),
    SimDevice("car-1", "vehicle", "a1", 23.12, 113.26, sites=SITES),
    SimDevice("car-2", "vehicle", "a1", 23.12, 113.26, sites=SITES),
    SimDevice("meter-main", "energy_meter", "b1", 23.12, 113.26),
    SimDevice("meter-sub1", "energy_meter", "b1", 23.12, 113.26),
    SimDevice("meter-sub2", "energy_meter", "b1", 23.12, 113.26),
    SimDevice("sensor-1", "sensor", "b1", 23.12, 113.26),
]
PARENTS = {"meter-sub1": "meter-main", "meter-sub2": "meter-main"}
# 2026-09-19 (Saturday) to 2026-10-12: the make-up working Sunday 2026-09-20, the National Day holiday 10-01..07,
# the make-up working Saturday 10-10.
START = datetime(2026, 9, 12, tzinfo=BEIJING)
END = datetime(2026, 10, 12, tzinfo=BEIJING)


def _days(seed: int = 7, **kw: object) -> list[tuple[date, WriteBatch]]:
    opts = BackfillOptions(seed=seed)
    return list(generate(DEVICES, START, END, options=opts, parents=PARENTS, **kw))  # type: ignore[arg-type]


def _day(ts_ms: int) -> date:
    return datetime.fromtimestamp(ts_ms / 1000, BEIJING).date()


def test_one_batch_per_day_and_counts_per_device_per_day() -> None:
    days = _days()
    assert [d for d, _ in days] == [date(2026, 9, 12) + timedelta(days=k) for k in range(30)]
    for _, batch in days:
        per_dev = Counter(r.device_id for r in batch.readings)
        assert per_dev["meter-main"] == per_dev["meter-sub1"] == 96  # every 15 minutes
        assert per_dev["sensor-1"] == 24  # hourly
        assert per_dev["gate-1"] == 24  # hourly heartbeat
        assert per_dev["car-1"] >= 20  # parked beats, plus positions while moving
    for d, batch in days:
        assert {_day(r.ts_ms) for r in batch.readings} == {d}
        assert all(_day(e.ts_ms) == d for e in batch.events)


def _gate_events(days: list[tuple[date, WriteBatch]]) -> dict[date, int]:
    return {d: sum(1 for e in b.events if e.device_type == "gate") for d, b in days}


def test_official_calendar_holidays_and_make_up_days() -> None:
    per_day = _gate_events(_days())
    working_thursday, holiday_thursday = per_day[date(2026, 9, 24)], per_day[date(2026, 10, 1)]
    assert working_thursday > 60
    assert holiday_thursday < working_thursday / 5
    # make-up working days (a Sunday and a Saturday) look like working days; an ordinary Sunday does not
    assert per_day[date(2026, 9, 20)] > per_day[date(2026, 9, 13)] * 5
    assert per_day[date(2026, 10, 10)] > per_day[date(2026, 10, 4)] * 5
    trips = {d: sum(1 for e in b.events if e.type == "ignition_on") for d, b in _days()}
    holiday_trips = sum(trips[date(2026, 10, k)] for k in range(1, 8))
    work_trips = sum(trips[d] for d in trips if date(2026, 9, 21) <= d <= date(2026, 9, 24))
    assert work_trips > holiday_trips


def test_meters_monotonic_and_subs_sum_to_parent() -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for _, batch in _days():
        for r in batch.readings:
            if r.device_type == "energy_meter":
                series.setdefault(r.device_id, []).append((r.ts_ms, float(r.fields["energy_kwh"])))
    for values in series.values():
        assert values == sorted(values)  # time order
        assert all(b[1] >= a[1] for a, b in itertools.pairwise(values))
    main = dict(series["meter-main"])
    for ts, value in series["meter-sub1"]:
        assert abs(main[ts] - value - dict(series["meter-sub2"])[ts]) < 0.01


def test_night_load_and_waste_shape() -> None:
    """Power at 03:00 is a base load well below the working-day 10:00 load."""
    for d, batch in _days():
        if d != date(2026, 9, 24):
            continue
        power = {
            datetime.fromtimestamp(r.ts_ms / 1000, BEIJING).hour: float(r.fields["power_kw"])
            for r in batch.readings
            if r.device_id == "meter-sub1" and r.ts_ms % 3_600_000 == 0
        }
        assert power[3] < power[10] * 0.8


def test_vehicles_parked_at_depot_at_night() -> None:
    for _, batch in _days():
        for r in batch.readings:
            if r.device_type != "vehicle":
                continue
            hour = datetime.fromtimestamp(r.ts_ms / 1000, BEIJING).hour
            if hour < 6:
                assert (r.fields["lat"], r.fields["lon"], r.fields["ignition"]) == (23.12, 113.26, False)
        odo: dict[str, float] = {}
        for r in sorted(batch.readings, key=lambda x: x.ts_ms):
            if r.device_type == "vehicle":
                assert float(r.fields["odometer_km"]) >= odo.get(r.device_id, 0.0) - 0.05
                odo[r.device_id] = float(r.fields["odometer_km"])


def test_moving_positions_every_30_to_60_s() -> None:
    batch = next(b for d, b in _days() if d == date(2026, 9, 24))
    moving = sorted(r.ts_ms for r in batch.readings if r.device_id == "car-1" and r.fields["ignition"])
    gaps = [b - a for a, b in itertools.pairwise(moving) if b - a < 300_000]
    assert gaps and all(gap <= 61_000 for gap in gaps)


def test_deterministic_with_the_seed() -> None:
    def digest(days: list[tuple[date, WriteBatch]]) -> list[tuple[str, int, str]]:
        return [(r.device_id, r.ts_ms, str(r.fields)) for _, b in days for r in b.readings] + [
            (e.device_id, e.ts_ms, str(e.data)) for _, b in days for e in b.events
        ]

    assert digest(_days(7)) == digest(_days(7))
    assert digest(_days(7)) != digest(_days(8))


def test_agency_usage_has_under_used_and_busy_agencies() -> None:
    usage = agency_usage([f"a{k}" for k in range(6)])
    assert sorted(usage.values()) == [0.3, 1.0, 1.0, 1.0, 1.0, 1.8]


def test_backfill_writes_through_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db", synchronous="NORMAL", background_checkpoint=False)
    try:
        end = START + timedelta(days=3, hours=5)
        counts = backfill(store, DEVICES, START, end, options=BackfillOptions(seed=3), parents=PARENTS)
        assert counts.days == 4
        assert store.count_readings() == counts.readings
        assert store.count_readings("meter-main") == 3 * 96 + 5 * 4
        last = store.last_values("meter-main")
        assert last["energy_kwh"][0] < int(end.timestamp() * 1000)
        states = store.device_states(["gate-1"])
        assert states["gate-1"].status == "online"
        assert states["gate-1"].messages > 0
    finally:
        store.close()


def test_cli_sim_backfill_region_and_devices(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
    from core.db import make_engine, migrate
    from devices.registry import Registry
    from devices.sample import demo_device_specs, sample_regions
    from lianfang.cli import app

    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    reg = Registry(engine)
    now = datetime(2026, 1, 1, tzinfo=BEIJING)
    reg.upsert_regions(sample_regions(), now=now)
    reg.add_devices(demo_device_specs(reg.regions(), per_building=4, vehicles_per_agency=1), now=now)
    engine.dispose()
    env = {
        "LIANFANG_DATABASE_URL": url,
        "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
        "LIANFANG_DATA_DIR": str(tmp_path / "var"),
        "LIANFANG_CONFIG": None,
    }
    res = CliRunner().invoke(app, ["sim", "backfill", "--weeks", "1", "--region", "gd-gz-a01", "--alerts"], env=env)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert "back-filled" in res.stdout and "resolved alerts" in res.stdout
    store = SqliteStore(tmp_path / "telemetry.db", background_checkpoint=False)
    try:
        written = set(store.device_states())
        assert written and all("-gz-a01-" in d for d in written)
        assert store.count_readings("meter-gz-a01-b1-01") >= 7 * 96
    finally:
        store.close()
    res = CliRunner().invoke(app, ["sim", "backfill", "--weeks", "1", "--devices", "no-such-device"], env=env)
    assert res.exit_code == 1 and "no-such-device" in res.stderr


def test_backfill_once_skips_a_store_that_holds_data(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db", synchronous="NORMAL", background_checkpoint=False)
    try:
        end = START + timedelta(days=1)
        first = backfill_once(store, DEVICES, START, end, parents=PARENTS)
        assert first is not None and first.readings == store.count_readings()
        assert backfill_once(store, DEVICES, START, end + timedelta(days=1), parents=PARENTS) is None
        assert store.count_readings() == first.readings
    finally:
        store.close()


# --- alerts and risk history ---------------------------------------------------------------------------------------


def _pack_docs() -> list[dict[str, object]]:
    import yaml

    from alerts.rules import PACKS_DIR

    return [yaml.safe_load(p.read_text(encoding="utf-8")) or {} for p in sorted(PACKS_DIR.glob("*.yaml"))]


@dataclass(frozen=True)
class _Region:
    id: str
    parent_id: str | None
    level: str


TREE = [_Region("pv", None, "province"), _Region("c1", "pv", "city")] + [
    x for k in (1, 2, 3) for x in (_Region(f"a{k}", "c1", "agency"), _Region(f"b{k}", f"a{k}", "building"))
]
FLEET = [SimDevice(f"gate-{k}-{n}", "gate", f"b{k}", 23.1, 113.2) for k in (1, 2, 3) for n in range(10)] + [
    SimDevice(f"car-{k}-{n}", "vehicle", f"a{k}", 23.1, 113.2) for k in (1, 2, 3) for n in range(5)
]


def test_alert_history_names_real_rules_of_the_device_type_and_resolves_in_the_period() -> None:
    from devices.backfill import ALERT_RULES, alert_history, alert_templates

    docs = _pack_docs()
    types = {str(r["id"]): r["device_types"] for d in docs for r in d.get("rules", [])}  # type: ignore[attr-defined]
    for dtype, rules in ALERT_RULES.items():
        assert all(dtype in types[rule] for rule, _ in rules)
    alerts = alert_history(FLEET, TREE, alert_templates(docs), START, END, seed=3)
    assert len(alerts) > 10
    assert alerts == alert_history(FLEET, TREE, alert_templates(docs), START, END, seed=3)
    kinds = {d.id: d.type for d in FLEET}
    for a in alerts:
        assert START <= a.raised_at < a.resolved_at < END
        assert a.acknowledged_at is None or a.raised_at < a.acknowledged_at <= a.resolved_at
        assert any(a.rule.rule_id == r for r, _ in ALERT_RULES[kinds[a.device_id]])


def test_alert_response_differs_between_agencies() -> None:
    """Agencies in sorted order: a1 acknowledges around 4 min, a2 around 8, a3 around 15 (ACK_MEDIAN_MIN)."""
    from statistics import median

    from devices.backfill import alert_history, alert_templates

    alerts = alert_history(FLEET, TREE, alert_templates(_pack_docs()), START, END + timedelta(days=200), seed=3)
    by_agency: dict[str, list[float]] = {}
    for a in alerts:
        if a.acknowledged_at is not None:
            agency = "a" + a.device_id.split("-")[1]
            by_agency.setdefault(agency, []).append((a.acknowledged_at - a.raised_at).total_seconds() / 60)
    m = {k: median(v) for k, v in by_agency.items()}
    assert 2.5 < m["a1"] < 6 and 5 < m["a2"] < 12 and 10 < m["a3"] < 22


def test_risk_history_rises_while_alerts_are_open_and_returns_to_zero() -> None:
    from devices.backfill import AlertTemplate, PastAlert, risk_history
    from joint.risk import RiskWeights

    rule = AlertTemplate("G2", "warning", "门长时间未关", "Door held open")
    t0 = START + timedelta(hours=10)
    alert = PastAlert(rule, "gate-1-0", "b1", t0, t0 + timedelta(minutes=20), t0 + timedelta(minutes=50))
    points = risk_history([alert], TREE, RiskWeights(), START, START + timedelta(days=1))
    c1 = [(p.at, p.score) for p in points if p.region_id == "c1"]
    assert [at for at, score in c1 if score > 0] == [t0 + timedelta(minutes=m) for m in (0, 15, 30, 45)]
    assert c1[-1] == (t0 + timedelta(minutes=60), 0.0)  # one 0 after it resolved, then nothing
    assert c1[3][1] < c1[1][1]  # acknowledged at +20 min: it weighs less
    assert {p.region_id for p in points} == {"pv", "c1", "a1", "b1"}


def test_write_alert_history_continues_ids_and_reads_back_in_the_statistics(tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from alerts.models import AlertRow
    from core.db import make_engine, migrate
    from devices.backfill import write_alert_history
    from joint.models import IncidentMemberRow, IncidentRow
    from joint.risk_store import RiskHistory, alert_records, incident_records

    engine = make_engine(f"sqlite:///{tmp_path}/r.db")
    migrate(engine)
    paths = {"b1": "/pv/c1/a1/b1/", "b2": "/pv/c1/a2/b2/", "b3": "/pv/c1/a3/b3/"}
    paths |= {"a1": "/pv/c1/a1/", "a2": "/pv/c1/a2/", "a3": "/pv/c1/a3/"}
    h1 = write_alert_history(engine, FLEET, TREE, paths, START, END, seed=3)
    h2 = write_alert_history(engine, FLEET, TREE, paths, START, END, seed=4)
    n1, p1, n2 = h1.alerts, h1.risk_points, h2.alerts
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AlertRow)).scalar() == n1 + n2
        assert conn.execute(select(func.max(AlertRow.id))).scalar() == n1 + n2
    records, _ = alert_records(engine, START, END, within="c1", limit=10_000)
    assert len(records) == n1 + n2 and all(r.resolved_at is not None for r in records)
    assert p1 > 0 and RiskHistory(engine).count() > p1
    incidents, _ = incident_records(engine, START, END, within="c1", limit=10_000)
    assert h1.incidents > 0 and len(incidents) == h1.incidents + h2.incidents
    assert all(
        i.resolved_at is not None and i.keys["type"] in ("vehicle_misuse", "empty_building_load") for i in incidents
    )
    with engine.connect() as conn:
        ids = conn.execute(select(IncidentRow.id).order_by(IncidentRow.id)).scalars().all()
        assert list(ids) == list(range(1, len(incidents) + 1))
        members = conn.execute(select(func.count()).select_from(IncidentMemberRow)).scalar()
        assert members == len(incidents)
    engine.dispose()


def test_demo_back_fills_its_history_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lianfang demo`'s first start writes the fleet's history, alerts and risk points; a second start (the store
    holds data of the fleet) writes nothing, so meters and odometers never go back."""
    from sqlalchemy import func, select

    from alerts.models import AlertRow
    from core.settings import load_settings
    from devices.sample import sample_regions
    from joint.risk_store import RiskHistory
    from lianfang.context import open_registry
    from lianfang.demo import MIN_PER_BUILDING, backfill_demo_history, demo_specs

    monkeypatch.setenv("LIANFANG_DATABASE_URL", f"sqlite:///{tmp_path}/registry.db")
    monkeypatch.setenv("LIANFANG_STORE__SQLITE_PATH", str(tmp_path / "telemetry.db"))
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("LIANFANG_CONFIG", raising=False)
    settings = load_settings()
    registry = open_registry(settings)
    now = datetime(2026, 10, 12, 9, 0, tzinfo=BEIJING)
    registry.upsert_regions(sample_regions(), now=now - timedelta(weeks=2))
    registry.add_devices(demo_specs(registry.regions(), MIN_PER_BUILDING, 1), now=now - timedelta(weeks=2))

    def written() -> tuple[int, int, int]:
        store = SqliteStore(tmp_path / "telemetry.db", background_checkpoint=False)
        try:
            readings = store.count_readings()
        finally:
            store.close()
        with registry.engine.connect() as conn:
            alerts = int(conn.execute(select(func.count()).select_from(AlertRow)).scalar() or 0)
        return readings, alerts, RiskHistory(registry.engine).count()

    backfill_demo_history(settings, registry, weeks=2, seed=1, now=now)
    first = written()
    assert first[0] > 10_000 and first[1] > 0 and first[2] > 0
    backfill_demo_history(settings, registry, weeks=2, seed=1, now=now + timedelta(hours=1))
    assert written() == first
    registry.engine.dispose()


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 23 * 60), st.integers(1, 3 * 24 * 60))
def test_any_seed_and_window_keeps_meters_monotonic_subs_summed_and_records_inside(
    seed: int, offset_min: int, length_min: int
) -> None:
    start = START + timedelta(minutes=offset_min)
    end = start + timedelta(minutes=length_min)
    last: dict[str, float] = {}
    values: dict[tuple[str, int], float] = {}
    for _, batch in generate(DEVICES, start, end, options=BackfillOptions(seed=seed), parents=PARENTS):
        for r in batch.readings:
            assert start.timestamp() * 1000 <= r.ts_ms < end.timestamp() * 1000
            if r.device_type == "energy_meter":
                e = float(r.fields["energy_kwh"])
                assert e >= last.get(r.device_id, 0.0)
                last[r.device_id] = e
                values[(r.device_id, r.ts_ms)] = e
        assert all(start.timestamp() * 1000 <= e.ts_ms < end.timestamp() * 1000 for e in batch.events)
    for (dev, ts), e in values.items():
        if dev == "meter-main":
            assert abs(e - values[("meter-sub1", ts)] - values[("meter-sub2", ts)]) < 0.01
