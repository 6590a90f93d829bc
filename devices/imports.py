"""Region and device file imports: read, validate every row, plan, then write in one transaction.

The flow is the same for both kinds of file:

1. read the file into rows that remember their line (``read_region_file``, ``read_device_csv``);
2. check every row against a snapshot of the registry (pure: ``check_regions``, ``check_devices``) and collect
   every problem as ``FILE:LINE: reason``;
3. plan what changes (``plan_regions``, ``plan_devices``): created, updated, unchanged; re-running the same file
   changes nothing;
4. write the created and updated rows through the registry in one transaction, so a file is never half-applied;
5. for devices, tell the optional ``on_written`` hook which devices were created and which were updated (broker
   provisioning plugs in there).

Region files are YAML (a nested tree under ``children`` or a flat list with ``parent_id``) or CSV with the header
``id,name,level,parent_id,lat,lon``. Device files are CSV with the header
``id,type,region_id,name,expected_interval_s`` (``name`` and ``expected_interval_s`` are optional columns, as are
the energy meters' attribute columns ``parent_meter`` and ``contracted_kw``: an empty cell removes it).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml
from sqlalchemy import select

from alerts.kinds_vehicle import place_problems
from core.errors import UserError
from core.protocol import DEVICE_ID_RE, DEVICE_TYPES
from devices.models import LEVELS, Device
from devices.region_attrs import BadAttribute, check_attribute
from devices.registry import REGION_ID_RE, DeviceSpec, RegionSpec, Registry

MAX_NAME = 200
_DEVICE_REQUIRED = ("id", "type", "region_id")
# Device attributes a CSV may set (energy meters: E6's submeter tree, E8's capacity; vehicles: V2's depot and V13's
# lot, JSON in the cell); an empty cell removes it.
_DEVICE_ATTRIBUTE_COLUMNS = ("parent_meter", "contracted_kw", "depot", "lot")
_JSON_ATTRIBUTES = ("depot", "lot")
_DEVICE_OPTIONAL = ("name", "expected_interval_s", *_DEVICE_ATTRIBUTE_COLUMNS)
_REGION_REQUIRED = ("id", "name", "level")
_REGION_OPTIONAL = ("parent_id", "lat", "lon")
_REGION_YAML_KEYS = frozenset(_REGION_REQUIRED + _REGION_OPTIONAL + ("children", "attributes"))
_ID_HINT = "lower-case letters, digits and '-', 3 to 64 characters, not starting with '-'"

# Called as progress(phase, done, total) while a file is imported; phase is "checking" (rows) then "writing".
Progress = Callable[[str, int, int], None]


class DevicesWritten(Protocol):
    """Told which devices a command created and updated, after the registry transaction committed.

    Broker provisioning (per-device identities) plugs in here. It runs after the write; if it raises, the
    registry already holds the devices and re-running the import calls it again for changed rows only.
    """

    def __call__(self, created_ids: Sequence[str], updated_ids: Sequence[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file, with where it is."""

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}" if self.line else f"{self.source}: {self.message}"


