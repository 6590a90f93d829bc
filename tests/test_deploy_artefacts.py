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
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
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
from devices.certs import init_certs
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
MOSQUITTO_CONF = ROOT / "docker" / "mosquitto.conf"
DYNSEC_INIT = ROOT / "docker" / "dynsec_init.py"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
MIGRATE = ROOT / "docker" / "migrate.py"


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

ENV_EXAMPLE = ROOT / ".env.example"
_VAR = re.compile(r"(?<!\$)\$\{(\w+)(?::?[?-][^}]*)?\}")


def _docker_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (.ci/run installs it)")
    return subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _env_example() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_compose_config_passes_docker_compose_with_env_example() -> None:
    """`docker-compose config` (Debian's 1.29, no engine needed) parses, interpolates and validates the file
    against the compose schema: unknown keys, wrong depends_on conditions, undefined services all fail."""
    ok = _docker_compose(ENV_EXAMPLE, "config")
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert set(resolved["services"]) == set(_services())
    env = resolved["services"]["serve"]["environment"]
    assert env["LIANFANG_STORE__INFLUX_TOKEN"] == _env_example()["INFLUXDB_TOKEN"]
    assert resolved["services"]["ingest-2"]["profiles"] == ["scale-out"]  # opt-in: docs/deploy.md "Scaling ingest"
    assert all("profiles" not in s for n, s in resolved["services"].items() if n != "ingest-2")


def test_compose_config_refuses_a_missing_secret(tmp_path: Path) -> None:
    env = tmp_path / "partial.env"
    lines = [f"{k}={v}" for k, v in _env_example().items() if k != "POSTGRES_PASSWORD"]
    env.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _docker_compose(env, "config", "-q")
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


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
    assert jobs == {"certs-init", "mosquitto-init", "migrate"}
    for name, svc in services.items():
        if name in jobs:
            assert svc.get("restart") == "no", f"one-shot job {name} must not be restarted"
            assert "healthcheck" not in svc
            continue
        assert svc.get("restart") == "unless-stopped", f"service {name} is not restarted"
        test = svc.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no healthcheck"


def test_compose_uses_no_host_networking_and_depends_only_on_known_services() -> None:
    services = _services()
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"service {name} uses host networking"
        assert "host" not in (svc.get("networks") or [])
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"service {name}: depends_on without conditions"
        for dep, spec in deps.items():
            assert dep in services, f"service {name} depends on unknown service {dep}"
            want = "service_completed_successfully" if dep in _one_shot_jobs(services) else "service_healthy"
            assert spec.get("condition") == want, f"service {name} waits for {dep} with {spec.get('condition')}"


def test_compose_start_order_of_the_lianfang_roles() -> None:
    services = _services()
    assert set(services["serve"]["depends_on"]) == {"migrate", "mosquitto", "postgres", "influxdb"}
    assert set(services["mosquitto"]["depends_on"]) == {"certs-init", "mosquitto-init"}
    assert set(services["migrate"]["depends_on"]) == {"postgres"}
    assert set(services["ingest-2"]["depends_on"]) == {"serve"}
    assert {"influxdb", "postgres"} <= set(services["grafana"]["depends_on"])
    assert services["migrate"]["entrypoint"] == ["lianfang-migrate"]
    assert services["serve"]["command"] == ["serve"] and services["ingest-2"]["command"] == ["ingest"]


