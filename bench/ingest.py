"""Ingest drain benchmark: pre-fill a persistent session with N messages, then time the drain to durable storage.

    python bench/ingest.py [--messages N] [--devices D] [--processes P] [--short] [--store sqlite|influxdb] [--pg]

Starts its own Mosquitto (generated config, free port) and a temporary registry and SQLite store. Mixed device
types (energy meters, vehicles, gates). Prints one line: messages/s and lost count (published seqs that are
not stored). With --processes > 1, ingest runs as several processes sharing the subscription
($share/ingest/...). With --store influxdb, the store is core/store/influx.py writing to a VictoriaMetrics started
here (it accepts /api/v2/write); durable = counted in the side store (core/store/side.py: the device-state table
of the SQL database), which is written after the server confirmed the points; the stored seqs are checked through
VictoriaMetrics' export API at the end. The SQL database (registry, and the side store) is a temporary SQLite file,
or with --pg a temporary PostgreSQL database on 127.0.0.1:5432 (LIANFANG_TEST_PG: the admin URL), dropped at the
end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.db import make_engine, migrate
from core.settings import IngestSettings, MqttSettings
from core.store import TelemetryStore
from core.store.sqlite import SqliteStore
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.registry import DeviceSpec, RegionSpec, Registry
from ingest.service import IngestService

NOW = datetime.now(UTC)
TYPES = ("energy_meter", "vehicle", "gate")


def make_payload(dtype: str, seq: int, ts: int, rng: random.Random) -> bytes:
    if dtype == "energy_meter":
        doc: dict[str, object] = {
            "ts": ts,
            "seq": seq,
            "energy_kwh": 1000 + seq * 0.01,
            "power_kw": round(rng.uniform(1, 50), 2),
            "voltage_v": round(rng.uniform(218, 232), 1),
            "current_a": round(rng.uniform(5, 80), 1),
            "power_factor": 0.95,
        }
    elif dtype == "vehicle":
        doc = {
            "ts": ts,
            "seq": seq,
            "lat": 23.1 + rng.random() / 10,
            "lon": 113.3 + rng.random() / 10,
            "speed_kmh": round(rng.uniform(0, 80), 1),
            "heading_deg": rng.randrange(360),
            "ignition": True,
        }
    else:
        doc = {"ts": ts, "seq": seq, "door_open": rng.random() < 0.1, "occupancy": rng.randrange(200)}
    return json.dumps(doc, separators=(",", ":")).encode()


def prefill(port: int, password: str, devices: list[tuple[str, str]], n: int, max_inflight: int = 200) -> int:
    """Publish n QoS 1 messages with at most max_inflight unacked (paho loses messages past 65,535)."""
    rng = random.Random(7)
    sem = threading.Semaphore(max_inflight)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim", protocol=mqtt.MQTTv5)
    client.username_pw_set("lianfang-sim", password)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    acked = 0

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, props: object) -> None:
        nonlocal acked
        acked += 1
        sem.release()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    base_ts = int(time.time() * 1000) - n - 60_000
    seqs = dict.fromkeys((d for d, _ in devices), 0)
    for i in range(n):
        device, dtype = devices[i % len(devices)]
        seqs[device] += 1
        sem.acquire()
        client.publish(f"lf/v1/{device}/telemetry", make_payload(dtype, seqs[device], base_ts + i, rng), qos=1)
    deadline = time.monotonic() + 120
    while acked < n and time.monotonic() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    return acked


def _ingest_settings(port: int, password: str, group: str | None) -> MqttSettings:
    return MqttSettings(
        port=port,
        username="lianfang-platform",
        password=SecretStr(password),
        shared_group=group,
        embedded_broker=False,
        receive_maximum=4000,
    )


def influx_bench_store(vm_url: str, db_url: str) -> TelemetryStore:
    """The InfluxDB store on VictoriaMetrics. VictoriaMetrics has no InfluxQL /query, so ingest's one read at start
    (the recent seqs that warm duplicate detection) answers empty here; writes are the real path."""
    from core.store.influx import InfluxStore
    from core.store.side import SqlSideStore

    class VmStore(InfluxStore):
        def recent_seqs(self, max_rows: int) -> list[tuple[str, int, int]]:
            return []

    side = SqlSideStore(make_engine(db_url))
    return VmStore(vm_url, org="bench", bucket="bench", token="bench", database="bench", side=side)


def run_ingest(
    port: int,
    password: str,
    db_url: str,
    store_path: str,
    group: str | None,
    client_id: str,
    n_expected: int,
    done: object,
    subscribe_only: bool = False,
    vm_url: str | None = None,
) -> None:
    registry = Registry(make_engine(db_url))
    store: TelemetryStore = SqliteStore(Path(store_path)) if vm_url is None else influx_bench_store(vm_url, db_url)
    svc = IngestService(
        _ingest_settings(port, password, group),
        IngestSettings(batch_size=2000, batch_wait_ms=10),
        store,
        registry.snapshot,
        client_id=client_id,
    )
    svc.start()
    if subscribe_only:
        svc.stop()
        return
    assert isinstance(done, mp.synchronize.Event)  # type: ignore[attr-defined]
    while not done.is_set():
        time.sleep(0.05)
    svc.stop()


def count_stored(store_path: Path, *, exact: bool = True) -> int:
    """Rows stored; while polling, max(rowid) is an O(log n) upper bound that costs the writers nothing."""
    with sqlite3.connect(store_path) as conn:
        sql = "SELECT count(*) FROM telemetry" if exact else "SELECT coalesce(max(rowid), 0) FROM telemetry"
        return int(conn.execute(sql).fetchone()[0])


def start_vm(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """VictoriaMetrics on a free port with its storage in ``directory``; answers /health before returning."""
    import httpx

    port = free_port()
    directory.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            "victoria-metrics",
            f"-storageDataPath={directory}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-loggerLevel=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("ingest: victoria-metrics did not start")


def count_side(engine: Engine) -> int:
    """Messages counted durable by the InfluxDB store (its side store is written after the server confirmed)."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(sum(messages), 0) FROM telemetry_device_state")).scalar_one())


