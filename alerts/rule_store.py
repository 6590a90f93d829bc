"""Alert rules edited through the API: stored in SQL, applied after the rule files, live.

The effective rule set has three layers, applied in this order:

1. the built-in packs (``alerts/packs``),
2. the rule files of ``settings.alerts.rules_paths`` (read once, at start-up),
3. the API layer: rules defined through the API, then overrides made through the API (tables from migration
   ``0006``), in the order they were first created.

An override applies by specificity (device type, region from the root down, device; see ``alerts.rules``); at the
same level a later layer wins, so an API override beats a file override of the same scope. Every write is
validated exactly like a rule file (``RuleSet.add_rule`` / ``RuleSet.add_override``: errors name the field
path) against the current rule set before it is stored, so an invalid rule never reaches the engine. Each write
keeps who made it and when on the row and appends the before / after values to ``alert_rule_changes``.

A stored entry that no longer fits the files (say an override of a rule a file no longer defines) is skipped with
an error in the log and listed in ``RuleAdmin.problems`` (``lianfang rules check`` reports it); the service still
starts, so the entry can be fixed or deleted through the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import JSON, Boolean, Engine, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from alerts.rule_check import Known, check_files, check_override, check_rule, errors, summary, warnings
from alerts.rules import OverrideSpec, RuleFile, RuleSet, RuleSpec, fmt_errors
from alerts.spec_admin import Changed, Edited, SpecAdmin, SpecConflict, SpecRejected, SpecStore, utc
from alerts.types import Severity
from core.db import Base
from core.errors import UserError

logger = logging.getLogger(__name__)

API_ORIGIN = "api"  # where API-defined rules come from (``RuleSet.rule_origin``)


# --- tables (migration 0006) -----------------------------------------------------------------------------------


class RuleOverrideRow(Edited, Base):
    __tablename__ = "alert_rule_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[str] = mapped_column(String(128))
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope_key: Mapped[str] = mapped_column(String(300), unique=True)
    enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    severity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)


class RuleDefRow(Edited, Base):
    __tablename__ = "alert_rule_defs"

    rule_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class RuleChangeRow(Changed, Base):
    __tablename__ = "alert_rule_changes"

    rule_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


# --- values --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Where an override applies: a region's subtree, optionally only one device type there; a device type
    everywhere; one device; or (all None) every device the rule covers."""

    region: str | None = None
    device_type: str | None = None
    device: str | None = None

    @property
    def is_global(self) -> bool:
        """Not limited to a region or a device (every region of the tree)."""
        return self.region is None and self.device is None

    def key(self, rule_id: str) -> str:
        return "|".join((rule_id, self.region or "", self.device_type or "", self.device or ""))

    def label(self, rule_id: str) -> str:
        """``api override V6 [region=gz device_type=vehicle]``: the origin shown by ``explain`` and in errors."""
        named = (("region", self.region), ("device_type", self.device_type), ("device", self.device))
        parts = [f"{k}={v}" for k, v in named if v is not None]
        return f"api override {rule_id} [{' '.join(parts) or 'all'}]"


@dataclass(frozen=True, slots=True)
class ApiOverride:
    id: int
    rule_id: str
    scope: Scope
    enabled: bool | None
    severity: str | None
    params: dict[str, Any]
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime

    @property
    def origin(self) -> str:
        return self.scope.label(self.rule_id)

    def spec(self) -> OverrideSpec:
        return _override_spec(self.rule_id, self.scope, self.enabled, self.severity, self.params)

    def values(self) -> dict[str, Any]:
        """What the override sets (the history's before / after)."""
        return {"enabled": self.enabled, "severity": self.severity, "params": self.params}


@dataclass(frozen=True, slots=True)
class ApiRule:
    rule_id: str
    kind: str
    spec: dict[str, Any]  # as written to the table (RuleSpec as JSON)
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RuleChange:
    id: int
    at: datetime
    actor: str
    target: str
    action: str
    rule_id: str
    kind: str | None
    scope: Scope
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class RuleRejected(SpecRejected):
    """A write that would make the rule set invalid; the message is the rule files' (origin: field path: what)."""