class ImportProblems(UserError):
    """A file has problems; ``problems`` lists every one (``FILE:LINE: reason``). Nothing was written."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- regions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegionRow:
    spec: RegionSpec
    line: int
    # Field path of the entry in a YAML file, e.g. "regions[0].children[1]"; empty for CSV.
    where: str = ""


@dataclass(slots=True)
class RegionPlan:
    to_write: list[RegionSpec] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RegionImportReport:
    source: str
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    dry_run: bool


def read_region_file(path: Path) -> list[RegionRow]:
    """Parse a YAML or CSV region file; raise ImportProblems listing every malformed entry."""
    source = str(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        rows, problems = _parse_region_yaml(text, source)
    elif suffix == ".csv":
        rows, problems = _parse_region_csv(text, source)
    else:
        raise UserError(f"{source}: unknown file type {path.suffix or '(none)'!r}; use .yaml, .yml or .csv")
    if problems:
        raise ImportProblems(problems)
    if not rows:
        raise ImportProblems([Problem(source, None, "the file holds no regions")])
    return rows


def check_regions(rows: Sequence[RegionRow], existing: Mapping[str, RegionSpec], source: str) -> list[Problem]:
    """Cross-row checks against the registry snapshot: unique ids, parents exist, levels go down the tree."""
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for row in rows:
        if row.spec.id in first_line:
            problems.append(
                Problem(
                    source, row.line, f"region {row.spec.id} is listed twice (first on line {first_line[row.spec.id]})"
                )
            )
        else:
            first_line[row.spec.id] = row.line
    in_file = {row.spec.id: row.spec for row in rows}
    # The tree as it will be after the import: the registry, overlaid with the file.
    after = {**existing, **in_file}
    for row in rows:
        spec = row.spec
        at = f"{row.where}: " if row.where else ""
        if spec.parent_id is not None:
            parent = after.get(spec.parent_id)
            if parent is None:
                problems.append(
                    Problem(
                        source, row.line, f"{at}parent_id {spec.parent_id!r}: no such region in the file or registry"
                    )
                )
            elif LEVELS.index(spec.level) <= LEVELS.index(parent.level):
                problems.append(
                    Problem(source, row.line, f"{at}a {spec.level} cannot sit under {parent.id} (a {parent.level})")
                )
        old = existing.get(spec.id)
        if old is None:
            continue
        kids = [c for c in existing.values() if c.parent_id == spec.id and c.id not in in_file]
        if old.parent_id != spec.parent_id and (kids or any(r.parent_id == spec.id for r in in_file.values())):
            problems.append(
                Problem(source, row.line, f"{at}region {spec.id} has children, so it cannot move to another parent")
            )
        for kid in kids:
            if LEVELS.index(kid.level) <= LEVELS.index(spec.level):
                problems.append(
                    Problem(source, row.line, f"{at}level {spec.level} is not above its child {kid.id} ({kid.level})")
                )
    return problems


def plan_regions(rows: Sequence[RegionRow], existing: Mapping[str, RegionSpec]) -> RegionPlan:
    plan = RegionPlan()
    for row in rows:
        old = existing.get(row.spec.id)
        if old is None:
            plan.created.append(row.spec.id)
        elif (old if row.spec.attributes is not None else replace(old, attributes=None)) == row.spec:
            plan.unchanged.append(row.spec.id)
            continue
        else:
            plan.updated.append(row.spec.id)
        plan.to_write.append(row.spec)
    return plan


def import_regions(registry: Registry, path: Path, *, now: datetime, dry_run: bool = False) -> RegionImportReport:
    """Import a region file: all or nothing, idempotent. Raises ImportProblems naming every bad entry."""
    source = str(path)
    rows = read_region_file(path)
    existing = {
        r.id: RegionSpec(r.id, r.name, r.level, r.parent_id, r.lat, r.lon, dict(r.attributes or {}))
        for r in registry.regions()
    }
    problems = check_regions(rows, existing, source)
    if problems:
        raise ImportProblems(problems)
    plan = plan_regions(rows, existing)
    if plan.to_write and not dry_run:
        try:
            registry.upsert_regions(plan.to_write, now=now)
        except ImportProblems:
            raise
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from exc
    return RegionImportReport(source, plan.created, plan.updated, plan.unchanged, dry_run)


def _parse_region_yaml(text: str, source: str) -> tuple[list[RegionRow], list[Problem]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        return [], [Problem(source, line, f"not valid YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return [], [Problem(source, None, f"not valid YAML: {exc}")]
    if root is None:
        return [], [Problem(source, None, "the file is empty")]
    entries: yaml.Node = root
    base = "regions"
    if isinstance(root, yaml.MappingNode):
        found: yaml.Node | None = None
        for key, value in root.value:
            if _scalar(key) == "regions":
                found = value
            else:
                return [], [Problem(source, key.start_mark.line + 1, f"unknown top-level key {key.value!r}")]
        if found is None:
            return [], [Problem(source, root.start_mark.line + 1, "expected a 'regions' list")]
        entries = found
    elif not isinstance(root, yaml.SequenceNode):
        return [], [Problem(source, root.start_mark.line + 1, "expected a list of regions or a 'regions' key")]
    rows: list[RegionRow] = []
    problems: list[Problem] = []
    _walk_yaml(entries, base, None, source, rows, problems)
    return rows, problems


def _walk_yaml(
    node: yaml.Node,
    where: str,
    parent: RegionSpec | None,
    source: str,
    rows: list[RegionRow],
    problems: list[Problem],
) -> None:
    if not isinstance(node, yaml.SequenceNode):
        problems.append(Problem(source, node.start_mark.line + 1, f"{where}: must be a list of regions"))
        return
    for i, entry in enumerate(node.value):
        at = f"{where}[{i}]"
        line = entry.start_mark.line + 1
        if not isinstance(entry, yaml.MappingNode):
            problems.append(Problem(source, line, f"{at}: must be a mapping with id, name, level"))
            continue
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        children: yaml.Node | None = None
        bad = False
        for key_node, value_node in entry.value:
            key = _scalar(key_node)
            key_line = key_node.start_mark.line + 1
            if key not in _REGION_YAML_KEYS:
                known = ", ".join(sorted(_REGION_YAML_KEYS))
                problems.append(Problem(source, key_line, f"{at}.{key}: unknown field (known: {known})"))
                bad = True
                continue
            if key in values or (key == "children" and children is not None):
                problems.append(Problem(source, key_line, f"{at}.{key}: given twice"))
                bad = True
                continue
            if key == "children":
                children = value_node
                continue
            if key == "attributes":
                attributes, attr_problems = _region_attributes(value_node, f"{at}.attributes", source)
                problems.extend(attr_problems)
                bad = bad or bool(attr_problems)
                values[key] = attributes
                continue
            if not isinstance(value_node, yaml.ScalarNode):
                problems.append(Problem(source, key_line, f"{at}.{key}: must be a single value"))
                bad = True
                continue
            values[key] = yaml.constructor.SafeConstructor().construct_object(value_node, deep=True)
            lines[key] = value_node.start_mark.line + 1
        if parent is not None:
            given = values.get("parent_id")
            if given is not None and given != parent.id:
                problems.append(
                    Problem(
                        source,
                        lines["parent_id"],
                        f"{at}.parent_id: {given!r} contradicts the enclosing region {parent.id!r}",
                    )
                )
                bad = True
            values["parent_id"] = parent.id
            if values.get("level") is None:
                deeper = LEVELS.index(parent.level) + 1
                if deeper < len(LEVELS):
                    values["level"] = LEVELS[deeper]
        spec, entry_problems = _region_spec(values, lines, line, at, source, typed=True)
        problems.extend(entry_problems)
        if spec is not None and not bad:
            rows.append(RegionRow(spec, line, at))
        if children is not None:
            if spec is None:
                problems.append(Problem(source, line, f"{at}.children: skipped because the region itself is invalid"))
            else:
                _walk_yaml(children, f"{at}.children", spec, source, rows, problems)


def _parse_region_csv(text: str, source: str) -> tuple[list[RegionRow], list[Problem]]:
    rows: list[RegionRow] = []
    problems: list[Problem] = []
    for line, cells in _csv_rows(text, source, _REGION_REQUIRED, _REGION_OPTIONAL, problems):
        values: dict[str, Any] = {k: (v if v != "" else None) for k, v in cells.items()}
        spec, row_problems = _region_spec(values, {}, line, "", source, typed=False)
        problems.extend(row_problems)
        if spec is not None:
            rows.append(RegionRow(spec, line))
    return rows, problems


def _region_spec(
    values: Mapping[str, Any], lines: Mapping[str, int], line: int, at: str, source: str, *, typed: bool
) -> tuple[RegionSpec | None, list[Problem]]:
    """Check one region's fields. ``typed`` is True for YAML (values already typed), False for CSV (text)."""
    problems: list[Problem] = []
    prefix = f"{at}." if at else ""

    def bad(key: str, message: str) -> None:
        problems.append(Problem(source, lines.get(key, line), f"{prefix}{key}: {message}"))

    region_id = values.get("id")
    if region_id is None:
        bad("id", "is required")
    elif not isinstance(region_id, str):
        bad("id", f"{region_id!r} must be text (put it in quotes)")
    elif not REGION_ID_RE.match(region_id):
        bad("id", f"{region_id!r} is not a valid region id ({_ID_HINT})")
    name = values.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        bad("name", "is required")
    elif not isinstance(name, str):
        bad("name", f"{name!r} must be text")
    elif len(name) > MAX_NAME:
        bad("name", f"is longer than {MAX_NAME} characters")
    level = values.get("level")
    if level is None:
        bad("level", f"is required (one of {', '.join(LEVELS)})")
    elif level not in LEVELS:
        bad("level", f"{level!r} is not one of {', '.join(LEVELS)}")
    parent_id = values.get("parent_id")
    if parent_id is not None and not isinstance(parent_id, str):
        bad("parent_id", f"{parent_id!r} must be text (put it in quotes)")
    coords: dict[str, float | None] = {}
    for key, limit in (("lat", 90.0), ("lon", 180.0)):
        raw = values.get(key)
        coords[key] = None
        if raw is None:
            continue
        number: float | None = None
        if typed and isinstance(raw, int | float) and not isinstance(raw, bool):
            number = float(raw)
        elif not typed and isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                number = None
        if number is None or number != number:
            bad(key, f"{raw!r} is not a number of degrees")
        elif not -limit <= number <= limit:
            bad(key, f"{number} is outside -{limit:g}..{limit:g} degrees")
        else:
            coords[key] = number
    if problems:
        return None, problems
    assert isinstance(region_id, str) and isinstance(name, str) and isinstance(level, str)
    parent = parent_id if isinstance(parent_id, str) else None
    attributes = values.get("attributes")
    return RegionSpec(region_id, name.strip(), level, parent, coords["lat"], coords["lon"], attributes), []


