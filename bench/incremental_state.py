"""The periodic re-reads and per-commit writes behind issue 10's correlation latency, one at a time, at scale.

    python bench/incremental_state.py [--devices N] [--open-alerts A] [--short]

``bench/correlate.py`` measures the whole path under load; this one times the parts it found on the alert path
(docs/performance.md, "Correlation latency"), each in this process on its own SQLite database, as wall and CPU
(thread) milliseconds, the median of several calls: CPU time is what holds the GIL, and it is far less noisy than
wall time on a shared machine.

1. ``Registry.snapshot()`` of N devices: the first (full) read, a re-read with nothing changed, and one after 10
   devices changed (ingest does this every ``ingest.registry_refresh_s``, 5 s; alerts and joint every 60 s).
2. ``AlertService.refresh()`` over N devices (nothing changed; 10 changed).
3. With A alerts fired through ``AlertService.process`` (one per device, as ``bench/correlate.py --seed mqtt``
   leaves them: every key in the lifecycle's flap window): the commit of a batch that raises one more alert.
4. ``AlertService.open_alerts()`` with A open (the escalator, every 5 s).
5. ``JointStore.save`` of A correlator windows (``Correlator.windows()`` shape), again with 10 changed.

Prints one line: ``incremental_state: snapshot X ms (re-read Y ms), refresh ..., commit ..., open_alerts ...,
joint windows ...``; ``--short`` (CI): 10,000 devices, 1,000 alerts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from alerts.rules import RuleSet
from alerts.service import AlertService, regions_from_registry
from core.db import make_engine, migrate
from core.protocol import Event
from devices.registry import DeviceSpec, RegionSpec, Registry
from joint.store import JointStore

RULES: dict[str, Any] = {
    "rules": [
        {
            "id": "CUT",
            "kind": "event_count",
            "device_types": ["vehicle"],
            "severity": "major",
            "title_zh": "断电",
            "title_en": "Power cut",
            "params": {"match": {"event": "power_cut"}},
        }
    ]
}


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """Median wall and CPU (this thread) milliseconds of ``n`` calls."""
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpus.append((time.thread_time() - c) * 1000)
        walls.append((time.perf_counter() - w) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def fmt(wc: tuple[float, float]) -> str:
    return f"{wc[0]:.1f} ms ({wc[1]:.1f} CPU)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--open-alerts", type=int, default=10_000)
    ap.add_argument("--short", action="store_true", help="CI: 10,000 devices, 1,000 alerts")
    args = ap.parse_args()
    if args.short:
        args.devices, args.open_alerts = 10_000, 1_000
    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-incr-"))
    try:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        migrate(engine)
        reg = Registry(engine)
        t0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
        reg.upsert_regions([RegionSpec("gd", "广东", "province"), RegionSpec("gz", "广州", "city", "gd")], now=t0)
        buildings = [f"b{i:03d}" for i in range(100)]
        reg.upsert_regions([RegionSpec(b, b, "building", "gz") for b in buildings], now=t0)
        ids = [f"car-{i:06d}" for i in range(args.devices)]
        for start in range(0, len(ids), 5000):
            reg.add_devices(
                [DeviceSpec(d, "vehicle", buildings[i % 100]) for i, d in enumerate(ids[start : start + 5000])],
                now=t0,
            )

        def change10() -> None:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE devices SET name = name || 'x' WHERE id IN (SELECT id FROM devices LIMIT 10)")
                )

        full = timed(reg.snapshot, 1)
        reread = timed(reg.snapshot, 5)
        changed = timed(lambda: (change10(), reg.snapshot()), 5)

        clock = [t0]
        svc = AlertService(
            engine,
            RuleSet.from_documents([("b.yaml", RULES)]),
            reg.snapshot,
            regions_from_registry(reg),
            clock_fn=lambda: clock[0],
        )
        svc.load()
        refresh = timed(svc.refresh, 3)
        refresh10 = timed(lambda: (change10(), svc.refresh()), 3)

        def cut(i: int) -> Event:
            ms = int(clock[0].timestamp() * 1000)
            return Event(ids[i], buildings[i % 100], "vehicle", ms, None, "power_cut", {}, True)

        for start in range(0, args.open_alerts, 500):  # the open alerts, fired just now: all in the flap window
            svc.process([cut(i) for i in range(start, min(start + 500, args.open_alerts))])
        nxt = iter(range(args.open_alerts, args.devices))

        def one_more() -> None:
            clock[0] += timedelta(milliseconds=50)
            svc.process([cut(next(nxt))])

        commit = timed(one_more, 30)
        opened = timed(svc.open_alerts, 5)

        store = JointStore(engine)
        windows = {
            f"{d}": {"scope": ["gd", "gz", d], "entries": [[i, "CUT", d, "b", "b", 1000 * i, "major", 1, True]]}
            for i, d in enumerate(ids[: args.open_alerts])
        }

        def doc() -> dict[str, Any]:
            return {"v": 1, "state": {"X9": {"windows": windows}}}

        first_save = timed(lambda: store.save(windows=doc(), now=t0), 1)

        def save10() -> None:
            for k in list(windows)[:10]:
                windows[k]["entries"][0][7] += 1
            store.save(windows=doc(), now=t0)

        save = timed(save10, 5)
        load = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        print(
            f"incremental_state: snapshot {fmt(full)} (re-read {fmt(reread)}, 10 changed {fmt(changed)}); "
            f"refresh {fmt(refresh)} (10 changed {fmt(refresh10)}); commit of 1 alert with {args.open_alerts:,} "
            f"fired {fmt(commit)}; open_alerts {fmt(opened)}; joint windows save {fmt(first_save)} "
            f"(10 changed {fmt(save)}) ({args.devices:,} devices, {args.open_alerts:,} alerts; load {load})"
        )
        engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