class RuleConflict(SpecConflict):
    """A write that contradicts what exists (a rule id a file defines, a kind that cannot change)."""


def _override_spec(
    rule_id: str, scope: Scope, enabled: bool | None, severity: str | None, params: dict[str, Any]
) -> OverrideSpec:
    return OverrideSpec(
        rule=rule_id,
        region=scope.region,
        device_type=scope.device_type,
        device=scope.device,
        enabled=enabled,
        severity=Severity(severity) if severity is not None else None,
        params=params,
    )


def _to_override(row: RuleOverrideRow) -> ApiOverride:
    return ApiOverride(
        row.id,
        row.rule_id,
        Scope(row.region_id, row.device_type, row.device_id),
        row.enabled,
        row.severity,
        dict(row.params),
        row.created_by,
        utc(row.created_at),
        row.updated_by,
        utc(row.updated_at),
    )


def _to_rule(row: RuleDefRow) -> ApiRule:
    return ApiRule(
        row.rule_id,
        row.kind,
        dict(row.spec),
        row.created_by,
        utc(row.created_at),
        row.updated_by,
        utc(row.updated_at),
    )


# --- the store -----------------------------------------------------------------------------------------------


class RuleStore(SpecStore[ApiRule, ApiOverride, RuleChange, Scope]):
    """The API layer's rows (``alerts.spec_admin.SpecStore``). Reads and writes raise StoreUnavailable when the
    database is down."""

    noun, scope_word, id_col = "rule", "scope", "rule_id"
    def_table, override_table, change_table = RuleDefRow, RuleOverrideRow, RuleChangeRow
    conflict = RuleConflict

    def _to_def(self, row: RuleDefRow) -> ApiRule:
        return _to_rule(row)

    def _to_override(self, row: RuleOverrideRow) -> ApiOverride:
        return _to_override(row)

    def _to_change(self, r: RuleChangeRow) -> RuleChange:
        scope = Scope(r.region_id, r.device_type, r.device_id)
        return RuleChange(r.id, utc(r.at), r.actor, r.target, r.action, r.rule_id, r.kind, scope, r.before, r.after)

    def _scope_columns(self, scope: Scope) -> dict[str, Any]:
        return {"region_id": scope.region, "device_type": scope.device_type, "device_id": scope.device}

    def _scope_key(self, spec_id: str, scope: Scope) -> str:
        return scope.key(spec_id)

    def _override_scope(self, o: ApiOverride) -> Scope:
        return o.scope

    def _override_values(self, o: ApiOverride) -> dict[str, Any]:
        return o.values()

    def _def_columns(self, d: ApiRule) -> dict[str, Any]:
        return {"kind": d.kind}

    def rules(self) -> list[ApiRule]:
        return self._defs()

    def kinds_used(self, rule_id: str) -> set[str]:
        """Every kind an API rule of this id ever had (its alert state may still exist)."""
        q = select(RuleChangeRow.kind).where(
            RuleChangeRow.target == "rule", RuleChangeRow.rule_id == rule_id, RuleChangeRow.kind.is_not(None)
        )
        return self._read(lambda s: {k for k in s.scalars(q) if k is not None})

    def save_override(
        self,
        rule_id: str,
        scope: Scope,
        enabled: bool | None,
        severity: str | None,
        params: dict[str, Any],
        actor: str,
        now: datetime,
    ) -> tuple[ApiOverride, bool]:
        """Create or replace the override of ``rule_id`` at ``scope``. Returns it and whether it is new."""
        columns = {"enabled": enabled, "severity": severity, "params": dict(params)}
        return self._save_override(rule_id, scope, columns, actor, now)

    def delete_override(self, rule_id: str, scope: Scope, actor: str, now: datetime) -> ApiOverride | None:
        return self._delete_override(rule_id, scope, actor, now)

    def save_rule(self, spec: RuleSpec, actor: str, now: datetime) -> tuple[ApiRule, bool]:
        return self._save_def(spec.id, spec.kind, spec.model_dump(mode="json"), actor, now)

    def delete_rule(self, rule_id: str, actor: str, now: datetime) -> tuple[ApiRule | None, list[ApiOverride]]:
        """Delete an API rule and the API overrides of it (they would refer to nothing)."""
        return self._delete_def(rule_id, actor, now)


