"""Audit records of security-relevant actions: who, when, what, from where, and the outcome — never a secret.

Provisioning writes one record per device and action; the gateway may write its own actions to the same table.

The records form a hash chain: record ``seq`` (1, 2, 3, ... with no gap) carries ``prev_hash``, the hash of record
``seq - 1`` (:data:`GENESIS` for the first), and ``hash``, SHA-256 over the canonical JSON (sorted keys) of its
content and ``prev_hash`` (:func:`record_hash`). The newest ``seq`` and ``hash`` are kept in the one-row table
``audit_chain_head``; a writer locks that row (``UPDATE`` first: a row lock on PostgreSQL, the write lock on
SQLite) before it reads the head, so the chain stays linear with writers in several processes, and a lock in the
process orders its own threads. :func:`verify` walks the chain and names every edited, deleted or reordered
record; an anchor (``seq:hash`` published by :func:`anchor` to the log and the metrics) also reveals a deleted
tail.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import JSON, DateTime, Integer, String, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base
from core.errors import StoreUnavailable

logger = logging.getLogger(__name__)

# The anchor (:func:`anchor`): the newest record's number as a metric. Its hash goes to the log only: a hash as a
# label would be a new time series at every anchor.
ANCHOR_SEQ = Gauge("lianfang_audit_anchor_seq", "Sequence number of the newest audit record at the last anchor")
ANCHOR_TIME = Gauge("lianfang_audit_anchor_timestamp_seconds", "When the audit chain was last anchored (Unix time)")

# Keys that must never reach the audit log, whatever a caller passes in ``detail``.
_FORBIDDEN_KEYS = frozenset({"secret", "password", "token", "secret_hash", "passwd"})


class AuditRecord(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    origin: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """One row (id 1): the newest record's ``seq`` and ``hash``; writers lock it to keep the chain linear."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


GENESIS = "0" * 64


