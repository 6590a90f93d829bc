"""The dynamic-security client against a real Mosquitto: batching, correlation, deadlines."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from core.errors import BrokerUnavailable, UserError
from devices.dynsec import DynsecClient, DynsecCommandError, device_acls, role_name
from tests.conftest import Broker

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(broker: Broker) -> Iterator[DynsecClient]:
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password, timeout=5) as client:
        yield client


def test_dynsec_batch_creates_and_reads_back(admin: DynsecClient) -> None:
    cmds = []
    for dev in ("gate-a01", "gate-a02", "gate-a03"):
        cmds.append({"command": "createRole", "rolename": role_name(dev), "acls": device_acls(dev)})
        cmds.append({"command": "createClient", "username": dev, "clientid": dev, "password": "p" * 43})
    cmds.append({"command": "createClient", "username": "gate-a01", "password": "x"})  # duplicate: error
    admin.batch_size = 4  # forces two request messages
    responses = admin.execute(cmds)
    assert [r.command for r in responses] == [c["command"] for c in cmds]
    assert all(r.ok for r in responses[:-1])
    assert responses[-1].error is not None and "exists" in responses[-1].error.lower()
    client = admin.get_client("gate-a02")
    assert client is not None and client["clientid"] == "gate-a02"
    role = admin.get_role(role_name("gate-a03"))
    assert role is not None and {a["topic"] for a in role["acls"]} == {
        "lf/v1/gate-a03/telemetry",
        "lf/v1/gate-a03/event",
        "lf/v1/gate-a03/status",
        "lf/v1/gate-a03/cmd",
    }
    assert admin.get_client("no-such-device") is None
    names = {c["username"] for c in admin.list_clients(page=2)}  # paging
    assert {"admin", "gate-a01", "gate-a02", "gate-a03"} <= names


def test_dynsec_call_raises_on_command_error(admin: DynsecClient) -> None:
    with pytest.raises(DynsecCommandError, match="deleteRole"):
        admin.call({"command": "deleteRole", "rolename": "never-created"})


def test_dynsec_two_admins_get_only_their_own_answers(broker: Broker) -> None:
    """Every admin sees every response message; correlation data keeps the answers apart."""
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with DynsecClient("127.0.0.1", broker.port, broker.admin_password, timeout=5) as c:
                got = []
                for i in range(15):
                    dev = f"{name}-{i:03d}"
                    c.call({"command": "createClient", "username": dev, "password": "p" * 40})
                    client = c.get_client(dev)
                    got.append(client["username"] if client else "")
                results[name] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("alpha", "bravo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for name in ("alpha", "bravo"):
        assert results[name] == [f"{name}-{i:03d}" for i in range(15)]


def test_dynsec_wrong_admin_password_is_a_user_error(broker: Broker) -> None:
    with pytest.raises(UserError, match="admin login"):
        DynsecClient("127.0.0.1", broker.port, "wrong", timeout=5).connect()


def test_dynsec_nothing_listening_is_broker_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(BrokerUnavailable, match="cannot connect"):
            DynsecClient("127.0.0.1", port, "x", timeout=2).connect()


def test_dynsec_silent_server_times_out_without_hanging() -> None:
    """A TCP peer that accepts but never speaks MQTT: BrokerUnavailable within the timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"did not accept the connection within 0\.5 s"):
            DynsecClient("127.0.0.1", srv.getsockname()[1], "x", timeout=0.5).connect()
        assert time.monotonic() - start < 3


def test_dynsec_frozen_broker_request_times_out(broker: Broker) -> None:
    """The broker stops answering after we connected (SIGSTOP): the request fails within its deadline."""
    client = DynsecClient("127.0.0.1", broker.port, broker.admin_password, timeout=0.5, per_command_timeout=0.0)
    client.connect()
    proc = broker.process.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer 1 command"):
            client.get_client("admin")
        assert time.monotonic() - start < 3
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        client.close()
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password, timeout=5) as again:
        assert again.get_client("admin") is not None  # the broker is fine afterwards