PG_ADMIN = os.environ.get("LIANFANG_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def pg_database(create: bool, name: str) -> str:
    """Create (or drop) a PostgreSQL database for the run; returns its URL."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' if create else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def count_vm(url: str) -> int:
    """Distinct (device, seq) stored in VictoriaMetrics, from its export API."""
    import httpx
    import orjson

    httpx.get(url + "/internal/force_flush", timeout=60)
    r = httpx.post(url + "/api/v1/export", data={"match[]": '{__name__=~".*_seq"}'}, timeout=600)
    seen: set[tuple[str, float]] = set()
    for line in r.text.splitlines():
        doc = orjson.loads(line)
        seen.update((doc["metric"]["device_id"], v) for v in doc["values"])
    return len(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=3000)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--short", action="store_true", help="CI mode: 20,000 messages")
    ap.add_argument("--store", choices=("sqlite", "influxdb"), default="sqlite")
    ap.add_argument("--pg", action="store_true", help="the SQL database (and side store) on PostgreSQL")
    args = ap.parse_args()
    n = 20_000 if args.short else args.messages
    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-ingest-"))
    cfg = BrokerConfig(
        directory=tmp / "mosquitto",
        port=free_port(),
        admin_password="bench-admin-x",
        platform_password="bench-platform-x",
        sim_password="bench-sim-x",
        max_inflight_messages=10_000,
    )
    pg_name = f"lf_bench_{int(time.time())}" if args.pg else None
    db_url = f"sqlite:///{tmp}/registry.db" if pg_name is None else pg_database(True, pg_name)
    engine = make_engine(db_url)
    migrate(engine)
    registry = Registry(engine)
    registry.upsert_regions(
        [RegionSpec("gd", "广东省", "province"), RegionSpec("gd-gz", "广州市", "city", "gd")], now=NOW
    )
    devices = [(f"{t.split('_')[0]}-{i:05d}", t) for i in range(args.devices) for t in (TYPES[i % 3],)]
    registry.add_devices([DeviceSpec(d, t, "gd-gz") for d, t in devices], now=NOW)
    store_path = tmp / "telemetry.db"
    SqliteStore(store_path).close()
    group = "ingest" if args.processes > 1 else None
    vm = start_vm(tmp / "vm") if args.store == "influxdb" else None
    vm_url = None if vm is None else vm[1]
    with MosquittoProcess(cfg):
        # 1) create the persistent session(s) and subscription, then go away
        for p in range(args.processes):
            run_ingest(
                cfg.port,
                cfg.platform_password,
                db_url,
                str(store_path),
                group,
                f"lianfang-ingest-{p}",
                0,
                None,
                subscribe_only=True,
                vm_url=vm_url,
            )
        # 2) pre-fill the session(s) while ingest is away
        t0 = time.perf_counter()
        acked = prefill(cfg.port, cfg.sim_password or "", devices, n)
        fill_s = time.perf_counter() - t0
        if acked != n:
            print(f"ingest: prefill failed, broker acked {acked}/{n}")
            sys.exit(1)
        # 3) start ingest and time the drain until everything is durable
        ctx = mp.get_context("spawn")
        done = ctx.Event()
        t0 = time.perf_counter()
        procs = [
            ctx.Process(
                target=run_ingest,
                args=(cfg.port, cfg.platform_password, db_url, str(store_path), group, f"lianfang-ingest-{p}", n, done),
                kwargs={"vm_url": vm_url},
            )
            for p in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        stored = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if vm_url is not None:
                if count_side(engine) >= n:
                    break
            elif count_stored(store_path, exact=False) >= n and count_stored(store_path) >= n:
                break
            time.sleep(0.05)
        stored = count_stored(store_path) if vm_url is None else count_side(engine)
        drain_s = time.perf_counter() - t0
        done.set()
        for proc in procs:
            proc.join(60)
    if vm is not None:
        stored = min(stored, count_vm(vm[1]))
        vm[0].terminate()
        vm[0].wait(30)
    engine.dispose()
    if pg_name is not None:
        pg_database(False, pg_name)
    lost = n - stored
    sql = "postgresql" if args.pg else "sqlite"
    print(
        f"ingest: {n} msgs drained in {drain_s:.2f} s = {n / drain_s:,.0f} msg/s durable, lost {lost} "
        f"(processes={args.processes}, devices={args.devices}, prefill {n / fill_s:,.0f} msg/s, store={args.store}, "
        f"sql={sql})"
    )
    sys.exit(0 if lost == 0 else 1)


if __name__ == "__main__":
    main()