def _region_attributes(node: yaml.Node, at: str, source: str) -> tuple[dict[str, Any], list[Problem]]:
    """Check a YAML ``attributes:`` mapping (devices/region_attrs.py); each problem names its key's line."""
    if not isinstance(node, yaml.MappingNode):
        return {}, [Problem(source, node.start_mark.line + 1, f"{at}: must be a mapping of attribute: value")]
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for key_node, value_node in node.value:
        key = _scalar(key_node)
        line = key_node.start_mark.line + 1
        if key in out:
            problems.append(Problem(source, line, f"{at}.{key}: given twice"))
            continue
        try:
            out[key] = check_attribute(key, _plain(value_node))
        except BadAttribute as exc:
            problems.append(Problem(source, line, f"{at}.{key}: {exc}"))
    return out, problems


def _plain(node: yaml.Node) -> Any:
    """A YAML node as plain Python; "22:00" stays text (YAML 1.1 would read it as the base-60 number 1320)."""
    if isinstance(node, yaml.MappingNode):
        return {_scalar(k): _plain(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v) for v in node.value]
    if isinstance(node, yaml.ScalarNode) and ":" in str(node.value) and node.style is None:
        return str(node.value)
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


# --- devices -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as given by a person; ``name`` / ``expected_interval_s`` apply only if listed in ``given``."""

    id: str
    type: str
    region_id: str
    line: int | None = None
    name: str = ""
    expected_interval_s: int | None = None
    given: frozenset[str] = frozenset()
    # attribute columns given (``_DEVICE_ATTRIBUTE_COLUMNS``): value, or None to remove the attribute
    attributes: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(slots=True)
