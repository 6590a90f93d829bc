"""Correlation patterns, declared like alert rules: YAML pattern files, inheritance down the region tree, the
routing table (X10), checking and ``explain``.

A pattern file (YAML) has up to four sections::

    patterns:     # id, kind (group | sequence | absence | cross_region), incident type, titles, severity, scope,
                  # window_s, members (which alerts take part), params of the kind, mute_members, resolve
    overrides:    # per region (its whole subtree): enabled / severity / window_s / mute_members / params
    routing:      # incident type -> departments (per region subtree), each with a task deadline
    departments:  # department names besides the built-in security, vehicles, energy, it

The effective pattern for a scope region (the building, city, ... an incident is about) is the pattern's own
values, then the overrides of each region on the path from the root down to that region (later files win at the
same region). Every value remembers where it came from (``explain``), as ``alerts.rules`` does for rules; the
same path and error formats (``alerts.rules.fmt_errors``, ``alerts.rule_check.Finding``) are used.

Routing: for an incident of type T in region R, the routing entry for T of the deepest region on R's path wins
(an entry without ``region`` is the default of every region); an entry for type ``*`` is the fallback.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine

from alerts.rule_check import Finding, Known, closest
from alerts.rules import PARAMS, RULE_ID_RE
from alerts.specfile import finite as _finite
from alerts.specfile import fmt_errors, parse_doc, read_yaml, yaml_files
from alerts.types import Severity
from core.errors import UserError
from core.protocol import DEVICE_TYPES
from joint.models import DEPARTMENTS, ScopeLevel

API_ORIGIN = "api"  # where patterns and overrides edited through the API come from (joint/pattern_store.py)
PACKS_DIR = Path(__file__).parent / "packs"  # the default correlation patterns (X rules) shipped with Lianfang
ALERT_RULE_KINDS = tuple(PARAMS)  # every kind of alerts/rules.py


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Members(_Strict):
    """Which alerts take part. Every given condition must hold; an empty ``Members`` matches every alert.

    ``rules``: alert rule ids, or shell-style patterns of them (``G1*``); ``exclude_rules``: ids or patterns that
    never take part (e.g. G5 in X5: on a non-working day every ordinary entry is an after-hours access, and five of
    them in three buildings are not a regional incident); ``rule_kinds``: the alert rule's kind (``absence``: a
    device-offline alert); ``device_types``; ``min_severity``."""

    rules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=list, max_length=200)
    exclude_rules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=200
    )
    rule_kinds: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=20)
    device_types: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=20)
    min_severity: Severity = Severity.INFO

    @field_validator("device_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in DEVICE_TYPES:
                raise ValueError(f"{t!r} is not one of {', '.join(DEVICE_TYPES)}{closest(t, DEVICE_TYPES)}")
        return v

    @field_validator("rule_kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        for k in v:
            if k not in ALERT_RULE_KINDS:
                raise ValueError(f"{k!r} is not an alert rule kind{closest(k, ALERT_RULE_KINDS)}")
        return v


class PatternSpec(_Strict):
    id: str = Field(pattern=RULE_ID_RE)
    kind: Literal["group", "sequence", "absence", "cross_region"]
    type: str = Field(min_length=1, max_length=64)  # the incident type the routing table maps to departments
    title_zh: str = Field(min_length=1, max_length=255)  # joint_incidents.title_zh / title_en are 255
    title_en: str = Field(min_length=1, max_length=255)
    description: str = Field(default="", max_length=4000)
    enabled: bool = True
    severity: Severity = Severity.MAJOR
    raise_severity: int = Field(default=0, ge=0, le=3)  # severity = max(pattern's, members' highest + this)
    scope: ScopeLevel = ScopeLevel.BUILDING
    window_s: float = Field(default=300, gt=0, le=7 * 86400)
    members: Members = Members()
    mute_members: bool = False  # member alerts send nothing while the incident is open
    resolve: Literal["members", "manual"] = "members"  # resolved when every member alert is, or by hand
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite(v)  # type: ignore[no-any-return]


class PatternOverride(_Strict):
    pattern: str  # a pattern id, or "*" for every pattern
    region: str | None = None  # the region's whole subtree; None: everywhere
    enabled: bool | None = None
    severity: Severity | None = None
    window_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    mute_members: bool | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite(v)  # type: ignore[no-any-return]


class RouteSpec(_Strict):
    type: str = Field(min_length=1)  # an incident type, or "*" for every type without an entry
    region: str | None = None  # the region's whole subtree; None: every region
    departments: list[str] = Field(min_length=1)
    deadline_s: float = Field(default=1800, gt=0, le=30 * 86400)  # each department's task is due this long after


class PatternFile(_Strict):
    patterns: list[PatternSpec] = Field(default_factory=list)
    overrides: list[PatternOverride] = Field(default_factory=list)
    routing: list[RouteSpec] = Field(default_factory=list)
    departments: list[str] = Field(default_factory=list)


# --- effective patterns --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EffectivePattern:
    """A pattern as it applies in one scope region."""

    id: str
    kind: str
    type: str
    title_zh: str
    title_en: str
    enabled: bool
    severity: Severity
    raise_severity: int
    scope: ScopeLevel
    window_s: float
    members: Members
    mute_members: bool
    resolve: str
    params: Any  # the kind's params model
    sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    departments: tuple[str, ...]
    deadline_s: float
    origin: str


def member_matches(m: Members, rule_id: str, rule_kind: str, device_type: str, severity: Severity) -> bool:
    from alerts.notify.routing import severity_at_least

    if m.rules and not any(r == rule_id or fnmatch.fnmatchcase(rule_id, r) for r in m.rules):
        return False
    if any(r == rule_id or fnmatch.fnmatchcase(rule_id, r) for r in m.exclude_rules):
        return False
    if m.rule_kinds and rule_kind not in m.rule_kinds:
        return False
    if m.device_types and device_type not in m.device_types:
        return False
    return severity_at_least(severity, m.min_severity)


def _kind_params(kind: str) -> type[BaseModel]:
    from joint.kinds import KINDS

    return KINDS[kind].params_model


def validate_params(kind: str, params: Mapping[str, Any], origin: str, prefix: str) -> Any:
    model = _kind_params(kind)
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise UserError(fmt_errors(exc, origin, prefix, model)) from exc


class PatternSet:
    """Loaded pattern files: patterns, overrides, routing; effective patterns per scope region (cached)."""

    def __init__(self) -> None:
        self.patterns: dict[str, PatternSpec] = {}
        self.origin: dict[str, str] = {}
        self.overrides: list[tuple[PatternOverride, str]] = []  # (override, origin "file overrides[i]")
        self.routes: list[tuple[RouteSpec, str]] = []
        self.departments: list[str] = list(DEPARTMENTS)
        self._cache: dict[tuple[str, tuple[str, ...]], EffectivePattern] = {}

    @classmethod
    def load(cls, paths: Iterable[Path]) -> PatternSet:
        return cls.from_parsed(cls.read(paths))

    @classmethod
    def read(cls, paths: Iterable[Path]) -> list[tuple[str, PatternFile]]:
        return [(str(f), parse(read_yaml(f, "pattern file"), str(f))) for f in yaml_files(paths)]

    @classmethod
    def from_parsed(cls, docs: Sequence[tuple[str, PatternFile]]) -> PatternSet:
        ps = cls()
        for _origin, doc in docs:
            for d in doc.departments:
                if d not in ps.departments:
                    ps.departments.append(d)
        for origin, doc in docs:
            for i, spec in enumerate(doc.patterns):
                if spec.id in ps.patterns:
                    raise UserError(
                        f"{origin}: patterns[{i}].id: pattern {spec.id!r} is already defined in {ps.origin[spec.id]}"
                    )
                validate_params(spec.kind, spec.params, origin, f"patterns[{i}].params")
                ps.patterns[spec.id] = spec
                ps.origin[spec.id] = origin
        for origin, doc in docs:
            for i, ov in enumerate(doc.overrides):
                where = f"overrides[{i}]"
                targets = list(ps.patterns.values()) if ov.pattern == "*" else [ps.patterns.get(ov.pattern)]
                if targets == [None]:
                    raise UserError(
                        f"{origin}: {where}.pattern: unknown pattern {ov.pattern!r}{closest(ov.pattern, ps.patterns)}"
                    )
                if ov.pattern == "*" and ov.params:
                    raise UserError(f"{origin}: {where}.params: an override of every pattern ('*') cannot set params")
                for t in targets:
                    assert t is not None
                    validate_params(t.kind, {**t.params, **ov.params}, origin, f"{where}.params")
                # An API override is one per document: its origin names it (``api override X5 [region=gz]``).
                ps.overrides.append((ov, origin if origin.startswith(f"{API_ORIGIN} ") else f"{origin} {where}"))
            for i, route in enumerate(doc.routing):
                for j, d in enumerate(route.departments):
                    if d not in ps.departments:
                        raise UserError(
                            f"{origin}: routing[{i}].departments[{j}]: unknown department {d!r}"
                            f"{closest(d, ps.departments)} (declare it under departments:)"
                        )
                ps.routes.append((route, f"{origin} routing[{i}]"))
        return ps

    # effective patterns

    def effective(self, pattern_id: str, region_path: Sequence[str]) -> EffectivePattern:
        """The pattern as it applies in the region at the end of ``region_path`` (root first)."""
        key = (pattern_id, tuple(region_path))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        spec = self.patterns[pattern_id]
        origin = f"pattern {spec.id} ({self.origin[spec.id]})"
        values: dict[str, Any] = {
            "enabled": spec.enabled,
            "severity": spec.severity,
            "window_s": spec.window_s,
            "mute_members": spec.mute_members,
        }
        sources = {k: origin for k in values} | {"scope": origin}
        params = dict(spec.params)
        for k in _kind_params(spec.kind).model_fields:
            sources[k] = origin if k in spec.params else f"default of kind {spec.kind}"
        depth = {r: i + 1 for i, r in enumerate(region_path)}
        applicable = [
            (depth.get(ov.region, 0) if ov.region else 0, n, ov, where)
            for n, (ov, where) in enumerate(self.overrides)
            if ov.pattern in ("*", spec.id) and (ov.region is None or ov.region in depth)
        ]
        for _, _, ov, where in sorted(applicable, key=lambda a: (a[0], a[1])):
            for name in ("enabled", "severity", "window_s", "mute_members"):
                v = getattr(ov, name)
                if v is not None:
                    values[name] = v
                    sources[name] = where
            for k, v in ov.params.items():
                params[k] = v
                sources[k] = where
        eff = EffectivePattern(
            id=spec.id,
            kind=spec.kind,
            type=spec.type,
            title_zh=spec.title_zh,
            title_en=spec.title_en,
            enabled=values["enabled"],
            severity=values["severity"],
            raise_severity=spec.raise_severity,
            scope=spec.scope,
            window_s=values["window_s"],
            members=spec.members,
            mute_members=values["mute_members"],
            resolve=spec.resolve,
            params=_kind_params(spec.kind).model_validate(params),
            sources=sources,
        )
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = eff
        return eff

    def route(self, incident_type: str, region_path: Sequence[str]) -> Route | None:
        """The departments (and task deadline) for an incident of ``incident_type`` in the region at the end of
        ``region_path``; None when nothing routes it."""
        depth = {r: i + 1 for i, r in enumerate(region_path)}
        best: tuple[tuple[int, int, int], RouteSpec, str] | None = None
        for n, (r, origin) in enumerate(self.routes):
            if r.type not in (incident_type, "*"):
                continue
            if r.region is not None and r.region not in depth:
                continue
            score = (1 if r.type == incident_type else 0, depth.get(r.region, 0) if r.region else 0, n)
            if best is None or score > best[0]:
                best = (score, r, origin)
        if best is None:
            return None
        return Route(tuple(best[1].departments), best[1].deadline_s, best[2])

    def explain_rows(self, region_path: Sequence[str]) -> list[dict[str, Any]]:
        """One row per pattern setting in the region at the end of ``region_path``: value and origin; then one
        row per incident type with its routing."""
        rows: list[dict[str, Any]] = []
        for pid in self.patterns:
            eff = self.effective(pid, region_path)
            values: dict[str, Any] = {
                "enabled": eff.enabled,
                "severity": str(eff.severity),
                "scope": str(eff.scope),
                "window_s": eff.window_s,
                "mute_members": eff.mute_members,
            }
            values.update(eff.params.model_dump(mode="json"))
            for k, v in values.items():
                rows.append(
                    {"pattern": pid, "kind": eff.kind, "setting": k, "value": v, "source": eff.sources.get(k, "")}
                )
            route = self.route(eff.type, region_path)
            rows.append(
                {
                    "pattern": pid,
                    "kind": eff.kind,
                    "setting": f"routing[{eff.type}]",
                    "value": {"departments": list(route.departments), "deadline_s": route.deadline_s}
                    if route
                    else None,
                    "source": route.origin if route else "no routing entry",
                }
            )
        return rows


def parse(doc: object, origin: str) -> PatternFile:
    return parse_doc(PatternFile, doc, origin, name_fields=True)


# --- checks against the alert rules and the registry ---------------------------------------------------------


def _check_members(m: Members, path: str, origin: str, rule_ids: Iterable[str], out: list[Finding]) -> None:
    known = sorted(set(rule_ids))
    for key, names in (("rules", m.rules), ("exclude_rules", m.exclude_rules)):
        for i, r in enumerate(names):
            where = f"{path}.{key}[{i}]"
            if any(ch in r for ch in "*?["):
                if not any(fnmatch.fnmatchcase(k, r) for k in known):
                    out.append(Finding("error", origin, where, f"pattern {r!r} matches no alert rule"))
            elif r not in known:
                out.append(Finding("error", origin, where, f"unknown rule {r!r}{closest(r, known)}"))


def check_files(
    docs: Sequence[tuple[str, PatternFile]],
    rule_ids: Iterable[str],
    known: Known | None = None,
    patterns: PatternSet | None = None,
) -> list[Finding]:
    """Names a pattern file uses that can never match: alert rule ids (with the closest known id) and regions
    (with ``known``, what the registry holds). With ``patterns`` (the set the files are part of), the member
    conditions an override's params set are checked too."""
    from joint.kinds import KINDS

    ids = set(rule_ids)
    out: list[Finding] = []
    for origin, doc in docs:
        for i, spec in enumerate(doc.patterns):
            where = f"patterns[{i}]"
            _check_members(spec.members, f"{where}.members", origin, ids, out)
            try:
                params = _kind_params(spec.kind).model_validate(spec.params)
            except ValidationError:
                continue  # reported by PatternSet
            for path, m in KINDS[spec.kind].member_conditions(params):
                _check_members(m, f"{where}.params.{path}", origin, ids, out)
        for i, ov in enumerate(doc.overrides):
            targets = [] if patterns is None or not ov.params else [patterns.patterns.get(ov.pattern)]
            for t in targets:
                if t is None:
                    continue
                try:
                    merged = _kind_params(t.kind).model_validate({**t.params, **ov.params})
                except ValidationError:
                    continue  # reported by PatternSet
                for path, m in KINDS[t.kind].member_conditions(merged):
                    if path.split(".")[0] in ov.params:
                        _check_members(m, f"overrides[{i}].params.{path}", origin, ids, out)
        regions: list[tuple[str, str | None]] = [
            (f"overrides[{i}].region", ov.region) for i, ov in enumerate(doc.overrides)
        ] + [(f"routing[{i}].region", r.region) for i, r in enumerate(doc.routing)]
        if known is not None:
            for path, region in regions:
                if region is not None and region not in known.regions:
                    out.append(
                        Finding("error", origin, path, f"unknown region {region!r}{closest(region, known.regions)}")
                    )
    return out


@dataclass(slots=True)
class BuiltPatterns:
    patterns: PatternSet
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_patterns(
    paths: Sequence[Path], rule_ids: Iterable[str], known: Known | None = None, engine: Engine | None = None
) -> BuiltPatterns:
    """The pattern set of the files, with the names that can never match as problems; with ``engine``, then the
    patterns and overrides edited through the API stored there (``joint.pattern_store``: one that no longer fits is
    a problem and left out, as the service does). Raises UserError for a file that does not parse or validate."""
    from joint.pattern_store import PatternStore, add_api_layer

    ids = list(rule_ids)
    docs = PatternSet.read(paths)
    findings = check_files(docs, ids, known)
    if engine is None:
        built = BuiltPatterns(PatternSet.from_parsed(docs))
    else:
        store = PatternStore(engine)
        built = add_api_layer(docs, store.defs(), store.overrides(), ids, known, strict=lambda _o: False)
    built.problems[:0] = [str(f) for f in findings if f.level == "error"]
    built.warnings += [str(f) for f in findings if f.level == "warning"]
    return built
