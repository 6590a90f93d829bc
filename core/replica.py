"""Reads on a PostgreSQL streaming replica (``database_read_url``), with the primary as the fallback.

The API's read-only requests ask ``ReadRouter.engine_for_read`` which engine to use. The replica answers unless

* it is unreachable (a failed connection marks it down; it is tried again after ``retry_down_s``),
* it is more than ``max_lag_s`` behind the primary (replay lag, measured at most every ``recheck_s``), or
* the caller wrote within the read-your-writes window (``note_write``): the same user's reads go to the primary for
  ``max(ryw_min_s, last lag + 1 s)`` after a write, so an operator who acknowledges an alert sees it at once.

Writes, logins and token checks, and the alert and joint engines never come here: they use the primary engine.
Replay lag is ``now() - pg_last_xact_replay_timestamp()`` while WAL received is not replayed yet, else 0 (an idle
primary sends no transactions, so the timestamp alone would grow without any lag).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import Engine, text

logger = logging.getLogger(__name__)

REPLICA_LAG = Gauge(
    "lianfang_db_replica_lag_seconds",
    "Replay lag of the read replica (database_read_url) behind the primary; -1 while it is unreachable",
)
REPLICA_SERVING = Gauge("lianfang_db_replica_serving", "1 while the API's reads go to the replica, 0 on the primary")

LAG_SQL = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END, "
    "pg_is_in_recovery() AND pg_is_wal_replay_paused()"
)


@dataclass
class ReplicaState:
    """What is known about the replica; ``checked`` and ``down_since`` are monotonic seconds."""

    reachable: bool = True
    checked: float | None = None  # the last lag measurement
    lag_s: float | None = None
    in_recovery: bool | None = None
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    replay_paused: bool = False
    behind: bool = False  # lag_s > max_lag_s at the last measurement
    down_since: float | None = None
    retry_at: float = 0.0
    error: str | None = None


def route(
    state: ReplicaState, now: float, *, wrote_at: float | None, max_lag_s: float, ryw_min_s: float, recheck_s: float
) -> str:
    """Where one read goes: "own-write" (the primary: the caller wrote within the read-your-writes window),
    "primary" (the replica is down or behind), "replica", "probe" (reachable, the lag is due to be measured) or
    "retry" (down, and due to be tried again). Pure."""
    if wrote_at is not None and now - wrote_at < max(ryw_min_s, (state.lag_s or 0.0) + 1.0):
        return "own-write"
    if not state.reachable:
        return "retry" if now >= state.retry_at else "primary"
    if state.checked is None or now - state.checked >= recheck_s:
        return "probe"
    if state.lag_s is not None and state.lag_s > max_lag_s:
        return "primary"
    return "replica"


class ReadRouter:
    """Chooses the engine of each API read: the replica's or the primary's (see the module docstring)."""

    def __init__(
        self,
        primary: Engine,
        replica: Engine,
        *,
        max_lag_s: float = 30.0,
        ryw_min_s: float = 5.0,
        recheck_s: float = 2.0,
        retry_down_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_s = max_lag_s
        self.ryw_min_s = ryw_min_s
        self.recheck_s = recheck_s
        self.retry_down_s = retry_down_s
        self.clock = clock
        self.state = ReplicaState()
        self.fallbacks = 0  # reads sent to the primary because the replica was down or behind
        self._writes: dict[str, float] = {}
        self._lock = threading.Lock()

    # --- read-your-writes ------------------------------------------------------------------------------------------

    def note_write(self, user: str) -> None:
        now = self.clock()
        with self._lock:
            self._writes[user] = now
            if len(self._writes) > 10_000:  # forget users whose window has long passed
                horizon = now - 3600.0
                self._writes = {u: t for u, t in self._writes.items() if t >= horizon}

    # --- routing -----------------------------------------------------------------------------------------------------

    def engine_for_read(self, user: str | None = None) -> tuple[Engine, bool]:
        """(engine, on_replica) for one read request. A replica chosen is pinged first (a checkout with
        ``pool_pre_ping``): one that stopped since the last look is found here, not by the request's query."""
        now = self.clock()
        with self._lock:
            wrote_at = self._writes.get(user) if user is not None else None
            where = route(
                self.state,
                now,
                wrote_at=wrote_at,
                max_lag_s=self.max_lag_s,
                ryw_min_s=self.ryw_min_s,
                recheck_s=self.recheck_s,
            )
            if where == "retry":  # one request tries; the others stay on the primary meanwhile
                self.state.retry_at = now + self.retry_down_s
        if where == "own-write":
            return self.primary, False
        if where == "primary":
            self.fallbacks += 1
            return self.primary, False
        try:
            with self.replica.connect() as conn:  # the checkout pings (pool_pre_ping) or connects
                if where in ("probe", "retry"):
                    self._measure(conn, now)
        except Exception as exc:
            self._down(now, exc)
            self.fallbacks += 1
            return self.primary, False
        if self.state.lag_s is not None and self.state.lag_s > self.max_lag_s:
            self.fallbacks += 1
            return self.primary, False
        return self.replica, True

    def _measure(self, conn: Any, now: float) -> None:
        row = conn.execute(LAG_SQL).one()
        lag = float(row[3]) if row[0] else 0.0
        behind = lag > self.max_lag_s
        with self._lock:
            s = self.state
            was_down, was_behind, was_primary = not s.reachable, s.behind, s.in_recovery is False
            s.reachable, s.checked, s.error, s.down_since, s.behind = True, now, None, None, behind
            s.in_recovery, s.receive_lsn, s.replay_lsn, s.lag_s = bool(row[0]), row[1], row[2], lag
            s.replay_paused = bool(row[4])
        REPLICA_LAG.set(lag)
        REPLICA_SERVING.set(0 if behind else 1)
        # Transitions only: the lag is measured every recheck_s.
        if was_down:
            logger.warning("database replica reachable again (replay lag %.1f s)", lag)
        if behind and not was_behind:
            logger.warning("database replica %.1f s behind (over %.0f s): reads go to the primary", lag, self.max_lag_s)
        elif was_behind and not behind:
            logger.warning("database replica caught up (replay lag %.1f s): reads go to it again", lag)
        if not row[0] and not was_primary:
            logger.warning("database_read_url is not in recovery (a primary, or a promoted replica?)")

    def _down(self, now: float, exc: BaseException) -> None:
        with self._lock:
            s = self.state
            first = s.reachable
            s.reachable, s.error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            s.down_since = s.down_since if not first and s.down_since is not None else now
            s.retry_at = now + self.retry_down_s
            s.checked, s.lag_s = None, None
        REPLICA_LAG.set(-1)
        REPLICA_SERVING.set(0)
        if first:
            logger.warning("database replica unreachable (%s): reads fall back to the primary", s.error)

    # --- health ------------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For /health/ready: measured now. ``ok`` stays true while the primary answers the reads (a replica
        down or behind is a note, not a failure: the API still answers); ``reads_on`` says where reads go."""
        now = self.clock()
        try:
            with self.replica.connect() as conn:
                self._measure(conn, now)
        except Exception as exc:
            self._down(now, exc)
        s = self.state
        out: dict[str, Any] = {
            "ok": True,
            "reachable": s.reachable,
            "lag_s": None if s.lag_s is None else round(s.lag_s, 3),
            "in_recovery": s.in_recovery,
            "receive_lsn": s.receive_lsn,
            "replay_lsn": s.replay_lsn,
            "replay_paused": s.replay_paused,
            "max_lag_s": self.max_lag_s,
            "fallback_reads": self.fallbacks,
        }
        if not s.reachable:
            out["reads_on"] = "primary"
            out["note"] = f"replica unreachable ({s.error}): reads fall back to the primary"
        elif s.lag_s is not None and s.lag_s > self.max_lag_s:
            out["reads_on"] = "primary"
            out["note"] = f"replica {s.lag_s:.1f} s behind (more than {self.max_lag_s:.0f} s): reads on the primary"
        else:
            out["reads_on"] = "replica"
            if s.in_recovery is False:
                out["note"] = "database_read_url is not in recovery: a primary, or a promoted replica?"
        return out
