"""The compose broker with LIANFANG_DEVICE_IDENTITIES=password_file (ADR 0006, docs/deploy.md).

docker/mosquitto/run.sh and docker/mosquitto-password_file.conf run here with Debian's Mosquitto and /bin/sh (the
container's paths swapped for temporary ones): Lianfang's side writes the password file into the "shared volume"
through the external-broker adapter, the script installs it for the broker and reloads it, and the canary login
proves the reload. No Docker engine here: the container's user switch and the image's entrypoint are not run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from core.settings import MqttSettings, Settings
from devices.broker import BrokerConfig, device_acl_text, find_dynsec_plugin, free_port, render_config, wait_for_port
from devices.broker_adapter_passwd import PasswdFileAdapter, adapter_for, login_codes
from devices.provisioning import new_secret
from tests.helpers import wait_until
from tests.test_deploy_artefacts import DIRECTIVES, _directives, _init_env, _run_init

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "docker" / "mosquitto-password_file.conf"
ACL = ROOT / "docker" / "mosquitto" / "devices.acl"
RUN_SH = ROOT / "docker" / "mosquitto" / "run.sh"


def test_the_compose_password_file_config_matches_the_generated_one(tmp_path: Path) -> None:
    generated = _directives(render_config(BrokerConfig(directory=tmp_path, port=1883, device_passwd=True)))
    compose_conf = _directives(CONF.read_text(encoding="utf-8"))
    for key in (*DIRECTIVES, "use_username_as_clientid"):
        assert compose_conf.get(key) == generated[key], f"{CONF.name} {key} drifted from devices/broker.py"
    assert ACL.read_text(encoding="utf-8") == device_acl_text()
    text = CONF.read_text(encoding="utf-8")
    assert text.count("use_username_as_clientid true") == 2  # the plain and the TLS device listeners
    assert text.count("password_file /mosquitto/data/devices.passwd") == 2


class Broker:
    """run.sh with the compose config, paths and ports made local."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.device_port, self.tls_port = free_port(), free_port(), free_port()
        self.conf_dir, self.data, self.shared = tmp / "config", tmp / "data", tmp / "identities"
        for d in (self.conf_dir, self.data, self.shared):
            d.mkdir(mode=0o700)
        conf = CONF.read_text(encoding="utf-8")
        conf = conf.replace("/mosquitto/data/", f"{self.data}/").replace("/mosquitto/config/", f"{self.conf_dir}/")
        conf = conf.replace("/usr/lib/mosquitto_dynamic_security.so", find_dynsec_plugin())
        conf = conf.replace("listener 1883\n", f"listener {self.port} 127.0.0.1\n")
        conf = conf.replace("listener 1885\n", f"listener {self.device_port} 127.0.0.1\n")
        # no certificates here: the TLS listener's block is dropped (tests/test_deploy_artefacts.py covers TLS)
        conf = conf.split("# Devices over TLS")[0]
        if os.geteuid() == 0:
            conf = "user root\n" + conf
        (self.conf_dir / "mosquitto-password_file.conf").write_text(conf, encoding="utf-8")
        (self.conf_dir / "devices.acl").write_text(ACL.read_text(encoding="utf-8"), encoding="utf-8")
        env = _init_env(LIANFANG_MQTT__PASSWORD="platform-secret-1", LIANFANG_MQTT__ADMIN_PASSWORD="admin-secret-1")
        assert _run_init(self.data / "dynamic-security.json", env).returncode == 0
        self.proc = subprocess.Popen(
            ["/bin/sh", str(RUN_SH)],
            env={
                "PATH": os.environ.get("PATH", ""),
                "LIANFANG_DEVICE_IDENTITIES": "password_file",
                "LF_CONF_DIR": str(self.conf_dir),
                "LF_IDENTITIES_FILE": str(self.shared / "devices.passwd"),
                "LF_BROKER_PASSWD": str(self.data / "devices.passwd"),
                "LF_BROKER_USER": str(os.getuid()),
                "LF_POLL_S": "0.2",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, 10)
        wait_for_port("127.0.0.1", self.device_port, 10)

    def settings(self) -> Settings:
        return Settings(
            mqtt=MqttSettings(
                host="127.0.0.1",
                port=self.port,
                embedded_broker=False,
                admin_password=SecretStr("admin-secret-1"),
                device_identities="password_file",
                device_port=self.device_port,
                broker_dir=self.shared,
            )
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    if b.proc.poll() is None:
        b.stop()


@pytest.mark.integration
def test_run_sh_installs_each_password_file_and_reloads_the_broker(broker: Broker) -> None:
    adapter = adapter_for(broker.settings(), dynsec=None)  # type: ignore[arg-type]
    assert isinstance(adapter, PasswdFileAdapter) and adapter.port == broker.device_port
    first = {f"gate-{i:04d}": new_secret() for i in range(50)}
    assert adapter.add(first) == {}  # returns once the canary login proves the broker reloaded
    assert set(adapter.verify(list(first), device_secrets=first).values()) == {""}
    assert stat_mode(broker.data / "devices.passwd") == 0o600
    owner = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gate-0001", protocol=mqtt.MQTTv5)
    owner.username_pw_set("gate-0001", first["gate-0001"])
    drops: list[object] = []
    owner.on_disconnect = lambda *a: drops.append(a)
    owner.connect("127.0.0.1", broker.device_port)
    owner.loop_start()
    try:
        wait_until(owner.is_connected, 10, what="gate-0001 connected")
        # another device claiming gate-0001's client id gets its own session (client id := username)
        assert login_codes("127.0.0.1", broker.device_port, [("gate-0002", first["gate-0002"])]) == [0]
        more = {f"meter-{i:04d}": new_secret() for i in range(200)}
        assert adapter.add(more) == {}
        assert set(adapter.verify(list(more), device_secrets=more).values()) == {""}
        assert drops == [] and owner.is_connected()
        assert login_codes("127.0.0.1", broker.port, [("gate-0001", first["gate-0001"])]) == [5]  # platform port
        assert adapter.remove(["gate-0003"]) == {}
        assert login_codes("127.0.0.1", broker.device_port, [("gate-0003", first["gate-0003"])]) == [5]
    finally:
        owner.disconnect()
        owner.loop_stop()
    assert broker.stop() == 0  # SIGTERM reaches the broker through the script


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_run_sh_refuses_an_unknown_mode(tmp_path: Path) -> None:
    done = subprocess.run(
        ["/bin/sh", str(RUN_SH)],
        env={"PATH": os.environ.get("PATH", ""), "LIANFANG_DEVICE_IDENTITIES": "passwd"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 2 and "dynsec or password_file" in done.stderr
