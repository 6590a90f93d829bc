"""Store unavailable, disk full: the telemetry database on a small tmpfs (``mount -t tmpfs -o size=2m``), filled
by another file while devices publish, then freed.

Needs root for the mount. Without it (or where mount fails) the scenario is skipped with the reason; a fallback
is ``store_locked``, which makes the same store outage with a lock instead of a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

from faults.env import FaultEnv
from faults.scenarios import Ctx, Result
from faults.scenarios._store import store_outage

NAME = "store_full"
EXPECT = "0 lost, 0 duplicated; 503 + metrics + platform alert within 60 s; ready and alert resolved after"
SIZE = os.environ.get("FAULTS_TMPFS_SIZE", "2m")  # mount's size= option


def _fill(path: Path) -> None:
    chunk = b"\0" * 65536
    with path.open("wb") as f:
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    with contextlib.suppress(OSError):
        os.sync()


def run(ctx: Ctx) -> Result:
    res = Result(NAME, EXPECT)
    mnt = ctx.root / "store"
    mnt.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        res.skipped = f"cannot mount a tmpfs ({mounted.stderr.strip() or 'mount failed'}); needs root"
        return res
    filler = mnt / "filler"
    try:

        def inject(env: FaultEnv) -> None:
            _fill(filler)

        def release(env: FaultEnv) -> None:
            filler.unlink()

        store_outage(ctx, res, inject, release, store_dir=mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return res
