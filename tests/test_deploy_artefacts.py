"""Deployment artefacts: compose.yaml, Dockerfile, docker/ (broker config, init job, health checks).

There is no Docker engine on the development machines, so nothing here builds an image or starts a container.
What is checked: the files parse and reference only what exists; the compose environment is accepted by
``core.settings``; docker/mosquitto.conf says what devices/broker.py generates; the broker init job writes a
dynamic-security file that a real Mosquitto accepts; the health-check script tells up from down.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from core.settings import load_settings
from devices.broker import (
    GATEWAY_USERNAME,
    BrokerConfig,
    derive_gateway_password,
    find_dynsec_plugin,
    free_port,
    render_config,
    wait_for_port,
)
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
MOSQUITTO_CONF = ROOT / "docker" / "mosquitto.conf"
DYNSEC_INIT = ROOT / "docker" / "dynsec_init.py"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict) and services
    return services


def _one_shot_jobs(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait for with ``service_completed_successfully``: jobs that run once and exit."""
    jobs: set[str] = set()
    for svc in services.values():
        deps = svc.get("depends_on", {})
        if isinstance(deps, dict):
            jobs |= {name for name, d in deps.items() if d.get("condition") == "service_completed_successfully"}
    return jobs


# --- compose.yaml -----------------------------------------------------------------------------------------


def test_compose_every_service_has_an_image_or_a_build() -> None:
    for name, svc in _services().items():
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"
        build = svc.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context / "Dockerfile").is_file(), f"service {name} builds from {context} without Dockerfile"


def test_compose_long_running_services_have_healthchecks() -> None:
    services = _services()
    jobs = _one_shot_jobs(services)
    assert jobs == {"mosquitto-init"}
    for name, svc in services.items():
        if name in jobs:
            assert svc.get("restart") == "no", f"one-shot job {name} must not be restarted"
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no healthcheck"


def test_compose_uses_no_host_networking_and_depends_only_on_known_services() -> None:
    services = _services()
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"service {name} uses host networking"
        assert "host" not in (svc.get("networks") or [])
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"service {name} depends on unknown service {dep}"


def test_compose_mounts_only_existing_files_and_declared_volumes() -> None:
    doc = _compose()
    declared = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"service {name} mounts missing file {source}"
            else:
                assert source in declared, f"service {name} uses undeclared volume {source}"


def test_compose_environment_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _services()["serve"]["environment"]
    for key in list(os.environ):
        if key.startswith("LIANFANG_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        # ${VAR:?message} comes from .env at `docker compose up`; a stand-in secret here
        monkeypatch.setenv(key, re.sub(r"\$\{(\w+)(:[?-][^}]*)?\}", r"secret-for-\1", str(value)))
    settings = load_settings()
    assert settings.env == "prod"
    assert settings.mqtt.embedded_broker is False
    assert settings.mqtt.host == "mosquitto"
    assert settings.mqtt.shared_group == "ingest"
    assert settings.mqtt.password.get_secret_value() == "secret-for-LIANFANG_MQTT_PASSWORD"
    assert settings.mqtt.admin_password is not None
    assert settings.database_url.startswith("postgresql+psycopg://lianfang:secret-for-POSTGRES_PASSWORD@postgres")
    assert settings.api.host == "0.0.0.0"
    assert str(settings.store.sqlite_path).startswith("/var/lib/lianfang/")


def test_compose_mosquitto_init_writes_where_the_broker_reads() -> None:
    services = _services()
    init, broker = services["mosquitto-init"], services["mosquitto"]
    init_mount = next(v for v in init["volumes"] if v.startswith("mosquitto-data:"))
    broker_mount = next(v for v in broker["volumes"] if v.startswith("mosquitto-data:"))
    init_file = Path(init["command"][0])
    assert init_file.parent == Path(init_mount.split(":")[1])
    conf = MOSQUITTO_CONF.read_text(encoding="utf-8")
    broker_dir = broker_mount.split(":")[1]
    assert f"plugin_opt_config_file {broker_dir}/{init_file.name}" in conf
    assert f"persistence_location {broker_dir}/" in conf


# --- Dockerfile ---------------------------------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user_and_installs_nothing_at_run_time() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert [ln for ln in lines if ln.startswith("FROM ")] == ["FROM python:3.11-slim"]
    users = [ln.split(None, 1)[1] for ln in lines if ln.startswith("USER ")]
    assert users, "Dockerfile has no USER line"
    assert users[-1] not in ("root", "0", "0:0")
    assert not re.search(r"(curl|wget)[^\n|]*\|\s*(ba)?sh", text), "Dockerfile pipes a download into a shell"
    assert "PIP_NO_INDEX=1" in text
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            sources = [p for p in ln.split()[1:-1] if not p.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    entry = next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
    assert json.loads(entry.split(None, 1)[1]) == ["lianfang"]


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".env", ".venv", "var", ".git"} <= ignored


# --- docker/mosquitto.conf vs. the generated config ---------------------------------------------------------

DIRECTIVES = (
    "per_listener_settings",
    "allow_anonymous",
    "persistence",
    "autosave_interval",
    "autosave_on_changes",
    "persistent_client_expiration",
    "max_inflight_messages",
    "max_queued_messages",
    "max_queued_bytes",
    "max_packet_size",
    "set_tcp_nodelay",
)


def _directives(conf: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in conf.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            out.setdefault(parts[0], parts[1])
    return out


def test_compose_broker_config_matches_the_generated_one(tmp_path: Path) -> None:
    generated = _directives(render_config(BrokerConfig(directory=tmp_path, port=1883)))
    compose_conf = _directives(MOSQUITTO_CONF.read_text(encoding="utf-8"))
    for key in DIRECTIVES:
        assert compose_conf.get(key) == generated[key], f"docker/mosquitto.conf {key} drifted from devices/broker.py"
    assert compose_conf["plugin"].endswith("mosquitto_dynamic_security.so")


# --- the broker init job and a real Mosquitto ---------------------------------------------------------------


def _init_env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "LIANFANG_ENV": "prod"}
    env.update(extra)
    return env


def _run_init(target: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DYNSEC_INIT), str(target)], env=env, capture_output=True, text=True, timeout=60
    )


