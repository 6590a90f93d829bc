"""Store unavailable, locked: another process holds ``BEGIN EXCLUSIVE`` on telemetry.db while devices publish,
then lets go."""

from __future__ import annotations

import subprocess

from faults.env import FaultEnv
from faults.scenarios import Ctx, Result
from faults.scenarios._store import store_outage

NAME = "store_locked"
EXPECT = "0 lost, 0 duplicated; 503 + metrics + platform alert within 60 s; ready and alert resolved after"

HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def run(ctx: Ctx) -> Result:
    res = Result(NAME, EXPECT)
    holder: list[subprocess.Popen[bytes]] = []

    def inject(env: FaultEnv) -> None:
        proc = env.spawn(HOLD.replace("sys.argv[1]", repr(str(env.store_path))))
        holder.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"locked":
            raise RuntimeError(f"the lock holder did not get the lock: {line!r}")

    def release(env: FaultEnv) -> None:
        proc = holder.pop()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)

    store_outage(ctx, res, inject, release)
    return res
