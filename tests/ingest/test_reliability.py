"""Reliability: nothing the broker accepted is lost when ingest is SIGKILLed or the broker restarts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.store.sqlite import SqliteStore
from devices.registry import Registry
from tests.conftest import Broker
from tests.helpers import wait_until
from tests.ingest.conftest import seed_registry

pytestmark = pytest.mark.slow


class SeqPublisher:
    """Publishes seq 1..n for one device (QoS 1, persistent session, bounded in flight); records PUBACKed seqs."""

    def __init__(self, port: int, password: str, device: str, n: int, inflight: int = 20) -> None:
        self.n = n
        self.device = device
        self._acked_mids: list[int] = []
        self._mids: dict[int, int] = {}
        self._sem = threading.Semaphore(inflight)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lianfang-sim", protocol=mqtt.MQTTv5)
        self.client.username_pw_set("lianfang-sim", password)
        self.client.max_inflight_messages_set(inflight)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, clean_start=False)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        # Never take a lock here that a thread holds while calling publish(): paho holds its own lock meanwhile.
        self._acked_mids.append(mid)
        self._sem.release()

    @property
    def acked(self) -> set[int]:
        mids = list(self._acked_mids)
        return {self._mids[m] for m in mids if m in self._mids}

    def _run(self) -> None:
        base = int(time.time() * 1000) - self.n - 10_000
        for seq in range(1, self.n + 1):
            self._sem.acquire()
            payload = json.dumps({"ts": base + seq, "seq": seq, "energy_kwh": float(seq)})
            info = self.client.publish(f"lf/v1/{self.device}/telemetry", payload, qos=1)
            self._mids[info.mid] = seq  # n < 65,535: mids do not wrap

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stored_seqs(path: Path, device: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM telemetry WHERE device_id = ? ORDER BY seq", (device,))]


@pytest.fixture
def ingest_env(
    broker: Broker, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> Iterator[dict[str, str]]:
    seed_registry(sqlite_registry)
    env = dict(os.environ)
    env.update(
        {
            "LIANFANG_DATABASE_URL": str(sqlite_registry.engine.url),
            "LIANFANG_STORE__SQLITE_PATH": str(store.path),
            "LIANFANG_MQTT__EMBEDDED_BROKER": "false",
            "LIANFANG_MQTT__PORT": str(broker.port),
            "LIANFANG_MQTT__PASSWORD": broker.platform_password,
            "LIANFANG_INGEST__BATCH_WAIT_MS": "5",
        }
    )
    yield env


def _start_ingest(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "lianfang", "ingest"], env=env, stdout=fh, stderr=fh)


def _wait_ingest_connected(store_path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    # ingest logs its connection; wait for it (and fail early if the process died)
    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        return "MQTT connected" in log.read_text()

    wait_until(ready, 60, 0.1, "ingest connected")


def test_ingest_sigkill_mid_stream_loses_nothing(
    broker: Broker, ingest_env: dict[str, str], store: SqliteStore, tmp_path: Path
) -> None:
    n = 6000
    log = tmp_path / "ingest.log"
    proc = _start_ingest(ingest_env, log)
    _wait_ingest_connected(store.path, proc, log)
    pub = SeqPublisher(broker.port, broker.sim_password, "meter-0001", n)
    pub.start()
    wait_until(lambda: len(_stored_seqs(store.path, "meter-0001")) >= n // 4, 60, 0.05, "a quarter stored")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed_at = len(_stored_seqs(store.path, "meter-0001"))
    proc = _start_ingest(ingest_env, log)
    try:
        wait_until(lambda: len(pub.acked) == n, 120, 0.1, "publisher got every PUBACK")
        wait_until(lambda: len(_stored_seqs(store.path, "meter-0001")) >= n, 120, 0.1, "all stored")
        seqs = _stored_seqs(store.path, "meter-0001")
        assert seqs == list(range(1, n + 1)), f"killed with {killed_at} stored"
        assert killed_at < n, "ingest was killed after the stream ended; the test proved nothing"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        pub.close()


def test_broker_restart_loses_nothing_acknowledged_to_the_publisher(
    broker: Broker, ingest_env: dict[str, str], store: SqliteStore, tmp_path: Path
) -> None:
    n = 4000
    log = tmp_path / "ingest.log"
    proc = _start_ingest(ingest_env, log)
    _wait_ingest_connected(store.path, proc, log)
    pub = SeqPublisher(broker.port, broker.sim_password, "meter-0002", n)
    pub.start()
    wait_until(lambda: len(pub.acked) >= n // 3, 60, 0.05, "a third acknowledged")
    broker.restart()  # graceful: mosquitto writes its persistence file on the way down
    try:
        wait_until(lambda: len(pub.acked) == n, 120, 0.1, "publisher got every PUBACK after the restart")
        wait_until(lambda: set(_stored_seqs(store.path, "meter-0002")) >= pub.acked, 120, 0.1, "acked all stored")
        assert _stored_seqs(store.path, "meter-0002") == list(range(1, n + 1))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        pub.close()


def test_sigterm_stops_ingest_gracefully(ingest_env: dict[str, str], store: SqliteStore, tmp_path: Path) -> None:
    log = tmp_path / "ingest.log"
    proc = _start_ingest(ingest_env, log)
    _wait_ingest_connected(store.path, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "ingest stopped" in log.read_text()
