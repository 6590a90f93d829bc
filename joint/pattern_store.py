"""Correlation patterns edited through the API: stored in SQL, applied after the pattern files, picked up live.

The effective pattern set has three layers, applied in this order (like the alert rules, ``alerts/rule_store.py``):

1. the X packs (``joint/packs``, unless ``joint.packs`` is off),
2. the pattern files of ``joint.patterns_paths``,
3. the API layer: patterns defined through the API, then per-region overrides made through the API (tables of
   migration ``0012_joint_pattern_edits``), in the order they were first created.

Every write is validated exactly like a pattern file and checked like ``lianfang rules check`` (an alert rule, a
rule kind, a device type or a region that does not exist is refused, naming it and the closest known name) against
the current set before it is stored, so an invalid pattern never reaches the correlator. Each write keeps who made
it and when, and appends the before / after values to ``joint_pattern_changes``. The id of the newest change is the
set's *version*: the running correlator (``joint.service.JointService``, maybe in another process) compares it
every few seconds and reloads its patterns when it moved, so an edit takes effect without a restart.

A stored entry that no longer fits the files (an override of a pattern a file no longer defines) is skipped with
an error in the log and listed in ``problems``; the service still starts, so the entry can be fixed or deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from alerts.rule_check import Known
from alerts.spec_admin import Changed, Edited, SpecAdmin, SpecConflict, SpecRejected, SpecStore, utc
from alerts.specfile import fmt_errors
from core.db import Base
from core.errors import UserError
from joint.patterns import API_ORIGIN, BuiltPatterns, PatternFile, PatternOverride, PatternSet, PatternSpec, check_files

logger = logging.getLogger(__name__)

OVERRIDE_FIELDS = ("enabled", "severity", "window_s", "mute_members", "params")


# --- tables (migration 0012_joint_pattern_edits) -----------------------------------------------------------------


class PatternDefRow(Edited, Base):
    __tablename__ = "joint_pattern_defs"

    pattern_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class PatternOverrideRow(Edited, Base):
    __tablename__ = "joint_pattern_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pattern_id: Mapped[str] = mapped_column(String(128))
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope_key: Mapped[str] = mapped_column(String(200), unique=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class PatternChangeRow(Changed, Base):
    __tablename__ = "joint_pattern_changes"

    pattern_id: Mapped[str] = mapped_column(String(128))
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


# --- values --------------------------------------------------------------------------------------------------


def override_label(pattern_id: str, region: str | None) -> str:
    """``api override X5 [region=gz]``: the origin ``explain`` shows and errors name."""
    return f"{API_ORIGIN} override {pattern_id} [{f'region={region}' if region else 'all'}]"


@dataclass(frozen=True, slots=True)
class ApiPattern:
    pattern_id: str
    kind: str
    spec: dict[str, Any]  # PatternSpec as JSON
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiPatternOverride:
    id: int
    pattern_id: str
    region: str | None
    values: dict[str, Any]  # the set ones of OVERRIDE_FIELDS
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime

    @property
    def origin(self) -> str:
        return override_label(self.pattern_id, self.region)

    def spec(self) -> PatternOverride:
        return PatternOverride.model_validate({"pattern": self.pattern_id, "region": self.region, **self.values})


@dataclass(frozen=True, slots=True)
class PatternChange:
    id: int
    at: datetime
    actor: str
    target: str
    action: str
    pattern_id: str
    region: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class PatternRejected(SpecRejected):
    """A write that would make the pattern set invalid; the message is the pattern files' (origin: path: what)."""


class PatternConflict(SpecConflict):
    """A write that contradicts what exists (a pattern id a file defines)."""


def _key(pattern_id: str, region: str | None) -> str:
    return f"{pattern_id}|{region or ''}"


def _to_def(r: PatternDefRow) -> ApiPattern:
    return ApiPattern(
        r.pattern_id, r.kind, dict(r.spec), r.created_by, utc(r.created_at), r.updated_by, utc(r.updated_at)
    )


def _to_override(r: PatternOverrideRow) -> ApiPatternOverride:
    return ApiPatternOverride(
        r.id,
        r.pattern_id,
        r.region_id,
        dict(r.values),
        r.created_by,
        utc(r.created_at),
        r.updated_by,
        utc(r.updated_at),
    )


# --- the store -----------------------------------------------------------------------------------------------


