"""Sample data for the demo: a small region tree (``regions.yaml``) and a fleet of devices generated for it.

    from devices.sample import SAMPLE_REGIONS_FILE, demo_device_specs, sample_regions

    registry.upsert_regions(sample_regions(), now=now)
    registry.add_devices(demo_device_specs(sample_regions()), now=now)

Device ids drop the province code and follow the region codes: ``gate-gz-a01-b1-01`` (gate 1 of building b1 of
agency a01 in Guangzhou), ``meter-gz-a01-b1-01`` (its main meter; the others are sub-meters of it),
``sensor-gz-a01-b1-01``, ``car-gz-a01-03`` (vehicle 3 of the agency, based at its first building).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from devices.imports import read_region_file
from devices.registry import DeviceSpec, RegionSpec

SAMPLE_REGIONS_FILE = Path(__file__).with_name("regions.yaml")

# Licence-plate prefix per city code (粤A Guangzhou, 粤B Shenzhen).
_PLATE_LETTER = {"gz": "A", "sz": "B"}


class RegionLike(Protocol):
    """A region as the generator needs it: a RegionSpec or a registry Region row both fit."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def level(self) -> str: ...

    @property
    def parent_id(self) -> str | None: ...


def sample_regions() -> list[RegionSpec]:
    """The sample region tree, parents before children."""
    return [row.spec for row in read_region_file(SAMPLE_REGIONS_FILE)]


def demo_device_specs(
    regions: Sequence[RegionLike], *, per_building: int = 20, vehicles_per_agency: int = 10
) -> list[DeviceSpec]:
    """Devices for every building and agency of ``regions``.

    Each building gets ``per_building`` devices: half of them gates, one in ten a sensor (at least one), the rest
    energy meters (the first one the building's main meter). Each agency gets ``vehicles_per_agency`` official
    vehicles based at its first building. The result is deterministic: the same regions give the same devices.
    """
    if per_building < 3:
        raise ValueError("per_building must be at least 3 (a gate, a meter and a sensor)")
    if vehicles_per_agency < 0:
        raise ValueError("vehicles_per_agency must not be negative")
    by_id = {r.id: r for r in regions}
    children: dict[str, list[RegionLike]] = {}
    for r in regions:
        if r.parent_id is not None:
            children.setdefault(r.parent_id, []).append(r)
    gates = per_building // 2
    sensors = max(1, per_building // 10)
    meters = per_building - gates - sensors
    specs: list[DeviceSpec] = []
    for agency_index, agency in enumerate(sorted((r for r in regions if r.level == "agency"), key=lambda r: r.id), 1):
        code = _short_code(agency, by_id)
        buildings = sorted((c for c in children.get(agency.id, []) if c.level == "building"), key=lambda r: r.id)
        for building in buildings:
            bcode = _short_code(building, by_id)
            for n in range(1, gates + 1):
                specs.append(DeviceSpec(f"gate-{bcode}-{n:02d}", "gate", building.id, f"{building.name} {n}号门禁"))
            main = f"meter-{bcode}-01"
            for n in range(1, meters + 1):
                if n == 1:
                    name, attrs = f"{building.name} 总电表", {"role": "main"}
                else:
                    name, attrs = f"{building.name} 分项电表{n - 1}", {"role": "sub", "parent_meter": main}
                specs.append(DeviceSpec(f"meter-{bcode}-{n:02d}", "energy_meter", building.id, name, None, attrs))
            for n in range(1, sensors + 1):
                specs.append(
                    DeviceSpec(
                        f"sensor-{bcode}-{n:02d}",
                        "sensor",
                        building.id,
                        f"{building.name} 温湿度传感器{n}",
                        None,
                        {"kind": "temperature_humidity"},
                    )
                )
        city = code.split("-", 1)[0]
        letter = _PLATE_LETTER.get(city, "X")
        depot = buildings[0].id if buildings else None
        places = vehicle_places(agency.id, by_id)
        for n in range(1, vehicles_per_agency + 1):
            plate = f"粤{letter}G{agency_index % 10}{n:03d}"
            attrs = {"plate": plate, **({"depot_building": depot} if depot else {}), **places}
            specs.append(
                DeviceSpec(f"car-{code}-{n:02d}", "vehicle", agency.id, f"{agency.name} 公务车 {plate}", None, attrs)
            )
    return specs


def vehicle_places(region_id: str, by_id: Mapping[str, RegionLike]) -> dict[str, Any]:
    """A vehicle's ``depot`` (100 m around where the simulator parks it: its region's coordinates or the nearest
    located ancestor's) and overnight ``lot`` (a square of about 220 m around it), for rules V2 and V13; none when
    no region up the tree is located."""
    current: str | None = region_id
    while current is not None and current in by_id:
        r = by_id[current]
        lat, lon = getattr(r, "lat", None), getattr(r, "lon", None)
        if lat is not None and lon is not None:
            d = 0.001
            lot = [[round(lat + a, 6), round(lon + b, 6)] for a, b in ((-d, -d), (d, -d), (d, d), (-d, d))]
            return {"depot": {"lat": lat, "lon": lon, "radius_m": 100}, "lot": lot}
        current = r.parent_id
    return {}


def _short_code(region: RegionLike, by_id: dict[str, RegionLike]) -> str:
    """The region code without its province prefix: gd-gz-a01-b1 -> gz-a01-b1."""
    root = region
    while root.parent_id is not None and root.parent_id in by_id:
        root = by_id[root.parent_id]
    if root.id != region.id and region.id.startswith(root.id + "-"):
        return region.id[len(root.id) + 1 :]
    return region.id
