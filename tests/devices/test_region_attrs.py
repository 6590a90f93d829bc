"""Region attributes (devices/region_attrs.py): validation, the YAML import with line numbers, storage on SQLite and
PostgreSQL, tariffs by time of day, inheritance down the tree."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.imports import ImportProblems, import_regions
from devices.region_attrs import BadAttribute, Tariff, check_attribute, inherited
from devices.registry import RegionSpec, Registry

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)

TREE = """\
regions:
  - id: gd
    name: 广东省
    level: province
    attributes:
      tariff: {flat: 0.65}
    children:
      - id: gd-gz
        name: 广州市
        level: city
        attributes:
          tariff:
            periods:
              - {from: 08:00, to: 22:00, price: 1.1}
              - {from: "22:00", to: "08:00", price: 0.4}
        children:
          - id: gd-gz-a01
            name: 市机关事务局
            level: agency
            attributes:
              headcount: 120
              floor_area_m2: 8000
              quota_kwh_per_capita_month: 150
              quota_kwh_per_m2_month: 2.5
            children:
              - id: gd-gz-a01-b1
                name: 一号楼
                attributes: {contracted_kw: 400}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "regions.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_import_stores_attributes_and_is_idempotent(registry: Registry, tmp_path: Path) -> None:
    path = _write(tmp_path, TREE)
    first = import_regions(registry, path, now=NOW)
    assert len(first.created) == 4
    agency = registry.region("gd-gz-a01")
    assert agency is not None
    assert agency.attributes == {
        "headcount": 120,
        "floor_area_m2": 8000.0,
        "quota_kwh_per_capita_month": 150.0,
        "quota_kwh_per_m2_month": 2.5,
    }
    city = registry.region("gd-gz")
    assert city is not None
    assert city.attributes["tariff"]["periods"][0] == {"from": "08:00", "to": "22:00", "price": 1.1}
    again = import_regions(registry, path, now=NOW)
    assert (len(again.created), len(again.updated), len(again.unchanged)) == (0, 0, 4)
    # A changed attribute updates that region only.
    import_regions(registry, _write(tmp_path, TREE.replace("contracted_kw: 400", "contracted_kw: 500")), now=NOW)
    building = registry.region("gd-gz-a01-b1")
    assert building is not None and building.attributes == {"contracted_kw": 500.0}


def test_regions_without_attributes_keep_the_stored_ones(registry: Registry, tmp_path: Path) -> None:
    import_regions(registry, _write(tmp_path, TREE), now=NOW)
    registry.upsert_regions([RegionSpec("gd-gz", "广州", "city", "gd")], now=NOW)  # attributes not given
    city = registry.region("gd-gz")
    assert city is not None and "tariff" in city.attributes
    registry.upsert_regions([RegionSpec("gd-sz", "深圳市", "city", "gd")], now=NOW)
    new = registry.region("gd-sz")
    assert new is not None and new.attributes == {}


def test_bad_attributes_name_their_lines(sqlite_registry: Registry, tmp_path: Path) -> None:
    text = """\
regions:
  - id: gd
    name: 广东省
    level: province
    attributes:
      headcount: 12.5
      floor_area: 100
      contracted_kw: -3
      tariff:
        periods:
          - {from: "08:00", to: "22:00", price: 1.1}
"""
    with pytest.raises(ImportProblems) as exc:
        import_regions(sqlite_registry, _write(tmp_path, text), now=NOW)
    by_line = {p.line: p.message for p in exc.value.problems}
    assert "headcount" in by_line[6] and "whole number" in by_line[6]
    assert "unknown attribute" in by_line[7]
    assert "more than 0" in by_line[8]
    assert "00:00-08:00 uncovered" in by_line[9]
    assert sqlite_registry.regions() == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"flat": -1}, "0 or more"),
        ({"flat": 1, "periods": []}, "must be {flat"),
        (
            {"periods": [{"from": "00:00", "to": "24:00", "price": 1}, {"from": "08:00", "to": "09:00", "price": 2}]},
            "overlap",
        ),
        ({"periods": [{"from": "8h", "to": "24:00", "price": 1}]}, "HH:MM"),
        ({"periods": [{"from": "08:00", "to": "08:00", "price": 1}]}, "not a period"),
    ],
)
def test_bad_tariffs(value: object, message: str) -> None:
    with pytest.raises(BadAttribute, match=message):
        check_attribute("tariff", value)


