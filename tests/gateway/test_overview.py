"""GET /api/v1/overview and the fleet index behind it and /api/v1/regions, on the seeded SQLite registry and store.

Figures are computed by hand from tests/gateway/conftest.py's seed (NOW = 2026-11-26 08:00 UTC, 16:00 in Beijing):
gates gate-gz-0001 (stale), gate-gz-0002 (never seen), gate-sz-0001 (online); meter-gz-0001 online, energy_kwh
1000 -> 1119 between 14:00 and 15:59 Beijing time (119 kWh today, nothing before today); car-sz-0001 offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from alerts.models import AlertRow
from core.protocol import Event, Reading, Status
from core.store import WriteBatch
from devices.registry import DeviceSpec
from gateway.app import create_app
from gateway.fleet import DAY_MS, HOUR_MS, baseline_at, beijing_day, day_start_ms, hourly_profile, moving_of
from joint.models import IncidentMemberRow, IncidentRow
from tests.gateway.conftest import NOW, NOW_MS, Gateway
from tests.helpers import wait_until

API = "/api/v1"
TODAY = day_start_ms(beijing_day(NOW_MS))  # 2026-11-26 00:00 Beijing = 2026-11-25 16:00 UTC


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def get(self, path: str, user: str = "admin", **params: Any) -> Any:
        return self.client.get(
            API + path, params=params or None, headers={"Authorization": f"Bearer {self.tokens[user]}"}
        )


def _alert(i: int, device: str, region_path: str, severity: str, state: str) -> AlertRow:
    at = NOW - timedelta(minutes=i)
    return AlertRow(
        id=i,
        dedup_key=f"k{i}",
        open_key=None if state == "resolved" else f"k{i}",
        rule_id="G1",
        device_id=device,
        region_id=region_path.strip("/").split("/")[-1],
        region_path=region_path,
        severity=severity,
        state=state,
        title_zh="t",
        title_en="t",
        started_at=at,
        updated_at=at,
        detail={},
    )


def _incident(i: int, region_path: str, severity: str, state: str, members: list[tuple[int, str]]) -> list[Any]:
    row = IncidentRow(
        id=i,
        pattern_id="X1",
        type="intrusion",
        title_zh="t",
        title_en="t",
        severity=severity,
        state=state,
        scope_level="city",
        region_id=region_path.strip("/").split("/")[-1],
        region_path=region_path,
        group_key=f"g{i}",
        open_key=f"g{i}" if state in ("open", "investigating") else None,
        opened_at=NOW,
        updated_at=NOW,
        detail={},
    )
    rows: list[Any] = [row]
    for alert_id, region in members:
        rows.append(
            IncidentMemberRow(
                incident_id=i, alert_id=alert_id, added_at=NOW, rule_id="G1", device_id="d", region_id=region
            )
        )
    return rows


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Client]:
    reg = gateway.ctx.registry
    with Session(reg.engine) as s, s.begin():
        s.add_all(
            [
                _alert(1, "gate-gz-0001", "/gd/gz/gz-jgj/gz-b1/", "critical", "firing"),
                _alert(2, "gate-gz-0002", "/gd/gz/gz-jgj/gz-b1/", "major", "acknowledged"),
                _alert(3, "meter-gz-0001", "/gd/gz/gz-jgj/", "warning", "firing"),
                _alert(4, "gate-sz-0001", "/gd/sz/sz-jgj/sz-b1/", "critical", "firing"),
                _alert(5, "gate-sz-0001", "/gd/sz/sz-jgj/sz-b1/", "critical", "resolved"),  # not open
            ]
        )
        s.flush()
        # a city incident in Guangzhou, a provincial one with a member in Shenzhen, and a closed one
        rows = [
            *_incident(1, "/gd/gz/", "major", "open", [(1, "gz-b1")]),
            *_incident(2, "/gd/", "critical", "investigating", [(4, "sz-b1")]),
            *_incident(3, "/gd/gz/", "critical", "closed", [(2, "gz-b1")]),
        ]
        s.add_all([r for r in rows if isinstance(r, IncidentRow)])
        s.flush()
        s.add_all([r for r in rows if isinstance(r, IncidentMemberRow)])
    with TestClient(create_app(gateway.ctx)) as c:
        yield Client(c, gateway.tokens)


def test_overview_of_the_whole_tree(client: Client) -> None:
    r = client.get("/overview")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["region_id"] is None
    assert body["at"] == "2026-11-26T08:00:00.000Z"
    assert body["devices"]["by_type"] == {
        "gate": {"total": 3, "online": 1},
        "vehicle": {"total": 1, "online": 0},
        "energy_meter": {"total": 1, "online": 1},
        "sensor": {"total": 0, "online": 0},
    }
    assert body["alerts"]["by_severity"] == {"info": 0, "warning": 1, "major": 1, "critical": 2}
    assert body["incidents"] == {"open": 2, "by_severity": {"info": 0, "warning": 0, "major": 1, "critical": 1}}
    assert body["energy"]["today_kwh"] == 119.0
    assert body["energy"]["meters"] == 1
    assert body["vehicles"] == {"total": 1, "in_use": 0}


def test_overview_is_scoped_to_the_caller_and_the_region(client: Client) -> None:
    gz = client.get("/overview", user="gz").json()
    assert gz["region_id"] == "gz"
    assert gz["devices"]["by_type"]["gate"] == {"total": 2, "online": 0}
    assert gz["devices"]["by_type"]["energy_meter"] == {"total": 1, "online": 1}
    assert gz["vehicles"] == {"total": 0, "in_use": 0}
    assert gz["alerts"]["by_severity"] == {"info": 0, "warning": 1, "major": 1, "critical": 1}
    assert gz["incidents"]["open"] == 1  # the provincial incident has no member in Guangzhou
    assert gz["energy"]["today_kwh"] == 119.0
    sz = client.get("/overview", user="sz").json()
    assert sz["devices"]["by_type"]["gate"] == {"total": 1, "online": 1}
    assert sz["alerts"]["by_severity"]["critical"] == 1
    assert sz["incidents"] == {"open": 1, "by_severity": {"info": 0, "warning": 0, "major": 0, "critical": 1}}
    assert sz["energy"]["today_kwh"] == 0.0
    # a region inside the scope narrows it; one outside answers like an unknown one
    b1 = client.get("/overview", user="gz", region="gz-b1").json()
    assert b1["region_id"] == "gz-b1"
    assert b1["devices"]["by_type"]["gate"] == {"total": 2, "online": 0}
    assert b1["devices"]["by_type"]["energy_meter"] == {"total": 0, "online": 0}
    assert b1["alerts"]["by_severity"] == {"info": 0, "warning": 0, "major": 1, "critical": 1}
    for rid in ("sz", "gd", "nowhere"):
        r = client.get("/overview", user="gz", region=rid)
        assert r.status_code == 404, rid
        assert r.json() == {"detail": f"region {rid!r} not found"}
    assert client.get("/overview", region="Bad_Id").status_code == 422
    assert client.get("/overview", region="x" * 65).status_code == 422


def test_overview_and_regions_follow_live_batches_and_the_clock(gateway: Gateway) -> None:
    now = [NOW]
    gateway.ctx.clock = lambda: now[0]
    reg = gateway.ctx.registry
    reg.add_devices([DeviceSpec("car-gz-0001", "vehicle", "gz-b1", "粤A00001")], now=NOW)
    with TestClient(create_app(gateway.ctx)) as c:
        client = Client(c, gateway.tokens)
        assert client.get("/overview").json()["vehicles"] == {"total": 2, "in_use": 0}
        batch = WriteBatch()
        ts = NOW_MS - 1000
        batch.readings.append(
            Reading("car-gz-0001", "gz-b1", "vehicle", ts, None, {"lat": 23.1, "lon": 113.3, "ignition": True})
        )
        batch.counter("car-gz-0001").last_seen_ms = ts
        batch.readings.append(Reading("meter-gz-0001", "gz-jgj", "energy_meter", NOW_MS, None, {"energy_kwh": 1125.5}))
        batch.counter("meter-gz-0001").last_seen_ms = NOW_MS
        gateway.ctx.broadcaster.publish(batch)
        body = client.get("/overview").json()
        assert body["vehicles"] == {"total": 2, "in_use": 1}
        assert body["devices"]["by_type"]["vehicle"] == {"total": 2, "online": 1}
        assert body["energy"]["today_kwh"] == 125.5  # 119 + (1125.5 - 1119)
        gz = _walk(client.get("/regions", user="gz").json()["regions"])
        assert gz["gz-b1"]["devices"] == {"total": 3, "online": 1, "offline": 2, "disabled": 0}
        # the ignition goes off: still online, no longer in use
        off = WriteBatch()
        off.events.append(Event("car-gz-0001", "gz-b1", "vehicle", NOW_MS, None, "ignition_off", {}))
        off.counter("car-gz-0001").last_seen_ms = NOW_MS
        gateway.ctx.broadcaster.publish(off)
        assert client.get("/overview").json()["vehicles"] == {"total": 2, "in_use": 0}
        # 2.5 x 60 s after its last data the meter is offline; the car (30 s interval) long before
        now[0] = NOW + timedelta(seconds=151)
        body = client.get("/overview").json()
        assert body["devices"]["by_type"]["energy_meter"] == {"total": 1, "online": 0}
        assert body["devices"]["by_type"]["vehicle"]["online"] == 0
        assert body["devices"]["by_type"]["gate"]["online"] == 0  # gate-sz-0001 was last seen at NOW - 30 s
        tree = _walk(client.get("/regions").json()["regions"])
        assert tree["gd"]["devices"] == {"total": 6, "online": 0, "offline": 6, "disabled": 0}
        # the clock goes back: every device is judged again
        now[0] = NOW
        tree = _walk(client.get("/regions").json()["regions"])
        assert tree["gd"]["devices"]["online"] == 3  # the meter, the Guangzhou car, gate-sz-0001
        # an offline status after the last data turns the meter offline at once
        lwt = WriteBatch()
        lwt.statuses.append(Status("meter-gz-0001", "gz-jgj", NOW_MS + 1, "offline"))
        gateway.ctx.broadcaster.publish(lwt)
        assert client.get("/overview", region="gz-jgj").json()["devices"]["by_type"]["energy_meter"]["online"] == 0


def test_regions_pick_up_registry_changes_made_elsewhere(gateway: Gateway) -> None:
    reg = gateway.ctx.registry
    with TestClient(create_app(gateway.ctx)) as c:
        client = Client(c, gateway.tokens)
        assert _walk(client.get("/regions").json()["regions"])["gd"]["devices"]["disabled"] == 0
        reg.set_enabled("gate-sz-0001", False, now=NOW)  # as `lianfang devices disable` in another process
        reg.add_devices([DeviceSpec("sensor-sz-0001", "sensor", "sz-b1")], now=NOW)

        def sz() -> dict[str, int]:
            return dict(_walk(client.get("/regions").json()["regions"])["sz"]["devices"])

        # the incremental registry snapshot is looked at once a second
        wait_until(lambda: sz()["disabled"] == 1, 10, what="the registry change")
        assert sz() == {"total": 3, "online": 0, "offline": 2, "disabled": 1}
        assert client.get("/overview", user="sz").json()["devices"]["by_type"]["gate"] == {"total": 1, "online": 0}


def test_store_writes_elsewhere_are_picked_up_by_the_resync(gateway: Gateway) -> None:
    with TestClient(create_app(gateway.ctx)) as c:
        client = Client(c, gateway.tokens)
        assert client.get("/overview").json()["devices"]["by_type"]["gate"]["online"] == 1
        batch = WriteBatch()  # written by another process: no batch reaches this gateway's broadcaster
        batch.counter("gate-gz-0002").last_seen_ms = NOW_MS - 1000
        gateway.ctx.store.write(batch)
        assert client.get("/overview").json()["devices"]["by_type"]["gate"]["online"] == 1
        fleet = c.app.state.fleet  # type: ignore[attr-defined]
        fleet.resync_s = 0
        wait_until(
            lambda: client.get("/overview").json()["devices"]["by_type"]["gate"]["online"] == 2, 10, what="resync"
        )


def test_energy_baseline_from_the_previous_same_weekdays(gateway: Gateway) -> None:
    store = gateway.ctx.store
    batch = WriteBatch()
    # one week ago 2 kWh an hour, two weeks ago 3 kWh an hour, readings on the hour from 00:00 to 23:00
    for weeks, rate in ((1, 2.0), (2, 3.0)):
        start = TODAY - weeks * 7 * DAY_MS
        batch.readings.append(
            Reading("meter-gz-0001", "gz-jgj", "energy_meter", start - 30 * 60_000, None, {"energy_kwh": 500.0})
        )
        for h in range(24):
            value = 500.0 + rate * h
            batch.readings.append(
                Reading("meter-gz-0001", "gz-jgj", "energy_meter", start + h * HOUR_MS, None, {"energy_kwh": value})
            )
    store.write(batch)
    with TestClient(create_app(gateway.ctx)) as c:
        client = Client(c, gateway.tokens)
        # 16:00 Beijing: the last reading before 16:00 is 15:00's, so 30 and 45 kWh; their mean
        wait_until(lambda: client.get("/overview").json()["energy"]["baseline_kwh"] is not None, 10, what="baseline")
        assert client.get("/overview").json()["energy"]["baseline_kwh"] == 37.5
        assert client.get("/overview", user="sz").json()["energy"]["baseline_kwh"] is None  # no meter there


def test_pure_helpers() -> None:
    assert moving_of({"ignition": True}) is True
    assert moving_of({"ignition": False, "speed_kmh": 0}) is False
    assert moving_of({"ignition": False, "speed_kmh": 12.5}) is True
    assert moving_of({"lat": 1.0, "lon": 2.0}) is None
    assert beijing_day(TODAY) == beijing_day(TODAY + DAY_MS - 1) == beijing_day(TODAY - 1) + 1
    start = 10 * DAY_MS
    # a reset at 02:00 (10 -> 1) counts from zero
    prof = hourly_profile(
        [(start - HOUR_MS, 5.0), (start, 7.0), (start + HOUR_MS, 10.0), (start + 2 * HOUR_MS, 1.0)], start
    )
    assert prof is not None
    assert prof[:4] == [0.0, 2.0, 5.0, 6.0]
    assert prof[24] == 6.0
    assert hourly_profile([(start - HOUR_MS, 5.0)], start) is None
    profiles: dict[str, list[list[float] | None]] = {
        "a": [[float(h) for h in range(25)], None, [2.0 * h for h in range(25)], None],
        "b": [None] * 4,
    }
    assert baseline_at(profiles, ["a", "b"], 90 * 60_000) == (1.5 + 3.0) / 2
    assert baseline_at(profiles, ["b"], 0) is None


def _walk(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n in nodes:
        out[n["id"]] = n
        out.update(_walk(n["children"]))
    return out


def test_alert_counts_follow_changes_within_the_cache_age(client: Client, gateway: Gateway) -> None:
    assert client.get("/overview").json()["alerts"]["by_severity"]["info"] == 0
    with Session(gateway.ctx.registry.engine) as s, s.begin():
        s.add(_alert(9, "gate-gz-0001", "/gd/gz/gz-jgj/gz-b1/", "info", "firing"))
    wait_until(lambda: client.get("/overview").json()["alerts"]["by_severity"]["info"] == 1, 5, what="2 s cache")
    assert client.get("/overview", user="sz").json()["alerts"]["by_severity"]["info"] == 0


def test_count_cache_is_dropped_on_a_change() -> None:
    from gateway.routes.overview import CountCache

    calls = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"major": len(calls)}

    cache = CountCache(max_age_s=60)
    assert cache.get(("alerts", None), compute) == {"major": 1}
    assert cache.get(("alerts", None), compute) == {"major": 1}  # cached
    assert cache.get(("alerts", "gz"), compute) == {"major": 2}  # per scope
    cache.clear([])  # the alert service stored a change
    assert cache.get(("alerts", None), compute) == {"major": 3}


def test_warm_start_builds_the_counts_off_the_request_path(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's app (``warm_fleet``) builds the fleet index in the background at start-up: the first overview and
    region-tree requests find it ready and never read every device on their own thread."""
    import threading

    from gateway.fleet import FleetIndex

    builders: list[str] = []
    real_build = FleetIndex.build

    def build(self: FleetIndex) -> None:
        builders.append(threading.current_thread().name)
        real_build(self)

    monkeypatch.setattr(FleetIndex, "build", build)
    gateway.ctx.warm_fleet = True
    app = create_app(gateway.ctx)
    with TestClient(app) as c:
        wait_until(lambda: getattr(app.state, "fleet", None) is not None, 30, what="the start-up build")
        client = Client(c, gateway.tokens)
        first = client.get("/overview")
        assert first.status_code == 200, first.text
        assert first.json()["devices"]["by_type"]["gate"] == {"total": 3, "online": 1}
        assert client.get("/regions").status_code == 200
    assert builders == ["fleet-build"]


