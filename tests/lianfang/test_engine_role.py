"""The alert engine as its own role (issue 12), with real processes on one real Mosquitto.

- 3 ``lianfang ingest`` processes (one shared subscription) and 2 ``lianfang alerts`` processes (partitions by
  city: Guangzhou and Shenzhen of the sample tree) raise exactly the alerts the data holds, each once, each by the
  engine of its city's partition;
- an engine SIGKILLed while ingest drains (and kept dead while more is forwarded) loses no alert once it is back.

The data: devices of the three types spread over the sample tree's twelve buildings, 2 s apart in device time,
quiet except one record per device that raises exactly one alert (as in bench/e2e.py: a meter reading that goes
backwards E5.negative, a gate's ``door_forced`` G1.event, a vehicle's ``power_cut`` V12.power_cut).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.db import make_engine, migrate
from devices.broker import free_port
from devices.imports import import_regions
from devices.registry import DeviceSpec, Registry
from ingest.forward import Partitioner, region_paths
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RULE_OF = {"energy_meter": "E5.negative", "gate": "G1.event", "vehicle": "V12.power_cut"}
TYPES = tuple(RULE_OF)


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_e2e_data", ROOT / "bench" / "e2e.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _setup(tmp_path: Path, n_devices: int) -> tuple[str, list[tuple[str, str, str]], Registry]:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    registry = Registry(engine)
    now = datetime.now(UTC)
    import_regions(registry, ROOT / "devices" / "sample" / "regions.yaml", now=now)
    buildings = sorted(r.id for r in registry.regions() if r.level == "building")
    devices = [
        (f"{TYPES[i % 3].replace('_', '-')}-{i:04d}", TYPES[i % 3], buildings[i % len(buildings)])
        for i in range(n_devices)
    ]
    registry.add_devices([DeviceSpec(d, t, r) for d, t, r in devices], now=now)
    return url, devices, registry


def _messages(
    devices: list[tuple[str, str, str]], per_device: int, alert_at: dict[str, int]
) -> list[list[tuple[str, bytes]]]:
    """Per round (record k of every device): (topic, payload); each device's record ``alert_at[device]`` alerts."""
    bench = _bench()
    rng = random.Random(11)
    base = int(time.time() * 1000) - per_device * 2000 - 60_000
    kwh = {d: 1000.0 + i for i, (d, _, _) in enumerate(devices)}
    rounds: list[list[tuple[str, bytes]]] = []
    for seq in range(1, per_device + 1):
        out = []
        for device, dtype, _ in devices:
            ts = base + seq * 2000
            special = alert_at[device] == seq
            if special and dtype in ("gate", "vehicle"):
                ev = {"ts": ts, "seq": seq, "type": "door_forced" if dtype == "gate" else "power_cut"}
                out.append((f"lf/v1/{device}/event", json.dumps(ev).encode()))
                continue
            kwh[device] += -5.0 if special else rng.uniform(0.01, 0.2)
            doc = bench.telemetry(dtype, seq, ts, rng, kwh[device])
            out.append((f"lf/v1/{device}/telemetry", json.dumps(doc).encode()))
        rounds.append(out)
    return rounds


def _publish(broker: Broker, msgs: list[tuple[str, bytes]]) -> None:
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password, client_id=f"sim-{time.monotonic_ns()}")
    try:
        infos = [sim.publish(topic, payload, qos=1) for topic, payload in msgs]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        sim.disconnect()
        sim.loop_stop()