class DevicePlan:
    to_write: list[DeviceSpec] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeviceImportReport:
    source: str
    rows: int
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    skipped: list[Problem]
    dry_run: bool


def read_device_csv(path: Path) -> tuple[list[DeviceRow], list[Problem]]:
    """Parse a device CSV. Returns the rows that parsed and the problems of those that did not.

    A missing or wrong header raises ImportProblems at once (no row can be read without it).
    """
    source = str(path)
    text = _read_text(path)
    problems: list[Problem] = []
    rows: list[DeviceRow] = []
    for line, cells in _csv_rows(text, source, _DEVICE_REQUIRED, _DEVICE_OPTIONAL, problems):
        given = frozenset(k for k in _DEVICE_OPTIONAL if k in cells)
        interval: int | None = None
        raw_interval = cells.get("expected_interval_s", "")
        if raw_interval != "":
            try:
                interval = int(raw_interval)
            except ValueError:
                problems.append(
                    Problem(source, line, f"expected_interval_s {raw_interval!r} is not a whole number of seconds")
                )
                continue
        attributes: dict[str, Any] = {k: cells[k] or None for k in _DEVICE_ATTRIBUTE_COLUMNS if k in cells}
        try:  # depot {"lat": .., "lon": .., "radius_m": ..}, lot [[lat, lon], ...]: checked in device_row_problems
            attributes.update({k: json.loads(attributes[k]) for k in _JSON_ATTRIBUTES if attributes.get(k)})
        except ValueError as exc:
            problems.append(Problem(source, line, f"depot / lot must be JSON: {exc}"))
            continue
        if attributes.get("contracted_kw") is not None:
            try:
                attributes["contracted_kw"] = float(attributes["contracted_kw"])
            except ValueError:
                problems.append(
                    Problem(source, line, f"contracted_kw {cells['contracted_kw']!r} is not a number of kW")
                )
                continue
        rows.append(
            DeviceRow(
                id=cells["id"],
                type=cells["type"],
                region_id=cells["region_id"],
                line=line,
                name=cells.get("name", ""),
                expected_interval_s=interval,
                given=given,
                attributes=attributes,
            )
        )
    return rows, problems