def test_dynsec_init_refuses_missing_admin_password_and_dev_placeholder(tmp_path: Path) -> None:
    target = tmp_path / "dynamic-security.json"
    no_admin = _run_init(target, _init_env(LIANFANG_MQTT__PASSWORD="platform-secret-1"))
    assert no_admin.returncode == 1 and "LIANFANG_MQTT__ADMIN_PASSWORD" in no_admin.stderr
    placeholder = _run_init(target, _init_env(LIANFANG_MQTT__ADMIN_PASSWORD="admin-secret-1"))
    assert placeholder.returncode == 1 and "mqtt.password" in placeholder.stderr
    assert not target.exists()


class _Mosquitto:
    """Mosquitto 2.0 with docker/mosquitto.conf, only the container paths and the port swapped for local ones."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        conf = MOSQUITTO_CONF.read_text(encoding="utf-8")
        conf = conf.replace("/mosquitto/data/", f"{data_dir}/")
        conf = conf.replace("/usr/lib/mosquitto_dynamic_security.so", find_dynsec_plugin())
        conf = conf.replace("listener 1883\n", f"listener {self.port} 127.0.0.1\n")
        if os.geteuid() == 0:
            conf = "user root\n" + conf  # as devices/broker.py does: keep access to the private data directory
        path = data_dir / "mosquitto.conf"
        path.write_text(conf, encoding="utf-8")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _connect(port: int, username: str | None, password: str | None, client_id: str) -> tuple[mqtt.Client, Any]:
    """Connect over MQTT v5; returns the client and the CONNACK reason code."""
    result: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, reason, p: result.setdefault("reason", reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(lambda: "reason" in result, 5, what=f"CONNACK for {client_id}")
    return client, result["reason"]


@pytest.mark.integration
def test_dynsec_init_file_is_accepted_by_mosquitto_with_the_compose_config(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    target = data_dir / "dynamic-security.json"
    env = _init_env(LIANFANG_MQTT__PASSWORD="platform-secret-1", LIANFANG_MQTT__ADMIN_PASSWORD="admin-secret-1")
    first = _run_init(target, env)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    written = target.read_bytes()
    again = _run_init(target, _init_env(LIANFANG_MQTT__PASSWORD="other-1", LIANFANG_MQTT__ADMIN_PASSWORD="other-2"))
    assert again.returncode == 0 and "left alone" in again.stdout
    assert target.read_bytes() == written

    broker = _Mosquitto(data_dir)
    clients: list[mqtt.Client] = []
    try:
        wait_for_port("127.0.0.1", broker.port, 10)
        platform, reason = _connect(broker.port, "lianfang-platform", "platform-secret-1", "lianfang-ingest")
        clients.append(platform)
        assert not reason.is_failure
        granted: dict[str, Any] = {}
        platform.on_subscribe = lambda c, u, mid, reasons, p: granted.setdefault("codes", reasons)
        platform.subscribe("$share/ingest/lf/v1/+/+", options=SubscribeOptions(qos=1))
        wait_until(lambda: "codes" in granted, 5, what="SUBACK")
        assert not granted["codes"][0].is_failure

        # the HTTP ingress account (password derived from the admin password) publishes on a device's behalf
        received: list[str] = []
        platform.on_message = lambda c, u, msg: received.append(msg.topic)
        gateway, reason = _connect(broker.port, GATEWAY_USERNAME, derive_gateway_password("admin-secret-1"), "gw-1")
        clients.append(gateway)
        assert not reason.is_failure
        gateway.publish("lf/v1/gate-gz-0001/telemetry", b'{"door_open":true}', qos=1).wait_for_publish(5)
        wait_until(lambda: received == ["lf/v1/gate-gz-0001/telemetry"], 5, what="ingress message at the platform")

        anonymous, reason = _connect(broker.port, None, None, "anon-1")
        clients.append(anonymous)
        assert reason.is_failure
        wrong, reason = _connect(broker.port, "lianfang-platform", "other-1", "lianfang-ingest-2")
        clients.append(wrong)
        assert reason.is_failure
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        broker.stop()


# --- health checks ------------------------------------------------------------------------------------------

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0200A8C0:D2F0 0300A8C0:075B 01 00000000:00000000 02:000A7D4F 00000000 10001        0 2 1
   2: 0200A8C0:D2F2 0300A8C0:0CEA 06 00000000:00000000 00:00000000 00000000     0        0 0 3
"""


