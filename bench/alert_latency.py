"""Alert latency benchmark: MQTT publish -> alert stored, p50 / p99, under background telemetry.

    python bench/alert_latency.py [--probes N] [--rate R] [--rules K] [--batch-wait-ms W] [--broker-tmpfs]
                                  [--no-gc-settle] [--trace] [--short]

Starts its own Mosquitto (generated config, free port), a temporary SQLite registry and telemetry store, an
``IngestService`` in this process with ``AlertsRuntime.on_batch`` as its listener (the default packs plus K
generated threshold rules per device type, none of which fire on the background data, so every rule is evaluated
on every matching message), and a separate process publishing R msg/s of background telemetry from 1,000
devices (gates, vehicles, meters, sensors) through the simulator account.

Configured like ``lianfang serve``: ingest ``batch_wait_ms`` 0 (the default), WAL checkpoints of both databases
on their own threads (core/wal.py), and the heap settled out of the full GC passes (core/gcpolicy.py) — serve does
that at start-up and every 10 minutes; here once the warm-up has created the rule states, as in a service that
has run for a while (``--no-gc-settle`` to compare).

Probes: each probe is one telemetry message to its own probe sensor (``probe_c = 200``) that fires exactly one
alert (rule PROBE, ``probe_c > 100``). They are sent one at a time from this process, with a small random gap.
Latency is measured from just before ``publish()`` to the moment the alert service's subscriber is called for
the new alert, which the service does right after the SQL transaction holding the alert has committed
(``AlertService.subscribe``); both ends read ``time.perf_counter()`` in this process.

``--broker-tmpfs`` puts Mosquitto's persistence file on /dev/shm, as if the broker had a disk (or host) of its
own: Mosquitto rewrites that file every ``autosave_interval`` (5 s), and on one shared disk the fsyncs of both
databases then wait behind it. ``--trace`` adds, per stage, the p50 / p99 of each probe's path (ingest writes
the telemetry and evaluates the alerts in parallel, so the last two stages overlap the two before them).

Prints one line: ``alert_latency: p50 X ms, p99 Y ms (N probes, background R msg/s, K rules/type)``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import multiprocessing as mp
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alerts.lifecycle import LifecycleEvent
from alerts.wiring import AlertsRuntime
from core import gcpolicy
from core.db import make_engine, migrate
from core.settings import AlertSettings, IngestSettings, MqttSettings, Settings
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from core.wal import checkpoint_in_background
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from ingest.service import IngestService

TYPES = ("gate", "vehicle", "energy_meter", "sensor")
BACKGROUND_DEVICES = 1000
# Fields the background data carries, per type: the generated rules watch these (thresholds never reached).
FIELDS: dict[str, tuple[tuple[str, float], ...]] = {
    "gate": (("occupancy", 10_000),),
    "vehicle": (("speed_kmh", 500), ("fuel_pct", 101), ("heading_deg", 361), ("odometer_km", 10**9)),
    "energy_meter": (("power_kw", 10_000), ("voltage_v", 1000), ("current_a", 10_000), ("power_factor", 1.5)),
    "sensor": (("temperature_c", 200), ("humidity_pct", 101), ("co2_ppm", 100_000)),
}
SHORT = {"gate": "gate", "vehicle": "car", "energy_meter": "meter", "sensor": "sensor"}


def rules_document(per_type: int) -> dict[str, Any]:
    """``per_type`` threshold rules per device type on the background fields (some N-in-a-row, some held-for),
    plus the probe rule."""
    rules: list[dict[str, Any]] = []
    for dtype in TYPES:
        fields = FIELDS[dtype]
        for i in range(per_type):
            name, top = fields[i % len(fields)]
            params: dict[str, Any] = {"field": name, "op": ">", "value": top + i}
            if i % 3 == 1:
                params["count"] = 3
            elif i % 3 == 2:
                params["for_s"] = 60
            rules.append(
                {
                    "id": f"B.{SHORT[dtype]}.{i:02d}",
                    "kind": "threshold",
                    "device_types": [dtype],
                    "severity": "warning",
                    "title_zh": f"基准规则 {i}",
                    "title_en": f"Bench rule {i}",
                    "params": params,
                }
            )
    rules.append(
        {
            "id": "PROBE",
            "kind": "threshold",
            "device_types": ["sensor"],
            "severity": "major",
            "title_zh": "探针",
            "title_en": "Probe",
            "inhibit_when_offline": False,
            "params": {"field": "probe_c", "op": ">", "value": 100},
        }
    )
    return {"rules": rules}


def background_payload(dtype: str, seq: int, ts: int, rng: random.Random) -> bytes:
    if dtype == "energy_meter":
        doc: dict[str, object] = {
            "energy_kwh": 1000 + seq * 0.01,
            "power_kw": round(rng.uniform(1, 50), 2),
            "voltage_v": round(rng.uniform(218, 232), 1),
            "current_a": round(rng.uniform(5, 80), 1),
            "power_factor": 0.95,
        }
    elif dtype == "vehicle":
        doc = {
            "lat": 23.1 + rng.random() / 10,
            "lon": 113.3 + rng.random() / 10,
            "speed_kmh": round(rng.uniform(0, 55), 1),
            "heading_deg": rng.randrange(360),
            "ignition": True,
            "fuel_pct": 60,
            "odometer_km": 10_000 + seq,
        }
    elif dtype == "gate":
        doc = {"door_open": False, "occupancy": rng.randrange(200)}
    else:
        doc = {
            "temperature_c": round(rng.uniform(18, 28), 1),
            "humidity_pct": rng.randrange(30, 70),
            "co2_ppm": rng.randrange(400, 900),
        }
    doc["ts"], doc["seq"] = ts, seq
    return json.dumps(doc, separators=(",", ":")).encode()


def background(port: int, password: str, devices: list[tuple[str, str]], rate: float, stop: Any, out: Any) -> None:
    """Publish ``rate`` msg/s round-robin over ``devices`` until ``stop`` is set (own process)."""
    rng = random.Random(11)
    pub = SharedPublisher("127.0.0.1", port, "lianfang-sim", password, client_id="lianfang-sim-bg")
    pub.start()
    seqs = dict.fromkeys((d for d, _ in devices), 0)
    started = time.perf_counter()
    sent = 0
    k = 0
    while not stop.is_set():
        due = int((time.perf_counter() - started) * rate)
        ts = int(time.time() * 1000)
        while sent < due:
            device, dtype = devices[k % len(devices)]
            k += 1
            seqs[device] += 1
            pub.publish(SimMessage(device, "telemetry", background_payload(dtype, seqs[device], ts, rng), ts))
            sent += 1
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    pub.close(10)
    out.put((sent, pub.counts.acked, elapsed))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=2000.0, help="background msg/s")
    ap.add_argument("--rules", type=int, default=50, help="generated rules per device type")
    ap.add_argument("--batch-wait-ms", type=int, default=0)
    ap.add_argument("--broker-tmpfs", action="store_true", help="Mosquitto's persistence on /dev/shm")
    ap.add_argument("--no-gc-settle", action="store_true", help="do not freeze the heap after the warm-up")
    ap.add_argument("--trace", action="store_true", help="p50 / p99 per stage of the probes' path")
    ap.add_argument("--snapshot-interval-s", type=float, default=10.0, help="alert learning-state snapshot period")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--duration-s", type=float, default=120.0, help="stop probing after this long")
    ap.add_argument("--short", action="store_true", help="CI mode: at most 200 probes in 15 s (~20 s in all)")
    args = ap.parse_args()
    n_probes = 200 if args.short else args.probes
    warmup = 3.0 if args.short else args.warmup_s
    duration = 15.0 if args.short else args.duration_s
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-alerts-"))
    broker_root = Path(tempfile.mkdtemp(prefix="lf-bench-broker-", dir="/dev/shm")) if args.broker_tmpfs else tmp
    cfg = BrokerConfig(
        directory=broker_root / "mosquitto",
        port=free_port(),
        admin_password="bench-admin-x",
        platform_password="bench-platform-x",
        sim_password="bench-sim-x",
        max_inflight_messages=4000,
    )
    engine = make_engine(f"sqlite:///{tmp}/registry.db")
    migrate(engine)
    checkpointer = checkpoint_in_background(engine)  # as Runtime does for the registry / alert database
    registry = Registry(engine)
    now = datetime.now(UTC)
    registry.upsert_regions(
        [RegionSpec("gd", "广东省", "province"), RegionSpec("gz", "广州市", "city", "gd", 23.13, 113.26)], now=now
    )
    bg = [(f"bg-{SHORT[t]}-{i:05d}", t) for i in range(BACKGROUND_DEVICES) for t in (TYPES[i % len(TYPES)],)]
    probes = [f"probe-{i:05d}" for i in range(n_probes)]
    registry.add_devices([DeviceSpec(d, t, "gz") for d, t in bg], now=now)
    registry.add_devices([DeviceSpec(p, "sensor", "gz") for p in probes], now=now)
    rules_file = tmp / "bench-rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules_document(args.rules), allow_unicode=True), encoding="utf-8")
    settings = Settings(alerts=AlertSettings(rules_paths=[rules_file], tick_interval_s=1.0))

    stages: dict[str, list[float]] = {"store_write": [], "alerts_on_batch": [], "gc_full_pass": []}
    gc_started: list[float] = []

    def gc_timer(phase: str, info: dict[str, Any]) -> None:  # full GC passes stop every thread of this process
        if info.get("generation") != 2:
            return
        if phase == "start":
            gc_started[:] = [time.perf_counter()]
        elif gc_started:
            stages["gc_full_pass"].append((time.perf_counter() - gc_started[0]) * 1000)

    gc.callbacks.append(gc_timer)

    class TimedStore(SqliteStore):
        def write(self, batch: WriteBatch) -> None:
            t = time.perf_counter()
            if args.trace:
                mark([r.device_id for r in batch.readings], "writing")
            super().write(batch)
            stages["store_write"].append((time.perf_counter() - t) * 1000)
            if args.trace:
                mark([r.device_id for r in batch.readings], "stored")

    store = TimedStore(tmp / "telemetry.db")

    def timed_listener(batch: WriteBatch) -> None:
        t = time.perf_counter()
        if args.trace:
            mark([r.device_id for r in batch.readings], "evaluating")
        alerts.on_batch(batch)
        stages["alerts_on_batch"].append((time.perf_counter() - t) * 1000)

    committed: dict[str, float] = {}
    got = threading.Condition()
    trace: dict[str, dict[str, float]] = {}  # probe device -> stage -> perf_counter()

    def mark(device_ids: list[str], stage: str) -> None:
        t = time.perf_counter()
        for d in device_ids:
            if d.startswith("probe-"):
                trace.setdefault(d, {})[stage] = t

    def on_event(ev: LifecycleEvent) -> None:
        if ev.kind == "created" and ev.alert.rule_id == "PROBE":
            t = time.perf_counter()
            with got:
                committed[ev.alert.device_id] = t
                trace.setdefault(ev.alert.device_id, {})["alert"] = t
                got.notify_all()

    with MosquittoProcess(cfg):
        alerts = AlertsRuntime(settings, registry, snapshot_interval_s=args.snapshot_interval_s)
        alerts.service.subscribe(on_event)
        alerts.start()
        mqtt_settings = MqttSettings(
            port=cfg.port,
            username="lianfang-platform",
            password=SecretStr(cfg.platform_password),
            embedded_broker=False,
            receive_maximum=4000,
        )
        ingest = IngestService(
            mqtt_settings,
            IngestSettings(batch_wait_ms=args.batch_wait_ms, batch_size=1000),
            store,
            registry.snapshot,
            listeners=[timed_listener],
        )
        if args.trace:  # the consumer's hand-off, on paho's thread
            enqueue = ingest.consumer._on_message

            def traced(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
                mark([msg.topic.split("/")[2]], "received")
                enqueue(client, userdata, msg)

            ingest.consumer.client.on_message = traced
        ingest.start()
        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=background, args=(cfg.port, cfg.sim_password, bg, args.rate, stop, out))
        proc.start()
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim-probe", protocol=mqtt.MQTTv5)
        probe.username_pw_set("lianfang-sim", cfg.sim_password)
        probe.connect("127.0.0.1", cfg.port)
        probe.loop_start()
        rng = random.Random(5)
        latencies: list[float] = []
        lost = queue_depth = 0
        try:
            time.sleep(warmup)  # background at full rate, rule states warm, first batches written
            if not args.no_gc_settle:
                gcpolicy.settle("benchmark warm-up done")
            received_before = ingest.stats.received
            t_bg = time.perf_counter()
            deadline = time.perf_counter() + duration
            for device in probes:
                if time.perf_counter() > deadline:
                    break
                ts = int(time.time() * 1000)
                payload = json.dumps({"ts": ts, "seq": 1, "probe_c": 200}).encode()
                t0 = time.perf_counter()
                if args.trace:
                    trace.setdefault(device, {})["publish"] = t0
                probe.publish(f"lf/v1/{device}/telemetry", payload, qos=1)
                with got:
                    got.wait_for(lambda d=device: d in committed, timeout=30)  # type: ignore[misc]
                if device in committed:
                    latencies.append((committed[device] - t0) * 1000)
                else:
                    lost += 1
                time.sleep(rng.uniform(0.02, 0.08))  # de-phase probes from batch boundaries
            queue_depth = ingest.queue.qsize()
            ingest_rate = (ingest.stats.received - received_before) / (time.perf_counter() - t_bg)
        finally:
            stop.set()
            probe.loop_stop()
            probe.disconnect()
            proc.join(60)
            # A saturated run leaves a backlog: drop it (never acked; this broker is thrown away) instead of
            # waiting for the writer to work through it.
            with contextlib.suppress(queue.Empty):
                while True:
                    ingest.queue.get_nowait()
            ingest.stop()
            alerts.stop()
            store.close()
            if checkpointer is not None:
                checkpointer.stop()
    _sent, acked, elapsed = out.get(timeout=10) if not out.empty() else (0, 0, 1.0)
    bg_rate = acked / elapsed if elapsed else 0.0
    if not latencies:
        print("alert_latency: no probe alert was stored")
        sys.exit(1)
    p50 = statistics.median(latencies)
    p99 = percentile(latencies, 0.99)
    print(
        f"alert_latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(latencies)} probes, background {bg_rate:,.0f} "
        f"msg/s, {args.rules} rules/type)"
    )
    print(
        f"  detail: max {max(latencies):.1f} ms, lost {lost}, ingest {ingest_rate:,.0f} msg/s during probes, "
        f"ingest queue {queue_depth} at the end, "
        f"batch_wait_ms={args.batch_wait_ms}, {len(alerts.rules.rules)} rules loaded, "
        f"broker persistence on {'tmpfs' if args.broker_tmpfs else 'the same disk'}, "
        f"gc {'not settled' if args.no_gc_settle else 'settled after warm-up'}",
        file=sys.stderr,
    )
    if args.trace:
        # ingest writes the telemetry and evaluates the alerts in parallel (ingest/service.py)
        steps = (
            ("publish", "received"),
            ("received", "evaluating"),
            ("evaluating", "alert"),
            ("received", "writing"),
            ("writing", "stored"),
        )
        for a, b in steps:
            vals = [(st[b] - st[a]) * 1000 for st in trace.values() if a in st and b in st]
            if vals:
                print(
                    f"  trace {a} -> {b}: p50 {statistics.median(vals):.1f} ms, p99 {percentile(vals, 0.99):.1f} ms",
                    file=sys.stderr,
                )
    for name, vals in stages.items():
        if vals:
            print(
                f"  {name}: p50 {statistics.median(vals):.1f} ms, p99 {percentile(vals, 0.99):.1f} ms, "
                f"max {max(vals):.1f} ms over {len(vals)} {'passes' if name.startswith('gc') else 'batches'}",
                file=sys.stderr,
            )
    sys.exit(0 if lost == 0 else 1)


if __name__ == "__main__":
    main()
