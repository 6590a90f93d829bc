"""What the API edits of alert rules (``alerts/rule_store.py``) and correlation patterns (``joint/pattern_store.py``)
share: definitions and per-scope overrides stored in SQL with who made them and when, a change history with the
before / after values, the set's version (the id of the newest change), and validation against the current set
before anything is stored.

The spec type, its tables, how a scope is written to a row and how a candidate set is checked are the parameters;
each side keeps its own tables (migrations ``0006`` and ``0012_joint_pattern_edits``) and its public names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import JSON, DateTime, Engine, Integer, String, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from alerts.rule_check import Known
from core.errors import StoreUnavailable, UserError


class Edited:
    """Who made an API edit and who changed it last, and when (the definition and override tables)."""

    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Changed:
    """An entry of a change history: who changed what when, with the values before and after (None: created /
    deleted). A subclass adds the id column and the scope columns."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(16))  # override | the noun of a definition (rule, pattern)
    action: Mapped[str] = mapped_column(String(16))  # created | updated | deleted
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


def utc(at: datetime) -> datetime:
    """SQLite gives naive datetimes back: they were written in UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class SpecRejected(UserError):
    """A write that would make the set invalid; the message is the spec files' (origin: field path: what)."""

    def __init__(self, message: str, origin: str) -> None:
        super().__init__(message)
        self.origin = origin


class SpecConflict(UserError):
    """A write that contradicts what exists (an id a file defines, a row changed meanwhile)."""


class _Override(Protocol):
    @property
    def origin(self) -> str: ...


D = TypeVar("D")  # a stored definition (ApiRule, ApiPattern)
Ov = TypeVar("Ov", bound=_Override)  # a stored override (ApiOverride, ApiPatternOverride)
C = TypeVar("C")  # a change of the history (RuleChange, PatternChange)
S = TypeVar("S")  # an override's scope (Scope; a region id or None)
T = TypeVar("T")


