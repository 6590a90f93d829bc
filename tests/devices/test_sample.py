from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime

from alerts.kinds_vehicle import place_problems
from core.protocol import DEVICE_ID_RE, DEVICE_TYPES
from devices.registry import Registry
from devices.sample import demo_device_specs, sample_regions

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_sample_tree_has_one_two_six_twelve_regions_per_level() -> None:
    regions = sample_regions()
    assert Counter(r.level for r in regions) == {"province": 1, "city": 2, "agency": 6, "building": 12}
    by_id = {r.id: r for r in regions}
    assert by_id["gd"].name == "广东省"
    assert {r.id: r.name for r in regions if r.level == "city"} == {"gd-gz": "广州市", "gd-sz": "深圳市"}
    # three agencies per city, two buildings per agency, all with coordinates near their city
    per_parent = Counter(r.parent_id for r in regions)
    assert all(per_parent[a.id] == 2 for a in regions if a.level == "agency")
    assert per_parent["gd-gz"] == per_parent["gd-sz"] == 3
    for b in (r for r in regions if r.level == "building"):
        city = by_id[by_id[b.parent_id or ""].parent_id or ""]
        assert b.lat is not None and b.lon is not None and city.lat is not None and city.lon is not None
        assert abs(b.lat - city.lat) < 0.1 and abs(b.lon - city.lon) < 0.1, b.id


def test_sample_tree_imports_into_the_registry(registry: Registry) -> None:
    regions = sample_regions()
    assert registry.upsert_regions(regions, now=NOW) == (21, 0)
    assert len(registry.subtree_ids("gd-sz")) == 1 + 3 + 6
    devices = demo_device_specs(registry.regions())  # registry rows work as input too
    assert registry.add_devices(devices, now=NOW) == (len(devices), 0)
    _page, total = registry.devices(region_ids=registry.subtree_ids("gd-gz-a01"))
    assert total == len([d for d in devices if d.region_id.startswith("gd-gz-a01")])


def test_demo_device_specs_are_a_few_hundred_well_formed_devices() -> None:
    regions = sample_regions()
    specs = demo_device_specs(regions)
    ids = [s.id for s in specs]
    assert 200 <= len(specs) <= 500
    assert len(set(ids)) == len(ids)
    assert all(DEVICE_ID_RE.match(i) for i in ids)
    assert {s.type for s in specs} == set(DEVICE_TYPES)
    levels = {r.id: r.level for r in regions}
    for s in specs:
        assert levels[s.region_id] == ("agency" if s.type == "vehicle" else "building"), s
    assert {"gate-gz-a01-b1-01", "car-gz-a01-03", "meter-gz-a01-b1-01", "sensor-sz-a03-b2-01"} <= set(ids)
    assert all(re.match(r"^car-(gz|sz)-a0[1-3]-\d\d$", s.id) for s in specs if s.type == "vehicle")
    sub = next(s for s in specs if s.id == "meter-gz-a01-b1-02")
    assert sub.attributes == {"role": "sub", "parent_meter": "meter-gz-a01-b1-01"}
    car = next(s for s in specs if s.id == "car-sz-a02-01")
    assert car.attributes is not None and car.attributes["depot_building"] == "gd-sz-a02-b1"
    assert place_problems(car.attributes) == []  # depot and lot for V2 / V13 (alerts/kinds_vehicle.py)
    assert set(car.attributes) == {"plate", "depot_building", "depot", "lot"}
    assert str(car.attributes["plate"]).startswith("粤B")


def test_demo_device_specs_scale_with_per_building() -> None:
    regions = sample_regions()
    small = demo_device_specs(regions, per_building=4, vehicles_per_agency=1)
    assert len(small) == 12 * 4 + 6 * 1
    assert demo_device_specs(regions) == demo_device_specs(regions)  # deterministic