class PatternStore(SpecStore[ApiPattern, ApiPatternOverride, PatternChange, str | None]):
    """The API layer's rows (``alerts.spec_admin.SpecStore``; the scope of an override is a region id, None for
    every region). Reads and writes raise StoreUnavailable when the database is down."""

    noun, scope_word, id_col = "pattern", "region", "pattern_id"
    def_table, override_table, change_table = PatternDefRow, PatternOverrideRow, PatternChangeRow
    conflict = PatternConflict

    def _to_def(self, row: PatternDefRow) -> ApiPattern:
        return _to_def(row)

    def _to_override(self, row: PatternOverrideRow) -> ApiPatternOverride:
        return _to_override(row)

    def _to_change(self, r: PatternChangeRow) -> PatternChange:
        return PatternChange(r.id, utc(r.at), r.actor, r.target, r.action, r.pattern_id, r.region_id, r.before, r.after)

    def _scope_columns(self, scope: str | None) -> dict[str, Any]:
        return {"region_id": scope}

    def _scope_key(self, spec_id: str, scope: str | None) -> str:
        return _key(spec_id, scope)

    def _override_scope(self, o: ApiPatternOverride) -> str | None:
        return o.region

    def _override_values(self, o: ApiPatternOverride) -> dict[str, Any]:
        return dict(o.values)

    def defs(self) -> list[ApiPattern]:
        return self._defs()

    def save_override(
        self, pattern_id: str, region: str | None, values: dict[str, Any], actor: str, now: datetime
    ) -> tuple[ApiPatternOverride, bool]:
        """Create or replace the override of ``pattern_id`` at ``region``. Returns it and whether it is new."""
        return self._save_override(pattern_id, region, {"values": dict(values)}, actor, now)

    def delete_override(
        self, pattern_id: str, region: str | None, actor: str, now: datetime
    ) -> ApiPatternOverride | None:
        return self._delete_override(pattern_id, region, actor, now)

    def save_def(self, spec: PatternSpec, actor: str, now: datetime) -> tuple[ApiPattern, bool]:
        return self._save_def(spec.id, spec.kind, spec.model_dump(mode="json"), actor, now)

    def delete_def(
        self, pattern_id: str, actor: str, now: datetime
    ) -> tuple[ApiPattern | None, list[ApiPatternOverride]]:
        """Delete an API pattern and the API overrides of it (they would refer to nothing)."""
        return self._delete_def(pattern_id, actor, now)


# --- the effective pattern set -------------------------------------------------------------------------------


def _def_doc(d: ApiPattern) -> PatternFile:
    try:
        return PatternFile(patterns=[PatternSpec.model_validate(d.spec)])
    except ValidationError as exc:
        raise UserError(fmt_errors(exc, f"{API_ORIGIN} pattern {d.pattern_id}", "", PatternSpec)) from exc


def _override_doc(o: ApiPatternOverride) -> PatternFile:
    try:
        return PatternFile(overrides=[o.spec()])
    except ValidationError as exc:
        raise UserError(fmt_errors(exc, o.origin, "", PatternOverride)) from exc


def add_api_layer(
    files: Sequence[tuple[str, PatternFile]],
    defs: Iterable[ApiPattern],
    overrides: Iterable[ApiPatternOverride],
    rule_ids: Iterable[str],
    known: Known | None,
    *,
    strict: Callable[[str], bool],
) -> BuiltPatterns:
    """The pattern set of ``files`` plus the API entries that validate and can match. An entry that does not
    (``PatternSet.from_parsed``, then ``check_files`` like ``rules check``) raises ``PatternRejected`` when
    ``strict(its origin)``, else it is skipped and reported in ``problems``."""
    ids = set(rule_ids)
    docs = list(files)
    built = BuiltPatterns(PatternSet.from_parsed(docs))
    entries: list[tuple[str, ApiPattern | ApiPatternOverride]] = [
        (f"{API_ORIGIN} pattern {d.pattern_id}", d) for d in defs
    ]
    entries += [(o.origin, o) for o in overrides]
    for origin, entry in entries:
        try:
            doc = _def_doc(entry) if isinstance(entry, ApiPattern) else _override_doc(entry)
            candidate = [*docs, (origin, doc)]
            ps = PatternSet.from_parsed(candidate)
            errs = [str(f) for f in check_files([(origin, doc)], ids, known, ps) if f.level == "error"]
            if errs:
                raise UserError("\n".join(errs))
        except UserError as exc:
            if strict(origin):
                raise PatternRejected(str(exc), origin) from exc
            built.problems.append(f"{exc} (skipped)")
            continue
        docs, built.patterns = candidate, ps
    return built


