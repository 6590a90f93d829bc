"""Rules against the wire protocol and the registry: names that can never match.

Pydantic validates the shape of a rule file (``alerts.rules``); this module checks what the shape cannot: that
every field, event type and event field a rule names exists for the device types it applies to (the tables of
``core.protocol``, i.e. PROTOCOL.md), that the values compared with them have the field's type, and that the
regions and devices an override or a calendar entry names exist in the registry. A typo such as ``speed_kph`` or
an override of ``field`` to ``sped_kmh`` would otherwise load fine and quietly never alert.

Findings are errors (the rule, or the override, can never match: ``lianfang rules check`` exits 1, ``serve``
refuses to start, an API edit is answered 422) or warnings (it may match, but probably not as meant). Each names
its place as ``{origin}: {path}: {message}``, the path written the one way every rule message uses
(``rules[3].params.field``, ``overrides[0].params.where.ignition``), and the closest known name::

    rules.yaml: overrides[0].params.field: unknown field 'sped_kmh' for vehicle; did you mean 'speed_kmh'?

Devices may send extra (non-standard) numeric or boolean fields (PROTOCOL.md), so a field that is not in the
device type's table is an error when it is a misspelling of a standard one (``speed_kph``, ``sped_kmh``: the
closest standard name is close enough for ``difflib``), or can never be a field name; otherwise a warning (it
matches only devices that send it). Name a real extra field distinctly from the standard ones. Sensors may send
any field, so a sensor field is only checked for being a well-formed name, with a warning for a name close to one
PROTOCOL.md lists for sensors. Unknown event types are rejected by ingest (``unknown_event``): always an error.
Events may carry extra fields, so an event field that is not in the protocol's table is a warning, and an error
only when its value can never be sent (``result: grantd``).

Pure: no I/O. ``Known`` is what the registry holds (read by the caller).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from alerts.rules import (
    PARAMS,
    AbsenceParams,
    BaselineParams,
    DeltaParams,
    DemandParams,
    EventCountParams,
    GeofenceParams,
    Match,
    OverrideSpec,
    PassbackParams,
    QuotaParams,
    RuleFile,
    RuleSpec,
    ScheduleParams,
    SequenceParams,
    StillInsideParams,
    SubmeterBalanceParams,
    ThresholdParams,
    TravelParams,
)
from core.protocol import DEVICE_TYPES, EVENT_TYPES, FIELD_RE, TELEMETRY_FIELDS

Level = Literal["error", "warning"]

# Events the platform itself feeds to the engine for any device type (not sent by devices; any data keys): rule
# CRED1 of alerts/packs/platform.yaml matches ``credential_expiring`` (AlertsRuntime.check_credentials), DQ1 of
# alerts/packs/data_quality.yaml ``seq_lost`` (alerts/data_quality.py). A new one is added here.
PLATFORM_EVENTS: set[str] = {"credential_expiring", "seq_lost"}
# Fields PROTOCOL.md names for sensors (which may send any numeric or boolean field): typos of these are warned.
SENSOR_FIELDS = ("temperature_c", "humidity_pct")
_RESERVED = frozenset({"ts", "seq", "type", "device_id", "region"})
_BOOL, _STR = "bool", "str"


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    origin: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.path}: {self.message}" if self.path else f"{self.origin}: {self.message}"


@dataclass(frozen=True, slots=True)
class Known:
    """What the registry holds: region ids, and device id -> device type."""

    regions: frozenset[str] = frozenset()
    devices: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_registry(cls, registry: Any) -> Known:
        """From a ``devices.registry.Registry`` (its regions and every device, enabled or not)."""
        return cls(
            frozenset(r.id for r in registry.regions()),
            {d.device_id: d.device_type for d in registry.snapshot().values()},
        )


def closest(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest known name, or ``""``."""
    found = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.75)
    return f"; did you mean {found[0]!r}?" if found else ""