def test_compose_mounts_only_existing_files_and_declared_volumes() -> None:
    doc = _compose()
    declared = set(doc.get("volumes") or {})
    used: set[str] = set()
    for name, svc in doc["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"service {name} mounts missing file {source}"
            else:
                assert source in declared, f"service {name} uses undeclared volume {source}"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_compose_grafana_provisioning_paths_exist() -> None:
    grafana = _services()["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"] if v.startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert sorted(p.name for p in provisioning.iterdir()) == ["dashboards", "datasources"]
    for sub in ("dashboards", "datasources"):
        files = list((provisioning / sub).glob("*.yaml"))
        assert files, f"no provisioning file in {sub}"
        for f in files:
            assert yaml.safe_load(f.read_text(encoding="utf-8"))["apiVersion"] == 1
    assert list(mounts["/var/lib/grafana/dashboards/lianfang"].glob("*.json")), "no generated dashboard to provision"


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def test_compose_every_variable_is_in_env_example_and_no_secret_is_committed() -> None:
    text = "\n".join(_strings(_compose()))  # values only: comments may mention ${VAR} freely
    referenced = set(_VAR.findall(text))
    example = _env_example()
    assert referenced, "compose.yaml references no variable"
    assert referenced == set(example), (
        f"missing from .env.example: {referenced - set(example)}; unused: {set(example) - referenced}"
    )
    for key, value in example.items():
        if re.search(r"PASSWORD|TOKEN|SECRET", key):
            assert value.startswith("dev-only"), f".env.example {key} is not a dev-only placeholder"
    # every ${VAR} is mandatory (:?): a forgotten setting stops `docker compose up` with its name
    assert not re.search(r"\$\{\w+(:?-)", text), "compose.yaml gives a variable a silent default"
    assert (ROOT / "docker" / "env.example").resolve() == ENV_EXAMPLE.resolve()


def _lianfang_env(service: str) -> dict[str, str]:
    env = _services()[service]["environment"]
    assert isinstance(env, dict)
    example = _env_example()

    def value(name: str) -> str:  # .env.example's setting, or a stand-in for a secret (its placeholders are refused)
        given = example.get(name, "")
        return given if given and not given.startswith("dev-only-") else f"secret-for-{name}"

    return {k: _VAR.sub(lambda m: value(m.group(1)), str(v)) for k, v in env.items()}


def test_compose_environment_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LIANFANG_"):
            monkeypatch.delenv(key)
    for key, value in _lianfang_env("serve").items():
        monkeypatch.setenv(key, value)  # ${VAR:?message} comes from .env at `docker compose up`; a stand-in here
    settings = load_settings()
    assert settings.env == "prod"
    assert settings.mqtt.embedded_broker is False
    assert settings.mqtt.host == "mosquitto"
    assert settings.mqtt.shared_group == "ingest"
    assert settings.mqtt.device_identities == "password_file"  # .env.example's choice (ADR 0006): 1885 for devices
    assert settings.mqtt.device_port == 1885 and str(settings.mqtt.broker_dir) == "/var/lib/lianfang-identities"
    assert settings.mqtt.password.get_secret_value() == "secret-for-LIANFANG_MQTT_PASSWORD"
    assert settings.mqtt.admin_password is not None
    assert settings.database_url.startswith("postgresql+psycopg://lianfang:secret-for-POSTGRES_PASSWORD@postgres")
    assert settings.api.host == "0.0.0.0"
    assert settings.store.backend == "influxdb"
    assert settings.store.influx_url == "http://influxdb:8086"
    assert settings.store.influx_token.get_secret_value() == "secret-for-INFLUXDB_TOKEN"
    influx = _services()["influxdb"]["environment"]
    assert settings.store.influx_org == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert settings.store.influx_bucket == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert settings.store.influx_database == influx["LIANFANG_INFLUX_DATABASE"]
    datasources = (ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "lianfang.yaml").read_text("utf-8")
    assert f"dbName: {settings.store.influx_database}" in datasources
    assert str(settings.store.sqlite_path).startswith("/var/lib/lianfang/")


def test_compose_ingest_processes_have_distinct_client_ids() -> None:
    ids = {
        name: _lianfang_env(name)["LIANFANG_MQTT__CLIENT_ID"]
        for name, svc in _services().items()
        if svc.get("command") in (["serve"], ["ingest"])
    }
    assert set(ids) == {"serve", "ingest-2"}
    assert len(set(ids.values())) == len(ids), ids
    assert all(_lianfang_env(n)["LIANFANG_MQTT__SHARED_GROUP"] == "ingest" for n in ids)
    # one alert engine per installation, the gateway's; ingest-2 forwards to it (alerts.engine: separate)
    assert "LIANFANG_ALERTS__ENABLED" not in _lianfang_env("serve")
    assert "LIANFANG_ALERTS__ENABLED" not in _lianfang_env("ingest-2")
    assert "LIANFANG_ALERTS__ENGINE" not in _lianfang_env("ingest-2")  # the default: separate


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


def test_compose_certs_init_writes_where_the_broker_reads_tls_files() -> None:
    services = _services()
    init, broker = services["certs-init"], services["mosquitto"]
    init_dir = next(v for v in init["volumes"] if v.startswith("mosquitto-certs:")).split(":")[1]
    broker_dir = next(v for v in broker["volumes"] if v.startswith("mosquitto-certs:")).split(":")[1]
    assert f"--dir {init_dir}" in init["command"][0]
    conf = _directives(MOSQUITTO_CONF.read_text(encoding="utf-8"))
    assert (conf["certfile"], conf["keyfile"], conf["cafile"]) == (
        f"{broker_dir}/broker.crt",
        f"{broker_dir}/broker.key",
        f"{broker_dir}/ca.crt",
    )
    assert init["user"] == "1883:1883"  # the eclipse-mosquitto image's user: the broker must read broker.key
    assert "install -d -o 1883 -g 1883 -m 0700 " + init_dir in DOCKERFILE.read_text(encoding="utf-8")
    assert "8883:8883" in broker["ports"]
    plain = next(p for p in broker["ports"] if p.endswith(":1883:1883"))
    assert plain.startswith("${LIANFANG_MQTT_PLAIN_BIND")
    assert _env_example()["LIANFANG_MQTT_PLAIN_BIND"] == "127.0.0.1"


def test_certs_init_job_creates_once_then_leaves_the_files_alone(tmp_path: Path) -> None:
    """The job's shell line as compose runs it, with its directory swapped for a temporary one."""
    init = _services()["certs-init"]
    script = init["command"][0].replace("$$", "$").replace("/var/lib/lianfang-certs", str(tmp_path / "certs"))
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "LIANFANG_ENV": "prod",
        "LIANFANG_MQTT__PASSWORD": "platform-secret-1",
        "LIANFANG_DATA_DIR": str(tmp_path / "data"),
        "LIANFANG_BROKER_PUBLIC_HOST": "mqtt.example.gov.cn",
    }
    first = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    cert = (tmp_path / "certs" / "broker.crt").read_bytes()
    assert stat.S_IMODE((tmp_path / "certs" / "broker.key").stat().st_mode) == 0o600
    again = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "left alone" in again.stdout
    assert (tmp_path / "certs" / "broker.crt").read_bytes() == cert
    from cryptography import x509

    san = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert {"mqtt.example.gov.cn", "mosquitto"} <= set(san.value.get_values_for_type(x509.DNSName))