def test_time_of_use_prices_by_hour() -> None:
    tariff = Tariff.of(
        check_attribute(
            "tariff",
            {
                "periods": [
                    {"from": "08:30", "to": "22:00", "price": 1.2},
                    {"from": "22:00", "to": "08:30", "price": 0.4},
                ]
            },
        )
    )
    prices = tariff.hourly_prices()
    assert prices[3] == pytest.approx(0.4)
    assert prices[8] == pytest.approx(0.8)  # half an hour at 0.4, half at 1.2
    assert prices[12] == pytest.approx(1.2)
    assert prices[22] == pytest.approx(0.4)
    assert Tariff.of({"flat": 0.65}).hourly_prices() == pytest.approx((0.65,) * 24)


@given(st.lists(st.integers(1, 23), min_size=2, max_size=6, unique=True), st.floats(0, 5))
def test_any_partition_of_the_day_is_a_valid_tariff(cuts: list[int], price: float) -> None:
    bounds = sorted(cuts)
    edges = [*bounds, bounds[0] + 24]
    periods = [
        {"from": f"{a % 24:02d}:00", "to": f"{b % 24:02d}:00", "price": price} for a, b in itertools.pairwise(edges)
    ]
    tariff = Tariff.of(check_attribute("tariff", {"periods": periods}))
    assert sum(end - start for start, end, _ in tariff.spans) == 24 * 60
    assert all(p == pytest.approx(price) for p in tariff.hourly_prices())


def test_inherited_takes_the_nearest() -> None:
    chain = [{"contracted_kw": 400.0}, None, {"tariff": {"flat": 0.5}}, {"tariff": {"flat": 0.9}}]
    assert inherited("tariff", chain) == {"flat": 0.5}
    assert inherited("contracted_kw", chain) == 400.0
    assert inherited("headcount", chain) is None


# --- device CSV: the energy meters' attribute columns ----------------------------------------------------------


def test_device_csv_sets_and_removes_meter_attributes(sqlite_registry: Registry, tmp_path: Path) -> None:
    from devices.imports import import_devices

    reg = sqlite_registry
    import_regions(reg, _write(tmp_path, TREE), now=NOW)
    csv = tmp_path / "devices.csv"
    csv.write_text(
        "id,type,region_id,parent_meter,contracted_kw\n"
        "em-main,energy_meter,gd-gz-a01-b1,,450\n"
        "em-sub-1,energy_meter,gd-gz-a01-b1,em-main,\n",
        encoding="utf-8",
    )
    first = import_devices(reg, csv, now=NOW)
    assert sorted(first.created) == ["em-main", "em-sub-1"]
    main, sub = reg.device("em-main"), reg.device("em-sub-1")
    assert main is not None and main.attributes == {"contracted_kw": 450.0}
    assert sub is not None and sub.attributes == {"parent_meter": "em-main"}
    assert import_devices(reg, csv, now=NOW).unchanged == ["em-main", "em-sub-1"]
    # an empty cell removes the attribute; a file without the column keeps it
    csv.write_text("id,type,region_id,contracted_kw\nem-main,energy_meter,gd-gz-a01-b1,\n", encoding="utf-8")
    assert import_devices(reg, csv, now=NOW).updated == ["em-main"]
    main = reg.device("em-main")
    assert main is not None and main.attributes == {}
    csv.write_text("id,type,region_id\nem-sub-1,energy_meter,gd-gz-a01-b1\n", encoding="utf-8")
    assert import_devices(reg, csv, now=NOW).unchanged == ["em-sub-1"]


def test_device_csv_bad_meter_attributes_name_their_lines(sqlite_registry: Registry, tmp_path: Path) -> None:
    from devices.imports import import_devices

    import_regions(sqlite_registry, _write(tmp_path, TREE), now=NOW)
    csv = tmp_path / "devices.csv"
    csv.write_text(
        "id,type,region_id,parent_meter,contracted_kw\n"
        "gate-0001,gate,gd-gz-a01-b1,,100\n"
        "em-0001,energy_meter,gd-gz-a01-b1,em-0001,\n"
        "em-0002,energy_meter,gd-gz-a01-b1,,lots\n"
        "em-0003,energy_meter,gd-gz-a01-b1,,-5\n",
        encoding="utf-8",
    )
    with pytest.raises(ImportProblems) as exc:
        import_devices(sqlite_registry, csv, now=NOW)
    by_line = {p.line: p.message for p in exc.value.problems}
    assert "energy meters only" in by_line[2]
    assert "another meter's id" in by_line[3]
    assert "not a number" in by_line[4]
    assert "more than 0" in by_line[5]
