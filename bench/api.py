"""API at scale: the region tree, the overview and the open-alert list at 100,000 devices, and 50 live streams.

    python bench/api.py [--devices N] [--open-alerts A] [--requests R] [--streams S] [--short]

What a user runs, measured through HTTP: ``lianfang serve`` as a subprocess (``python -m lianfang serve``, every
default rule pack on) over a temporary data directory, with a Mosquitto started from the generated config on a
free port (owned by the benchmark, as in ``bench/e2e.py``).

1. Seeded before ``serve`` starts (as an import and a running fleet would leave them): ``bench/correlate.py``'s
   region tree (gd -> 10 cities -> agencies -> buildings, one building per 100 devices) and N devices bulk-inserted
   (gates, vehicles, meters, sensors); A open alerts in the alert store (V12.power_cut, one per vehicle, as
   ``bench/correlate.py --seed repository``); in the telemetry store every device's last-seen time (90 % within
   the last 10 minutes), two ``energy_kwh`` readings today per meter and one on each of the four previous same
   weekdays (so the overview has a baseline), an ignition reading per vehicle (a third in use); two API users, an
   administrator of the whole tree and the operator of one city.
2. ``serve`` starts; the first ``/api/v1/overview`` is timed (the fleet index is built then), and the benchmark
   waits until the energy baseline is computed (a background job of ``serve``).
3. Each endpoint, R requests one after the other on one keep-alive connection, then R requests from 8 threads at
   once: ``/api/v1/regions`` and ``/api/v1/overview`` (administrator, city operator, and one city as a filter),
   ``/api/v1/alerts?state=open&limit=50`` (first page, and page 100 for the administrator). p50 / p99 each.
4. S clients hold ``/api/v1/stream`` open (four in five as the administrator, the rest as the city operator) while
   ``door_forced`` events (G1.event: each raises an alert) arrive at ``--event-rate`` per second (5) through the
   simulator account, on top of gate heartbeats at ``--rate`` msg/s; every stream must receive every event it may
   see. Lag = the event's ``ts`` (set when published) -> the stream client parsed it, p50 / p99 / max over every
   (stream, event). The overview and region tree are requested meanwhile (p99 under that load).

Prints one result line; details on stderr. Peak RSS of ``serve`` (VmHWM) and the load average are in it.
``--short`` (CI): 10,000 devices, 1,000 open alerts, 200 requests, 50 streams for 10 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alert_latency import percentile
from correlate import region_tree, register, seed_repository
from e2e import Serve

from core.db import make_engine, migrate
from core.protocol import Reading
from core.settings import Settings
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.registry import Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from gateway.auth import create_user
from lianfang.runtime import BrokerSecrets, broker_secrets_path

API = "/api/v1"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
BJ_MS = 8 * HOUR_MS
CITY = "gd-c00"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- seeding ---------------------------------------------------------------------------------------------------------


def seed_store(path: Path, devices: list[tuple[str, str, str]], now_ms: int, rng: random.Random) -> dict[str, int]:
    """Last-seen times, meters' energy_kwh today and on the previous four same weekdays, vehicles' ignition."""
    store = SqliteStore(path, synchronous="OFF")
    today = (now_ms + BJ_MS) // DAY_MS * DAY_MS - BJ_MS
    counts = {"seen": 0, "readings": 0}
    batch = WriteBatch()
    try:
        for i, (dev, dtype, region) in enumerate(devices):
            if rng.random() < 0.9:
                seen = now_ms - rng.randrange(600_000)
                batch.counter(dev).last_seen_ms = seen
                counts["seen"] += 1
            if dtype == "energy_meter":
                base = 1000.0 + i
                early = max(today, now_ms - 2 * HOUR_MS)
                batch.readings.append(Reading(dev, region, dtype, early, None, {"energy_kwh": base}))
                batch.readings.append(Reading(dev, region, dtype, now_ms - 60_000, None, {"energy_kwh": base + 3.0}))
                for k in range(1, 5):
                    start = today - 7 * k * DAY_MS
                    batch.readings.append(Reading(dev, region, dtype, start - 1_800_000, None, {"energy_kwh": base}))
                    batch.readings.append(Reading(dev, region, dtype, start + HOUR_MS, None, {"energy_kwh": base + k}))
            elif dtype == "vehicle":
                ignition = rng.random() < 1 / 3
                batch.readings.append(
                    Reading(
                        dev, region, dtype, now_ms - 30_000, None, {"lat": 23.1, "lon": 113.3, "ignition": ignition}
                    )
                )
            if len(batch) >= 20_000 or len(batch.counters) >= 20_000:
                counts["readings"] += len(batch.readings)
                store.write(batch)
                batch = WriteBatch()
        counts["readings"] += len(batch.readings)
        store.write(batch)
    finally:
        store.close()
    return counts


# --- HTTP ------------------------------------------------------------------------------------------------------------


class Http:
    """One keep-alive connection."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", path, headers=self.headers)
            r = self.conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            raise
        return r.status, body, (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.conn.close()


def measure(port: int, token: str, path: str, n: int, threads: int) -> list[float]:
    """n GETs of ``path`` from ``threads`` threads (one keep-alive connection each); latencies in ms."""
    out: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def run(k: int) -> None:
        c = Http(port, token)
        try:
            for _ in range(k):
                status, body, ms = c.get(path)
                if status != 200:
                    errors.append(f"{path}: {status} {body[:200]!r}")
                    return
                with lock:
                    out.append(ms)
        finally:
            c.close()

    workers = [threading.Thread(target=run, args=(k,)) for k in per]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(errors[0])
    return out


def p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


# --- live streams ----------------------------------------------------------------------------------------------------


class StreamClient(threading.Thread):
    """One ``/api/v1/stream``: records when each door_forced event arrived (its ts -> now, ms)."""

    def __init__(self, port: int, token: str, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.port, self.token = port, token
        self.lags: dict[tuple[str, int], float] = {}
        self.reading_lags: list[float] = []  # gate heartbeats (the newest reading per device, every 10th batch)
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.error: str | None = None
        self.dropped = 0
        self.batches = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("GET", f"{API}/stream", headers={"Authorization": f"Bearer {self.token}"})
            r = conn.getresponse()
            if r.status != 200:
                self.error = f"stream: {r.status} {r.read()[:200]!r}"
                self.opened.set()
                return
            self.opened.set()
            while not self.stop.is_set():
                line = r.readline()  # the keep-alive comes every 15 s
                if not line:
                    return
                if not line.startswith(b"data:"):
                    continue
                now_ms = time.time() * 1000
                self.batches += 1
                # parsed only when it holds an event counted here, a drop count, or (heartbeat lag) every 10th batch:
                # 50 clients in one Python process must not fall behind the server they measure
                if b'"door_forced"' not in line and b'"dropped"' not in line and self.batches % 10:
                    continue
                msg = json.loads(line[5:])
                self.dropped += int(msg.get("dropped", 0))
                for e in msg.get("events", ()):
                    if e.get("type") == "door_forced":
                        self.lags.setdefault((e["device_id"], int(e["ts_ms"])), now_ms - e["ts_ms"])
                for reading in msg.get("readings", ()):
                    self.reading_lags.append(now_ms - reading["ts_ms"])
        except Exception as exc:  # reported in the result
            self.error = f"stream: {exc!r}"
            self.opened.set()
        finally:
            conn.close()


def publish_events(
    pub: SharedPublisher, gates: list[str], seconds: float, rate: float, heartbeat_rate: float, stop: threading.Event
) -> list[tuple[str, int]]:
    """door_forced on distinct gates at ``rate``/s and gate heartbeats at ``heartbeat_rate``/s; returns the events."""
    sent: list[tuple[str, int]] = []
    t0 = time.monotonic()
    n_ev = n_hb = 0
    seq = 10
    while not stop.is_set():
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        while n_ev < elapsed * rate and n_ev < len(gates):
            gate = gates[n_ev]
            ts = int(time.time() * 1000)
            body = json.dumps({"ts": ts, "seq": seq, "type": "door_forced"}, separators=(",", ":")).encode()
            pub.publish(SimMessage(gate, "event", body, ts))
            sent.append((gate, ts))
            n_ev += 1
        while n_hb < elapsed * heartbeat_rate:
            gate = gates[-1 - (n_hb % max(1, len(gates) // 2))]
            ts = int(time.time() * 1000)
            body = json.dumps({"ts": ts, "door_open": False}, separators=(",", ":")).encode()
            pub.publish(SimMessage(gate, "telemetry", body, ts))
            n_hb += 1
        time.sleep(0.005)
    return sent


# --- main ------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--open-alerts", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300, help="requests per endpoint, sequential and concurrent")
    ap.add_argument("--threads", type=int, default=8, help="concurrent clients for the second round")
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--stream-s", type=float, default=30.0, help="seconds of events while the streams are open")
    ap.add_argument("--rate", type=float, default=200.0, help="gate heartbeats per second during the stream phase")
    ap.add_argument("--event-rate", type=float, default=5.0, help="door_forced events (new alerts) per second")
    ap.add_argument("--short", action="store_true", help="CI: 10,000 devices, 1,000 open alerts, 200 requests")
    ap.add_argument("--keep", action="store_true", help="keep the data directory (its path goes to stderr)")
    ap.add_argument("--py-spy", type=Path, help="profile serve during the stream phase with this py-spy binary")
    args = ap.parse_args()
    if args.short:
        args.devices, args.open_alerts, args.requests, args.stream_s = 10_000, 1_000, 200, 10.0
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-api-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIANFANG_")}
    mqtt_port, api_port = free_port(), free_port()
    env.update(
        LIANFANG_DATA_DIR=str(tmp / "data"),
        LIANFANG_MQTT__PORT=str(mqtt_port),
        LIANFANG_LOG_LEVEL="WARNING",
        LIANFANG_API__STREAM_MAX_PER_USER=str(args.streams + 5),
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("LIANFANG_")})
    settings = Settings()
    secrets = BrokerSecrets.load_or_create(broker_secrets_path(settings))
    cfg = BrokerConfig(
        directory=settings.mqtt.broker_dir,
        port=mqtt_port,
        admin_password=secrets.admin,
        platform_username=settings.mqtt.username,
        platform_password=secrets.platform,
        sim_password=secrets.sim,
        autosave_interval_s=settings.mqtt.broker_autosave_interval,
        autosave_on_changes=settings.mqtt.broker_autosave_on_changes,
    )
    env.update(
        LIANFANG_MQTT__EMBEDDED_BROKER="false",
        LIANFANG_MQTT__PASSWORD=secrets.platform,
        LIANFANG_MQTT__ADMIN_PASSWORD=secrets.admin,
    )
    broker = MosquittoProcess(cfg)
    broker.start()
    serve: Serve | None = None
    rng = random.Random(11)
    try:
        # 1) seed
        t0 = time.perf_counter()
        engine = make_engine(settings.database_url)
        migrate(engine)
        registry = Registry(engine)
        now = datetime.now(UTC)
        regions, buildings = region_tree(max(10, args.devices // 100))
        registry.upsert_regions(regions, now=now)
        per_building = register(registry, args.devices, buildings, now)
        devices = [(d, t, b) for b in buildings for d, t in per_building[b]]
        vehicles = [(d, b) for d, t, b in devices if t == "vehicle"][: args.open_alerts]
        seed_repository(registry, vehicles, now - timedelta(seconds=1))
        admin = create_user(engine, "bench-admin", "admin", None, now)
        city = create_user(engine, "bench-city", "operator", CITY, now)
        engine.dispose()
        seeded = seed_store(settings.store.sqlite_path, devices, int(time.time() * 1000), rng)
        log(
            f"api: seeded {len(regions)} regions, {len(devices)} devices, {len(vehicles)} open alerts, "
            f"{seeded['seen']} seen, {seeded['readings']} readings in {time.perf_counter() - t0:.1f} s"
        )
        # 2) serve
        serve = Serve(env, api_port, tmp / "serve.log")
        serve.wait_up(300)
        c = Http(api_port, admin)
        # serve builds the fleet index in the background at start-up; a request during that build waits for it
        # (at most 5 s), then answers 503 with Retry-After: time the first 200 and how long after "up" it came
        t_up = time.perf_counter()
        status, body, first_ms = c.get(f"{API}/overview")
        while status == 503 and time.perf_counter() - t_up < 600:
            time.sleep(1.0)
            status, body, first_ms = c.get(f"{API}/overview")
        ready_s = time.perf_counter() - t_up
        has_overview = status == 200
        baseline_s = float("nan")
        if has_overview:
            t1 = time.perf_counter()
            while time.perf_counter() - t1 < 600:
                if json.loads(c.get(f"{API}/overview")[1])["energy"]["baseline_kwh"] is not None:
                    baseline_s = time.perf_counter() - t1
                    break
                time.sleep(0.5)
            log(f"api: first overview {first_ms:.0f} ms ({ready_s:.1f} s after up): {body.decode()[:400]}")
            log(f"api: energy baseline ready {baseline_s:.1f} s later")
        else:
            log(f"api: no /overview here ({status}); measuring the rest")
        open_total = json.loads(c.get(f"{API}/alerts?state=open&limit=1")[1])["total"]
        c.close()
        serve.sample_rss()
        # 3) endpoints
        deep = max(0, min(open_total - 50, 5000))
        endpoints: list[tuple[str, str, str]] = [
            ("me", f"{API}/me", admin),  # the floor: authentication and the framework, no data
            ("regions", f"{API}/regions", admin),
            ("regions.city", f"{API}/regions", city),
            ("alerts", f"{API}/alerts?" + urlencode({"state": "open", "limit": 50}), admin),
            ("alerts.city", f"{API}/alerts?" + urlencode({"state": "open", "limit": 50}), city),
            ("alerts.deep", f"{API}/alerts?" + urlencode({"state": "open", "limit": 50, "offset": deep}), admin),
        ]
        if has_overview:
            endpoints[2:2] = [
                ("overview", f"{API}/overview", admin),
                ("overview.city", f"{API}/overview", city),
                ("overview.region", f"{API}/overview?region=gd-c01", admin),
            ]
        results: dict[str, dict[str, float]] = {}
        for name, path, token in endpoints:
            seq = measure(api_port, token, path, args.requests, 1)
            conc = measure(api_port, token, path, args.requests, args.threads)
            results[name] = {"p50": p(seq, 0.5), "p99": p(seq, 0.99), "c_p50": p(conc, 0.5), "c_p99": p(conc, 0.99)}
            log(
                f"api: {name:16s} sequential p50 {results[name]['p50']:6.1f} p99 {results[name]['p99']:6.1f} ms; "
                f"{args.threads} threads p50 {results[name]['c_p50']:6.1f} p99 {results[name]['c_p99']:6.1f} ms"
            )
            serve.sample_rss()
        # 4) streams while alerts fire
        clients = [
            StreamClient(api_port, admin if i % 5 else city, f"stream-{i}") if args.streams else None
            for i in range(args.streams)
        ]
        streams = [s for s in clients if s is not None]
        for s in streams:
            s.start()
        for s in streams:
            s.opened.wait(30)
        errors = [s.error for s in streams if s.error]
        gates = [d for d, t, _ in devices if t == "gate"]
        rng.shuffle(gates)
        city_of = {d: b for d, _, b in devices}
        pub = SharedPublisher("127.0.0.1", mqtt_port, "lianfang-sim", secrets.sim, client_id="lianfang-sim-bench")
        pub.start()
        stop = threading.Event()
        under_load: dict[str, list[float]] = {"overview": [], "regions": []}

        def poll() -> None:
            c2 = Http(api_port, admin)
            try:
                while not stop.is_set():
                    for name in under_load:
                        if name == "overview" and not has_overview:
                            continue
                        under_load[name].append(c2.get(f"{API}/{name}")[2])
                    time.sleep(0.05)
            finally:
                c2.close()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        spy = None
        if args.py_spy is not None:  # collapsed stacks of every thread, idle ones left out
            out = tmp.parent / f"lf-bench-api-{serve.proc.pid}.spy"
            spy_cmd = [str(args.py_spy), "record", "-p", str(serve.proc.pid), "-r", "100", "--threads"]
            spy = subprocess.Popen([*spy_cmd, "--format", "raw", "-o", str(out)], stderr=subprocess.DEVNULL)
            log(f"api: py-spy profile in {out}")
        sent = publish_events(pub, gates, args.stream_s, args.event_rate, args.rate, stop)
        pub.close(60)
        deadline = time.monotonic() + 20
        expected: dict[int, set[tuple[str, int]]] = {}
        for i, client in enumerate(clients):
            if client is None:
                continue
            sees_all = i % 5 != 0
            expected[i] = {(g, ts) for g, ts in sent if sees_all or city_of[g].startswith(f"{CITY}-")}
        while time.monotonic() < deadline:
            if all(expected[i] <= set(s.lags) for i, s in enumerate(clients) if s is not None):
                break
            time.sleep(0.2)
        stop.set()
        poller.join(10)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        serve.sample_rss()
        for s in streams:
            s.stop.set()
        lags = [s.lags[k] for i, s in enumerate(clients) if s is not None for k in expected[i] if k in s.lags]
        reading_lags = [x for s in streams for x in s.reading_lags]
        missed = sum(len(expected[i] - set(s.lags)) for i, s in enumerate(clients) if s is not None)
        wanted = sum(len(v) for v in expected.values())
        dropped = sum(s.dropped for s in streams)
        errors += [s.error for s in streams if s.error]
        load_end = os.getloadavg()
        rss_mib = serve.peak_rss_kib / 1024
        parts = [f"{n} p50 {r['p50']:.1f} p99 {r['p99']:.1f} ms" for n, r in results.items()]
        conc_p99 = [f"{n} {r['c_p99']:.1f}" for n, r in results.items()]
        line = (
            f"api: {args.devices} devices, {open_total} open alerts; sequential: {', '.join(parts)}; "
            f"{args.threads} threads p99 ms: {', '.join(conc_p99)}; {len(streams)} streams, {len(sent)} alert events "
            f"({wanted} deliveries): lag p50 {p(lags, 0.5):.0f} p99 {p(lags, 0.99):.0f} max "
            f"{max(lags, default=float('nan')):.0f} ms, missed {missed}, dropped {dropped}, heartbeat lag p50 "
            f"{p(reading_lags, 0.5):.0f} p99 {p(reading_lags, 0.99):.0f} ms; under the stream load "
            f"p99 overview {p(under_load['overview'], 0.99):.1f} regions {p(under_load['regions'], 0.99):.1f} ms; "
            f"first overview {first_ms:.0f} ms ({ready_s:.1f} s after up), baseline after {baseline_s:.1f} s; "
            f"peak RSS {rss_mib:.0f} MiB; "
            f"load {load_start[0]:.1f} -> {load_end[0]:.1f}"
        )
        if errors:
            line += f"; errors: {errors[0]}"
        print(line)
        return 1 if errors or missed else 0
    finally:
        if serve is not None:
            serve.stop()
        broker.stop()
        if args.keep:
            log(f"api: data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