def check_devices(
    rows: Sequence[DeviceRow],
    region_ids: Collection[str],
    source: str,
    progress: Progress | None = None,
) -> tuple[list[DeviceRow], list[Problem]]:
    """Check every row (pure). Returns the good rows and one problem per bad row, in file order."""
    lines_of: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        lines_of.setdefault(row.id, []).append(row.line if row.line is not None else i + 1)
    good: list[DeviceRow] = []
    problems: list[Problem] = []
    total = len(rows)
    for i, row in enumerate(rows, 1):
        reasons = device_row_problems(row, region_ids)
        seen_on = lines_of.get(row.id, [])
        if len(seen_on) > 1:
            reasons.append(f"id {row.id!r} appears more than once (lines {', '.join(map(str, seen_on))})")
        if reasons:
            problems.append(Problem(source, row.line, "; ".join(reasons)))
        else:
            good.append(row)
        if progress is not None and (i % 500 == 0 or i == total):
            progress("checking", i, total)
    return good, problems


def device_row_problems(row: DeviceRow, region_ids: Collection[str]) -> list[str]:
    """Everything wrong with one device row, as short reasons (empty when the row is good)."""
    reasons: list[str] = []
    if not row.id:
        reasons.append("id is empty")
    elif not DEVICE_ID_RE.match(row.id):
        reasons.append(f"id {row.id!r} is not well formed ({_ID_HINT})")
    if not row.type:
        reasons.append(f"type is empty (one of {', '.join(DEVICE_TYPES)})")
    elif row.type not in DEVICE_TYPES:
        reasons.append(f"type {row.type!r} is not one of {', '.join(DEVICE_TYPES)}")
    if not row.region_id:
        reasons.append("region_id is empty")
    elif row.region_id not in region_ids:
        reasons.append(f"region {row.region_id!r} does not exist (import it first with `lianfang regions import`)")
    if len(row.name) > MAX_NAME:
        reasons.append(f"name is longer than {MAX_NAME} characters")
    if row.expected_interval_s is not None and row.expected_interval_s <= 0:
        reasons.append("expected_interval_s must be a positive number of seconds")
    parent = row.attributes.get("parent_meter")
    kw = row.attributes.get("contracted_kw")
    if (parent is not None or kw is not None) and row.type != "energy_meter":
        reasons.append("parent_meter and contracted_kw apply to energy meters only")
    if parent is not None and (parent == row.id or not DEVICE_ID_RE.match(str(parent))):
        reasons.append(f"parent_meter {parent!r} must be another meter's id")
    if kw is not None and not (isinstance(kw, float) and math.isfinite(kw) and kw > 0):
        reasons.append(f"contracted_kw {kw!r} must be more than 0 kW")
    places = {k: v for k, v in row.attributes.items() if k in _JSON_ATTRIBUTES and v is not None}
    if places and row.type != "vehicle":
        reasons.append("depot and lot apply to vehicles only")
    reasons.extend(place_problems(places))
    return reasons


def plan_devices(rows: Iterable[DeviceRow], existing: Mapping[str, DeviceSpec]) -> DevicePlan:
    """What to write: new devices, changed devices (fields not given keep their stored value), the rest unchanged."""
    plan = DevicePlan()
    for row in rows:
        old = existing.get(row.id)
        name = row.name if "name" in row.given or old is None else old.name
        interval = (
            row.expected_interval_s if "expected_interval_s" in row.given or old is None else old.expected_interval_s
        )
        attributes = dict(old.attributes or {}) if old else {}
        for key, value in row.attributes.items():  # columns given: set, or remove when empty
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = value
        spec = DeviceSpec(row.id, row.type, row.region_id, name, interval, attributes if old or attributes else None)
        if old is None:
            plan.created.append(row.id)
        elif old == replace(spec, attributes=dict(spec.attributes or {})):
            plan.unchanged.append(row.id)
            continue
        else:
            plan.updated.append(row.id)
        plan.to_write.append(spec)
    return plan