# --- the migrate job ----------------------------------------------------------------------------------------


def _run_migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(MIGRATE)], env=full, capture_output=True, text=True, timeout=120)


def test_migrate_job_refuses_every_placeholder_of_env_example(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    example = _env_example()
    env = {k: _VAR.sub(lambda m: example[m.group(1)], str(v)) for k, v in _services()["migrate"]["environment"].items()}
    result = _run_migrate(env)
    assert result.returncode == 1
    for name in (
        "LIANFANG_MQTT__PASSWORD",
        "LIANFANG_MQTT__ADMIN_PASSWORD",
        "LIANFANG_STORE__INFLUX_TOKEN",
        "INFLUXDB_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "LIANFANG_DATABASE_URL (its password)",
    ):
        assert f"error: {name}:" in result.stderr, name
    assert not db.exists()


def test_migrate_job_upgrades_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    env = {
        "LIANFANG_ENV": "prod",
        "LIANFANG_DATA_DIR": str(tmp_path),
        "LIANFANG_DATABASE_URL": f"sqlite:///{db}",
        "LIANFANG_MQTT__PASSWORD": "platform-secret-1",
        "INFLUXDB_TOKEN": "a-real-token",
    }
    first = _run_migrate(env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("schema current: ")
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"alembic_version", "devices", "regions", "alerts"} <= tables
    again = _run_migrate(env)
    assert again.returncode == 0 and again.stdout == first.stdout
    empty = _run_migrate({**env, "INFLUXDB_TOKEN": ""})
    assert empty.returncode == 1 and "error: INFLUXDB_TOKEN:" in empty.stderr
    dev = _run_migrate({**env, "LIANFANG_ENV": "dev", "INFLUXDB_TOKEN": "dev-only-x"})
    assert dev.returncode == 0, dev.stderr


# --- the InfluxDB init script -------------------------------------------------------------------------------


def _fake_influx(bin_dir: Path, log: Path, existing_dbrp: bool) -> None:
    """An `influx` CLI stand-in that logs its arguments and answers the two listing commands."""
    bin_dir.mkdir()
    fake = bin_dir / "influx"
    listing = "0a1b2c3d4e5f6789\ttelemetry\tautogen\ttrue\t0000111122223333\n" if existing_dbrp else ""
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$1 $2" in\n'
        '  "bucket list") printf "0000111122223333\\ttelemetry\\t9600h0m0s\\tn/a\\t0a0a0a0a0a0a0a0a\\n" ;;\n'
        f'  "v1 dbrp") [ "$3" = list ] && printf "{listing}" ;;\n'
        "esac\n"
        "exit 0\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)


@pytest.mark.parametrize("existing", [False, True])
def test_influxdb_init_script_maps_the_database_to_the_bucket(tmp_path: Path, existing: bool) -> None:
    influx = _services()["influxdb"]
    mount = next(v for v in influx["volumes"] if v.startswith("./docker/influxdb/"))
    script = ROOT / mount.split(":")[0]
    assert mount.split(":")[1].startswith("/docker-entrypoint-initdb.d/")
    assert os.access(script, os.X_OK)
    log = tmp_path / "calls.log"
    _fake_influx(tmp_path / "bin", log, existing)
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}",
        **{k: str(v) for k, v in influx["environment"].items() if "${" not in str(v)},
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls[0] == "bucket list --org lianfang --name telemetry --hide-headers"
    creates = [c for c in calls if c.startswith("v1 dbrp create")]
    if existing:
        assert creates == [] and "left alone" in result.stdout
    else:
        assert creates == [
            "v1 dbrp create --org lianfang --db telemetry --rp autogen --bucket-id 0000111122223333 --default"
        ]