def utc_instant(ts: datetime) -> str:
    """``ts`` as a UTC instant, ISO 8601 with microseconds; a naive value (SQLite gives those back) is UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(content: Mapping[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_hash(
    *,
    seq: int,
    ts: datetime,
    actor: str,
    origin: str,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any] | None,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical JSON of a record's content and the previous record's hash."""
    content = {
        "seq": seq,
        "ts": utc_instant(ts),
        "actor": actor,
        "origin": origin,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": dict(detail or {}),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical(content).encode("utf-8")).hexdigest()


def hash_of(r: AuditRecord, *, seq: int | None = None) -> str:
    """The hash ``r`` should carry (at ``seq`` instead of its own when given)."""
    return record_hash(
        seq=r.seq if seq is None else seq,
        ts=r.ts,
        actor=r.actor,
        origin=r.origin,
        action=r.action,
        target=r.target,
        outcome=r.outcome,
        detail=r.detail,
        prev_hash=r.prev_hash,
    )


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts and from where (an OS user on a host, an API user from an IP address)."""

    who: str
    origin: str

    @classmethod
    def from_cli(cls) -> Actor:
        """The person at this terminal: OS user, host, and the SSH peer address when logged in remotely."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = f"uid:{os.getuid()}"
        origin = f"cli@{socket.gethostname()}"
        ssh = os.environ.get("SSH_CLIENT", "").split()
        if ssh:
            origin += f" from {ssh[0]}"
        return cls(who, origin)


def clean_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop any key that could carry a secret."""
    return {k: v for k, v in (detail or {}).items() if k.lower() not in _FORBIDDEN_KEYS}


# Orders the writers of this process (several AuditLog objects share it); the database lock orders processes.
_WRITE_LOCK = threading.Lock()


class AuditLog:
    def __init__(self, session_factory: Any) -> None:
        """``session_factory``: a callable returning a SQLAlchemy Session (e.g. ``Registry.session``)."""
        self._session = session_factory

    def write(
        self,
        actor: Actor,
        action: str,
        targets: Iterable[str],
        *,
        now: datetime,
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
        session: Session | None = None,
        source: str | None = None,
    ) -> int:
        """One record per target, chained. Inside ``session`` if given (same transaction: the chain head stays
        locked until the caller commits). ``source`` (e.g. ``"api from 10.0.0.7"``) replaces ``actor.origin``."""
        # Through JSON and back, so that what is hashed is exactly what the database gives back.
        d: dict[str, Any] = json.loads(canonical(clean_detail(detail)))
        ts = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).astimezone(UTC)
        origin = (actor.origin if source is None else source)[:200]
        base = [
            {
                "ts": ts,
                "actor": actor.who[:200],
                "origin": origin,
                "action": action[:64],
                "target": t[:200],
                "outcome": outcome[:16],
                "detail": d,
            }
            for t in targets
        ]
        if not base:
            return 0
        try:
            if session is not None:
                # The caller's transaction holds the head row until it commits: the database lock alone orders
                # this (the process lock, held across a caller's later writes, could deadlock with another thread).
                self._append(session, base)
            else:
                with _WRITE_LOCK, self._session() as s, s.begin():  # held until the commit
                    self._append(s, base)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log write failed: {exc}") from exc
        return len(base)

    @staticmethod
    def _append(s: Session, base: list[dict[str, Any]]) -> None:
        # The UPDATE comes first: it takes the row lock (PostgreSQL) or the database's write lock (SQLite) before
        # the head is read, so no other writer can read the same head.
        locked = s.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(seq=AuditChainHead.seq))
        head = s.get(AuditChainHead, 1, populate_existing=True)
        if head is None or getattr(locked, "rowcount", 1) == 0:
            head = AuditChainHead(id=1, seq=0, hash=GENESIS)
            s.add(head)
            s.flush()
        seq, prev = head.seq, head.hash
        rows = []
        for row in base:
            seq += 1
            h = record_hash(seq=seq, prev_hash=prev, **row)
            rows.append({**row, "seq": seq, "prev_hash": prev, "hash": h})
            prev = h
        s.execute(insert(AuditRecord), rows)
        head.seq, head.hash = seq, prev
        s.flush()

    def head(self) -> tuple[int, str]:
        """The newest record's ``(seq, hash)``; ``(0, GENESIS)`` for an empty log."""
        try:
            with self._session() as s:
                h = s.get(AuditChainHead, 1)
                return (0, GENESIS) if h is None else (h.seq, h.hash)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log read failed: {exc}") from exc

    def records(
        self,
        *,
        target: str | None = None,
        action: str | None = None,
        limit: int = 100,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
    ) -> Sequence[AuditRecord]:
        """Newest first. ``actor`` matches the start of the actor (``alice`` finds ``alice (admin)``); ``since``
        inclusive, ``until`` exclusive."""
        q = self._filtered(target=target, action=action, actor=actor, since=since, until=until)
        try:
            with self._session() as s:
                return list(s.scalars(q.order_by(AuditRecord.seq.desc()).offset(offset).limit(limit)))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log read failed: {exc}") from exc

    def count(
        self,
        *,
        target: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        q = self._filtered(target=target, action=action, actor=actor, since=since, until=until)
        try:
            with self._session() as s:
                return int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log read failed: {exc}") from exc

    @staticmethod
    def _filtered(
        *,
        target: str | None,
        action: str | None,
        actor: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Any:
        q = select(AuditRecord)
        if target is not None:
            q = q.where(AuditRecord.target == target)
        if action is not None:
            q = q.where(AuditRecord.action == action)
        if actor is not None:
            q = q.where((AuditRecord.actor == actor) | AuditRecord.actor.startswith(actor + " ", autoescape=True))
        if since is not None:
            q = q.where(AuditRecord.ts >= since.astimezone(UTC))
        if until is not None:
            q = q.where(AuditRecord.ts < until.astimezone(UTC))
        return q

    def iter_chain(self, batch: int = 1000) -> Iterator[AuditRecord]:
        """Every record in ``seq`` order, read in batches."""
        last: tuple[int, int] | None = None
        try:
            with self._session() as s:
                while True:
                    q = select(AuditRecord).order_by(AuditRecord.seq, AuditRecord.id).limit(batch)
                    if last is not None:  # (seq, id): a duplicate seq (unique index dropped) is still read
                        q = q.where(
                            (AuditRecord.seq > last[0]) | ((AuditRecord.seq == last[0]) & (AuditRecord.id > last[1]))
                        )
                    rows = list(s.scalars(q))
                    if not rows:
                        return
                    yield from rows
                    last = (rows[-1].seq, rows[-1].id)
                    s.expunge_all()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log read failed: {exc}") from exc

    def checked(self, records: Sequence[AuditRecord]) -> dict[int, bool]:
        """For each record (by id): whether its content matches its hash and its ``prev_hash`` is the hash of the
        record before it. A local check of a page of records; :meth:`verify` walks the whole chain."""
        wanted = {r.seq - 1 for r in records if r.seq > 1}
        prev: dict[int, str] = {}
        try:
            with self._session() as s:
                for chunk in _chunks(sorted(wanted), 500):
                    q = select(AuditRecord.seq, AuditRecord.hash).where(AuditRecord.seq.in_(chunk))
                    prev.update({seq: h for seq, h in s.execute(q)})
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log read failed: {exc}") from exc
        return {
            r.id: hash_of(r) == r.hash and r.prev_hash == (GENESIS if r.seq == 1 else prev.get(r.seq - 1))
            for r in records
        }

    def verify(self, *, anchor: tuple[int, str] | None = None) -> Verification:
        """Walk the whole chain; see :func:`verify_chain`."""
        return verify_chain(self.iter_chain(), head=self.head(), anchor=anchor)


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def anchor(log: AuditLog, *, now: datetime) -> tuple[int, str]:
    """Publish the chain head: one log line ``audit anchor seq=N hash=H`` (what ``lianfang audit verify --anchor
    N:H`` takes) and the ``lianfang_audit_anchor_seq`` gauge. Kept outside the database (the log shipped off the
    machine, the metrics scraped), it shows a later cut of the tail that the chain head alone would hide."""
    seq, digest = log.head()
    ANCHOR_SEQ.set(seq)
    ANCHOR_TIME.set(now.timestamp())
    logger.info("audit anchor seq=%d hash=%s at=%s", seq, digest, utc_instant(now))
    return seq, digest


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :func:`verify_chain`: ``kind`` is edited, deleted, reordered, duplicate, truncated or
    anchor."""

    kind: str
    seq: int
    id: int | None
    message: str

    def line(self) -> str:
        where = f"record {self.seq}" + (f" (id {self.id})" if self.id is not None else "")
        return f"{self.kind}: {where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "id": self.id, "message": self.message}


@dataclass(slots=True)
class Verification:
    count: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    problems: list[Problem] = field(default_factory=list)
    bad_ids: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.count,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "problems": [p.as_json() for p in self.problems],
        }


# How far a record may have been moved for verify to say where it was written (beyond that: edited).
_REORDER_WINDOW = 64


def verify_chain(
    records: Iterable[AuditRecord],
    *,
    head: tuple[int, str] | None = None,
    anchor: tuple[int, str] | None = None,
) -> Verification:
    """Check ``records`` (in ``seq`` order) as a chain. Names every record whose content no longer matches its hash
    (edited), every gap in the sequence or link to a missing record (deleted), every record that sits at another
    place than the one it was written at (reordered), and a tail shorter than the chain head or the ``anchor``
    (``(seq, hash)`` published earlier) says (truncated)."""
    v = Verification()
    prev_hash, expect = GENESIS, 1
    by_hash: dict[str, int] = {}
    anchor_seen = anchor is None

    def bad(kind: str, r: AuditRecord | None, seq: int, message: str) -> None:
        v.problems.append(Problem(kind, seq, None if r is None else r.id, message))
        if r is not None:
            v.bad_ids.add(r.id)

    for r in records:  # streamed: memory grows with the number of hashes only
        v.count += 1
        own = hash_of(r)
        if own != r.hash:
            # Moved? The content matches the stored hash at another sequence number close by.
            near = range(max(1, r.seq - _REORDER_WINDOW), r.seq + _REORDER_WINDOW + 1)
            moved = next((s for s in near if s != r.seq and hash_of(r, seq=s) == r.hash), None)
            if moved is not None:
                bad("reordered", r, r.seq, f"written as record {moved}, now at {r.seq}")
            else:
                bad("edited", r, r.seq, "content does not match its hash")
        if r.seq < expect:
            bad("duplicate", r, r.seq, f"a second record {r.seq} (the sequence was already at {expect - 1})")
        elif r.seq > expect:
            gap = f"record {expect}" if r.seq == expect + 1 else f"records {expect}..{r.seq - 1}"
            bad("deleted", None, expect, f"{gap} missing before record {r.seq}")
        elif r.prev_hash != prev_hash and own == r.hash:
            if r.prev_hash in by_hash:
                bad("reordered", r, r.seq, f"follows record {by_hash[r.prev_hash]} in the chain, not {r.seq - 1}")
            else:
                bad("deleted", r, r.seq, "the record it follows is missing (prev_hash matches no record)")
        if anchor is not None and r.seq == anchor[0]:
            anchor_seen = True
            if r.hash != anchor[1]:
                bad("anchor", r, r.seq, f"hash {r.hash[:16]}... differs from the anchor's {anchor[1][:16]}...")
        by_hash[r.hash] = r.seq
        prev_hash, expect = r.hash, max(expect, r.seq + 1)
        v.last_seq, v.last_hash = r.seq, r.hash
    if head is not None and head[0] > v.last_seq:
        bad(
            "truncated",
            None,
            v.last_seq + 1,
            f"records {v.last_seq + 1}..{head[0]} missing: the chain head is at {head[0]}",
        )
    if not anchor_seen and anchor is not None:
        bad("truncated", None, anchor[0], f"the anchored record {anchor[0]} is missing: the log ends at {v.last_seq}")
    if head is not None and head[0] == v.last_seq and v.count and head[1] != v.last_hash:
        bad("edited", None, v.last_seq, "the last record's hash differs from the chain head's")
    return v
