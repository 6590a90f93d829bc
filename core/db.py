"""SQL database (registry, alerts, audit): engine, declarative base, migrations.

SQLite by default, PostgreSQL by URL. The schema is owned by Alembic (``core/migrations``); ``migrate`` brings
any database to the head revision and is safe to call at every start.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from core.fsperm import private_file
from core.sqlite_writelock import LockingConnection, lock_for

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        on_file = bool(path) and path != ":memory:" and not path.startswith("file:")
        if on_file:
            # 0600 (SQLite gives the WAL and shared-memory files the same mode), its directory 0700 when created:
            # the registry holds secret and token hashes and the audit log.
            private_file(Path(path))
        # The file's in-process write lock (core/sqlite_writelock.py): this process's writers queue for it instead
        # of sleeping in SQLite's busy handler.
        wlock = lock_for(str(Path(path).resolve())) if on_file else None
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30, "factory": LockingConnection}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            if wlock is not None and isinstance(dbapi_conn, LockingConnection):
                dbapi_conn.attach(wlock)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def make_read_engine(url: str, *, connect_timeout_s: int = 2) -> Engine:
    """An engine on a PostgreSQL read replica (``database_read_url``, core/replica.py): a short connect timeout,
    so a replica that went away costs a read at most that long before it falls back to the primary."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_s})


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")  # packages add their own branches off 0001


def session_factory(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    return sessionmaker(engine, expire_on_commit=False)


class Upserter:
    """Batched ``INSERT ... ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL, one compiled statement per table,
    column set and key (the alert repository and the joint store write through it)."""

    def __init__(self, engine: Engine) -> None:
        self._pg = engine.dialect.name == "postgresql"
        self._stmts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}

    def __call__(self, conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
        if not rows:
            return
        cols = tuple(c for c in rows[0] if c not in keys)
        cache_key = (table.name, cols, tuple(keys))
        stmt = self._stmts.get(cache_key)
        if stmt is None:
            ins = postgresql.insert(table) if self._pg else sqlite.insert(table)
            stmt = ins.on_conflict_do_update(index_elements=list(keys), set_={c: ins.excluded[c] for c in cols})
            self._stmts[cache_key] = stmt
        conn.execute(stmt, rows)