def test_influxdb_init_script_fails_without_the_bucket(tmp_path: Path) -> None:
    script = ROOT / "docker" / "influxdb" / "create-dbrp.sh"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "influx").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (tmp_path / "bin" / "influx").chmod(0o755)
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}",
        "DOCKER_INFLUXDB_INIT_ORG": "lianfang",
        "DOCKER_INFLUXDB_INIT_BUCKET": "telemetry",
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "bucket telemetry not found" in result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------------------


def _stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) per stage, comments and continuation lines folded."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    stages: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        ln = " ".join(raw.split())
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith("FROM "):
            stages.append((ln, []))
        else:
            assert stages, f"instruction before FROM: {ln}"
            stages[-1][1].append(ln)
    return stages


def test_dockerfile_is_multi_stage_and_the_runtime_has_no_build_tools() -> None:
    stages = _stages()
    assert [f for f, _ in stages] == ["FROM python:3.11-slim AS builder", "FROM python:3.11-slim AS runtime"]
    builder, runtime = stages[0][1], stages[1][1]
    assert any("pip wheel --wheel-dir /wheels" in ln for ln in builder)
    install = [ln for ln in runtime if "pip install" in ln]
    assert len(install) == 1
    assert "--mount=type=bind,from=builder,source=/wheels" in install[0]
    assert "--no-index" in install[0] and "--find-links=/wheels" in install[0]
    for ln in runtime:
        assert not re.search(r"\b(apt-get|apt|gcc|build-essential|make)\b", ln), f"build tool in runtime: {ln}"
        assert "--mount=type=bind,target=/src" not in ln, "the runtime stage must not see the source"


