"""Correlation latency benchmark: the alert that completes an incident -> the incident stored, p50 / p99.

    python bench/correlate.py [--devices N] [--open-alerts A] [--rate R] [--duration-s S] [--short]

What runs, as ``lianfang serve`` wires it: ``lianfang.runtime.Runtime`` (registry, SQLite telemetry store, ingest,
``AlertsRuntime`` with every default rule pack, the joint service with the X pack, resend manager, broker drop
monitor) in this process, against its own Mosquitto started from the generated config on a free port (owned by
the benchmark, ``mqtt.embedded_broker`` off, as ``bench/alert_latency.py`` does).

1. A region tree of 10 cities x agencies x buildings and N devices (gates, vehicles, meters, sensors, an equal
   share in every building) bulk-inserted into the registry (``Registry.add_devices`` in chunks; no broker
   identities: every publisher here uses the simulator account).
2. A open alerts seeded through the real path before the measured run: A vehicles publish one ``power_cut``
   event each (rule V12.power_cut, major, never clears by itself); the alert service then holds A open alerts
   and the correlator has seen them (X5 opens a city cluster per city with their members in its windows).
3. Background telemetry at R msg/s from 10,000 gates, meters and sensors through the simulator account (in its
   own process, ``bench/alert_latency.py``'s publisher; nothing in it crosses a rule).
4. Probes, one at a time, each in a building of its own: gate A of the building reports ``door_forced``
   (G1.event, the first alert of an X2 intrusion), then gate B of the same building does too, which completes
   X2. Measured: publish of B's message -> the X2 incident of that building stored (the joint service's
   subscriber, called right after the transaction holding the incident commits), and for both messages the
   alert path's own publish -> alert stored (the alert service's subscriber, after its commit). Both ends read
   ``time.perf_counter()`` in this process.

Prints one line: ``correlate: incident p50 X ms, p99 Y ms; alert p50 .. p99 .. (n incidents, n alerts, lost L,
...)``; details on stderr. ``--short`` (CI): 10,000 devices, 1,000 open alerts, 20 s of probes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alert_latency import background, percentile

from alerts.lifecycle import LifecycleEvent
from alerts.repository import AlertRepository
from alerts.types import Alert, AlertState, Severity
from core import gcpolicy
from core.db import make_engine, migrate
from core.settings import MqttSettings, Settings
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from joint.correlator import IncidentChange
from lianfang.runtime import Runtime

TYPES = ("gate", "vehicle", "energy_meter", "sensor")
SHORT = {"gate": "gate", "vehicle": "car", "energy_meter": "meter", "sensor": "sensor"}
BACKGROUND_DEVICES = 10_000
QUIET_INTERVAL_S = 86_400  # seeded and probe devices publish once: no offline alert during the run


def region_tree(buildings: int) -> tuple[list[RegionSpec], list[str]]:
    """gd -> 10 cities -> agencies of 10 buildings (fewer when ``buildings`` is small)."""
    cities = 10
    per_agency = 10 if buildings >= 100 else 5
    agencies = max(1, buildings // (cities * per_agency))
    regions = [RegionSpec("gd", "广东省", "province")]
    ids: list[str] = []
    for c in range(cities):
        city = f"gd-c{c:02d}"
        regions.append(RegionSpec(city, f"城市 {c}", "city", "gd"))
        for a in range(agencies):
            agency = f"{city}-a{a:02d}"
            regions.append(RegionSpec(agency, f"单位 {c}-{a}", "agency", city))
            for b in range(per_agency):
                bid = f"{agency}-b{b:02d}"
                regions.append(RegionSpec(bid, f"楼宇 {c}-{a}-{b}", "building", agency))
                ids.append(bid)
    return regions, ids


def register(registry: Registry, n: int, buildings: list[str], now: datetime) -> dict[str, list[tuple[str, str]]]:
    """n devices, the same mix in every building, inserted in chunks. Returns building -> [(device, type)]."""
    per_building: dict[str, list[tuple[str, str]]] = {b: [] for b in buildings}
    specs: list[DeviceSpec] = []
    for i in range(n):
        b = buildings[i % len(buildings)]
        k = i // len(buildings)
        dtype = TYPES[k % len(TYPES)]
        dev = f"{SHORT[dtype]}-{i:06d}"
        per_building[b].append((dev, dtype))
        specs.append(DeviceSpec(dev, dtype, b, expected_interval_s=QUIET_INTERVAL_S))
    for start in range(0, len(specs), 5000):
        registry.add_devices(specs[start : start + 5000], now=now)
    return per_building


def seed_open_alerts(port: int, password: str, vehicles: list[str]) -> int:
    """One ``power_cut`` event per vehicle (V12.power_cut): as many open alerts. Returns how many were acked."""
    pub = SharedPublisher("127.0.0.1", port, "lianfang-sim", password, client_id="lianfang-sim-seed")
    pub.start()
    for v in vehicles:
        ts = int(time.time() * 1000)
        body = json.dumps({"ts": ts, "seq": 1, "type": "power_cut"}, separators=(",", ":")).encode()
        pub.publish(SimMessage(v, "event", body, ts))
    pub.close(60)
    return int(pub.counts.acked)


def seed_repository(registry: Registry, vehicles: list[tuple[str, str]], now: datetime) -> None:
    """The same open alerts (V12.power_cut, one per vehicle) written to the alert store before the service
    starts, raised two hours ago: older than the lifecycle's flap window (1 h) and the correlator's windows, as
    alerts left open since an earlier shift are. The service loads them at start; the correlator never saw them."""
    paths = {r.id: tuple(x for x in r.path.split("/") if x) for r in registry.regions()}
    at = now - timedelta(hours=2)
    alerts = [
        Alert(
            id=i + 1,
            dedup_key=f"V12.power_cut:{device}",
            rule_id="V12.power_cut",
            device_id=device,
            region_id=building,
            severity=Severity.MAJOR,
            state=AlertState.FIRING,
            title_zh="车载终端断电",
            title_en="Vehicle terminal power cut",
            started_at=at,
            updated_at=at,
            region_path=paths[building],
            learned_at=at,
            escalation_from=at,
        )
        for i, (device, building) in enumerate(vehicles)
    ]
    repo = AlertRepository(registry.engine)
    for start in range(0, len(alerts), 2000):
        repo.save(alerts=alerts[start : start + 2000], now=now)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--open-alerts", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=2000.0, help="background msg/s")
    ap.add_argument("--probes", type=int, default=1000, help="at most this many incidents (one building each)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--duration-s", type=float, default=180.0, help="stop probing after this long")
    ap.add_argument(
        "--seed",
        choices=("mqtt", "repository"),
        default="mqtt",
        help="open alerts raised through MQTT just before the run (default), or written to the alert store as "
        "raised 2 h ago (older than the flap window and the correlator's windows)",
    )
    ap.add_argument(
        "--registry-refresh-s", type=float, default=None, help="ingest.registry_refresh_s (default: serve's)"
    )
    ap.add_argument("--short", action="store_true", help="CI: 10,000 devices, 1,000 open alerts, 20 s of probes")
    args = ap.parse_args()
    if args.short:
        args.devices, args.open_alerts, args.duration_s, args.warmup_s = 10_000, 1_000, 20.0, 3.0
    buildings_n = max(10, min(args.probes, args.devices // 100))
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-correlate-"))
    cfg = BrokerConfig(
        directory=tmp / "mosquitto",
        port=free_port(),
        admin_password="bench-admin-x",
        platform_password="bench-platform-x",
        sim_password="bench-sim-x",
        max_inflight_messages=4000,
    )
    settings = Settings(
        data_dir=tmp,
        mqtt=MqttSettings(
            port=cfg.port,
            username="lianfang-platform",
            password=SecretStr(cfg.platform_password),
            embedded_broker=False,
            receive_maximum=4000,
        ),
    )
    if args.registry_refresh_s is not None:
        settings = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update={"registry_refresh_s": args.registry_refresh_s})}
        )
    # the registry, bulk-inserted before the service starts (as an import would leave it)
    t_reg = time.perf_counter()
    engine = make_engine(settings.database_url)
    migrate(engine)
    registry = Registry(engine)
    now = datetime.now(UTC)
    regions, buildings = region_tree(buildings_n)
    registry.upsert_regions(regions, now=now)
    per_building = register(registry, args.devices, buildings, now)
    vehicles_at = [(d, b) for b in buildings for d, t in per_building[b] if t == "vehicle"][: args.open_alerts]
    if args.seed == "repository":
        seed_repository(registry, vehicles_at, now)
    engine.dispose()
    reg_s = time.perf_counter() - t_reg

    probes: list[tuple[str, str, str]] = []  # (building, gate A, gate B)
    vehicles: list[str] = []
    bg: list[tuple[str, str]] = []
    for b in buildings:
        gates = [d for d, t in per_building[b] if t == "gate"]
        probes.append((b, gates[0], gates[1]))
        vehicles.extend(d for d, t in per_building[b] if t == "vehicle")
    probe_gates = {g for _, a, bb in probes for g in (a, bb)}
    vehicles = vehicles[: args.open_alerts]
    for b in buildings:
        bg.extend((d, t) for d, t in per_building[b] if t != "vehicle" and d not in probe_gates)
    random.Random(3).shuffle(bg)
    bg = bg[:BACKGROUND_DEVICES]
    if len(vehicles) < args.open_alerts:
        sys.exit(f"correlate: only {len(vehicles)} vehicles for {args.open_alerts} open alerts; add devices")

    alert_at: dict[str, float] = {}  # probe gate -> its G1.event alert stored
    told_at: dict[str, float] = {}  # probe gate -> its alert handed to the per-event subscribers (notifier)
    incident_at: dict[str, float] = {}  # building -> its X2 incident stored
    got = threading.Condition()
    joint_save: list[float] = []

    def on_alerts(events: list[LifecycleEvent]) -> None:  # right after the alert transaction commits
        t = time.perf_counter()
        mine = [e.alert.device_id for e in events if e.kind == "created" and e.alert.device_id in probe_gates]
        if mine:
            with got:
                for d in mine:
                    alert_at[d] = t
                got.notify_all()

    def on_alert(ev: LifecycleEvent) -> None:  # per-event subscribers (the notifier) run after the correlator
        if ev.kind == "created" and ev.alert.device_id in probe_gates:
            told_at[ev.alert.device_id] = time.perf_counter()

    def on_incident(ch: IncidentChange) -> None:
        if ch.kind == "opened" and ch.incident.pattern_id == "X2":
            t = time.perf_counter()
            with got:
                incident_at[ch.incident.region_id] = t
                got.notify_all()

    with MosquittoProcess(cfg):
        rt = Runtime(settings)
        t_start = time.perf_counter()
        rt.start()
        start_s = time.perf_counter() - t_start
        assert rt.alerts is not None and rt.joint is not None and rt.ingest is not None
        # The alert path's own end, as in bench/alert_latency.py: right after the commit, i.e. before the joint
        # service's batch subscriber (the correlator runs on the same thread before the per-event subscribers).
        rt.alerts.service._batch_subscribers.insert(0, on_alerts)
        rt.alerts.service.subscribe(on_alert)
        rt.joint.subscribe(on_incident)
        joint_store = rt.joint.store
        save = joint_store.save

        def timed_save(**kw: Any) -> None:
            t = time.perf_counter()
            save(**kw)
            joint_save.append((time.perf_counter() - t) * 1000)

        joint_store.save = timed_save  # type: ignore[method-assign]
        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=background, args=(cfg.port, cfg.sim_password, bg, args.rate, stop, out))
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim-probe", protocol=mqtt.MQTTv5)
        probe.username_pw_set("lianfang-sim", cfg.sim_password)
        rng = random.Random(5)
        alert_lat: list[float] = []
        told_lat: list[float] = []
        joint_lat: list[float] = []
        incident_lat: list[float] = []
        lost_alerts = lost_incidents = 0
        open_before = open_after = 0
        seed_s = 0.0
        incremental = load_avg = ""
        try:
            t_seed = time.perf_counter()
            acked = seed_open_alerts(cfg.port, cfg.sim_password or "", vehicles) if args.seed == "mqtt" else 0
            deadline = time.monotonic() + 120
            while len(rt.alerts.service.open_alerts()) < args.open_alerts and time.monotonic() < deadline:
                time.sleep(0.2)
            seed_s = time.perf_counter() - t_seed
            open_before = len(rt.alerts.service.open_alerts())
            if open_before < args.open_alerts:
                print(f"correlate: only {open_before} open alerts after seeding ({acked} acked)", file=sys.stderr)
            proc.start()
            probe.connect("127.0.0.1", cfg.port)
            probe.loop_start()
            time.sleep(args.warmup_s)  # background at full rate, first batches written
            gcpolicy.settle("benchmark warm-up done")  # as serve does at start-up and every 10 minutes
            incidents_before = rt.joint.opened
            received_before = rt.ingest.stats.received
            t_bg = time.perf_counter()
            stop_at = t_bg + args.duration_s

            def door(device: str) -> float:
                ts = int(time.time() * 1000)
                body = json.dumps({"ts": ts, "seq": 1, "type": "door_forced"}, separators=(",", ":")).encode()
                t0 = time.perf_counter()
                probe.publish(f"lf/v1/{device}/event", body, qos=1)
                return t0

            def wait(done: Any) -> bool:
                with got:
                    return bool(got.wait_for(done, timeout=10))

            for building, gate_a, gate_b in probes:
                if time.perf_counter() > stop_at:
                    break
                t0 = door(gate_a)
                if wait(lambda a=gate_a: a in alert_at):  # type: ignore[misc]
                    alert_lat.append((alert_at[gate_a] - t0) * 1000)
                else:
                    lost_alerts += 1
                time.sleep(rng.uniform(0.02, 0.08))
                t1 = door(gate_b)
                ok = wait(lambda g=gate_b, b=building: g in alert_at and b in incident_at)  # type: ignore[misc]
                if gate_b in alert_at:
                    alert_lat.append((alert_at[gate_b] - t1) * 1000)
                else:
                    lost_alerts += 1
                for g, t in ((gate_a, t0), (gate_b, t1)):
                    if g in told_at:
                        told_lat.append((told_at[g] - t) * 1000)
                if building in incident_at:
                    incident_lat.append((incident_at[building] - t1) * 1000)
                    if gate_b in alert_at:  # what the correlation adds after the completing alert is stored
                        joint_lat.append((incident_at[building] - alert_at[gate_b]) * 1000)
                elif not ok:
                    lost_incidents += 1
                time.sleep(rng.uniform(0.02, 0.08))  # de-phase probes from batch boundaries
            ingest_rate = (rt.ingest.stats.received - received_before) / (time.perf_counter() - t_bg)
            queue_depth = rt.ingest.queue.qsize()
            open_after = len(rt.alerts.service.open_alerts())
            joint_status = rt.joint.status()
            opened = rt.joint.opened - incidents_before
            feed = rt.registry.feed if rt.registry is not None else None
            incremental = (
                f"registry reads: {feed.full_reads if feed else '?'} full, {feed.changed_reads if feed else '?'} "
                f"with changes; joint window rows written {rt.joint.store.window_rows_written:,}"
            )
            load_avg = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        finally:
            stop.set()
            probe.loop_stop()
            probe.disconnect()
            if proc.is_alive() or proc.exitcode is not None:
                proc.join(60)
            if rt.ingest is not None:  # a saturated run leaves a backlog: drop it (this broker is thrown away)
                with contextlib.suppress(queue.Empty):
                    while True:
                        rt.ingest.queue.get_nowait()
            rt.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # a 100,000-device registry and the telemetry: ~100 MB
    _sent, bg_acked, elapsed = out.get(timeout=10) if not out.empty() else (0, 0, 1.0)
    bg_rate = bg_acked / elapsed if elapsed else 0.0
    if not incident_lat or not alert_lat:
        print("correlate: no incident or no probe alert was stored")
        sys.exit(1)
    lost = lost_alerts + lost_incidents
    print(
        f"correlate: incident p50 {statistics.median(incident_lat):.1f} ms, "
        f"p99 {percentile(incident_lat, 0.99):.1f} ms; alert p50 {statistics.median(alert_lat):.1f} ms, "
        f"p99 {percentile(alert_lat, 0.99):.1f} ms ({len(incident_lat)} incidents, {len(alert_lat)} alerts, "
        f"lost {lost}; {args.devices:,} devices, {open_before:,} open alerts ({args.seed}), "
        f"background {bg_rate:,.0f} msg/s)"
    )
    print(
        f"  detail: incident max {max(incident_lat):.1f} ms, alert max {max(alert_lat):.1f} ms, "
        f"lost alerts {lost_alerts}, lost incidents {lost_incidents}; incidents opened during probes {opened}; "
        f"open alerts {open_before} -> {open_after}; joint {joint_status}; ingest {ingest_rate:,.0f} msg/s "
        f"during probes, queue {queue_depth} at the end; registry {reg_s:.1f} s, start {start_s:.1f} s, "
        f"seeding {seed_s:.1f} s; {incremental}; load average {load_avg}",
        file=sys.stderr,
    )
    if joint_lat:
        print(
            f"  alert stored -> incident stored (the correlator's share): p50 {statistics.median(joint_lat):.1f} ms, "
            f"p99 {percentile(joint_lat, 0.99):.1f} ms, max {max(joint_lat):.1f} ms",
            file=sys.stderr,
        )
    if told_lat:
        print(
            f"  alert -> per-event subscribers (after the correlator): p50 {statistics.median(told_lat):.1f} ms, "
            f"p99 {percentile(told_lat, 0.99):.1f} ms",
            file=sys.stderr,
        )
    if joint_save:
        print(
            f"  joint_store_save: p50 {statistics.median(joint_save):.1f} ms, "
            f"p99 {percentile(joint_save, 0.99):.1f} ms, max {max(joint_save):.1f} ms over {len(joint_save)} writes",
            file=sys.stderr,
        )
    sys.exit(0 if lost == 0 else 1)


if __name__ == "__main__":
    main()
