"""Alert engine CPU per message: ``AlertService.on_batch`` on pre-decoded ingest batches, no broker, no store.

    python bench/alert_cpu.py [--devices N] [--messages M] [--profile FILE] [--short]

The same data as ``bench/e2e.py`` (gates, vehicles, meters; 400 alerting messages), decoded by ingest's pipeline
into batches of 1,000, evaluated with every default pack by the alert service of ``AlertsRuntime`` (its
state in a temporary SQLite database). Prints one line: microseconds of CPU per message. ``--profile`` writes a
cProfile of the evaluation.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alerts.wiring import AlertsRuntime
from bench.e2e import plan
from core.db import make_engine, migrate
from core.settings import Settings
from devices.imports import import_regions
from devices.registry import DeviceSpec, Registry
from ingest.dedup import SeqTracker
from ingest.pipeline import RawMessage, build_batch

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("gate", "energy_meter", "vehicle")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--short", action="store_true", help="CI mode: 1,000 devices, 30,000 messages")
    args = ap.parse_args()
    if args.short:
        args.devices, args.messages = 1_000, 30_000
    with tempfile.TemporaryDirectory(prefix="lf-bench-alert-cpu-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        engine = make_engine(settings.database_url)
        migrate(engine)
        registry = Registry(engine)
        now = datetime.now(UTC)
        import_regions(registry, ROOT / "devices" / "sample" / "regions.yaml", now=now)
        buildings = [r.id for r in registry.regions() if r.level == "building"]
        devices = []
        for i in range(args.devices):
            kind = TYPES[i % len(TYPES)]
            devices.append((f"{kind.replace('_', '-')}-{i:06d}", kind))
        specs = [DeviceSpec(d, t, buildings[i % len(buildings)]) for i, (d, t) in enumerate(devices)]
        registry.add_devices(specs, now=now)
        msgs = plan(devices, args.messages, int(time.time() * 1000) - 120_000)
        snap = registry.snapshot()
        seqs = SeqTracker()
        recv = int(time.time() * 1000)
        raws = [RawMessage(t, p, i, 1, recv) for i, (t, p) in enumerate(msgs)]
        batches = [build_batch(raws[i : i + args.batch], snap, seqs) for i in range(0, len(raws), args.batch)]
        rt = AlertsRuntime(settings, registry)
        svc = rt.service
        svc.load()
        prof = cProfile.Profile() if args.profile else None
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        for b in batches:
            svc.on_batch(b)
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(args.profile))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - t0
        alerts = len(svc.open_alerts())
        engine.dispose()
    print(
        f"alert_cpu: {cpu / len(msgs) * 1e6:.1f} us CPU per message ({len(msgs)} messages, {args.devices} devices, "
        f"wall {wall:.2f} s, {alerts} open alerts)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