def test_dockerfile_runs_as_a_non_root_user_and_installs_nothing_at_run_time() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    runtime = _stages()[-1][1]
    users = [ln.split(None, 1)[1] for ln in runtime if ln.startswith("USER ")]
    assert users, "the runtime stage has no USER line"
    assert users[-1] not in ("root", "0", "0:0")
    assert runtime.index(f"USER {users[-1]}") > max(i for i, ln in enumerate(runtime) if ln.startswith(("RUN", "COPY")))
    assert not re.search(r"(curl|wget)[^\n|]*\|\s*(ba)?sh", text), "Dockerfile pipes a download into a shell"
    assert "PIP_NO_INDEX=1" in text
    for ln in runtime:
        if ln.startswith("COPY ") and "--from=" not in ln:
            sources = [p for p in ln.split()[1:-1] if not p.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    copied = {ln.split()[-1] for ln in runtime if ln.startswith("COPY ")}
    for svc in _services().values():
        entry = svc.get("entrypoint")
        if svc.get("build") and isinstance(entry, list) and entry[0].startswith("lianfang-"):
            assert f"/usr/local/bin/{entry[0]}" in copied, f"no {entry[0]} in the image"
    entry = next(ln for ln in runtime if ln.startswith("ENTRYPOINT"))
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
    """Mosquitto 2.0 with docker/mosquitto.conf, only the container paths and the ports swapped for local ones."""

    def __init__(self, data_dir: Path, certs_dir: Path) -> None:
        self.port = free_port()
        self.tls_port = free_port()
        conf = MOSQUITTO_CONF.read_text(encoding="utf-8")
        conf = conf.replace("/mosquitto/data/", f"{data_dir}/")
        conf = conf.replace("/mosquitto/certs/", f"{certs_dir}/")
        conf = conf.replace("/usr/lib/mosquitto_dynamic_security.so", find_dynsec_plugin())
        conf = conf.replace("listener 1883\n", f"listener {self.port} 127.0.0.1\n")
        conf = conf.replace("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n")
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


def _connect(
    port: int, username: str | None, password: str | None, client_id: str, ca: Path | None = None
) -> tuple[mqtt.Client, Any]:
    """Connect over MQTT v5 (over TLS when ``ca`` is given); returns the client and the CONNACK reason code."""
    result: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if ca is not None:
        client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
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

    certs = init_certs(tmp_path / "certs", ["localhost", "127.0.0.1"], now=datetime.now(UTC))
    broker = _Mosquitto(data_dir, certs.directory)
    clients: list[mqtt.Client] = []
    try:
        wait_for_port("127.0.0.1", broker.port, 10)
        wait_for_port("127.0.0.1", broker.tls_port, 10)
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

        # the TLS listener for devices: the gateway account over TLS with the CA of `lianfang certs init`
        over_tls, reason = _connect(
            broker.tls_port, GATEWAY_USERNAME, derive_gateway_password("admin-secret-1"), "gw-tls", certs.ca_cert
        )
        clients.append(over_tls)
        assert not reason.is_failure
        over_tls.publish("lf/v1/gate-gz-0002/telemetry", b'{"door_open":false}', qos=1).wait_for_publish(5)
        wait_until(lambda: "lf/v1/gate-gz-0002/telemetry" in received, 5, what="TLS message at the platform")
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


# --- docs/deploy.md -----------------------------------------------------------------------------------------


def test_deploy_doc_covers_every_service_and_setting_of_compose() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for name in _services():
        assert f"`{name}`" in doc, f"docs/deploy.md does not mention service {name}"
    for key in ("LIANFANG_BROKER_PUBLIC_HOST", "LIANFANG_MQTT_PLAIN_BIND", "INFLUXDB_RETENTION"):
        assert f"`{key}`" in doc, f"docs/deploy.md does not explain {key}"
    for alert in ("platform.ingest_stalled", "platform.store_unavailable", "platform.broker_dropped", "DQ1"):
        assert alert in doc
    for tool in ("pg_dump", "influx backup", "dynamic-security.json", "telemetry_device_state", "lianfang certs init"):
        assert tool in doc
    assert "no Docker engine" in doc.replace("No Docker engine", "no Docker engine")
