"""Side-store benchmark: the InfluxDB backend's device-state upserts (core/store/side.py) per second.

    python bench/side_store.py [--sql sqlite|postgresql] [--batches N] [--devices D] [--writers W]
                               [--interval S] [--status-every K] [--seconds T] [--short]

Each batch is what ingest writes after InfluxDB confirmed a batch of 2,000 interleaved messages: one upsert row per
device (2,000 devices of D, counters, and a status for one device in K), in one transaction. W writers (threads,
an engine each, as W ingest processes) write at once over overlapping devices. The database is a fresh migrated
SQLite file, or a fresh PostgreSQL database on 127.0.0.1:5432 (LIANFANG_TEST_PG: the admin URL), dropped at the
end. Prints one line: device rows upserted per second, and checks that every count arrived.

``--interval S`` (> 0): the aggregated mode (``store.side_flush_interval_s``): each writer adds its batches'
counters up in memory and flushes every S seconds (and when it closes, which is timed); the line then gives the
messages absorbed per second next to the device rows written per second (the devices with a status, written
with their batch, and the flushed rows). With W writers the devices overlap (as without ``hash_clientid``).
``--seconds T``: each writer writes batches for T seconds (as fast as it can) instead of N batches, so that a run
spans several intervals.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.db import make_engine, migrate
from core.protocol import Status
from core.store import WriteBatch
from core.store.side import SqlSideStore

PG_ADMIN = os.environ.get("LIANFANG_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ROWS = 2000


def _pg(create: bool, name: str) -> str:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' if create else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def _batch(devices: list[str], k: int, status_every: int = 10) -> WriteBatch:
    b = WriteBatch()
    start = (k * ROWS) % len(devices)
    for i in range(ROWS):
        dev = devices[(start + i) % len(devices)]
        c = b.counter(dev)
        c.messages, c.last_seen_ms = 1, 1_700_000_000_000 + k
        if status_every and i % status_every == 0:
            b.statuses.append(Status(dev, "r", 1_700_000_000_000 + k, "online", None))
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sql", choices=("sqlite", "postgresql"), default="postgresql")
    ap.add_argument("--batches", type=int, default=100, help="batches per writer")
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.0, help="aggregated mode: flush every S seconds")
    ap.add_argument("--status-every", type=int, default=10, help="a status for one device in K (0: none)")
    ap.add_argument("--seconds", type=float, default=0.0, help="write for T seconds instead of N batches")
    ap.add_argument("--short", action="store_true", help="CI mode: 10 batches per writer")
    args = ap.parse_args()
    batches = 10 if args.short else args.batches
    name = f"lf_bench_side_{int(time.time())}"
    url = _pg(True, name) if args.sql == "postgresql" else f"sqlite:///{tempfile.mkdtemp(prefix='lf-side-')}/r.db"
    try:
        engine = make_engine(url)
        migrate(engine)
        devices = [f"dev-{i:07d}" for i in range(args.devices)]
        SqlSideStore(engine, owns_engine=False).write(_batch(devices, 0))  # the first insert of every row is not timed
        for k in range(1, args.devices // ROWS):
            SqlSideStore(engine, owns_engine=False).write(_batch(devices, k))
        errors: list[BaseException] = []

        flushed: list[int] = []
        flush_s: list[tuple[int, float, float]] = []  # per writer: flushes, seconds, longest
        written: list[int] = []

        def run(w: int) -> None:
            side = SqlSideStore(make_engine(url), flush_interval_s=args.interval)
            k = 0
            try:
                deadline = time.perf_counter() + args.seconds
                while k < batches if args.seconds <= 0 else time.perf_counter() < deadline:
                    side.write(_batch(devices, k + w * 7, args.status_every))
                    k += 1
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                side.close()  # the aggregated mode's last flush
                flushed.append(side.stats.rows)
                flush_s.append((side.stats.flushes, side.stats.seconds, side.stats.longest_s))
                written.append(k)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(args.writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        with engine.connect() as conn:
            total = int(conn.execute(text("SELECT sum(messages) FROM telemetry_device_state")).scalar_one())
        engine.dispose()
    finally:
        if args.sql == "postgresql":
            _pg(False, name)
    rows = sum(written) * ROWS
    expected = (args.devices // ROWS) * ROWS + rows
    ok = not errors and total == expected
    counts = "exact" if ok else f"WRONG {total} != {expected} {errors[:1]}"
    where = f"sql={args.sql}, writers={args.writers}, devices={args.devices}, a status every {args.status_every}"
    if args.interval <= 0:
        print(
            f"side_store: {rows} device rows in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s "
            f"({rows / elapsed / ROWS:,.1f} batches/s of {ROWS}; {where}; counts {counts})"
        )
    else:
        with_batch = sum(written) * (len(range(0, ROWS, args.status_every)) if args.status_every else 0)
        written = with_batch + sum(flushed)
        print(
            f"side_store: interval {args.interval:g} s: {rows} messages absorbed in {elapsed:.2f} s = "
            f"{rows / elapsed:,.0f} msg/s; {written} device rows written = {written / elapsed:,.0f} rows/s "
            f"({with_batch} with their batch for a status, {sum(flushed)} flushed in {sum(f[0] for f in flush_s)} "
            f"flushes of {sum(f[1] for f in flush_s) / max(1, sum(f[0] for f in flush_s)):.2f} s on average, "
            f"{max((f[2] for f in flush_s), default=0):.2f} s the longest); {where}; counts {counts}"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
