"""Read-replica benchmark: how soon a commit on the primary is visible on a streaming replica, and what the read
router (core/replica.py) adds to each API read.

    python bench/replica_lag.py [--commits N] [--reads R]

Starts a PostgreSQL 15 primary of its own and a streaming replica of it (tests/pg_replica.py: initdb, pg_basebackup
-R, free ports, fsync off), commits N single-row inserts on the primary one after another and, after each, polls
the replica until the row is there; then times R calls of ``ReadRouter.engine_for_read`` (the replica's
connection checkout with its ping). Prints the visibility delay's p50 / p99 / max and the microseconds per read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.db import make_read_engine
from core.replica import ReadRouter
from tests.pg_replica import start_pair, stop_pair, unavailable, wait_replayed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args()
    reason = unavailable()
    if reason is not None:
        sys.exit(reason)
    pair = start_pair()
    try:
        primary = create_engine(pair.primary_url(), isolation_level="AUTOCOMMIT")
        replica = create_engine(pair.replica_url(), isolation_level="AUTOCOMMIT")
        with primary.connect() as conn:
            conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
        wait_replayed(primary, replica)
        delays = []
        with primary.connect() as pc, replica.connect() as rc:
            for i in range(args.commits):
                pc.execute(text("INSERT INTO t VALUES (:i)"), {"i": i})
                t0 = time.perf_counter()
                while rc.execute(text("SELECT 1 FROM t WHERE id = :i"), {"i": i}).first() is None:
                    pass
                delays.append(time.perf_counter() - t0)
        delays.sort()
        n = len(delays)
        print(
            f"visible on the replica after the commit returned: n={n} p50={delays[n // 2] * 1000:.2f} ms "
            f"p99={delays[min(n - 1, int(n * 0.99))] * 1000:.2f} ms max={delays[-1] * 1000:.2f} ms"
        )
        router = ReadRouter(primary, make_read_engine(pair.replica_url()))
        for _ in range(50):
            router.engine_for_read("bench")
        t0 = time.perf_counter()
        for _ in range(args.reads):
            _engine, on_replica = router.engine_for_read("bench")
            assert on_replica
        per = (time.perf_counter() - t0) / args.reads * 1e6
        print(f"ReadRouter.engine_for_read: {per:.0f} us per read (checkout with its ping; lag measured every 2 s)")
    finally:
        stop_pair(pair)


if __name__ == "__main__":
    main()