def test_a_request_during_the_start_up_build_waits_for_it(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that comes while the start-up build still runs waits for that build (it does not start its own);
    one that outlasts ``WARM_WAIT_S`` is a 503 with Retry-After."""
    import threading

    from gateway import fleet

    release = threading.Event()
    builders: list[str] = []
    real_build = fleet.FleetIndex.build

    def slow_build(self: fleet.FleetIndex) -> None:
        builders.append(threading.current_thread().name)
        release.wait(30)
        real_build(self)

    monkeypatch.setattr(fleet.FleetIndex, "build", slow_build)
    monkeypatch.setattr(fleet, "WARM_WAIT_S", 0.2)
    gateway.ctx.warm_fleet = True
    app = create_app(gateway.ctx)
    with TestClient(app) as c:
        client = Client(c, gateway.tokens)
        busy = client.get("/overview")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2", busy.text
        release.set()
        wait_until(lambda: client.get("/overview").status_code == 200, 30, what="the overview after the build")
    assert builders == ["fleet-build"]


def test_region_tree_is_built_once_per_index_version(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated and concurrent tree requests of one scope share one build while nothing counted changed; a batch
    that changes what the tree counts (a device coming online) makes the next request build it again."""
    from gateway.routes import regions as regions_route

    builds: list[str | None] = []
    real = regions_route.build_tree

    def counting(rows: Any, counts: Any, principal: Any) -> Any:
        builds.append(principal.region_id)
        return real(rows, counts, principal)

    monkeypatch.setattr(regions_route, "build_tree", counting)
    with TestClient(create_app(gateway.ctx)) as c:
        client = Client(c, gateway.tokens)
        first = client.get("/regions").json()
        assert client.get("/regions").json() == first
        client.get("/regions", user="gz")
        client.get("/regions", user="gz")
        assert builds == [None, "gz"]
        heartbeat = WriteBatch()  # a device already online reports again: nothing the tree counts changes
        heartbeat.counter("gate-sz-0001").last_seen_ms = NOW_MS - 1000
        gateway.ctx.broadcaster.publish(heartbeat)
        client.get("/regions")
        assert builds == [None, "gz"]
        online = WriteBatch()  # the stale Guangzhou gate comes back
        online.counter("gate-gz-0001").last_seen_ms = NOW_MS - 1000
        gateway.ctx.broadcaster.publish(online)
        after = _walk(client.get("/regions").json()["regions"])
        assert builds == [None, "gz", None]
        assert after["gz-b1"]["devices"]["online"] == 1


def test_an_engine_part_without_counters_still_brings_a_device_online(gateway: Gateway) -> None:
    """In ``serve`` the stream's batches are the engine's parts (ingest/forward.py), which carry no counters: the
    readings' own times (at most now) stand in for last seen, so the tiles follow at once, not at the resync."""
    with TestClient(create_app(gateway.ctx)) as c:
        client = Client(c, gateway.tokens)
        assert client.get("/overview").json()["devices"]["by_type"]["gate"] == {"total": 3, "online": 1}
        part = WriteBatch()  # no counters
        part.readings.append(Reading("gate-gz-0002", "gz-b1", "gate", NOW_MS - 1000, None, {"door_open": False}))
        part.events.append(Event("gate-gz-0001", "gz-b1", "gate", NOW_MS + 3_600_000, None, "access", {}))  # future
        gateway.ctx.broadcaster.publish(part)
        assert client.get("/overview").json()["devices"]["by_type"]["gate"] == {"total": 3, "online": 3}
        fleet = c.app.state.fleet  # type: ignore[attr-defined]
        assert fleet._devs["gate-gz-0001"].last_seen_ms == NOW_MS  # a device's future clock is taken as now


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=99),  # which device of the fixture's fleet
            st.sampled_from(["data", "ignition_on", "ignition_off", "offline", "kwh", "no_counters", "clock"]),
            st.integers(min_value=-200, max_value=200),  # seconds from NOW
        ),
        max_size=25,
    )
)
def test_incremental_counts_equal_a_recount_after_any_batches(gateway: Gateway, steps: list[Any]) -> None:
    """Batches only recount a device whose counted state changed (fast path): the counts must still equal the
    ones computed afresh from every device, whatever the batches and the clock do."""
    now = [NOW]
    gateway.ctx.clock = lambda: now[0]
    with TestClient(create_app(gateway.ctx)) as c:
        Client(c, gateway.tokens).get("/overview")  # builds the index
        fleet = c.app.state.fleet  # type: ignore[attr-defined]
        kwh = 1200.0
        devices = sorted(fleet._devs)
        for which, what, dt in steps:
            dev_id = devices[which % len(devices)]
            ts = NOW_MS + dt * 1000
            info = fleet._devs[dev_id]
            b = WriteBatch()
            if what == "clock":
                now[0] = NOW + timedelta(seconds=dt + 200)
                fleet.advance(int(now[0].timestamp() * 1000))
                continue
            if what in ("ignition_on", "ignition_off"):
                b.events.append(Event(dev_id, info.region_id, info.type, ts, None, what, {}))
            elif what == "offline":
                b.statuses.append(Status(dev_id, info.region_id, ts, "offline"))
            elif what == "kwh":
                kwh += 1.5
                b.readings.append(Reading(dev_id, info.region_id, info.type, ts, None, {"energy_kwh": kwh}))
            else:
                b.readings.append(Reading(dev_id, info.region_id, info.type, ts, None, {"speed_kmh": 10.0}))
            if what != "no_counters":
                b.counter(dev_id).last_seen_ms = ts
            fleet.on_batch(b)
            counts, energy = fleet.recount()
            assert fleet._counts == counts, (dev_id, what, dt)
            assert fleet._energy == energy