class SpecStore(Generic[D, Ov, C, S]):
    """The API layer's rows of one spec type. Reads and writes raise StoreUnavailable when the database is down;
    a write that meets a row written meanwhile (a unique key) raises ``conflict``.

    A subclass names its tables and id column and converts rows; the ``_save_*`` / ``_delete_*`` methods do the
    writes with their history entries."""

    noun: ClassVar[str]  # "rule" / "pattern": messages and the history's target of a definition
    scope_word: ClassVar[str]  # "scope" / "region": the conflict message of an override
    id_col: ClassVar[str]  # the id column of all three tables
    def_table: ClassVar[Any]
    override_table: ClassVar[Any]
    change_table: ClassVar[Any]
    conflict: ClassVar[type[SpecConflict]] = SpecConflict

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- what differs ----------------------------------------------------------------------------------------

    def _to_def(self, row: Any) -> D:
        raise NotImplementedError

    def _to_override(self, row: Any) -> Ov:
        raise NotImplementedError

    def _to_change(self, row: Any) -> C:
        raise NotImplementedError

    def _scope_columns(self, scope: S) -> dict[str, Any]:
        """The columns of an override row (and of its history entries) that name the scope, without the id."""
        raise NotImplementedError

    def _scope_key(self, spec_id: str, scope: S) -> str:
        raise NotImplementedError

    def _override_scope(self, o: Ov) -> S:
        raise NotImplementedError

    def _override_values(self, o: Ov) -> dict[str, Any]:
        """What an override sets (the history's before / after)."""
        raise NotImplementedError

    def _def_columns(self, d: D) -> dict[str, Any]:
        """Extra columns of a definition's history entry (the kind, where the history keeps it)."""
        return {}

    # --- sessions --------------------------------------------------------------------------------------------

    def _read(self, fn: Callable[[Session], T]) -> T:
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                return fn(s)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"{self.noun} store read failed: {exc}") from exc

    def _write(self, fn: Callable[[Session], T], conflict: str) -> T:
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                return fn(s)
        except IntegrityError as exc:
            raise self.conflict(f"{conflict} was changed meanwhile; retry") from exc
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"{self.noun} store write failed: {exc}") from exc

    def _log(
        self,
        s: Session,
        at: datetime,
        actor: str,
        target: str,
        action: str,
        spec_id: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        **columns: Any,
    ) -> None:
        s.add(
            self.change_table(
                at=at,
                actor=actor,
                target=target,
                action=action,
                before=before,
                after=after,
                **{self.id_col: spec_id},
                **columns,
            )
        )

    # --- reads -----------------------------------------------------------------------------------------------

    def version(self) -> int:
        """The id of the newest change (0: never edited); it moves with every write. Whoever runs the set (maybe
        in another process) reloads it when it moved."""
        return int(self._read(lambda s: s.scalar(select(func.max(self.change_table.id)))) or 0)

    def _defs(self) -> list[D]:
        t = self.def_table
        q = select(t).order_by(t.created_at, getattr(t, self.id_col))
        return self._read(lambda s: [self._to_def(r) for r in s.scalars(q)])

    def overrides(self, spec_id: str | None = None) -> list[Ov]:
        """API overrides in the order they were first created (the order they are applied in)."""
        t = self.override_table
        q = select(t).order_by(t.id)
        if spec_id is not None:
            q = q.where(getattr(t, self.id_col) == spec_id)
        return self._read(lambda s: [self._to_override(r) for r in s.scalars(q)])

    def history(self, spec_id: str | None = None, limit: int = 100) -> list[C]:
        """Changes newest first."""
        t = self.change_table
        q = select(t).order_by(t.id.desc()).limit(limit)
        if spec_id is not None:
            q = q.where(getattr(t, self.id_col) == spec_id)
        return self._read(lambda s: [self._to_change(r) for r in s.scalars(q)])

    # --- writes ----------------------------------------------------------------------------------------------

    def _override_row(self, s: Session, spec_id: str, scope: S) -> Any:
        t = self.override_table
        return s.scalar(select(t).where(t.scope_key == self._scope_key(spec_id, scope)))

    def _save_override(
        self, spec_id: str, scope: S, columns: dict[str, Any], actor: str, now: datetime
    ) -> tuple[Ov, bool]:
        """Create or replace the override of ``spec_id`` at ``scope`` with ``columns`` (what it sets). Returns it
        and whether it is new."""
        now = utc(now)

        def write(s: Session) -> tuple[Ov, bool]:
            row = self._override_row(s, spec_id, scope)
            before = None if row is None else self._override_values(self._to_override(row))
            if row is None:
                row = self.override_table(
                    **{self.id_col: spec_id},
                    **self._scope_columns(scope),
                    scope_key=self._scope_key(spec_id, scope),
                    created_by=actor,
                    created_at=now,
                )
                s.add(row)
            for k, v in columns.items():
                setattr(row, k, v)
            row.updated_by, row.updated_at = actor, now
            s.flush()
            saved = self._to_override(row)
            action = "created" if before is None else "updated"
            after = self._override_values(saved)
            self._log(
                s, now, actor, "override", action, spec_id, before=before, after=after, **self._scope_columns(scope)
            )
            return saved, before is None

        return self._write(write, f"the override of {spec_id} at this {self.scope_word}")

    def _delete_override(self, spec_id: str, scope: S, actor: str, now: datetime) -> Ov | None:
        now = utc(now)

        def write(s: Session) -> Ov | None:
            row = self._override_row(s, spec_id, scope)
            if row is None:
                return None
            gone = self._to_override(row)
            s.delete(row)
            before = self._override_values(gone)
            self._log(s, now, actor, "override", "deleted", spec_id, before=before, **self._scope_columns(scope))
            return gone

        return self._write(write, f"the override of {spec_id}")

    def _save_def(self, spec_id: str, kind: str, data: dict[str, Any], actor: str, now: datetime) -> tuple[D, bool]:
        """Create or replace the definition ``spec_id`` (``data``: the spec as JSON)."""
        now = utc(now)

        def write(s: Session) -> tuple[D, bool]:
            row = s.get(self.def_table, spec_id)
            before = None if row is None else dict(row.spec)
            if row is None:
                row = self.def_table(**{self.id_col: spec_id}, created_by=actor, created_at=now)
                s.add(row)
            row.kind, row.spec, row.updated_by, row.updated_at = kind, data, actor, now
            s.flush()
            saved = self._to_def(row)
            action = "created" if before is None else "updated"
            self._log(s, now, actor, self.noun, action, spec_id, before=before, after=data, **self._def_columns(saved))
            return saved, before is None

        return self._write(write, f"{self.noun} {spec_id!r}")

    def _delete_def(self, spec_id: str, actor: str, now: datetime) -> tuple[D | None, list[Ov]]:
        """Delete the definition ``spec_id`` and the API overrides of it (they would refer to nothing)."""
        now = utc(now)

        def write(s: Session) -> tuple[D | None, list[Ov]]:
            row = s.get(self.def_table, spec_id)
            if row is None:
                return None, []
            gone = self._to_def(row)
            t = self.override_table
            rows = list(s.scalars(select(t).where(getattr(t, self.id_col) == spec_id)))
            removed = [self._to_override(o) for o in rows]
            for o, ov in zip(rows, removed, strict=True):
                s.delete(o)
                scope = self._scope_columns(self._override_scope(ov))
                self._log(s, now, actor, "override", "deleted", spec_id, before=self._override_values(ov), **scope)
            s.delete(row)
            self._log(s, now, actor, self.noun, "deleted", spec_id, before=dict(row.spec), **self._def_columns(gone))
            return gone, removed

        return self._write(write, f"{self.noun} {spec_id!r}")


class SpecAdmin(Generic[Ov]):
    """The editor of one spec type: writes are serialised by a lock (and by the rows' unique keys across
    processes); every write is checked against the current set before it is stored, then ``_changed`` runs (a
    subclass that keeps the set built applies it there)."""

    def __init__(self, store: SpecStore[Any, Ov, Any, Any], known: Callable[[], Known] | None = None) -> None:
        self.store = store
        self.known = known  # the registry's regions (and devices), read for every check
        self._lock = threading.RLock()

    def _known(self) -> Known | None:
        return self.known() if self.known is not None else None

    def _changed(self) -> None:
        """After a write that changed the stored set."""

    def _put_override(
        self,
        new: Ov,
        check: Callable[[list[Ov], Callable[[str], bool]], object],
        save: Callable[[], T],
    ) -> T:
        """Check the set with ``new`` in place of the override at its scope (or added) — ``check(overrides,
        strict)`` raises a SpecRejected for ``new`` —, then ``save`` it."""
        with self._lock:
            candidate = [new if o.origin == new.origin else o for o in self.store.overrides()]
            if not any(o is new for o in candidate):
                candidate.append(new)
            check(candidate, lambda origin: origin == new.origin)
            return self._store(save)

    def _store(self, save: Callable[[], T]) -> T:
        with self._lock:
            saved = save()
            self._changed()
            return saved

    def _delete(self, delete: Callable[[], T], found: Callable[[T], bool]) -> T:
        with self._lock:
            gone = delete()
            if found(gone):
                self._changed()
            return gone