class Proc:
    """One ``python -m lianfang <role>`` with its log in a file."""

    def __init__(self, role: str, env: dict[str, str], log: Path) -> None:
        self.role, self.env, self.log = role, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lianfang", self.role], env=self.env, stdout=fh, stderr=fh, cwd=ROOT
            )

    def messages(self) -> list[str]:
        out = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(str(json.loads(line)["msg"]))
                except (ValueError, KeyError):
                    continue
        return out

    def running(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return any(m.endswith("running; SIGTERM to stop") for m in self.messages())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(90)


def _env(tmp_path: Path, broker: Broker, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIANFANG_")}
    env.update(
        LIANFANG_DATA_DIR=str(tmp_path / "data"),
        LIANFANG_DATABASE_URL=url,
        LIANFANG_STORE__SQLITE_PATH=str(tmp_path / "telemetry.db"),
        LIANFANG_MQTT__PORT=str(broker.port),
        LIANFANG_MQTT__USERNAME=broker.platform_username,
        LIANFANG_MQTT__PASSWORD=broker.platform_password,
        LIANFANG_MQTT__EMBEDDED_BROKER="false",
        LIANFANG_GC_SETTLE_S="0",
        LIANFANG_LOG_LEVEL="INFO",
        **extra,
    )
    return env


def _alerts(db: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = conn.execute("SELECT id, rule_id, device_id FROM alerts WHERE device_id != 'platform'").fetchall()
    return [(int(i), str(r), str(d)) for i, r, d in rows]


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as conn:
        return int(
            conn.execute("SELECT (SELECT count(*) FROM telemetry) + (SELECT count(*) FROM events)").fetchone()[0]
        )


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):  # ingest (started last) first
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(30)


def _counted(messages: list[str], prefix: str, index: int) -> int:
    """A number out of a stop line such as 'alert engine stopped: 12 parts, 480 records evaluated'."""
    line = next(m for m in messages if m.startswith(prefix))
    return int(line.split(":", 1)[1].replace(",", " ").split()[index])


def test_three_ingest_and_two_engine_processes_raise_each_alert_once_in_its_partition(
    broker: Broker, tmp_path: Path, procs: list[Proc]
) -> None:
    url, devices, registry = _setup(tmp_path, 48)
    partitions = {"LIANFANG_ALERTS__PARTITIONS": "2", "LIANFANG_ALERTS__PARTITION_LEVEL": "2"}
    part = Partitioner(2, 2, region_paths(registry))
    assert {part.of(r) for _, _, r in devices} == {0, 1}, "the sample's two cities fall into both partitions"
    for k in (0, 1):
        procs.append(
            Proc(
                "alerts",
                _env(tmp_path, broker, url, LIANFANG_ALERTS__ENGINE_PARTITIONS=f"[{k}]", **partitions),
                tmp_path / f"engine-{k}.log",
            )
        )
    for p in procs:  # the engines' sessions exist before any batch is forwarded
        wait_until(p.running, 240, 0.2, f"{p.log.name} running")
    for i in range(3):
        env = _env(
            tmp_path,
            broker,
            url,
            LIANFANG_MQTT__SHARED_GROUP="ingest",
            LIANFANG_MQTT__CLIENT_ID=f"ingest-{i}",
            **partitions,
        )
        procs.append(Proc("ingest", env, tmp_path / f"ingest-{i}.log"))
    for p in procs[2:]:
        wait_until(p.running, 240, 0.2, f"{p.log.name} running")

    per_device = 12
    rounds = _messages(devices, per_device, {d: 10 for d, _, _ in devices})
    _publish(broker, [m for r in rounds for m in r])
    total = len(devices) * per_device
    telemetry_db, registry_db = tmp_path / "telemetry.db", tmp_path / "registry.db"
    wait_until(lambda: _stored(telemetry_db) >= total, 240, 0.2, "everything stored")
    expected = {(RULE_OF[t], d) for d, t, _ in devices}
    wait_until(lambda: {(r, d) for _, r, d in _alerts(registry_db)} >= expected, 120, 0.2, "every alert")
    time.sleep(2)  # a duplicate would show up in this time
    for p in reversed(procs):  # ingest first, then the engines
        assert p.stop() == 0, p.log.read_text()[-3000:]

    alerts = _alerts(registry_db)
    assert Counter((r, d) for _, r, d in alerts if r in RULE_OF.values()) == Counter(expected), "each alert once"
    region_of = {d: r for d, _, r in devices}
    for alert_id, _, device in alerts:  # raised by the engine of the device's partition (its ids: k mod 2)
        k = part.of(region_of[device])
        assert alert_id % 2 == k, (alert_id, device, k)
    assert _stored(telemetry_db) == total
    evaluated = [_counted(p.messages(), "alert engine stopped", 2) for p in procs[:2]]
    assert all(n > 0 for n in evaluated) and sum(evaluated) == total, evaluated
    acked = [_counted(p.messages(), "ingest stopped", 2) for p in procs[2:]]
    assert all(n > 0 for n in acked) and sum(acked) == total, acked


def test_an_engine_killed_while_ingest_drains_loses_no_alert(broker: Broker, tmp_path: Path, procs: list[Proc]) -> None:
    url, devices, _ = _setup(tmp_path, 36)
    # A third of the devices alert early, the rest late: the late ones reach the engine after it was killed.
    alert_at = {d: 5 if i % 3 == 0 else 25 for i, (d, _, _) in enumerate(devices)}
    per_device = 30
    rounds = _messages(devices, per_device, alert_at)
    engine = Proc("alerts", _env(tmp_path, broker, url), tmp_path / "engine.log")
    procs.append(engine)
    wait_until(engine.running, 240, 0.2, "engine running")
    ingest = Proc("ingest", _env(tmp_path, broker, url), tmp_path / "ingest.log")
    procs.append(ingest)
    wait_until(ingest.running, 240, 0.2, "ingest running")
    registry_db, telemetry_db = tmp_path / "registry.db", tmp_path / "telemetry.db"

    early = {(RULE_OF[t], d) for d, t, _ in devices if alert_at[d] == 5}
    _publish(broker, [m for r in rounds[:10] for m in r])
    wait_until(lambda: {(r, d) for _, r, d in _alerts(registry_db)} >= early, 120, 0.2, "the early alerts")
    _publish(broker, [m for r in rounds[10:20] for m in r])
    time.sleep(0.3)
    engine.stop(signal.SIGKILL)  # mid-drain: what it held unacked comes back to its session
    _publish(broker, [m for r in rounds[20:] for m in r])  # forwarded while no engine runs
    total = len(devices) * per_device
    wait_until(lambda: _stored(telemetry_db) >= total, 240, 0.2, "everything stored")
    late = {(RULE_OF[t], d) for d, t, _ in devices if alert_at[d] == 25}
    assert not late & {(r, d) for _, r, d in _alerts(registry_db)}, "a late alert without an engine"
    engine.start()
    wait_until(lambda: {(r, d) for _, r, d in _alerts(registry_db)} >= early | late, 240, 0.2, "every alert")
    time.sleep(2)
    assert ingest.stop() == 0 and engine.stop() == 0
    alerts = _alerts(registry_db)
    assert Counter((r, d) for _, r, d in alerts if r in RULE_OF.values()) == Counter(early | late), "each alert once"


# --- people's actions with two engine processes (lianfang/engine_commands.py) ---------------------------------


def _door_forced(broker: Broker, device_seqs: list[tuple[str, int]]) -> None:
    now_ms = int(time.time() * 1000)
    _publish(
        broker,
        [
            (f"lf/v1/{d}/event", json.dumps({"ts": now_ms - 1000 + i, "seq": seq, "type": "door_forced"}).encode())
            for i, (d, seq) in enumerate(device_seqs)
        ],
    )


class _Stream:
    """GET /api/v1/stream read on a daemon thread: every (event, data) frame."""

    def __init__(self, url: str, token: str) -> None:
        import threading

        self.url, self.token = url, token
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.hello = threading.Event()
        threading.Thread(target=self._run, name="test-sse", daemon=True).start()

    def _run(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(10, read=60)) as r:
            event = ""
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    self.frames.append((event, json.loads(line[5:])))
                    if event == "hello":
                        self.hello.set()

    def events(self) -> list[dict[str, Any]]:
        return [e for ev, d in list(self.frames) if ev == "batch" for e in d.get("events", [])]

    def incidents(self) -> list[dict[str, Any]]:
        return [i for ev, d in list(self.frames) if ev == "incident" for i in d["incidents"]]


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]


def _g1(db: Path) -> dict[int, dict[str, Any]]:
    cols: tuple[str, ...] = (
        "id",
        "device_id",
        "state",
        "count",
        "silenced",
        "acknowledged_by",
        "assignee",
        "resolved_by",
        "severity",
    )
    cols += ("escalation_level",)
    rows = _rows(db, f"SELECT {', '.join(cols)} FROM alerts WHERE rule_id = 'G1.event'")
    return {int(r[0]): dict(zip(cols, r, strict=True)) for r in rows}


def test_actions_on_an_alert_reach_the_engine_process_that_owns_it(
    broker: Broker, tmp_path: Path, procs: list[Proc]
) -> None:
    """`lianfang serve` runs the gateway and the engine of partition 0; `lianfang alerts` the engine of partition 1
    (cities of the sample tree). Acknowledge, comment, assign and resolve on partition 1's alerts are applied by
    its engine: what it then does with the alert (a repeat keeps it acknowledged, a repeat after resolve opens a
    new alert) agrees with SQL. A silence made through the gateway silences both partitions' alerts, and ending it
    unsilences them. With that engine down an action answers 503 and changes nothing, also once it is back."""
    import httpx

    from gateway.auth import create_user

    url, devices, registry = _setup(tmp_path, 24)
    # More gates, in every building: the city incident X5 (5 alerts of one rule in 3 buildings) opens in both cities.
    buildings = sorted(r.id for r in registry.regions() if r.level == "building")
    extra = [(f"gate-x{i:02d}", "gate", buildings[i % len(buildings)]) for i in range(16)]
    registry.add_devices([DeviceSpec(d, t, r) for d, t, r in extra], now=datetime.now(UTC))
    devices = devices + extra
    part = Partitioner(2, 2, region_paths(registry))
    gates = [(d, part.of(r)) for d, t, r in devices if t == "gate"]
    region_of = {d: r for d, _, r in devices}
    assert {k for _, k in gates} == {0, 1}, gates
    token = create_user(registry.engine, "op1", "operator", None, datetime.now(UTC))
    admin_token = create_user(registry.engine, "adm", "admin", None, datetime.now(UTC))
    # the live stream of a user of each city: partition 1's items reach the gateway from engine 1 (engine_live.py)
    city_of = {part.of(r.id): r.id for r in registry.regions() if r.level == "city"}
    city_tokens = {
        k: create_user(registry.engine, f"city{k}", "operator", c, datetime.now(UTC)) for k, c in city_of.items()
    }
    api_port = free_port()
    notify = tmp_path / "notify.yaml"  # escalation after 15 s (one level), checked every second
    notify.write_text("escalation:\n  default: {after_s: [15], max_levels: 1}\n", encoding="utf-8")
    partitions = {
        "LIANFANG_ALERTS__PARTITIONS": "2",
        "LIANFANG_ALERTS__PARTITION_LEVEL": "2",
        "LIANFANG_ALERTS__NOTIFY_CONFIG": str(notify),
        "LIANFANG_ALERTS__ESCALATION_TICK_S": "1",
    }
    engine1 = Proc(
        "alerts",
        _env(tmp_path, broker, url, LIANFANG_ALERTS__ENGINE_PARTITIONS="[1]", **partitions),
        tmp_path / "engine-1.log",
    )
    procs.append(engine1)
    wait_until(engine1.running, 240, 0.2, "engine 1 running")
    serve = Proc(
        "serve",
        _env(
            tmp_path,
            broker,
            url,
            LIANFANG_ALERTS__ENGINE_PARTITIONS="[0]",
            LIANFANG_API__HOST="127.0.0.1",
            LIANFANG_API__PORT=str(api_port),
            LIANFANG_MQTT__ADMIN_PASSWORD=broker.admin_password,
            **partitions,
        ),
        tmp_path / "serve.log",
    )
    procs.append(serve)
    api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}/api/v1", headers={"Authorization": f"Bearer {token}"})
    admin = httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {admin_token}"})

    def up() -> bool:
        assert serve.proc is not None and serve.proc.poll() is None, serve.log.read_text()[-3000:]
        try:
            return api.get("/alerts", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 240, 0.2, "serve answering")
    for p in (engine1, serve):  # the province-wide patterns named at start (partition level 2: cities)
        warned = [m for m in p.messages() if "patterns wider than the partition level 2" in m]
        assert warned and "X5 (province), X6 (province)" in warned[0], p.messages()[:40]
    ready = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health/ready", timeout=10).json()
    assert ready["checks"]["alerts"]["commands"]["ok"] is True, ready["checks"]["alerts"]
    assert ready["checks"]["alerts"]["commands"]["partitions"] == [0]
    db = tmp_path / "registry.db"
    seq = dict.fromkeys((d for d, _ in gates), 0)
    streams = {k: _Stream(f"http://127.0.0.1:{api_port}/api/v1/stream", t) for k, t in city_tokens.items()}
    for st in streams.values():
        assert st.hello.wait(20), st.frames

    def fire(ds: list[str]) -> None:
        for d in ds:
            seq[d] += 1
        _door_forced(broker, [(d, seq[d]) for d in ds])

    fire([d for d, _ in gates])
    wait_until(lambda: len(_g1(db)) == len(gates), 120, 0.2, "an alert per gate")
    alerts = _g1(db)
    owner = dict(gates)
    assert all(i % 2 == owner[a["device_id"]] for i, a in alerts.items()), "ids of the owner's residue"
    one = sorted(i for i, a in alerts.items() if owner[a["device_id"]] == 1)
    zero = sorted(i for i, a in alerts.items() if owner[a["device_id"]] == 0)
    assert len(one) >= 4 and len(zero) >= 1, (one, zero)
    # The events that raised them are live for the user of their city only, partition 1's relayed by engine 1.
    forced = {k: {d for d, p in gates if p == k} for k in (0, 1)}

    def live_gates(k: int) -> set[str]:
        return {e["device_id"] for e in streams[k].events() if e["type"] == "door_forced"}

    wait_until(lambda: live_gates(1) == forced[1] and live_gates(0) == forced[0], 20, 0.2, "each city's stream")
    a_ack, a_res, a_down, a_assign = one[:4]

    # Acknowledge, comment, assign: applied by engine 1 and answered with the alert as stored.
    r = api.post(f"/alerts/{a_ack}/ack", json={"reason": "on my way"}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"] == "op1"
    r = api.post(f"/alerts/{a_ack}/comments", json={"text": "door checked"}, timeout=20)
    assert r.status_code == 201, r.text
    assert [c["text"] for c in r.json()["comments"] if c["kind"] == "comment"] == ["door checked"]
    r = api.post(f"/alerts/{a_assign}/assign", json={"assignee": "wang"}, timeout=20)
    assert r.status_code == 200 and r.json()["assignee"] == "wang", r.text
    r = api.post(f"/alerts/{a_ack}/ack", json={"reason": "again"}, timeout=20)
    assert r.status_code == 409 and "already acknowledged" in r.text, r.text  # the owner's refusal
    r = api.post(f"/alerts/{zero[0]}/ack", json={"reason": "local"}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "acknowledged", r.text  # partition 0: in-process
    # Resolve: the owner's live copy is resolved too.
    r = api.post(f"/alerts/{a_res}/resolve", json={"reason": "false alarm"}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "resolved", r.text
    audit = _rows(db, "SELECT action, outcome FROM audit_log WHERE action LIKE 'alert.%' ORDER BY id")
    assert ("alert.ack", "conflict") in audit and audit.count(("alert.ack", "ok")) == 2, audit

    # A rule edit through the gateway reaches engine 1 (its stored version moved): partition 1's city critical.
    path = registry.region(region_of[alerts[a_res]["device_id"]])
    assert path is not None
    city = [x for x in path.path.split("/") if x][1]
    r = api.put(
        "/rules/G1.event/overrides", params={"region": city}, json={"severity": "critical", "reason": "t"}, timeout=20
    )
    assert r.status_code in (200, 201), r.text
    wait_until(lambda: "alerts: rules reloaded" in " ".join(engine1.messages()), 30, 0.2, "engine 1 reloads rules")

    # The owner's memory agrees with SQL: a repeat keeps the acknowledged alert acknowledged (a stale firing copy
    # would write it back to firing), and a repeat of the resolved one opens a new alert.
    fire([alerts[a_ack]["device_id"], alerts[a_res]["device_id"], alerts[a_assign]["device_id"]])
    wait_until(lambda: _g1(db)[a_ack]["count"] == 2, 60, 0.2, "the repeat counted by engine 1")
    wait_until(lambda: len(_g1(db)) == len(gates) + 1, 60, 0.2, "a new alert after the resolved one")
    after = _g1(db)
    assert after[a_ack]["state"] == "acknowledged" and after[a_ack]["acknowledged_by"] == "op1", after[a_ack]
    assert after[a_res]["state"] == "resolved" and after[a_res]["resolved_by"] == "op1", after[a_res]
    assert after[a_assign]["assignee"] == "wang" and after[a_assign]["count"] == 2, after[a_assign]
    (new,) = set(after) - set(alerts)
    assert after[new]["device_id"] == alerts[a_res]["device_id"] and new % 2 == 1, after[new]
    assert after[new]["severity"] == "critical", after[new]  # raised under the edited rule
    comments = _rows(db, "SELECT author, text FROM alert_comments WHERE alert_id = ? AND kind = 'comment'", a_ack)
    assert comments == [("op1", "door checked")], comments

    # A silence made through the gateway: both engines silence their open alerts, and unsilence them at its end.
    ends = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = api.post("/silences", json={"rule_id": "G1.event", "reason": "maintenance", "ends_at": ends}, timeout=20)
    assert r.status_code == 201, r.text
    silence_id = r.json()["id"]

    def open_ones() -> dict[int, dict[str, Any]]:
        return {i: a for i, a in _g1(db).items() if a["state"] != "resolved"}

    wait_until(lambda: all(a["silenced"] for a in open_ones().values()), 30, 0.2, "every open G1 alert silenced")
    assert {i % 2 for i in open_ones()} == {0, 1}
    # silenced_by names the silence for both partitions' alerts (before, only for the gateway engine's own).
    listed = api.get("/alerts", params={"rule": "G1.event", "state": "open", "limit": 200}, timeout=20).json()["items"]
    assert {a["id"] % 2 for a in listed} == {0, 1}
    assert all([s["id"] for s in a["silenced_by"]] == [silence_id] for a in listed), listed
    r = api.get(f"/alerts/{a_ack}", timeout=20)  # engine 1's
    assert [s["id"] for s in r.json()["silenced_by"]] == [silence_id], r.text
    r = api.post(f"/silences/{silence_id}/end", json={"reason": "maintenance done"}, timeout=20)
    assert r.status_code == 200, r.text
    wait_until(lambda: not any(a["silenced"] for a in open_ones().values()), 30, 0.2, "every G1 alert unsilenced")

    # Incidents: each engine numbers its own (ids of its residue), and an action on partition 1's goes to engine 1.
    def incidents() -> dict[int, tuple[str, str]]:
        rows = _rows(db, "SELECT id, pattern_id, state FROM joint_incidents")
        return {int(i): (str(p), str(st)) for i, p, st in rows}

    wait_until(lambda: sum(p == "X5" for p, _ in incidents().values()) >= 2, 60, 0.2, "an X5 incident per city")
    x5 = {i for i, (p, _) in incidents().items() if p == "X5"}
    assert {i % 2 for i in x5} == {0, 1}, x5
    inc1 = min(i for i in x5 if i % 2 == 1)
    inc0 = min(i for i in x5 if i % 2 == 0)
    # Engine 1's incident is live for its city's user (relayed) and not for the other city's, and vice versa.
    wait_until(lambda: inc1 in {i["id"] for i in streams[1].incidents()}, 20, 0.2, "engine 1's incident live")
    wait_until(lambda: inc0 in {i["id"] for i in streams[0].incidents()}, 20, 0.2, "engine 0's incident live")
    assert inc1 not in {i["id"] for i in streams[0].incidents()}, streams[0].incidents()
    assert inc0 not in {i["id"] for i in streams[1].incidents()}, streams[1].incidents()
    assert all(e["region_id"] != "" and e["device_id"] not in forced[1] for e in streams[0].events())
    r = api.post(f"/incidents/{inc1}/investigate", json={"note": ""}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "investigating", r.text

    def live_kinds(iid: int) -> set[str]:
        return {i["kind"] for i in streams[1].incidents() if i["id"] == iid}

    wait_until(lambda: "investigating" in live_kinds(inc1), 20, 0.2, "engine 1's investigate live")
    r = api.post(f"/incidents/{inc1}/investigate", json={"note": ""}, timeout=20)
    assert r.status_code == 409, r.text  # refused by engine 1: it is investigating there
    r = api.post(f"/incidents/{inc1}/comments", json={"text": "patrol sent"}, timeout=20)
    assert r.status_code == 201, r.text

    # Linkage actions on partition 1's incident: proposed, confirmed and declined by engine 1, which publishes the
    # command once; the gate's cmd_result (forwarded to engine 1 with its partition's batches) closes it there.
    cmds: list[tuple[str, dict[str, Any]]] = []
    watch = mqtt_client(broker.port, broker.platform_username, broker.platform_password, client_id="t-cmds")
    watch.on_message = lambda _c, _u, m: cmds.append((m.topic, json.loads(m.payload)))
    watch.subscribe("lf/v1/+/cmd", qos=1)
    time.sleep(0.5)
    g_a, g_b, g_c = sorted(d for d, k in gates if k == 1)[:3]
    r = api.post(
        f"/incidents/{inc1}/actions", json={"name": "lock", "device_ids": [g_a, g_b, g_c], "reason": "t"}, timeout=20
    )
    assert r.status_code == 201 and [a["state"] for a in r.json()["items"]] == ["proposed"] * 3, r.text
    act = {a["device_id"]: a["id"] for a in r.json()["items"]}
    wait_until(lambda: "action_proposed" in live_kinds(inc1), 20, 0.2, "engine 1's linkage step live")

    def actions_of(iid: int) -> dict[str, dict[str, Any]]:
        got = api.get(f"/incidents/{iid}/actions", timeout=20)
        assert got.status_code == 200, got.text
        return {a["device_id"]: a for a in got.json()["items"]}

    assert {d: a["state"] for d, a in actions_of(inc1).items()} == dict.fromkeys([g_a, g_b, g_c], "proposed")
    r = admin.post(f"/incidents/{inc1}/actions/{act[g_a]}/confirm", json={}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "sent", r.text
    cmd_id = r.json()["cmd_id"]
    r = admin.post(f"/incidents/{inc1}/actions/{act[g_a]}/confirm", json={}, timeout=20)
    assert r.status_code == 409, r.text  # engine 1: it is sent, not proposed
    r = admin.post(f"/incidents/{inc1}/actions/{act[g_b]}/decline", json={"reason": "no"}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "declined", r.text
    wait_until(lambda: len(cmds) >= 1, 15, 0.1, "the lock command on the gate's cmd topic")
    time.sleep(1)
    assert [(t, c["cmd_id"], c["name"]) for t, c in cmds] == [(f"lf/v1/{g_a}/cmd", cmd_id, "lock")], cmds  # once
    seq[g_a] += 1
    result = {"ts": int(time.time() * 1000), "seq": seq[g_a], "type": "cmd_result", "cmd_id": cmd_id, "ok": True}
    _publish(broker, [(f"lf/v1/{g_a}/event", json.dumps(result).encode())])
    wait_until(lambda: actions_of(inc1)[g_a]["state"] == "succeeded", 30, 0.2, "the cmd_result on engine 1's incident")
    states = {d: a["state"] for d, a in actions_of(inc1).items()}
    assert states == {g_a: "succeeded", g_b: "declined", g_c: "proposed"}, states
    r = api.get(f"/incidents/{inc1}", timeout=20)
    assert {a["device_id"]: a["state"] for a in r.json()["actions"]} == states, r.text
    steps = _rows(db, "SELECT actor, text FROM joint_timeline WHERE incident_id = ? AND kind = 'action'", inc1)
    assert sum(1 for _, t in steps if t.startswith("指令已下发")) == 1, steps  # "sent" recorded once
    audit = _rows(db, "SELECT action, outcome FROM audit_log WHERE action LIKE 'incident.action.%' ORDER BY id")
    assert ("incident.action.confirm", "refused") in audit and audit.count(("incident.action.propose", "ok")) == 3
    r = api.post(f"/incidents/{inc1}/resolve", json={"reason": "patrol found nothing"}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "resolved", r.text
    assert incidents()[inc1][1] == "resolved"
    texts = [t for (t,) in _rows(db, "SELECT text FROM joint_timeline WHERE incident_id = ?", inc1)]
    assert any("patrol sent" in t for t in texts), texts

    # Escalation by engine 1 (15 s after it learned of an alert, or after the silence ended): the acknowledged alert
    # does not escalate, the assigned one (still firing) does.
    wait_until(lambda: _g1(db)[a_assign]["escalation_level"] == 1, 60, 0.2, "the firing alert escalated")
    assert _g1(db)[a_ack]["escalation_level"] == 0

    # The owner down: 503, and nothing changes (not even once it is back).
    assert engine1.stop() == 0
    t0 = time.monotonic()
    r = api.post(f"/alerts/{a_down}/ack", json={"reason": "nobody home"}, timeout=30)
    assert r.status_code == 503 and "partition 1" in r.json()["detail"], r.text
    assert time.monotonic() - t0 < 15
    assert _g1(db)[a_down]["state"] == "firing"
    r = api.post(f"/incidents/{inc1}/comments", json={"text": "nobody home"}, timeout=30)
    assert r.status_code == 503, r.text
    r = admin.post(f"/incidents/{inc1}/actions/{act[g_c]}/confirm", json={}, timeout=30)
    assert r.status_code == 503, r.text  # nothing sent
    engine1.start()
    wait_until(
        lambda: engine1.messages().count("alert engine running; SIGTERM to stop") == 2, 240, 0.2, "engine 1 back"
    )
    time.sleep(3)
    assert _g1(db)[a_down]["state"] == "firing", "a request of the down time applied later"
    r = api.post(f"/alerts/{a_down}/ack", json={"reason": "now"}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "acknowledged", r.text
    # engine 1 rebuilt its incident's actions from the timeline: the proposal left is confirmed there, once
    r = admin.post(f"/incidents/{inc1}/actions/{act[g_c]}/confirm", json={}, timeout=20)
    assert r.status_code == 200 and r.json()["state"] == "sent", r.text
    wait_until(lambda: len(cmds) >= 2, 15, 0.1, "the second lock command")
    time.sleep(1)
    assert [t for t, _ in cmds] == [f"lf/v1/{g_a}/cmd", f"lf/v1/{g_c}/cmd"], cmds
    watch.disconnect()
    watch.loop_stop()
    for p in (serve, engine1):
        assert p.stop() == 0, p.log.read_text()[-3000:]
