"""The real processes of one fault scenario: an external Mosquitto with the generated config, ``lianfang serve`` as
a subprocess (its own data dir, free ports), devices registered with the CLI, an API token; and the observers:
``/health/ready``, ``/metrics``, ``/api/v1/alerts`` and the telemetry database.

Registering devices costs a few CLI runs, so :func:`build_template` does it once per suite run and every scenario
starts from a copy of that data directory (registry, broker identities, broker secrets).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devices.broker import BrokerConfig, MosquittoProcess, free_port

logger = logging.getLogger(__name__)

REGION = "fault-b1"
REGIONS_YAML = """regions:
  - id: fault
    name: 故障注入
    level: province
    children:
      - id: fault-c
        name: 城市
        level: city
        children:
          - id: fault-a
            name: 机关
            level: agency
            children:
              - id: fault-b1
                name: 1号楼
                level: building
"""
BUFFERED = tuple(f"meter-buf-{i:02d}" for i in range(1, 5))
UNBUFFERED = tuple(f"meter-nobuf-{i:02d}" for i in range(1, 5))
POISON = "meter-poison-01"
ALL_DEVICES = (*BUFFERED, *UNBUFFERED, POISON)

# Knobs of lianfang serve for the suite: small batches wait (alerts and acks quickly), no periodic GC settling.
SERVE_ENV = {
    "LIANFANG_INGEST__BATCH_WAIT_MS": "5",
    "LIANFANG_GC_SETTLE_S": "0",
    "LIANFANG_LOG_LEVEL": "INFO",
}


def _die_with_parent() -> None:
    """In the child before exec: the kernel stops it if the suite dies (even SIGKILL), so nothing outlives a run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_cli(env: Mapping[str, str], *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "lianfang", *args], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lianfang {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc.stdout


@dataclass
class Template:
    """A registered fleet: data dir with the registry and the broker's dynsec file; secrets and token."""

    root: Path
    admin_password: str
    platform_password: str
    sim_password: str
    secrets: dict[str, str]
    token: str


def _broker_config(directory: Path, port: int, t: Template | None = None, **overrides: Any) -> BrokerConfig:
    return BrokerConfig(
        directory=directory,
        port=port,
        admin_password=t.admin_password if t else "faults-admin-" + os.urandom(8).hex(),
        platform_password=t.platform_password if t else "faults-platform-" + os.urandom(8).hex(),
        sim_password=t.sim_password if t else "faults-sim-" + os.urandom(8).hex(),
        **overrides,
    )


def base_env(data: Path, broker_port: int, api_port: int, t: Template) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIANFANG_")}
    env.update(
        {
            "LIANFANG_DATA_DIR": str(data),
            "LIANFANG_DATABASE_URL": f"sqlite:///{data}/registry.db",
            "LIANFANG_STORE__SQLITE_PATH": str(data / "telemetry.db"),
            "LIANFANG_MQTT__EMBEDDED_BROKER": "false",
            "LIANFANG_MQTT__BROKER_DIR": str(data / "mosquitto"),
            "LIANFANG_MQTT__PORT": str(broker_port),
            "LIANFANG_MQTT__PASSWORD": t.platform_password,
            "LIANFANG_MQTT__ADMIN_PASSWORD": t.admin_password,
            "LIANFANG_API__PORT": str(api_port),
            **SERVE_ENV,
        }
    )
    return env


def build_template(root: Path) -> Template:
    """Regions, devices (with broker identities) and an admin API user, through the CLI against a real broker."""
    data = root / "data"
    data.mkdir(parents=True)
    t = Template(root, "faults-admin-" + os.urandom(8).hex(), "faults-platform-" + os.urandom(8).hex(), "", {}, "")
    t.sim_password = "faults-sim-" + os.urandom(8).hex()
    broker = MosquittoProcess(_broker_config(root / "broker", free_port(), t))
    broker.start()
    try:
        env = base_env(data, broker.cfg.port, free_port(), t)
        (root / "regions.yaml").write_text(REGIONS_YAML, encoding="utf-8")
        rows = ["id,type,region_id,name,expected_interval_s"]
        rows += [f"{d},energy_meter,{REGION},{d},60" for d in ALL_DEVICES]
        (root / "devices.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        _run_cli(env, "regions", "import", str(root / "regions.yaml"))
        secret_file = root / "secrets.csv"
        _run_cli(env, "devices", "import", str(root / "devices.csv"), "--secret-file", str(secret_file))
        for line in secret_file.read_text(encoding="utf-8").splitlines()[1:]:
            device_id, _, secret = line.partition(",")
            t.secrets[device_id] = secret
        t.token = _run_cli(env, "users", "add", "faults", "--role", "admin", "--region", "*").strip()
    finally:
        broker.stop()
    (root / "broker" / "mosquitto.db").unlink(missing_ok=True)
    return t


# --- metrics and the probe ----------------------------------------------------------------------------------------

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from the Prometheus text format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@dataclass
class Observation:
    """When (seconds after the fault) each observer first saw it; None: not seen."""

    ready: float | None = None
    metrics: float | None = None
    alerts: float | None = None


# --- one scenario's environment -----------------------------------------------------------------------------------


class FaultEnv:
    """Broker + ``lianfang serve`` for one scenario, from a copy of the template data dir."""

    def __init__(
        self,
        template: Template,
        root: Path,
        *,
        store_dir: Path | None = None,
        broker_overrides: Mapping[str, Any] | None = None,
        serve_env: Mapping[str, str] | None = None,
    ) -> None:
        self.t = template
        self.root = root
        shutil.copytree(template.root / "data", root / "data")
        shutil.copytree(template.root / "broker", root / "broker")
        self.data = root / "data"
        self.store_path = (store_dir or self.data) / "telemetry.db"
        self.broker_cfg = _broker_config(root / "broker", free_port(), template, **(broker_overrides or {}))
        self.broker = MosquittoProcess(self.broker_cfg)
        self.api_port = free_port()
        self.env = base_env(self.data, self.broker_cfg.port, self.api_port, template)
        self.env["LIANFANG_STORE__SQLITE_PATH"] = str(self.store_path)
        self.env.update(serve_env or {})
        self.serve_proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=3)
        self._helpers: list[subprocess.Popen[bytes]] = []

    # --- processes ---

    def start_broker(self) -> None:
        self.broker = MosquittoProcess(self.broker_cfg)
        self.broker.start()

    def kill_broker(self, sig: signal.Signals = signal.SIGKILL) -> None:
        self.broker.stop(kill=sig == signal.SIGKILL)

    def start_serve(self, timeout: float = 60) -> None:
        with self.log.open("ab") as fh:
            self.serve_proc = subprocess.Popen(
                [sys.executable, "-m", "lianfang", "serve", "--host", "127.0.0.1", "--port", str(self.api_port)],
                env=self.env,
                stdout=fh,
                stderr=fh,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.wait(lambda: self.ready()[0] == 200, timeout, "lianfang serve ready", process=self.serve_proc)

    def stop_serve(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 40) -> int | None:
        proc, self.serve_proc = self.serve_proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def spawn(self, code: str) -> subprocess.Popen[bytes]:
        """A helper Python process (e.g. one holding a lock on the store), stopped at close."""
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        self._helpers.append(proc)
        return proc

    def close(self) -> None:
        self.stop_serve()
        for proc in self._helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.broker.stop()
        self.http.close()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait(
        self,
        cond: Callable[[], Any],
        timeout: float,
        what: str,
        *,
        process: subprocess.Popen[bytes] | None = None,
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{what}: the process exited ({process.returncode}); log: {self.log_tail()}")
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)

    # --- observers ---

    def ready(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of /health/ready; (0, {}) when nothing answers."""
        try:
            r = self.http.get("/api/v1/health/ready")
        except httpx.HTTPError:
            return 0, {}
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {}

    def metrics(self) -> dict[str, float]:
        try:
            return parse_metrics(self.http.get("/metrics").text)
        except httpx.HTTPError:
            return {}

    def alerts(self, state: str = "open") -> list[dict[str, Any]]:
        try:
            r = self.http.get(
                "/api/v1/alerts",
                params={"state": state, "limit": 1000},
                headers={"Authorization": f"Bearer {self.t.token}"},
            )
        except httpx.HTTPError:
            return []
        if r.status_code != 200:
            return []
        items: list[dict[str, Any]] = r.json().get("items", [])
        return items

    def observe(
        self,
        obs: Observation,
        t0: float,
        *,
        ready: bool,
        metric: Callable[[dict[str, float]], bool] | None,
        alert: Callable[[list[dict[str, Any]]], bool] | None,
    ) -> None:
        """One round of the observers; fills in the first time each saw the fault."""
        now = time.monotonic() - t0
        if ready and obs.ready is None and self.ready()[0] == 503:
            obs.ready = now
        if metric is not None and obs.metrics is None and metric(self.metrics()):
            obs.metrics = now
        if alert is not None and obs.alerts is None and alert(self.alerts()):
            obs.alerts = now

    # --- the store ---

    def stored(self, device_id: str) -> tuple[set[int], int]:
        """Distinct seqs stored for the device, and how many of its rows repeat a seq (duplicates)."""
        uri = f"file:{self.store_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            rows = conn.execute(
                "SELECT seq, COUNT(*) FROM telemetry WHERE device_id = ? AND seq IS NOT NULL GROUP BY seq",
                (device_id,),
            ).fetchall()
        return {int(r[0]) for r in rows}, sum(int(r[1]) - 1 for r in rows)

    def rows(self, device_id: str) -> int:
        """Telemetry and event rows stored for the device, with or without a seq."""
        uri = f"file:{self.store_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            (t,) = conn.execute("SELECT COUNT(*) FROM telemetry WHERE device_id = ?", (device_id,)).fetchone()
            (e,) = conn.execute("SELECT COUNT(*) FROM events WHERE device_id = ?", (device_id,)).fetchone()
        return int(t) + int(e)

    def rejections(self, device_id: str) -> dict[str, int]:
        uri = f"file:{self.store_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            rows = conn.execute(
                "SELECT reason, COUNT(*) FROM rejections WHERE device_id = ? GROUP BY reason", (device_id,)
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}


@contextlib.contextmanager
def fault_env(template: Template, root: Path, **kw: Any) -> Iterator[FaultEnv]:
    env = FaultEnv(template, root, **kw)
    try:
        yield env
    finally:
        env.close()
