from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import UserError
from devices.imports import (
    DeviceRow,
    ImportProblems,
    check_devices,
    import_devices,
    import_regions,
    plan_devices,
    read_region_file,
)
from devices.registry import DeviceSpec, Registry
from devices.sample import SAMPLE_REGIONS_FILE

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
HEADER = "id,type,region_id,name,expected_interval_s\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _lines(exc: pytest.ExceptionInfo[ImportProblems]) -> dict[int | None, str]:
    return {p.line: p.message for p in exc.value.problems}


# --- regions -----------------------------------------------------------------------------------------------


def test_import_regions_sample_is_idempotent(registry: Registry) -> None:
    first = import_regions(registry, SAMPLE_REGIONS_FILE, now=NOW)
    assert (len(first.created), len(first.updated), len(first.unchanged)) == (21, 0, 0)
    again = import_regions(registry, SAMPLE_REGIONS_FILE, now=NOW)
    assert (len(again.created), len(again.updated), len(again.unchanged)) == (0, 0, 21)
    assert registry.ancestors("gd-sz-a03-b2") == ["gd", "gd-sz", "gd-sz-a03", "gd-sz-a03-b2"]


def test_import_regions_flat_yaml_with_inferred_and_updated_fields(sqlite_registry: Registry, tmp_path: Path) -> None:
    flat = _write(
        tmp_path,
        "flat.yaml",
        "- {id: zj, name: 浙江省, level: province}\n"
        "- {id: zj-hz, name: 杭州市, level: city, parent_id: zj, lat: 30.27, lon: 120.15}\n"
        "- id: zj-hz-a01\n"
        "  name: 杭州市机关事务管理局\n"
        "  parent_id: zj-hz\n"
        "  level: agency\n"
        "  children:\n"
        "    - {id: zj-hz-a01-b1, name: 一号楼}\n",  # level inferred from the parent: building
    )
    report = import_regions(sqlite_registry, flat, now=NOW)
    assert sorted(report.created) == ["zj", "zj-hz", "zj-hz-a01", "zj-hz-a01-b1"]
    building = sqlite_registry.region("zj-hz-a01-b1")
    assert building is not None and building.level == "building" and building.parent_id == "zj-hz-a01"
    renamed = _write(tmp_path, "renamed.yaml", "regions:\n  - {id: zj-hz, name: 杭州, level: city, parent_id: zj}\n")
    report = import_regions(sqlite_registry, renamed, now=NOW)
    assert report.updated == ["zj-hz"] and not report.created
    region = sqlite_registry.region("zj-hz")
    assert region is not None and region.name == "杭州" and region.lat is None


def test_import_regions_yaml_problems_name_line_and_field_path(sqlite_registry: Registry, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bad.yaml",
        "regions:\n"  # 1
        "  - id: gd\n"  # 2
        "    name: 广东省\n"  # 3
        "    level: province\n"  # 4
        "    children:\n"  # 5
        "      - id: gd-gz\n"  # 6
        "        name: 广州市\n"  # 7
        "        lat: north\n"  # 8
        "        colour: red\n"  # 9
        "      - id: GD_SZ\n"  # 10
        "        name: 深圳市\n"  # 11
        "  - {id: xx, name: 某地, level: town}\n"  # 12
        "  - {id: yy, name: 某楼, level: building, parent_id: nowhere}\n",  # 13
    )
    with pytest.raises(ImportProblems) as exc:
        import_regions(sqlite_registry, path, now=NOW)
    lines = _lines(exc)
    assert "regions[0].children[0].lat: 'north' is not a number" in lines[8]
    assert "regions[0].children[0].colour: unknown field" in lines[9]
    assert "regions[0].children[1].id: 'GD_SZ' is not a valid region id" in lines[10]
    assert "regions[1].level: 'town' is not one of" in lines[12]
    assert all(str(p).startswith(f"{path}:") for p in exc.value.problems)
    assert sqlite_registry.regions() == []  # nothing half-applied


def test_import_regions_cross_checks_parents_levels_and_duplicates(sqlite_registry: Registry, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cross.yaml",
        "- {id: gd, name: 广东省, level: province}\n"
        "- {id: gd-gz, name: 广州市, level: city, parent_id: gd}\n"
        "- {id: gd-gz, name: 广州, level: city, parent_id: gd}\n"
        "- {id: gd-x, name: X, level: province, parent_id: gd-gz}\n"
        "- {id: gd-y, name: Y, level: building, parent_id: gd-nowhere}\n",
    )
    with pytest.raises(ImportProblems) as exc:
        import_regions(sqlite_registry, path, now=NOW)
    lines = _lines(exc)
    assert "listed twice (first on line 2)" in lines[3]
    assert "a province cannot sit under gd-gz" in lines[4]
    assert "parent_id 'gd-nowhere': no such region" in lines[5]
    assert sqlite_registry.regions() == []


