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
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import JSON, DateTime, Engine, Integer, String, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from alerts.rule_check import Known
from alerts.rule_store import _Edited, _utc  # the same who-and-when columns and UTC reading as the rule edits
from alerts.specfile import fmt_errors
from core.db import Base
from core.errors import StoreUnavailable, UserError
from joint.patterns import API_ORIGIN, BuiltPatterns, PatternFile, PatternOverride, PatternSet, PatternSpec, check_files

logger = logging.getLogger(__name__)

OVERRIDE_FIELDS = ("enabled", "severity", "window_s", "mute_members", "params")


# --- tables (migration 0012_joint_pattern_edits) -----------------------------------------------------------------


class PatternDefRow(_Edited, Base):
    __tablename__ = "joint_pattern_defs"

    pattern_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class PatternOverrideRow(_Edited, Base):
    __tablename__ = "joint_pattern_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pattern_id: Mapped[str] = mapped_column(String(128))
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope_key: Mapped[str] = mapped_column(String(200), unique=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class PatternChangeRow(Base):
    __tablename__ = "joint_pattern_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(16))  # override | pattern
    action: Mapped[str] = mapped_column(String(16))  # created | updated | deleted
    pattern_id: Mapped[str] = mapped_column(String(128))
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


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


class PatternRejected(UserError):
    """A write that would make the pattern set invalid; the message is the pattern files' (origin: path: what)."""

    def __init__(self, message: str, origin: str) -> None:
        super().__init__(message)
        self.origin = origin


class PatternConflict(UserError):
    """A write that contradicts what exists (a pattern id a file defines)."""


def _key(pattern_id: str, region: str | None) -> str:
    return f"{pattern_id}|{region or ''}"


def _to_def(r: PatternDefRow) -> ApiPattern:
    return ApiPattern(
        r.pattern_id, r.kind, dict(r.spec), r.created_by, _utc(r.created_at), r.updated_by, _utc(r.updated_at)
    )


def _to_override(r: PatternOverrideRow) -> ApiPatternOverride:
    return ApiPatternOverride(
        r.id,
        r.pattern_id,
        r.region_id,
        dict(r.values),
        r.created_by,
        _utc(r.created_at),
        r.updated_by,
        _utc(r.updated_at),
    )


# --- the store -----------------------------------------------------------------------------------------------


class PatternStore:
    """The API layer's rows. Reads and writes raise StoreUnavailable when the database is down."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _read(self, fn: Callable[[Session], Any]) -> Any:
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                return fn(s)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"pattern store read failed: {exc}") from exc

    def _write(self, fn: Callable[[Session], Any], conflict: str) -> Any:
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                return fn(s)
        except IntegrityError as exc:
            raise PatternConflict(f"{conflict} was changed meanwhile; retry") from exc
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"pattern store write failed: {exc}") from exc

    def version(self) -> int:
        """The id of the newest change (0: never edited); it moves with every write."""
        return int(self._read(lambda s: s.scalar(select(func.max(PatternChangeRow.id)))) or 0)

    def defs(self) -> list[ApiPattern]:
        q = select(PatternDefRow).order_by(PatternDefRow.created_at, PatternDefRow.pattern_id)
        return self._read(lambda s: [_to_def(r) for r in s.scalars(q)])  # type: ignore[no-any-return]

    def overrides(self, pattern_id: str | None = None) -> list[ApiPatternOverride]:
        """API overrides in the order they were first created (the order they are applied in)."""
        q = select(PatternOverrideRow).order_by(PatternOverrideRow.id)
        if pattern_id is not None:
            q = q.where(PatternOverrideRow.pattern_id == pattern_id)
        return self._read(lambda s: [_to_override(r) for r in s.scalars(q)])  # type: ignore[no-any-return]

    def history(self, pattern_id: str | None = None, limit: int = 100) -> list[PatternChange]:
        """Changes newest first."""
        q = select(PatternChangeRow).order_by(PatternChangeRow.id.desc()).limit(limit)
        if pattern_id is not None:
            q = q.where(PatternChangeRow.pattern_id == pattern_id)

        def read(s: Session) -> list[PatternChange]:
            return [
                PatternChange(
                    r.id, _utc(r.at), r.actor, r.target, r.action, r.pattern_id, r.region_id, r.before, r.after
                )
                for r in s.scalars(q)
            ]

        return self._read(read)  # type: ignore[no-any-return]

    @staticmethod
    def _log(
        s: Session,
        at: datetime,
        actor: str,
        target: str,
        action: str,
        pattern_id: str,
        region: str | None = None,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        s.add(
            PatternChangeRow(
                at=at,
                actor=actor,
                target=target,
                action=action,
                pattern_id=pattern_id,
                region_id=region,
                before=before,
                after=after,
            )
        )

    def save_override(
        self, pattern_id: str, region: str | None, values: dict[str, Any], actor: str, now: datetime
    ) -> tuple[ApiPatternOverride, bool]:
        """Create or replace the override of ``pattern_id`` at ``region``. Returns it and whether it is new."""
        now = _utc(now)

        def write(s: Session) -> tuple[ApiPatternOverride, bool]:
            row = s.scalar(select(PatternOverrideRow).where(PatternOverrideRow.scope_key == _key(pattern_id, region)))
            before = None if row is None else dict(row.values)
            if row is None:
                row = PatternOverrideRow(
                    pattern_id=pattern_id,
                    region_id=region,
                    scope_key=_key(pattern_id, region),
                    created_by=actor,
                    created_at=now,
                )
                s.add(row)
            row.values, row.updated_by, row.updated_at = dict(values), actor, now
            s.flush()
            action = "created" if before is None else "updated"
            self._log(s, now, actor, "override", action, pattern_id, region, before=before, after=dict(values))
            return _to_override(row), before is None

        return self._write(write, f"the override of {pattern_id} at this region")  # type: ignore[no-any-return]

    def delete_override(
        self, pattern_id: str, region: str | None, actor: str, now: datetime
    ) -> ApiPatternOverride | None:
        now = _utc(now)

        def write(s: Session) -> ApiPatternOverride | None:
            row = s.scalar(select(PatternOverrideRow).where(PatternOverrideRow.scope_key == _key(pattern_id, region)))
            if row is None:
                return None
            gone = _to_override(row)
            s.delete(row)
            self._log(s, now, actor, "override", "deleted", pattern_id, region, before=gone.values)
            return gone

        return self._write(write, f"the override of {pattern_id}")  # type: ignore[no-any-return]

    def save_def(self, spec: PatternSpec, actor: str, now: datetime) -> tuple[ApiPattern, bool]:
        data = spec.model_dump(mode="json")
        now = _utc(now)

        def write(s: Session) -> tuple[ApiPattern, bool]:
            row = s.get(PatternDefRow, spec.id)
            before = None if row is None else dict(row.spec)
            if row is None:
                row = PatternDefRow(pattern_id=spec.id, created_by=actor, created_at=now)
                s.add(row)
            row.kind, row.spec, row.updated_by, row.updated_at = spec.kind, data, actor, now
            s.flush()
            action = "created" if before is None else "updated"
            self._log(s, now, actor, "pattern", action, spec.id, before=before, after=data)
            return _to_def(row), before is None

        return self._write(write, f"pattern {spec.id!r}")  # type: ignore[no-any-return]

    def delete_def(
        self, pattern_id: str, actor: str, now: datetime
    ) -> tuple[ApiPattern | None, list[ApiPatternOverride]]:
        """Delete an API pattern and the API overrides of it (they would refer to nothing)."""
        now = _utc(now)

        def write(s: Session) -> tuple[ApiPattern | None, list[ApiPatternOverride]]:
            row = s.get(PatternDefRow, pattern_id)
            if row is None:
                return None, []
            gone = _to_def(row)
            rows = list(s.scalars(select(PatternOverrideRow).where(PatternOverrideRow.pattern_id == pattern_id)))
            removed = [_to_override(o) for o in rows]
            for o, ov in zip(rows, removed, strict=True):
                s.delete(o)
                self._log(s, now, actor, "override", "deleted", pattern_id, ov.region, before=ov.values)
            s.delete(row)
            self._log(s, now, actor, "pattern", "deleted", pattern_id, before=gone.spec)
            return gone, removed

        return self._write(write, f"pattern {pattern_id!r}")  # type: ignore[no-any-return]


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


class PatternAdmin:
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
        self.paths = list(paths)
        self.store = store
        self.rule_ids = rule_ids
        self.known = known
        self.files = PatternSet.read(self.paths)  # UserError for a bad file: fails at start-up
        self._lock = threading.RLock()

    def _known(self) -> Known | None:
        return self.known() if self.known is not None else None

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
        with self._lock:
            new = ApiPatternOverride(0, pattern_id, region, dict(values), actor, now, actor, now)
            key = _key(pattern_id, region)
            existing = self.store.overrides()
            candidate = [new if _key(o.pattern_id, o.region) == key else o for o in existing]
            if not any(o is new for o in candidate):
                candidate.append(new)
            self.build(overrides=candidate, strict=lambda origin: origin == new.origin)
            return self.store.save_override(pattern_id, region, values, actor, now)

    def delete_override(
        self, pattern_id: str, region: str | None, *, actor: str, now: datetime
    ) -> ApiPatternOverride | None:
        with self._lock:
            return self.store.delete_override(pattern_id, region, actor, now)

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
            return self.store.save_def(spec, actor, now)

    def delete_pattern(
        self, pattern_id: str, *, actor: str, now: datetime
    ) -> tuple[ApiPattern | None, list[ApiPatternOverride]]:
        with self._lock:
            return self.store.delete_def(pattern_id, actor, now)
