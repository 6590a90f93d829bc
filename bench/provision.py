"""Provisioning benchmark: import N devices from CSV with their broker identities, verified.

    python bench/provision.py [--devices N] [--short] [--online]

Starts its own Mosquitto (generated config, dynamic-security plugin, free port) and a temporary SQLite registry,
loads the sample region tree, writes a CSV of N devices, and times ``import_devices`` with the provisioning
hook: row checks, registry write, secret generation and hashing, broker sync, read-back verification of every
identity (listClients/listRoles) and the credential + audit rows. Then it proves one device can connect with
its secret, and that a second import of the same file provisions nothing.

By default the benchmark owns the broker, so the provisioner merges the identities into the dynsec file with
the broker briefly stopped (Mosquitto 2.0 rewrites its whole dynsec file after every command, which makes
per-command provisioning quadratic). ``--online`` forces the ``$CONTROL`` command path instead (use a small N).

Prints one result line: ``provision: N devices in X s (Y/s)``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.db import make_engine, migrate
from devices.audit import Actor
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.dynsec import DynsecClient
from devices.imports import import_devices, import_regions
from devices.provisioning import Provisioner, ProvisionOnWrite, SecretHasher
from devices.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("gate", "energy_meter", "vehicle", "sensor")


def write_csv(path: Path, n: int, regions: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "type", "region_id", "name"])
        for i in range(n):
            kind = TYPES[i % len(TYPES)]
            w.writerow([f"{kind.replace('_', '-')}-{i:06d}", kind, regions[i % len(regions)], f"设备 {i}"])


def connack(port: int, device_id: str, secret: str) -> int:
    got: list[int] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(device_id, secret)
    c.on_connect = lambda _c, _u, _f, rc, _p: got.append(rc.value)
    c.connect("127.0.0.1", port)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    return got[0] if got else -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--short", action="store_true", help="500 devices (CI)")
    ap.add_argument("--online", action="store_true", help="provision over $CONTROL commands only")
    ap.add_argument("--kdf-n", type=int, default=SecretHasher().n, help="scrypt cost n for the registry hashes")
    args = ap.parse_args()
    n = 500 if args.short else args.devices
    with tempfile.TemporaryDirectory(prefix="lf-bench-prov-") as tmp:
        d = Path(tmp)
        engine = make_engine(f"sqlite:///{d}/registry.db")
        migrate(engine)
        registry = Registry(engine)
        now = datetime.now(UTC)
        import_regions(registry, ROOT / "devices" / "sample" / "regions.yaml", now=now)
        buildings = [r.id for r in registry.regions() if r.level == "building"]
        csv_path = d / "devices.csv"
        write_csv(csv_path, n, buildings)
        cfg = BrokerConfig(
            directory=d / "mosquitto",
            port=free_port(),
            admin_password="bench-" + uuid.uuid4().hex,
            platform_password="bench-" + uuid.uuid4().hex,
        )
        proc = MosquittoProcess(cfg)
        proc.start()
        try:
            with DynsecClient("127.0.0.1", cfg.port, cfg.admin_password, timeout=30) as dynsec:
                phases: dict[str, float] = {}
                last = [time.perf_counter()]

                def tick(what: str, done: int, total: int) -> None:
                    t = time.perf_counter()
                    phases[what] = phases.get(what, 0.0) + t - last[0]
                    last[0] = t

                prov = Provisioner(
                    registry,
                    dynsec,
                    actor=Actor("bench", "bench/provision.py"),
                    process=None if args.online else proc,
                    offline_threshold=1,
                    hasher=SecretHasher(n=args.kdf_n),
                    progress=tick,
                )
                hook = ProvisionOnWrite(prov, now)
                start = time.perf_counter()
                cpu0 = time.process_time()
                last[0] = start
                report = import_devices(registry, csv_path, now=now, on_written=hook)
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - cpu0
                assert len(report.created) == n, report
                assert len(hook.secrets) == n, len(hook.secrets)
                sample = report.created[n // 2]
                assert connack(cfg.port, sample, hook.secrets[sample]) == 0, "device cannot connect"
                assert connack(cfg.port, sample, hook.secrets[report.created[0]]) == 135, "wrong secret accepted"
                again = ProvisionOnWrite(prov, now)
                t2 = time.perf_counter()
                import_devices(registry, csv_path, now=now, on_written=again)
                rerun = time.perf_counter() - t2
                assert again.secrets == {}, "re-run provisioned again"
        finally:
            proc.stop()
            engine.dispose()
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    print(f"  phases (until each phase's last progress tick): {detail}; CPU of this process {cpu:.1f} s; "
          f"scrypt n={args.kdf_n}; re-run of the same file {rerun:.1f} s",
          file=sys.stderr)  # fmt: skip
    mode = "online $CONTROL" if args.online else "dynsec file merge"
    print(f"provision: {n} devices in {elapsed:.1f} s ({n / elapsed:.0f}/s) [{mode}, verified]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
