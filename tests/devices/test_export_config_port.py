"""`lianfang credentials export-config` prints the port the device logs in on (ADR 0006, session 6): the devices'
listener for an identity in the password file, mqtt.port for one an older version left in dynsec."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.db import make_engine, migrate
from devices.audit import Actor
from devices.broker import BrokerConfig, MosquittoProcess
from devices.broker_adapter_passwd import PasswdFileAdapter
from devices.dynsec import DynsecClient
from devices.provisioning import Provisioner
from devices.registry import DeviceSpec, RegionSpec, Registry
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from tests.conftest import free_ports

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ACTOR = Actor("test", "test")
IDS = ["gate-0001", "gate-0002", "gate-0003"]


@pytest.fixture
def broker_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[BrokerConfig, MosquittoProcess]]:
    port, device_port = free_ports(2)
    cfg = BrokerConfig(
        directory=tmp_path / "mosquitto",
        port=port,
        admin_password="adm-" + uuid.uuid4().hex,
        platform_password="plat-" + uuid.uuid4().hex,
        device_passwd=True,
        device_port=device_port,
    )
    proc = MosquittoProcess(cfg)
    proc.start()
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    reg = Registry(engine)
    reg.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    reg.add_devices([DeviceSpec(i, "gate", "gd") for i in IDS], now=NOW)
    with DynsecClient("127.0.0.1", port, cfg.admin_password, timeout=30) as dynsec:
        Provisioner(reg, dynsec, actor=ACTOR).provision_new(["gate-0001"], NOW)  # what an older version did
        adapter = PasswdFileAdapter.for_broker(cfg, dynsec=dynsec)
        Provisioner(reg, dynsec, actor=ACTOR, adapter=adapter).provision_new(["gate-0002"], NOW)
    engine.dispose()
    # the broker as compose runs it (an external broker whose password file Lianfang writes)
    for key, value in {
        "LIANFANG_CONFIG": "",
        "LIANFANG_DATABASE_URL": url,
        "LIANFANG_DATA_DIR": str(tmp_path / "var"),
        "LIANFANG_MQTT__PORT": str(port),
        "LIANFANG_MQTT__EMBEDDED_BROKER": "false",
        "LIANFANG_MQTT__DEVICE_IDENTITIES": "password_file",
        "LIANFANG_MQTT__DEVICE_PORT": str(device_port),
        "LIANFANG_MQTT__BROKER_DIR": str(cfg.directory),
        "LIANFANG_MQTT__ADMIN_PASSWORD": cfg.admin_password,
    }.items():
        monkeypatch.setenv(key, value)
    yield cfg, proc
    proc.stop()


def _export(device_id: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["credentials", "export-config", device_id, "--timeout", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["client_id"] == device_id
    return int(doc["port"]), result.stderr


@pytest.mark.integration
def test_export_config_prints_mqtt_port_for_an_identity_left_in_dynsec(
    broker_cfg: tuple[BrokerConfig, MosquittoProcess],
) -> None:
    cfg, proc = broker_cfg
    assert cfg.device_port is not None and cfg.device_port != cfg.port
    assert _export("gate-0001") == (cfg.port, "")  # legacy dynsec identity: the platform's listener
    assert _export("gate-0002") == (cfg.device_port, "")  # in the password file: the devices' listener
    assert _export("gate-0003") == (cfg.device_port, "")  # not provisioned yet: where it will log in
    proc.stop()
    # the file still answers for gate-0002 without the broker; gate-0001 cannot be known: a warning
    assert _export("gate-0002") == (cfg.device_port, "")
    port, err = _export("gate-0001")
    assert port == cfg.device_port
    assert err.startswith("warning: could not ask the broker whether gate-0001 still has a dynsec identity")