# --- the effective rule set ----------------------------------------------------------------------------------


@dataclass
class Built:
    rules: RuleSet
    problems: list[str] = field(default_factory=list)  # errors: stored entries skipped, files' rules that never match
    warnings: list[str] = field(default_factory=list)  # may match, but probably not as meant (alerts.rule_check)


def _refuse(findings: list[Any]) -> None:
    """Raise UserError with one line per error of ``alerts.rule_check`` (the entry is not added)."""
    errs = errors(findings)
    if errs:
        raise UserError("\n".join(str(f) for f in errs))


def add_api_layer(
    rs: RuleSet,
    defs: Iterable[ApiRule],
    overrides: Iterable[ApiOverride],
    *,
    strict: Callable[[str], bool],
    known: Known | None = None,
) -> list[str]:
    """Add API rules, then API overrides to ``rs``. An entry that does not validate, or that can never match
    (``alerts.rule_check``; regions and devices against ``known``), raises ``RuleRejected`` when ``strict(its
    origin)``, else it is skipped and reported in the returned list."""
    problems: list[str] = []

    def attempt(origin: str, add: Callable[[], None]) -> None:
        try:
            add()
        except UserError as exc:
            if strict(origin):
                raise RuleRejected(str(exc), origin) from exc
            problems.append(f"{exc} (skipped)")

    for d in defs:
        origin = f"{API_ORIGIN} rule {d.rule_id}"

        def add_rule(d: ApiRule = d) -> None:
            try:
                spec = RuleSpec.model_validate(d.spec)
            except ValidationError as exc:
                raise UserError(f"{API_ORIGIN}: rule {d.rule_id}: {exc.errors()[0]['msg']}") from exc
            _refuse(check_rule(spec, API_ORIGIN))
            rs.add_rule(spec, API_ORIGIN)

        attempt(origin, add_rule)
    for o in overrides:

        def add_override(o: ApiOverride = o) -> None:
            try:
                spec = o.spec()
            except ValidationError as exc:
                raise UserError(fmt_errors(exc, o.origin)) from exc
            _refuse(check_override(spec, rs.rules, o.origin, "", known))
            rs.add_override(spec, o.origin)

        attempt(o.origin, add_override)
    return problems