def _at(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


class _Checker:
    """Collects the findings of one rule's params for one device type, under a path prefix."""

    def __init__(self, device_type: str, origin: str, out: list[Finding]) -> None:
        self.dt = device_type
        self.origin = origin
        self.out = out

    def add(self, level: Level, path: str, message: str) -> None:
        self.out.append(Finding(level, self.origin, path, message))

    # telemetry fields

    def field(self, name: str, path: str, *, numeric: bool = False) -> str | None:
        """Check a telemetry field name; its kind (number / int / bool), or None (unknown or any)."""
        if self.dt == "sensor":
            if not FIELD_RE.match(name) or name in _RESERVED:
                self.add("error", path, f"{name!r} can never be a telemetry field (names match {FIELD_RE.pattern})")
            elif name not in SENSOR_FIELDS and (hint := closest(name, SENSOR_FIELDS)):
                self.add("warning", path, f"field {name!r} for sensor is not one PROTOCOL.md names{hint}")
            return None
        table = TELEMETRY_FIELDS[self.dt]
        spec = table.get(name)
        if spec is None:
            if not FIELD_RE.match(name) or name in _RESERVED:
                self.add("error", path, f"{name!r} can never be a telemetry field (names match {FIELD_RE.pattern})")
            elif hint := closest(name, table):  # a misspelt standard field: never sent under this name
                self.add("error", path, f"unknown field {name!r} for {self.dt}{hint}")
            else:  # PROTOCOL.md lets devices send extra numeric or boolean fields
                self.add(
                    "warning",
                    path,
                    f"{name!r} is not a standard field of {self.dt} ({', '.join(table) or 'none'}); the rule matches "
                    "only devices that send it as an extra field",
                )
            return None
        if numeric and spec.kind == _BOOL:
            self.add("error", path, f"field {name!r} of {self.dt} is a boolean; this needs a numeric field")
        return spec.kind

    def value(self, name: str, kind: str | None, op: str, value: Any, path: str) -> None:
        """A value compared with a field of ``kind``: never true when the types differ."""
        if kind is None:
            return
        if kind == _BOOL:
            if not isinstance(value, bool):
                self.add("error", path, f"field {name!r} is a boolean; {value!r} never equals it (use true / false)")
            elif op not in ("==", "!="):
                self.add("error", path, f"field {name!r} is a boolean; compare it with == or !=, not {op}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            self.add("error", path, f"field {name!r} is a number; {value!r} never compares with it")

    def fields_equal(self, where: Mapping[str, Any], path: str) -> None:
        for k, v in where.items():
            kind = self.field(k, _at(path, k))
            self.value(k, kind, "==", v, _at(path, k))

    # events

    def event(self, name: str, path: str) -> bool:
        if name in PLATFORM_EVENTS:
            return True
        table = EVENT_TYPES.get(self.dt, {})
        if name not in table:
            hint = closest(name, [*table, *PLATFORM_EVENTS]) or f"; {self.dt} events: {', '.join(table)}"
            self.add("error", path, f"unknown event type {name!r} for {self.dt}{hint}")
            return False
        return True

    def event_key(self, event: str, key: str, path: str, value: Any = None, *, has_value: bool = False) -> None:
        spec = EVENT_TYPES.get(self.dt, {}).get(event)
        if spec is None:
            return  # a platform event, or the event itself is unknown (reported)
        if key not in spec:
            hint = closest(key, spec) or (f"; its fields: {', '.join(spec)}" if spec else "; it has no standard fields")
            self.add("warning", path, f"event {event!r} of {self.dt} has no field {key!r} in PROTOCOL.md{hint}")
            return
        kind, _required, allowed = spec[key]
        if not has_value:
            return
        if kind == _BOOL and not isinstance(value, bool):
            self.add("error", path, f"{event}.{key} is a boolean; {value!r} never equals it")
        elif kind == _STR and not isinstance(value, str):
            self.add("error", path, f"{event}.{key} is a string; {value!r} never equals it")
        elif allowed and value not in allowed:
            hint = closest(str(value), allowed)
            self.add("error", path, f"{value!r} is never sent as {event}.{key} (one of {', '.join(allowed)}){hint}")

    # a match (schedule, event_count, sequence, travel)

    def match(self, m: Match, path: str) -> str | None:
        """Check a match; the event it matches (if it is a known event match), else None."""
        if m.event is not None:
            ok = self.event(m.event, _at(path, "event"))
            for k, v in m.where.items():
                if ok:
                    self.event_key(m.event, k, _at(_at(path, "where"), k), v, has_value=True)
            return m.event if ok else None
        assert m.field is not None
        kind = self.field(m.field, _at(path, "field"))
        self.value(m.field, kind, m.op, m.value, _at(path, "value"))
        self.fields_equal(m.where, _at(path, "where"))
        return None


def _params(p: BaseModel, c: _Checker, path: str, given: Mapping[str, Any]) -> None:
    """The references of one kind's params; ``given`` are the keys written in the rule (not defaults)."""

    def at(name: str) -> str:
        return _at(path, name)

    if isinstance(p, ThresholdParams):
        k = c.field(p.field, at("field"))
        c.value(p.field, k, p.op, p.value, at("value"))
        c.fields_equal(p.where, at("where"))
    elif isinstance(p, DeltaParams | BaselineParams | DemandParams | SubmeterBalanceParams | QuotaParams):
        c.field(p.field, at("field"), numeric=True)
        if isinstance(p, DeltaParams) and "reset_event" in given and p.reset_event is not None:
            c.event(p.reset_event, at("reset_event"))
    elif isinstance(p, AbsenceParams):
        c.fields_equal(p.only_if, at("only_if"))
    elif isinstance(p, ScheduleParams):
        c.match(p.match, at("match"))
    elif isinstance(p, EventCountParams):
        event = c.match(p.match, at("match"))
        if event is not None and p.group_by is not None:
            c.event_key(event, p.group_by, at("group_by"))
    elif isinstance(p, SequenceParams):
        c.match(p.trigger, at("trigger"))
        for i, m in enumerate(p.required):
            c.match(m, _at(at("required"), i))
    elif isinstance(p, GeofenceParams):
        c.field(p.lat_field, at("lat_field"), numeric=True)
        c.field(p.lon_field, at("lon_field"), numeric=True)
    elif isinstance(p, TravelParams):
        event = c.match(p.match, at("match"))
        if event is not None:
            c.event_key(event, p.key, at("key"))
    elif isinstance(p, PassbackParams | StillInsideParams):
        event = c.match(p.match, at("match"))
        if event is not None:
            c.event_key(event, p.key, at("key"))
            c.event_key(event, "direction", at("match"))  # presence needs in / out


def _kind_findings(
    kind: str, params: Mapping[str, Any], device_types: Iterable[str], origin: str, path: str
) -> list[Finding]:
    try:
        model = PARAMS[kind].model_validate(dict(params))
    except ValueError:
        return []  # the shape is reported by alerts.rules
    out: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    for dt in device_types:
        found: list[Finding] = []
        _params(model, _Checker(dt, origin, found), path, params)
        for f in found:  # the same problem for two device types (a sensor field, say) once
            if (f.level, f.path, f.message) not in seen:
                seen.add((f.level, f.path, f.message))
                out.append(f)
    return out


def check_rule(spec: RuleSpec, origin: str, where: str = "") -> list[Finding]:
    """The references of a rule definition (``where``: e.g. ``rules[3]``; empty for an API rule)."""
    return _kind_findings(spec.kind, spec.params, spec.device_types, origin, _at(where, "params"))


def check_override(
    ov: OverrideSpec, rules: Mapping[str, RuleSpec], origin: str, where: str = "", known: Known | None = None
) -> list[Finding]:
    """An override: that its scope exists (with ``known``) and can apply to the rule, and the references of the
    params it sets (merged over the rule's own, as the engine sees them)."""
    out: list[Finding] = []

    def err(path: str, message: str) -> None:
        out.append(Finding("error", origin, path, message))

    if ov.rule != "*" and ov.rule not in rules:
        return out  # an unknown rule: alerts.rules reports it (with the closest rule id)
    target = rules.get(ov.rule) if ov.rule != "*" else None
    types = list(target.device_types) if target is not None else list(DEVICE_TYPES)
    device_type = ov.device_type
    if device_type is not None and target is not None and device_type not in target.device_types:
        err(
            _at(where, "device_type"),
            f"rule {ov.rule} applies to {', '.join(target.device_types)}, never to {device_type}",
        )
        return out
    if known is not None and ov.region is not None and ov.region not in known.regions:
        err(_at(where, "region"), f"unknown region {ov.region!r}{closest(ov.region, known.regions)}")
    if known is not None and ov.device is not None:
        dtype = known.devices.get(ov.device)
        if dtype is None:
            err(_at(where, "device"), f"unknown device {ov.device!r}{closest(ov.device, known.devices)}")
        elif device_type is not None and dtype != device_type:
            err(_at(where, "device"), f"device {ov.device!r} is a {dtype}, not a {device_type}")
        elif target is not None and dtype not in target.device_types:
            err(
                _at(where, "device"),
                f"device {ov.device!r} is a {dtype}; rule {ov.rule} applies to {', '.join(target.device_types)}",
            )
        else:
            device_type = dtype
    if target is None or not ov.params:
        return out
    applies = [device_type] if device_type is not None else types
    merged = {**target.params, **ov.params}
    params_path = _at(where, "params")
    for f in _kind_findings(target.kind, merged, applies, origin, params_path):
        rest = f.path[len(params_path) :].lstrip(".")
        top = rest.split(".", 1)[0].split("[", 1)[0]
        if top in ov.params:  # what the override itself writes; the rule's own params are reported with the rule
            out.append(f)
    return out


def check_calendar(doc: RuleFile, origin: str, known: Known | None) -> list[Finding]:
    out: list[Finding] = []
    if known is None:
        return out
    sections: list[tuple[str, Sequence[Any]]] = [("rosters", doc.rosters), ("sealing", doc.sealing), ("days", doc.days)]
    for name, entries in sections:
        for i, entry in enumerate(entries):
            if entry.region not in known.regions:
                path = f"{name}[{i}].region"
                out.append(
                    Finding(
                        "error", origin, path, f"unknown region {entry.region!r}{closest(entry.region, known.regions)}"
                    )
                )
    return out


def check_files(
    docs: Sequence[tuple[str, RuleFile]], rules: Mapping[str, RuleSpec], known: Known | None = None
) -> list[Finding]:
    """Every rule, override and calendar entry of parsed rule files (``rules``: the rule set they make up)."""
    out: list[Finding] = []
    for origin, doc in docs:
        for i, spec in enumerate(doc.rules):
            out.extend(check_rule(spec, origin, f"rules[{i}]"))
        for i, ov in enumerate(doc.overrides):
            out.extend(check_override(ov, rules, origin, f"overrides[{i}]", known))
        out.extend(check_calendar(doc, origin, known))
    return out


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "warning"]


def summary(errs: Sequence[Finding]) -> str:
    """One line for a refusal to start: the first error, and how many more there are."""
    line = str(errs[0])
    if len(errs) > 1:
        line += f" (and {len(errs) - 1} more: run 'lianfang rules check')"
    return line
