"""Provisioning benchmark, the live path: import N devices into a running broker that already holds M, while
devices stay connected and publishing.

    python bench/provision.py [--existing 10000] [--devices 10000] [--connected 300] [--rate 2]
                              [--adapter passwd|dynsec] [--short]

Starts its own Mosquitto the way ``lianfang serve`` starts its embedded broker from the settings (by default,
``mqtt.device_identities: password_file``: dynsec for the platform accounts, a password file with %u
pattern ACLs on the devices' own listener, ADR 0006) and a temporary SQLite registry with the sample region tree;
the adapter is the one ``lianfang devices import`` picks for those settings (``adapter_for``).
It provisions the first ``--existing`` devices (CSV import with the provisioning hook, like ``lianfang devices
import``), connects ``--connected`` of them, which publish QoS 1 telemetry with a sequence number ``--rate`` times a
second each, and a platform subscriber that receives it. Then it times the import of ``--devices`` new devices
from CSV into the running broker: row checks, registry write, secrets and scrypt hashes, the broker change (one
rewrite of the password file and one SIGHUP), and verification of every new identity by logging in with its
secret, then credential and audit rows. After it, the publishers go on for two seconds and stop.

Reports the import time, connections dropped (must be 0), identities verified (all), messages lost (acknowledged
by the broker but not received by the platform: must be 0). ``--adapter dynsec`` runs the same with
``mqtt.device_identities: dynsec`` (the dynsec adapter over ``$CONTROL``, devices on the platform port; quadratic
in Mosquitto 2.0: use small numbers); ``--adapter passwd`` sets ``password_file``; without it, the default.
``--short``: 500 + 500, 50 connected.

Prints one result line: ``provision: N new devices into a running broker holding M in X s (Y/s) [...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.db import make_engine, migrate
from core.settings import MqttSettings, Settings
from devices.audit import Actor
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.broker_adapter import BrokerAdapter, DynsecAdapter
from devices.broker_adapter_passwd import _connect_packet, adapter_for
from devices.dynsec import DynsecClient
from devices.imports import import_devices, import_regions
from devices.provisioning import Provisioner, ProvisionOnWrite, SecretHasher
from devices.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("gate", "energy_meter", "vehicle", "sensor")


def write_csv(path: Path, ids: list[str], regions: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "type", "region_id", "name"])
        for i, device_id in enumerate(ids):
            w.writerow([device_id, TYPES[i % len(TYPES)], regions[i % len(regions)], f"设备 {device_id}"])


def fleet(prefix: str, n: int) -> list[str]:
    return [f"{TYPES[i % len(TYPES)].replace('_', '-')}-{prefix}{i:06d}" for i in range(n)]


# --- devices publishing throughout (raw MQTT 3.1.1 over asyncio: hundreds of connections in one thread) ----------


def _publish_packet(topic: str, payload: bytes, pid: int) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + pid.to_bytes(2, "big") + payload
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x32]) + bytes(length) + body  # PUBLISH, QoS 1


class Publishers:
    """``connected`` devices, each publishing ``{"seq": n}`` to its telemetry ``rate`` times a second."""

    def __init__(self, port: int, creds: dict[str, str], rate: float) -> None:
        self.port, self.creds, self.rate = port, creds, rate
        self.acked: dict[str, set[int]] = {d: set() for d in creds}
        self.dropped: set[str] = set()
        self.connected = 0
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="bench-devices", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("the publishing devices did not connect within 120 s")
        if self.refused:
            raise RuntimeError(f"{len(self.refused)} device(s) refused at CONNECT, e.g. {self.refused[0]}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _main(self) -> None:
        conns = await asyncio.gather(*(self._connect(d, s) for d, s in self.creds.items()))
        self._ready.set()
        await asyncio.gather(*(self._run(d, r, w) for d, (r, w) in zip(self.creds, conns, strict=True) if r))

    async def _connect(self, device_id: str, secret: str) -> tuple[asyncio.StreamReader | None, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        pkt = bytearray(_connect_packet(device_id, device_id, secret))
        pkt[pkt.index(b"MQTT") + 6 : pkt.index(b"MQTT") + 8] = (0).to_bytes(2, "big")  # keepalive off
        writer.write(bytes(pkt))
        await writer.drain()
        ack = await reader.readexactly(4)
        if ack[3] != 0:
            self.refused.append(device_id)
            return None, writer
        self.connected += 1
        return reader, writer

    async def _run(self, device_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: dict[int, int] = {}
        topic = f"lf/v1/{device_id}/telemetry"

        async def read() -> None:
            try:
                while True:
                    head = await reader.readexactly(2)
                    body = await reader.readexactly(head[1])
                    if head[0] >> 4 == 4:  # PUBACK
                        seq = pending.pop(int.from_bytes(body[:2], "big"), None)
                        if seq is not None:
                            self.acked[device_id].add(seq)
            except (asyncio.IncompleteReadError, OSError):
                if not self._stop.is_set():
                    self.dropped.add(device_id)

        reading = asyncio.create_task(read())
        seq, pid = 0, 0
        await asyncio.sleep(hash(device_id) % 1000 / 1000 / self.rate)  # spread the devices over the period
        while not self._stop.is_set() and not reading.done():
            seq += 1
            pid = pid % 65535 + 1
            pending[pid] = seq
            try:
                writer.write(_publish_packet(topic, f'{{"seq":{seq}}}'.encode(), pid))
                await writer.drain()
            except OSError:
                self.dropped.add(device_id)
                break
            await asyncio.sleep(1 / self.rate)
        deadline = time.monotonic() + 10
        while pending and not reading.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stop.set()
        writer.write(b"\xe0\x00")  # DISCONNECT
        await asyncio.sleep(0)
        writer.close()
        reading.cancel()


class Platform:
    """The platform's subscriber: every (device, seq) it receives."""

    def __init__(self, cfg: BrokerConfig) -> None:
        self.got: dict[str, set[int]] = {}
        self.disconnects = 0
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-platform-{uuid.uuid4().hex[:6]}")
        c.username_pw_set(cfg.platform_username, cfg.platform_password)
        c.on_message = self._on_message
        c.on_disconnect = lambda *_a: setattr(self, "disconnects", self.disconnects + 1)
        c.connect("127.0.0.1", cfg.port)
        c.loop_start()
        c.subscribe("lf/v1/+/telemetry", qos=1)
        self.client = c

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[2]
        seq = int(msg.payload[7:-1])
        with self.lock:
            self.got.setdefault(device, set()).add(seq)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def traffic(
    port: int, device_port: int, creds: dict[str, str], rate: float, platform_user: str, platform_pw: str, conn: Any
) -> None:
    """The connected devices (on the device listener) and the platform subscriber, in their own process (as they
    would be: the import's process must not share its CPU and GIL with them). Commands over ``conn``: start, stop."""
    cfg = BrokerConfig(directory=Path("."), port=port, platform_username=platform_user, platform_password=platform_pw)
    platform = Platform(cfg)
    pubs = Publishers(device_port, creds, rate)
    pubs.start()
    conn.send(("ready", pubs.connected))
    assert conn.recv() == "stop"
    pubs.stop()
    acked = sum(len(s) for s in pubs.acked.values())
    deadline, seen, lost, last_progress = time.monotonic() + 300, -1, acked, time.monotonic()
    while time.monotonic() < deadline:  # until the platform has drained its queue (no progress for 10 s)
        with platform.lock:
            got = sum(len(s) for s in platform.got.values())
            lost = sum(len(s - platform.got.get(dev, set())) for dev, s in pubs.acked.items())
        if not lost:
            break
        if got == seen and time.monotonic() - last_progress > 10:
            break
        if got != seen:
            seen, last_progress = got, time.monotonic()
        time.sleep(0.2)
    drops = platform.disconnects
    platform.close()
    conn.send((len(pubs.dropped), pubs.connected, acked, lost, drops))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (the broker's, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--existing", type=int, default=10_000, help="devices the running broker already holds")
    ap.add_argument("--devices", type=int, default=10_000, help="new devices imported while it runs")
    ap.add_argument("--connected", type=int, default=300, help="existing devices connected and publishing")
    ap.add_argument("--rate", type=float, default=2.0, help="messages per second per connected device")
    ap.add_argument(
        "--adapter",
        choices=("passwd", "dynsec"),
        default=None,
        help="where device identities live (default: the settings' default, mqtt.device_identities)",
    )
    ap.add_argument("--short", action="store_true", help="500 existing + 500 new, 50 connected (CI)")
    ap.add_argument("--kdf-n", type=int, default=SecretHasher().n, help="scrypt cost n for the registry hashes")
    args = ap.parse_args()
    if args.short:
        args.existing, args.devices, args.connected = 500, 500, 50
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lf-bench-prov-") as tmp:
        d = Path(tmp)
        engine = make_engine(f"sqlite:///{d}/registry.db")
        migrate(engine)
        registry = Registry(engine)
        now = datetime.now(UTC)
        import_regions(registry, ROOT / "devices" / "sample" / "regions.yaml", now=now)
        buildings = [r.id for r in registry.regions() if r.level == "building"]
        chosen = {"passwd": {"device_identities": "password_file"}, "dynsec": {"device_identities": "dynsec"}}
        settings = Settings(
            data_dir=d,
            mqtt=MqttSettings(
                port=free_port(),
                device_port=free_port(),  # the devices' listener (port + 1 may be taken)
                broker_dir=d / "mosquitto",
                **chosen.get(args.adapter, {}),
            ),
        )
        cfg = BrokerConfig(  # as lianfang/runtime.py starts the embedded broker
            directory=settings.mqtt.broker_dir,
            port=settings.mqtt.port,
            admin_password="bench-" + uuid.uuid4().hex,
            platform_password="bench-" + uuid.uuid4().hex,
            device_passwd=settings.mqtt.device_identities == "password_file",
            device_port=settings.mqtt.device_listener_port,
        )
        proc = MosquittoProcess(cfg)
        proc.start()
        phases: dict[str, float] = {}
        last = [time.perf_counter()]

        def tick(what: str, done: int, total: int) -> None:
            t = time.perf_counter()
            phases[what] = phases.get(what, 0.0) + t - last[0]
            last[0] = t

        try:
            with DynsecClient("127.0.0.1", cfg.port, cfg.admin_password, timeout=60) as dynsec:
                # as `lianfang devices import` picks it (devices/cli.py): the password file the broker loads, or dynsec
                adapter: BrokerAdapter = adapter_for(settings, dynsec, progress=tick) or DynsecAdapter(
                    dynsec, progress=tick
                )
                prov = Provisioner(
                    registry,
                    dynsec,
                    actor=Actor("bench", "bench/provision.py"),
                    hasher=SecretHasher(n=args.kdf_n),
                    progress=tick,
                    adapter=adapter,
                )
                old_ids, new_ids = fleet("a", args.existing), fleet("b", args.devices)
                write_csv(d / "existing.csv", old_ids, buildings)
                write_csv(d / "new.csv", new_ids, buildings)
                t0 = time.perf_counter()
                first = ProvisionOnWrite(prov, now)
                import_devices(registry, d / "existing.csv", now=now, on_written=first)
                initial = time.perf_counter() - t0
                assert len(first.secrets) == args.existing, len(first.secrets)

                parent, child = mp.get_context("spawn").Pipe()
                creds = {i: first.secrets[i] for i in old_ids[: args.connected]}
                proc_t = mp.get_context("spawn").Process(
                    target=traffic,
                    args=(
                        cfg.port,
                        cfg.device_listener_port,
                        creds,
                        args.rate,
                        cfg.platform_username,
                        cfg.platform_password,
                        child,
                    ),
                    daemon=True,
                )
                proc_t.start()
                if not parent.poll(300):
                    raise RuntimeError("the traffic process did not connect its devices in 300 s")
                _, connected = parent.recv()
                time.sleep(2)
                phases.clear()
                hook = ProvisionOnWrite(prov, now)
                start = last[0] = time.perf_counter()
                cpu0 = time.process_time()
                assert proc.proc is not None
                broker0 = cpu_seconds(proc.proc.pid)
                report = import_devices(registry, d / "new.csv", now=now, on_written=hook)
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - cpu0
                broker_cpu = cpu_seconds(proc.proc.pid) - broker0
                load1 = os.getloadavg()
                time.sleep(2)
                parent.send("stop")
                dropped, connected, acked, lost, platform_drops = parent.recv()
                proc_t.join(30)
                verified = len(hook.secrets)
                assert len(report.created) == args.devices, report
                again = ProvisionOnWrite(prov, now)
                import_devices(registry, d / "new.csv", now=now, on_written=again)
                assert again.secrets == {}, "re-run provisioned again"
        finally:
            proc.stop()
            engine.dispose()
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    print(f"  phases (until each phase's last progress tick): {detail}; "
          f"CPU of this process {cpu:.1f} s, of the broker {broker_cpu:.1f} s; "
          f"scrypt n={args.kdf_n}; first {args.existing} devices {initial:.1f} s; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after; "
          f"platform disconnects {platform_drops}", file=sys.stderr)  # fmt: skip
    name = f"{adapter.name}, mqtt.device_identities: {settings.mqtt.device_identities}"
    print(
        f"provision: {args.devices} new devices into a running broker holding {args.existing} in {elapsed:.1f} s "
        f"({args.devices / elapsed:.0f}/s) [{name}, live]; connections dropped {dropped}/{connected}; "
        f"identities verified {verified}/{args.devices}; messages lost {lost}/{acked}"
    )
    return 0 if not dropped and not lost and verified == args.devices else 1


if __name__ == "__main__":
    raise SystemExit(main())