def existing_devices(registry: Registry, ids: Sequence[str], *, chunk: int = 500) -> dict[str, DeviceSpec]:
    """The stored devices among ``ids``, as specs."""
    out: dict[str, DeviceSpec] = {}
    columns = (Device.id, Device.type, Device.region_id, Device.name, Device.expected_interval_s, Device.attributes)
    with registry.session() as s:
        for start in range(0, len(ids), chunk):
            part = list(ids[start : start + chunk])
            for d_id, d_type, region_id, name, interval, attributes in s.execute(
                select(*columns).where(Device.id.in_(part))
            ):
                out[d_id] = DeviceSpec(d_id, d_type, region_id, name, interval, dict(attributes or {}))
    return out


def write_devices(
    registry: Registry,
    rows: Sequence[DeviceRow],
    *,
    now: datetime,
    dry_run: bool = False,
    on_written: DevicesWritten | None = None,
) -> DevicePlan:
    """Plan and (unless ``dry_run``) write already-checked rows in one transaction, then call the hook."""
    plan = plan_devices(rows, existing_devices(registry, [r.id for r in rows]))
    if plan.to_write and not dry_run:
        registry.add_devices(plan.to_write, now=now)
        if on_written is not None:
            on_written(list(plan.created), list(plan.updated))
    return plan


def import_devices(
    registry: Registry,
    path: Path,
    *,
    now: datetime,
    dry_run: bool = False,
    skip_invalid: bool = False,
    on_written: DevicesWritten | None = None,
    progress: Progress | None = None,
) -> DeviceImportReport:
    """Import a device CSV: every row is checked first; any bad row means nothing is written (ImportProblems),
    unless ``skip_invalid``, which writes the good rows and reports the bad ones as skipped."""
    source = str(path)
    rows, problems = read_device_csv(path)
    total_rows = len(rows) + len(problems)
    region_ids = {r.id for r in registry.regions()}
    good, row_problems = check_devices(rows, region_ids, source, progress)
    problems = sorted(problems + row_problems, key=lambda p: p.line or 0)
    if problems and not skip_invalid:
        raise ImportProblems(problems)
    if not good and not problems:
        raise ImportProblems([Problem(source, None, "the file holds no devices")])
    if progress is not None:
        progress("writing", 0, 1)
    plan = write_devices(registry, good, now=now, dry_run=dry_run, on_written=on_written)
    if progress is not None:
        progress("writing", 1, 1)
    return DeviceImportReport(source, total_rows, plan.created, plan.updated, plan.unchanged, problems, dry_run)


# --- shared file reading -----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ImportProblems(
            [Problem(str(path), line, "the file is not UTF-8 text (save it as 'CSV UTF-8' or UTF-8 YAML)")]
        ) from exc


def _csv_rows(
    text: str, source: str, required: Sequence[str], optional: Sequence[str], problems: list[Problem]
) -> Iterable[tuple[int, dict[str, str]]]:
    """Yield (line, {column: stripped cell}) per data row; header problems raise ImportProblems at once."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ImportProblems([Problem(source, reader.line_num, f"not valid CSV: {exc}")]) from exc
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            expected = ",".join((*required, *optional))
            missing = [c for c in required if c not in header]
            unknown = [c for c in header if c not in required and c not in optional]
            twice = sorted({c for c in header if header.count(c) > 1})
            if missing or unknown or twice:
                parts = []
                if missing:
                    parts.append(f"missing column(s) {', '.join(missing)}")
                if unknown:
                    parts.append(f"unknown column(s) {', '.join(unknown)}")
                if twice:
                    parts.append(f"repeated column(s) {', '.join(twice)}")
                raise ImportProblems(
                    [Problem(source, reader.line_num, f"bad header: {'; '.join(parts)} (expected {expected})")]
                )
            continue
        if len(cells) != len(header):
            problems.append(Problem(source, reader.line_num, f"expected {len(header)} fields, found {len(cells)}"))
            continue
        yield reader.line_num, {k: v.strip() for k, v in zip(header, cells, strict=True)}
    if header is None:
        expected = ",".join((*required, *optional))
        raise ImportProblems([Problem(source, None, f"the file is empty (expected the header {expected})")])


def _scalar(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"