def test_import_regions_csv_rows_named_by_line(sqlite_registry: Registry, tmp_path: Path) -> None:
    good = _write(
        tmp_path,
        "regions.csv",
        "\ufeffid,name,level,parent_id,lat,lon\n"  # Excel's byte-order mark is accepted
        "gd,广东省,province,,,\n"
        "gd-gz,广州市,city,gd,23.13,113.26\n",
    )
    assert sorted(import_regions(sqlite_registry, good, now=NOW).created) == ["gd", "gd-gz"]
    bad = _write(
        tmp_path,
        "bad.csv",
        "id,name,level,parent_id,lat,lon\ngd-sz,深圳市,city,gd,22.5,114.0\ngd-fs,佛山市,city,gd,95,113\ngd-zh,,city,gd,,\n",
    )
    with pytest.raises(ImportProblems) as exc:
        import_regions(sqlite_registry, bad, now=NOW)
    lines = _lines(exc)
    assert set(lines) == {3, 4}
    assert "lat: 95.0 is outside -90..90" in lines[3]
    assert "name: is required" in lines[4]
    assert sqlite_registry.region("gd-sz") is None


def test_read_region_file_rejects_bad_header_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ImportProblems, match=r"bad\.csv:1: bad header: missing column\(s\) level"):
        read_region_file(_write(tmp_path, "bad.csv", "id,name,parent\ngd,广东省,\n"))
    with pytest.raises(UserError, match=r"unknown file type '\.txt'"):
        read_region_file(_write(tmp_path, "regions.txt", "gd"))
    with pytest.raises(ImportProblems, match=r"broken\.yaml:3: not valid YAML"):
        read_region_file(_write(tmp_path, "broken.yaml", "regions:\n  - id: gd\n    name: a: b\n"))


# --- devices -----------------------------------------------------------------------------------------------


def test_check_devices_names_every_bad_row() -> None:
    rows = [
        DeviceRow("gate-gz-0001", "gate", "gd-gz", 2),
        DeviceRow("Gate_1", "gate", "gd-gz", 3),
        DeviceRow("gate-gz-0003", "toaster", "gd-gz", 4),
        DeviceRow("gate-gz-0004", "gate", "gd-nowhere", 5),
        DeviceRow("gate-gz-0005", "gate", "gd-gz", 6),
        DeviceRow("gate-gz-0005", "gate", "gd-gz", 7),
        DeviceRow("gate-gz-0008", "gate", "gd-gz", 8, expected_interval_s=0, given=frozenset({"expected_interval_s"})),
    ]
    good, problems = check_devices(rows, {"gd-gz"}, "f.csv")
    assert [r.line for r in good] == [2]
    by_line = {p.line: p.message for p in problems}
    assert set(by_line) == {3, 4, 5, 6, 7, 8}
    assert "id 'Gate_1' is not well formed" in by_line[3]
    assert "type 'toaster' is not one of" in by_line[4]
    assert "region 'gd-nowhere' does not exist" in by_line[5]
    assert "appears more than once (lines 6, 7)" in by_line[6] and by_line[6] == by_line[7]
    assert "positive" in by_line[8]


def test_plan_devices_keeps_fields_not_given_and_counts_unchanged() -> None:
    existing = {
        "gate-gz-0001": DeviceSpec("gate-gz-0001", "gate", "gd-gz", "东门", 30, {"door": "east"}),
        "gate-gz-0002": DeviceSpec("gate-gz-0002", "gate", "gd-gz", "西门", None, {}),
    }
    plan = plan_devices(
        [
            DeviceRow("gate-gz-0001", "gate", "gd-gz"),  # name/interval not given: keep them
            DeviceRow("gate-gz-0002", "gate", "gd-sz"),  # moved
            DeviceRow("gate-gz-0003", "gate", "gd-gz", name="北门", given=frozenset({"name"})),
        ],
        existing,
    )
    assert (plan.created, plan.updated, plan.unchanged) == (["gate-gz-0003"], ["gate-gz-0002"], ["gate-gz-0001"])
    moved = next(s for s in plan.to_write if s.id == "gate-gz-0002")
    assert moved.name == "西门" and moved.region_id == "gd-sz"


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, created_ids: Sequence[str], updated_ids: Sequence[str]) -> None:
        self.calls.append((sorted(created_ids), sorted(updated_ids)))


