"""How long a SQLite writer waits behind another connection's short write transactions, with and without a
process-wide lock around each write transaction.

    python bench/sqlite_busy.py [--lock] [--waits 150]

A holder thread loops: BEGIN IMMEDIATE, insert, hold H ms, COMMIT, pause 1-4 ms. A waiter thread (like the alert
service's commit behind the notification router's delivery log or the joint flush) does BEGIN IMMEDIATE, insert,
COMMIT at random moments and is timed. Both use Python's ``sqlite3`` with ``timeout=30`` (SQLite's busy handler, as
``core.db.make_engine`` sets it) on one WAL file. The busy handler does not wake the waiter when the lock is
released: it sleeps 1, 2, 5, 10, 15, 20, 25, ... ms between tries, while the holder may take the lock again, so a
1 ms holder can cost the waiter 18 ms. ``--lock``: both take one ``threading.Lock`` around each write transaction,
so the waiter is woken as soon as the holder commits. Prints one line per hold time.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _conn(path: Path) -> sqlite3.Connection:
    c = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lock", action="store_true", help="one threading.Lock around every write transaction")
    ap.add_argument("--waits", type=int, default=150, help="timed writes per hold time")
    args = ap.parse_args()
    lock: Any = threading.Lock() if args.lock else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "busy.db"
        c0 = _conn(path)
        c0.execute("CREATE TABLE t (x INTEGER)")
        c0.close()
        for hold_ms in (1, 3, 8, 20):
            stop = threading.Event()

            def holder(stop: threading.Event = stop, hold_s: float = hold_ms / 1000) -> None:
                c = _conn(path)
                while not stop.is_set():
                    with lock:
                        c.execute("BEGIN IMMEDIATE")
                        c.execute("INSERT INTO t VALUES (1)")
                        time.sleep(hold_s)
                        c.execute("COMMIT")
                    time.sleep(random.uniform(0.001, 0.004))
                c.close()

            th = threading.Thread(target=holder)
            th.start()
            w = _conn(path)
            waits: list[float] = []
            for _ in range(args.waits):
                time.sleep(random.uniform(0.001, 0.01))
                t = time.perf_counter()
                with lock:
                    w.execute("BEGIN IMMEDIATE")
                    w.execute("INSERT INTO t VALUES (2)")
                    w.execute("COMMIT")
                waits.append((time.perf_counter() - t) * 1000)
            stop.set()
            th.join()
            w.close()
            waits.sort()
            print(
                f"sqlite_busy: holder {hold_ms} ms{' (lock)' if args.lock else ''}: waiter p50 "
                f"{statistics.median(waits):.1f} ms, p90 {waits[int(0.9 * len(waits))]:.1f} ms, "
                f"p99 {waits[int(0.99 * len(waits))]:.1f} ms, max {waits[-1]:.1f} ms"
            )


if __name__ == "__main__":
    main()