class RuleAdmin(SpecAdmin[ApiOverride]):
    """The running rule set: the files (read once) plus the API layer; validates, stores and applies API edits.

    ``apply`` receives every new rule set (``AlertService.set_rules``); writes are serialised by a lock.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        store: RuleStore,
        apply: Callable[[RuleSet], None] | None = None,
        known: Callable[[], Known] | None = None,
    ) -> None:
        super().__init__(store, known)
        self.store: RuleStore = store
        self.paths = list(paths)
        self.apply = apply
        self._files = RuleSet.read(self.paths)  # UserError for a bad file: fails at start-up
        # A rule of the files that can never match fails the start-up too, in one line (rules check lists all).
        findings = check_files(self._files, RuleSet.from_parsed(self._files).rules, self._known())
        errs = errors(findings)
        if errs:
            raise UserError(f"rule files: {summary(errs)}")
        self.warnings = [str(w) for w in warnings(findings)]
        for line in self.warnings:
            logger.warning("rule files: %s", line)
        built = self._build(self.store.rules(), self.store.overrides())
        for line in built.problems:
            logger.error("rule edited through the API not applied: %s", line)
        self.rules = built.rules
        self.problems = built.problems

    @property
    def files(self) -> list[tuple[str, RuleFile]]:
        return list(self._files)

    def _build(
        self,
        defs: Sequence[ApiRule],
        overrides: Sequence[ApiOverride],
        strict: Callable[[str], bool] = lambda _origin: False,
    ) -> Built:
        rs = RuleSet.from_parsed(self._files)
        problems = add_api_layer(rs, defs, overrides, strict=strict, known=self._known())
        return Built(rs, problems)

    def reload(self) -> RuleSet:
        """Rebuild from the files read at start and the API layer as stored now, and apply it."""
        with self._lock:
            built = self._build(self.store.rules(), self.store.overrides())
            self.rules, self.problems = built.rules, built.problems
            if self.apply is not None:
                self.apply(built.rules)
            return built.rules

    def _changed(self) -> None:
        self.reload()

    # --- writes ------------------------------------------------------------------------------------------

    def put_override(
        self,
        rule_id: str,
        scope: Scope,
        *,
        enabled: bool | None,
        severity: str | None,
        params: dict[str, Any],
        actor: str,
        now: datetime,
    ) -> tuple[ApiOverride, bool]:
        """Validate, store and apply the override of ``rule_id`` at ``scope`` (replacing one there). Raises
        RuleRejected with the rule files' message when it does not validate."""
        new = ApiOverride(0, rule_id, scope, enabled, severity, dict(params), actor, now, actor, now)
        return self._put_override(
            new,
            lambda candidate, strict: self._build(self.store.rules(), candidate, strict=strict),
            lambda: self.store.save_override(rule_id, scope, enabled, severity, params, actor, now),
        )

    def delete_override(self, rule_id: str, scope: Scope, *, actor: str, now: datetime) -> ApiOverride | None:
        return self._delete(lambda: self.store.delete_override(rule_id, scope, actor, now), lambda g: g is not None)

    def put_rule(self, spec: RuleSpec, *, actor: str, now: datetime) -> tuple[ApiRule, bool]:
        """Validate, store and apply an API-defined rule. Raises RuleConflict for an id a file defines or a kind
        the id had before, RuleRejected when the params do not validate."""
        with self._lock:
            defined_in = self.rules.rule_origin.get(spec.id)
            if defined_in is not None and defined_in != API_ORIGIN:
                raise RuleConflict(f"rule {spec.id!r} is defined in {defined_in}; override it instead")
            other_kinds = self.store.kinds_used(spec.id) - {spec.kind}
            if other_kinds:
                raise RuleConflict(
                    f"rule id {spec.id!r} was used for kind {', '.join(sorted(other_kinds))}, whose alert state may "
                    "still exist: choose a new id"
                )
            defs = [d for d in self.store.rules() if d.rule_id != spec.id]
            rs = RuleSet.from_parsed(self._files)
            add_api_layer(rs, defs, [], strict=lambda _o: False)
            try:
                _refuse(check_rule(spec, API_ORIGIN))
                rs.add_rule(spec, API_ORIGIN)
            except UserError as exc:
                raise RuleRejected(str(exc), API_ORIGIN) from exc
            # The existing overrides of the rule must still fit its new params.
            add_api_layer(rs, [], self.store.overrides(spec.id), strict=lambda _o: True, known=self._known())
            return self._store(lambda: self.store.save_rule(spec, actor, now))

    def delete_rule(self, rule_id: str, *, actor: str, now: datetime) -> tuple[ApiRule | None, list[ApiOverride]]:
        return self._delete(lambda: self.store.delete_rule(rule_id, actor, now), lambda g: g[0] is not None)


def load_rules(paths: Sequence[Path], engine: Engine | None, known: Known | None = None) -> Built:
    """The rule set of the files plus (with an engine) the API layer stored in its database; for the CLI.

    ``problems``: the files' rules and overrides that can never match (``alerts.rule_check``; regions and devices
    only with ``known``) and the API entries that are skipped; ``warnings``: what may match but likely not as
    meant."""
    docs = RuleSet.read(paths)
    rs = RuleSet.from_parsed(docs)
    findings = check_files(docs, rs.rules, known)
    built = Built(rs, [str(f) for f in errors(findings)], [str(f) for f in warnings(findings)])
    if engine is not None:
        store = RuleStore(engine)
        built.problems += add_api_layer(rs, store.rules(), store.overrides(), strict=lambda _o: False, known=known)
    return built
