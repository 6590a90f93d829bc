"""tests/conftest.py's port helpers: ports that the embedded broker can take with its devices' listener."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devices.broker import BrokerConfig, MosquittoProcess
from tests.conftest import free_port_pair, free_ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(_bindable(p) for p in ports)


def test_free_port_pair_has_a_free_successor() -> None:
    port = free_port_pair()
    assert _bindable(port) and _bindable(port + 1)


@pytest.mark.integration
def test_the_embedded_broker_takes_a_free_port_pair_with_its_default_device_listener(tmp_path: Path) -> None:
    """A broker with device identities in the password file listens on port and port + 1 (the default)."""
    cfg = BrokerConfig(
        directory=tmp_path / "mosquitto",
        port=free_port_pair(),
        admin_password="a-" + "x" * 20,
        platform_password="p-" + "x" * 20,
        device_passwd=True,
    )
    assert cfg.device_listener_port == cfg.port + 1
    proc = MosquittoProcess(cfg)
    proc.start()
    try:
        for port in (cfg.port, cfg.port + 1):
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
    finally:
        proc.stop()