class PatternAdmin(SpecAdmin[ApiPatternOverride]):
    """The pattern files (read once) plus the API layer: validates and stores API edits; builds the current set.

    ``rule_ids()`` gives the alert rules a pattern may name, ``known()`` the registry's regions (read for every
    check). Writes are serialised by a lock (and by the rows' unique keys across processes)."""

    def __init__(
        self,
        paths: Sequence[Path],
        store: PatternStore,
        rule_ids: Callable[[], Iterable[str]],
        known: Callable[[], Known] | None = None,
    ) -> None:
        super().__init__(store, known)
        self.store: PatternStore = store
        self.paths = list(paths)
        self.rule_ids = rule_ids
        self.files = PatternSet.read(self.paths)  # UserError for a bad file: fails at start-up

    def file_problems(self) -> list[str]:
        """The files' patterns that can never match (``rules check``'s errors)."""
        findings = check_files(self.files, self.rule_ids(), self._known())
        return [str(f) for f in findings if f.level == "error"]

    def build(
        self,
        defs: Sequence[ApiPattern] | None = None,
        overrides: Sequence[ApiPatternOverride] | None = None,
        strict: Callable[[str], bool] = lambda _origin: False,
    ) -> BuiltPatterns:
        """The effective set: the files, then the API layer as stored (or as given)."""
        return add_api_layer(
            self.files,
            self.store.defs() if defs is None else defs,
            self.store.overrides() if overrides is None else overrides,
            self.rule_ids(),
            self._known(),
            strict=strict,
        )

    def versioned(self) -> tuple[int, BuiltPatterns]:
        """The version and the set built from it (the version read first: a write between the two reloads again)."""
        version = self.store.version()
        return version, self.build()

    def file_origin(self, pattern_id: str) -> str | None:
        """The file that defines ``pattern_id``, or None."""
        for origin, doc in self.files:
            if any(p.id == pattern_id for p in doc.patterns):
                return origin
        return None

    # --- writes ------------------------------------------------------------------------------------------

    def put_override(
        self, pattern_id: str, region: str | None, values: dict[str, Any], *, actor: str, now: datetime
    ) -> tuple[ApiPatternOverride, bool]:
        """Validate and store the override of ``pattern_id`` (``*``: every pattern) at ``region`` (None: every
        region). Raises PatternRejected with the pattern files' message when it does not validate."""
        new = ApiPatternOverride(0, pattern_id, region, dict(values), actor, now, actor, now)
        return self._put_override(
            new,
            lambda candidate, strict: self.build(overrides=candidate, strict=strict),
            lambda: self.store.save_override(pattern_id, region, values, actor, now),
        )

    def delete_override(
        self, pattern_id: str, region: str | None, *, actor: str, now: datetime
    ) -> ApiPatternOverride | None:
        return self._delete(lambda: self.store.delete_override(pattern_id, region, actor, now), lambda g: g is not None)

    def put_pattern(self, spec: PatternSpec, *, actor: str, now: datetime) -> tuple[ApiPattern, bool]:
        """Validate and store an API-defined pattern. PatternConflict for an id a file defines; PatternRejected
        when it (or an existing override of it) does not validate or can never match."""
        with self._lock:
            defined_in = self.file_origin(spec.id)
            if defined_in is not None:
                raise PatternConflict(f"pattern {spec.id!r} is defined in {defined_in}; override it instead")
            new = ApiPattern(spec.id, spec.kind, spec.model_dump(mode="json"), actor, now, actor, now)
            defs = [d for d in self.store.defs() if d.pattern_id != spec.id] + [new]
            origin = f"{API_ORIGIN} pattern {spec.id}"
            mine = {o.origin for o in self.store.overrides(spec.id)}
            self.build(defs=defs, strict=lambda o: o == origin or o in mine)
            return self._store(lambda: self.store.save_def(spec, actor, now))

    def delete_pattern(
        self, pattern_id: str, *, actor: str, now: datetime
    ) -> tuple[ApiPattern | None, list[ApiPatternOverride]]:
        return self._delete(lambda: self.store.delete_def(pattern_id, actor, now), lambda g: g[0] is not None)