def test_import_devices_all_or_nothing_idempotent_and_hook(registry: Registry, tmp_path: Path) -> None:
    import_regions(registry, SAMPLE_REGIONS_FILE, now=NOW)
    hook = _Recorder()
    bad = _write(tmp_path, "bad.csv", HEADER + "gate-gz-0001,gate,gd-gz-a01-b1,东门,\ngate-gz-0002,gate,gd-xx,,\n")
    with pytest.raises(ImportProblems) as exc:
        import_devices(registry, bad, now=NOW, on_written=hook)
    assert [str(p) for p in exc.value.problems] == [
        f"{bad}:3: region 'gd-xx' does not exist (import it first with `lianfang regions import`)"
    ]
    assert registry.devices()[1] == 0 and hook.calls == []

    good = _write(
        tmp_path, "good.csv", HEADER + "gate-gz-0001,gate,gd-gz-a01-b1,东门,\ncar-gz-a01-01,vehicle,gd-gz-a01,,45\n"
    )
    report = import_devices(registry, good, now=NOW, on_written=hook)
    assert (sorted(report.created), report.updated, report.unchanged) == (["car-gz-a01-01", "gate-gz-0001"], [], [])
    again = import_devices(registry, good, now=NOW, on_written=hook)
    assert (again.created, again.updated, sorted(again.unchanged)) == ([], [], ["car-gz-a01-01", "gate-gz-0001"])
    changed = _write(tmp_path, "changed.csv", HEADER + "gate-gz-0001,gate,gd-gz-a01-b1,东门(新),\n")
    assert import_devices(registry, changed, now=NOW, on_written=hook).updated == ["gate-gz-0001"]
    # the hook hears about writes only, never about unchanged re-runs
    assert hook.calls == [(["car-gz-a01-01", "gate-gz-0001"], []), ([], ["gate-gz-0001"])]
    car = registry.device("car-gz-a01-01")
    assert car is not None and car.expected_interval_s == 45


def test_import_devices_skip_invalid_and_dry_run(sqlite_registry: Registry, tmp_path: Path) -> None:
    import_regions(sqlite_registry, SAMPLE_REGIONS_FILE, now=NOW)
    path = _write(
        tmp_path,
        "mixed.csv",
        HEADER + "gate-gz-0001,gate,gd-gz-a01-b1,,\nx,gate,gd-gz-a01-b1,,\ngate-gz-0003,gate,gd,,abc\n",
    )
    dry = import_devices(sqlite_registry, path, now=NOW, dry_run=True, skip_invalid=True)
    assert dry.created == ["gate-gz-0001"] and [p.line for p in dry.skipped] == [3, 4]
    assert sqlite_registry.devices()[1] == 0
    report = import_devices(sqlite_registry, path, now=NOW, skip_invalid=True)
    assert report.created == ["gate-gz-0001"] and report.rows == 3
    assert "expected_interval_s 'abc' is not a whole number" in str(report.skipped[1])
    assert [d.id for d in sqlite_registry.devices()[0]] == ["gate-gz-0001"]


def test_import_devices_rejects_bad_files(sqlite_registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ImportProblems, match=r"h\.csv:1: bad header: missing column\(s\) region_id; unknown column"):
        import_devices(sqlite_registry, _write(tmp_path, "h.csv", "id,type,region\n"), now=NOW)
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes((HEADER + "gate-gz-0001,gate,gd,东门,\n").encode("gbk"))
    with pytest.raises(ImportProblems, match=r"gbk\.csv:2: the file is not UTF-8"):
        import_devices(sqlite_registry, gbk, now=NOW)
    with pytest.raises(ImportProblems, match="expected 5 fields, found 3"):
        import_devices(sqlite_registry, _write(tmp_path, "short.csv", HEADER + "a,b,c\n"), now=NOW)
    with pytest.raises(UserError, match="cannot read"):
        import_devices(sqlite_registry, tmp_path / "missing.csv", now=NOW)


def test_import_devices_ten_thousand_rows_in_a_few_seconds(sqlite_registry: Registry, tmp_path: Path) -> None:
    import_regions(sqlite_registry, SAMPLE_REGIONS_FILE, now=NOW)
    buildings = [r.id for r in sqlite_registry.regions() if r.level == "building"]
    rows = "".join(f"gate-bulk-{i:05d},gate,{buildings[i % len(buildings)]},门禁{i},\n" for i in range(10_000))
    path = _write(tmp_path, "big.csv", HEADER + rows)
    seen: list[tuple[str, int, int]] = []
    # CPU time of this process, so the bound holds on a machine busy with other work; the budget is generous.
    start = time.process_time()
    report = import_devices(sqlite_registry, path, now=NOW, progress=lambda *step: seen.append(step))
    elapsed = time.process_time() - start
    assert len(report.created) == 10_000 and sqlite_registry.devices(limit=1)[1] == 10_000
    assert seen[19] == ("checking", 10_000, 10_000) and seen[20:] == [("writing", 0, 1), ("writing", 1, 1)]
    assert elapsed < 8, f"10,000 rows took {elapsed:.1f} s of CPU"
    start = time.process_time()
    assert len(import_devices(sqlite_registry, path, now=NOW).unchanged) == 10_000
    assert time.process_time() - start < 4
