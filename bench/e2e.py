"""End-to-end drain benchmark: the real ``lianfang serve`` drains a backlog queued while it was down.

    python bench/e2e.py [--devices N] [--messages M] [--alerts on|off] [--short]

What a user runs, measured: a temporary data directory (``LIANFANG_DATA_DIR``), the sample region tree, N devices
imported and provisioned with their broker identities (as ``bench/provision.py`` does), a Mosquitto started from
the generated config (the one ``serve`` would start, owned by the benchmark so that it stays up while ``serve``
is down) and ``lianfang serve`` as a subprocess with every default rule pack on, on free ports.

1. ``serve`` starts once, so ingest's persistent session and subscription exist, and stops (SIGTERM).
2. M valid QoS 1 messages are published through the simulator account while ``serve`` is down: a mix of gates,
   vehicles and meters (telemetry; about 30 per device), 400 of them made to raise exactly one alert each
   (150 meter readings that go backwards, E5.negative; 150 ``door_forced`` gate events, G1.event; 100
   ``power_cut`` vehicle events, V12.power_cut). Nothing else in the data crosses a rule.
3. ``serve`` starts again and the drain is timed from its start until every message is stored (telemetry rows
   + events in telemetry.db) AND the alert engine has evaluated every record (``/health/ready``: the engine
   feed's ``records`` with ``alerts.engine: separate``, ingest's ``acked`` with ``inline``, where a batch is acked
   only once evaluated); then the alerts table is read.

Prints one result line: msg/s (until stored and evaluated), when each finished, lost (published, not stored),
expected alerts raised, peak RSS and CPU per message of ``serve`` and its ingest child together.
``--alerts off`` runs the same with ``LIANFANG_ALERTS__ENABLED=false``, for the ratio; ``--engine inline`` the
engine inside ingest's process (one process, as before the engine role).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.db import make_engine, migrate
from core.settings import Settings
from devices.audit import Actor
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.dynsec import DynsecClient
from devices.imports import import_devices, import_regions
from devices.provisioning import Provisioner, ProvisionOnWrite, SecretHasher
from devices.registry import Registry
from lianfang.runtime import BrokerSecrets, broker_secrets_path

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("gate", "energy_meter", "vehicle")
# alert-raising messages: (rule, device type, how many)
EXPECTED = (("E5.negative", "energy_meter", 150), ("G1.event", "gate", 150), ("V12.power_cut", "vehicle", 100))


def write_csv(path: Path, n: int, regions: list[str]) -> list[tuple[str, str]]:
    devices = []
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "type", "region_id", "name"])
        for i in range(n):
            kind = TYPES[i % len(TYPES)]
            dev = f"{kind.replace('_', '-')}-{i:06d}"
            devices.append((dev, kind))
            w.writerow([dev, kind, regions[i % len(regions)], f"设备 {i}"])
    return devices


def telemetry(dtype: str, seq: int, ts: int, rng: random.Random, kwh: float) -> dict[str, object]:
    if dtype == "energy_meter":
        return {
            "ts": ts,
            "seq": seq,
            "energy_kwh": round(kwh, 3),
            "power_kw": round(rng.uniform(1, 50), 2),
            "voltage_v": round(rng.uniform(218, 232), 1),
            "current_a": round(rng.uniform(5, 80), 1),
            "power_factor": 0.95,
        }
    if dtype == "vehicle":  # parked or moving below every speed limit, ignition off (no schedule rule applies)
        return {
            "ts": ts,
            "seq": seq,
            "lat": round(23.1 + rng.random() / 10, 6),
            "lon": round(113.3 + rng.random() / 10, 6),
            "speed_kmh": round(rng.uniform(0, 55), 1),
            "heading_deg": rng.randrange(360),
            "ignition": False,
        }
    return {"ts": ts, "seq": seq, "door_open": False, "occupancy": rng.randrange(200)}


def plan(devices: list[tuple[str, str]], n: int, base_ts: int) -> list[tuple[str, bytes]]:
    """n (topic, payload) pairs, round-robin over the devices, 2 s apart per device; EXPECTED alerts among them."""
    rng = random.Random(7)
    per_type: dict[str, list[str]] = {}
    for d, t in devices:
        per_type.setdefault(t, []).append(d)
    # each alerting device gets one alerting message, at its 10th record (a meter's reading drops below the last)
    special: dict[tuple[str, int], str] = {}
    for rule, dtype, count in EXPECTED:
        pool = per_type[dtype]
        step = max(1, len(pool) // count)
        for k in range(count):
            special[(pool[(k * step) % len(pool)], 10)] = rule
    seqs = dict.fromkeys((d for d, _ in devices), 0)
    kwh = {d: 1000.0 + i for i, (d, _) in enumerate(devices)}
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        device, dtype = devices[i % len(devices)]
        seqs[device] += 1
        seq = seqs[device]
        ts = base_ts + seq * 2000
        hit = special.get((device, seq))
        if hit in ("G1.event", "V12.power_cut"):
            ev = {"ts": ts, "seq": seq, "type": "door_forced" if hit == "G1.event" else "power_cut"}
            out.append((f"lf/v1/{device}/event", json.dumps(ev, separators=(",", ":")).encode()))
            continue
        if hit == "E5.negative":
            kwh[device] -= 5.0
        else:
            kwh[device] += rng.uniform(0.01, 0.2)
        doc = telemetry(dtype, seq, ts, rng, kwh[device])
        out.append((f"lf/v1/{device}/telemetry", json.dumps(doc, separators=(",", ":")).encode()))
    return out


def prefill(port: int, password: str, msgs: list[tuple[str, bytes]], max_inflight: int = 500) -> int:
    """Publish every message with QoS 1, at most max_inflight unacknowledged; returns how many the broker acked."""
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
    for topic, payload in msgs:
        sem.acquire()
        client.publish(topic, payload, qos=1)
    deadline = time.monotonic() + 120
    while acked < len(msgs) and time.monotonic() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    return acked


def stored(path: Path, *, exact: bool) -> int:
    """Telemetry rows + events; while polling, max(rowid) bounds the count from above without a scan."""
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        if exact:
            sql = "SELECT (SELECT count(*) FROM telemetry) + (SELECT count(*) FROM events)"
        else:
            sql = (
                "SELECT (SELECT coalesce(max(rowid), 0) FROM telemetry) + (SELECT coalesce(max(rowid), 0) FROM events)"
            )
        return int(conn.execute(sql).fetchone()[0])


def alerts_by_rule(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        return {str(r): int(c) for r, c in conn.execute("SELECT rule_id, count(*) FROM alerts GROUP BY rule_id")}


class Serve:
    """``lianfang serve`` as a subprocess; peak RSS read from /proc while it runs."""

    def __init__(self, env: dict[str, str], api_port: int, log: Path) -> None:
        self.api_port = api_port
        self.log = log.open("ab")
        # `python -m lianfang` from ROOT: the code next to this file, also when it is a copy of another commit
        cmd = [sys.executable, "-m", "lianfang", "serve", "--port", str(api_port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.peak_rss_kib = 0

        self.peak_by_pid: dict[int, int] = {}

    def pids(self) -> list[int]:
        """serve and its Python children (the ingest process; not the broker, which the benchmark runs)."""
        out = [self.proc.pid]
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
        return out

    def sample_rss(self) -> None:
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), int(line.split()[1]))
            except OSError:
                pass
        self.peak_rss_kib = max(self.peak_rss_kib, sum(self.peak_by_pid.values()))

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU time (user + system, every thread) of serve and of each child so far, serve first."""
        out: dict[int, float] = {}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def cpu_s(self) -> float:
        """CPU time (user + system, every thread) serve and its children have used so far."""
        return sum(self.cpu_by_pid().values())

    def ready(self) -> dict[str, object]:
        """/health/ready's body (also when it answers 503); {} when it does not answer."""
        url = f"http://127.0.0.1:{self.api_port}/api/v1/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except OSError:
            return {}
        try:
            doc = json.loads(body)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def evaluated(self) -> int:
        """Records the alert engine has evaluated (engine role), or messages ingest acked (inline engine)."""
        checks = self.ready().get("checks")
        if not isinstance(checks, dict):
            return 0
        engine = (checks.get("alerts") or {}).get("engine")
        if isinstance(engine, dict):
            return int(engine.get("records") or 0)
        acked = (checks.get("ingest") or {}).get("acked")
        return -1 if acked is None else int(acked)  # -1: a tree older than the engine role says neither

    def cpu_until_idle(self, quiet_s: float = 1.0, limit_s: float = 60.0) -> float:
        """serve's CPU once it has gone idle (under a tenth of a core for ``quiet_s``): all the work the backlog
        caused, whatever a tree's readiness reports; comparable across commits."""
        until = time.monotonic() + limit_s
        last = self.cpu_s()
        while time.monotonic() < until:
            time.sleep(quiet_s)
            now = self.cpu_s()
            if now - last < 0.1 * quiet_s:
                return now
            last = now
        return last

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not answer within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.sample_rss()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--alerts", choices=("on", "off"), default="on")
    ap.add_argument("--engine", choices=("separate", "inline"), default="separate", help="alerts.engine")
    ap.add_argument("--short", action="store_true", help="CI mode: 1,000 devices, 30,000 messages")
    ap.add_argument("--keep", action="store_true", help="keep the data directory (its path goes to stderr)")
    ap.add_argument("--py-spy", type=Path, help="profile serve during the drain with py-spy into this file")
    ap.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: sample only threads holding the GIL")
    ap.add_argument("--idle-cpu", action="store_true", help="also report serve's CPU per message once it has gone idle")
    args = ap.parse_args()
    n_dev, n = (1_000, 30_000) if args.short else (args.devices, args.messages)
    if n < n_dev * 11:
        ap.error("need at least 11 messages per device (the alerting record is each device's 10th)")
    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-e2e-"))
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIANFANG_")}
    mqtt_port, api_port = free_port(), free_port()
    env.update(LIANFANG_DATA_DIR=str(data), LIANFANG_MQTT__PORT=str(mqtt_port), LIANFANG_LOG_LEVEL="WARNING")
    os.environ.update({k: v for k, v in env.items() if k.startswith("LIANFANG_")})
    settings = Settings()
    secrets = BrokerSecrets.load_or_create(broker_secrets_path(settings))
    # The broker serve would start (lianfang/runtime.py), run by the benchmark: up while serve is down.
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
        LIANFANG_ALERTS__ENABLED="true" if args.alerts == "on" else "false",
    )
    if args.engine != "separate":  # the default; not set, so that trees older than alerts.engine run too
        env["LIANFANG_ALERTS__ENGINE"] = args.engine
    log = tmp / "serve.log"
    broker = MosquittoProcess(cfg)
    broker.start()
    serve: Serve | None = None
    try:
        # devices: regions, CSV import with broker identities (bench/provision.py's path)
        engine = make_engine(settings.database_url)
        migrate(engine)
        registry = Registry(engine)
        now = datetime.now(UTC)
        import_regions(registry, ROOT / "devices" / "sample" / "regions.yaml", now=now)
        buildings = [r.id for r in registry.regions() if r.level == "building"]
        devices = write_csv(tmp / "devices.csv", n_dev, buildings)
        t0 = time.perf_counter()
        with DynsecClient("127.0.0.1", cfg.port, cfg.admin_password, timeout=30) as dynsec:
            prov = Provisioner(
                registry, dynsec, actor=Actor("bench", "bench/e2e.py"), process=broker, hasher=SecretHasher()
            )
            hook = ProvisionOnWrite(prov, now)
            report = import_devices(registry, tmp / "devices.csv", now=now, on_written=hook)
        provision_s = time.perf_counter() - t0
        engine.dispose()
        assert len(report.created) == n_dev and len(hook.secrets) == n_dev, report
        # 1) the ingest session and its subscription, then serve goes away
        serve = Serve(env, api_port, log)
        serve.wait_up()
        serve.stop()
        serve = None
        # 2) the backlog, queued in ingest's session while serve is down
        msgs = plan(devices, n, int(time.time() * 1000) - 120_000)
        t0 = time.perf_counter()
        acked = prefill(cfg.port, secrets.sim, msgs)
        fill_s = time.perf_counter() - t0
        if acked != n:
            print(f"e2e: prefill failed, broker acked {acked}/{n}")
            return 1
        # 3) serve again; the drain is timed from its start until everything is stored
        t0 = time.perf_counter()
        serve = Serve(env, api_port, log)
        spy = None
        if args.py_spy is not None:  # every thread, idle ones left out; --format raw: collapsed stacks
            spy_cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(serve.proc.pid), "-r", "200"]
            spy_cmd += ["--threads", "--subprocesses", "--format", "raw", "-o", str(args.py_spy)]
            spy_cmd += ["--gil"] if args.py_spy_gil else []  # only the thread holding each process's GIL
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = settings.store.sqlite_path
        deadline = time.monotonic() + 900
        last_rss = 0.0
        first_s = 0.0  # when the first message was stored (serve's start-up before it)
        stored_s = engine_s = 0.0  # when everything was stored; when the engine had evaluated everything
        last_ready = 0.0
        while time.monotonic() < deadline and serve.proc.poll() is None:
            if time.monotonic() - last_rss > 0.5:
                serve.sample_rss()
                last_rss = time.monotonic()
            if not stored_s:
                upper = stored(store, exact=False)
                if not first_s and upper > 0:
                    first_s = time.perf_counter() - t0
                if upper >= n and stored(store, exact=True) >= n:
                    stored_s = time.perf_counter() - t0
            if args.alerts == "on" and not engine_s and time.monotonic() - last_ready > 0.25:
                last_ready = time.monotonic()
                done = serve.evaluated()
                if done >= n or (done < 0 and stored_s):  # older trees: until stored, the rest in the idle CPU
                    engine_s = time.perf_counter() - t0
            if stored_s and (engine_s or args.alerts == "off"):
                break
            time.sleep(0.05)
        drain_s = time.perf_counter() - t0
        cpu_s = serve.cpu_s()  # start-up included, as in drain_s
        idle_cpu_s = serve.cpu_until_idle() if args.idle_cpu else 0.0
        split = "+".join(f"{c / n * 1e6:.0f}" for c in serve.cpu_by_pid().values())  # serve, then its ingest child
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(60)
        got = stored(store, exact=True)
        alerts: dict[str, int] = {}
        if args.alerts == "on":  # the evaluation runs beside the write; both end before the ack: give it a moment
            db = Path(settings.database_url.removeprefix("sqlite:///"))
            until = time.monotonic() + 30
            while time.monotonic() < until:
                alerts = alerts_by_rule(db)
                if all(alerts.get(rule, 0) >= count for rule, _, count in EXPECTED):
                    break
                time.sleep(0.2)
        serve.sample_rss()
        serve.stop()
        peak = serve.peak_rss_kib
        serve = None
    finally:
        if serve is not None:
            serve.stop()
        broker.stop()
    lost = n - got
    want = sum(c for _, _, c in EXPECTED)
    raised = sum(min(alerts.get(rule, 0), count) for rule, _, count in EXPECTED)
    others = sum(alerts.values()) - sum(alerts.get(rule, 0) for rule, _, _ in EXPECTED)
    engine_txt = f"engine {args.engine}" if args.alerts == "on" else "alerts off"
    alert_txt = f"alerts {raised}/{want} expected, {others} other" if args.alerts == "on" else "alerts off"
    print(
        f"  first message stored {first_s:.2f} s after serve started, then {n / max(drain_s - first_s, 1e-9):,.0f} "
        f"msg/s; all stored at {stored_s:.2f} s ({n / max(stored_s, 1e-9):,.0f} msg/s), engine caught up at "
        f"{engine_s:.2f} s; provisioning {provision_s:.1f} s, prefill {n / fill_s:,.0f} msg/s, "
        f"alerts by rule {alerts}, data dir {tmp if args.keep else '(removed)'}",
        file=sys.stderr,
    )
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(
        f"e2e: {n} msgs from {n_dev} devices drained by lianfang serve ({engine_txt}) in {drain_s:.2f} s = "
        f"{n / drain_s:,.0f} msg/s (stored {stored_s:.2f} s, evaluated {engine_s:.2f} s), lost {lost}, {alert_txt}, "
        f"peak RSS {peak / 1024:,.0f} MiB, serve CPU {cpu_s / n * 1e6:.0f} us/msg (with its ingest child)"
        + (f", {idle_cpu_s / n * 1e6:.0f} us/msg once idle ({split})" if args.idle_cpu else "")
    )
    ok = lost == 0 and (args.alerts == "off" or (raised == want and others == 0))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