def _healthcheck_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("lianfang_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_reads_established_connections_from_proc_tables() -> None:
    hc = _healthcheck_module()
    assert hc.established_to(1883, [PROC_NET_TCP]) is True
    assert hc.established_to(3306, [PROC_NET_TCP]) is False  # TIME_WAIT, not established
    assert hc.established_to(8000, [PROC_NET_TCP]) is False  # a listening socket is not a connection


def _healthcheck(*args: str) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, timeout=30).returncode


def test_healthcheck_mqtt_connected_follows_a_live_connection() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert _healthcheck("mqtt-connected", str(port)) == 1
        with socket.create_connection(("127.0.0.1", port)) as conn:
            accepted, _ = server.accept()
            with accepted:
                assert conn.fileno() >= 0
                assert _healthcheck("mqtt-connected", str(port)) == 0


@pytest.fixture
def http_server() -> Iterator[tuple[int, dict[str, int]]]:
    answer = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer["status"])
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], answer
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_healthcheck_http_is_healthy_only_on_200(http_server: tuple[int, dict[str, int]]) -> None:
    port, answer = http_server
    url = f"http://127.0.0.1:{port}/api/v1/health/ready"
    assert _healthcheck("http", url) == 0
    answer["status"] = 503
    assert _healthcheck("http", url) == 1
    assert _healthcheck("http", f"http://127.0.0.1:{free_port()}/") == 1
    assert _healthcheck("bogus") == 2


# --- docs/configuration.md ----------------------------------------------------------------------------------


def test_configuration_doc_example_is_accepted_by_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/configuration.md has no YAML example"
    example = tmp_path / "lianfang.yaml"
    example.write_text(blocks[0], encoding="utf-8")
    for key in list(os.environ):
        if key.startswith("LIANFANG_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LIANFANG_MQTT__PASSWORD", "platform-secret-1")
    settings = load_settings(example)
    assert settings.env == "prod"
    assert settings.mqtt.embedded_broker is False
    assert settings.mqtt.shared_group == "ingest"
    assert settings.alerts.rules_paths == [Path("/etc/lianfang/rules")]
    monkeypatch.setenv("LIANFANG_MQTT__PORT", "8883")  # the environment wins over the file, key by key
    layered = load_settings(example)
    assert (layered.mqtt.port, layered.mqtt.host) == (8883, "mqtt.internal")
