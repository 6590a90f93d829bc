"""`lianfang credentials reconcile` (and `devices reconcile`): it shows the plan, asks or needs --yes, and refuses a
mass deletion without --force; through typer's CliRunner (no terminal) and a real pseudo-terminal, on a real broker."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete
from typer.testing import CliRunner

from core.db import make_engine, migrate
from devices.dynsec import DynsecClient, role_name
from devices.provisioning import DeviceCredential
from devices.registry import DeviceSpec, RegionSpec, Registry
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from tests.conftest import Broker

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
IDS = [f"gate-{i:04d}" for i in range(1, 13)]  # 12: deleting all of them is a mass deletion


def make_registry(url: str, ids: list[str]) -> None:
    engine = make_engine(url)
    migrate(engine)
    reg = Registry(engine)
    reg.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    reg.add_devices([DeviceSpec(i, "gate", "gd") for i in ids], now=NOW)
    engine.dispose()


@pytest.fixture
def fleet(tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Registry A with 12 provisioned devices on the broker; returns A's database URL (the environment points at it)."""
    url = f"sqlite:///{tmp_path}/a/registry.db"
    make_registry(url, IDS)
    for k, v in {
        "LIANFANG_DATABASE_URL": url,
        "LIANFANG_DATA_DIR": str(tmp_path / "a"),
        "LIANFANG_MQTT__PORT": str(broker.port),
        "LIANFANG_MQTT__EMBEDDED_BROKER": "false",
        "LIANFANG_MQTT__ADMIN_PASSWORD": broker.admin_password,
    }.items():
        monkeypatch.setenv(k, v)
    code, _, err = run("credentials", "provision", *IDS, "--secret-file", str(tmp_path / "secrets.csv"))
    assert code == 0, err
    yield url


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def identities(broker: Broker) -> set[str]:
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password) as dynsec:
        return {
            str(c["username"])
            for c in dynsec.list_clients()
            if any(r.get("rolename") == role_name(str(c["username"])) for r in c.get("roles", []))
        }


@pytest.mark.integration
def test_reconcile_refuses_mass_deletion_from_another_registry(
    fleet: str, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second data dir's empty registry pointed at the same broker: every identity looks orphaned.
    other = f"sqlite:///{tmp_path}/b/registry.db"
    make_registry(other, [])
    monkeypatch.setenv("LIANFANG_DATABASE_URL", other)
    for extra in ([], ["--yes"]):
        code, out, err = run("credentials", "reconcile", *extra)
        assert code == 1 and out == ""
        lines = err.splitlines()
        assert lines[0].startswith("reconcile would change 12 broker identities on 127.0.0.1:")
        assert lines[0].endswith("(12 device identities there now): create 0, delete 12, update 0")
        assert lines[1] == "  delete: " + " ".join(IDS)
        assert lines[-1] == (
            f"error: refusing to delete 12 of the 12 device identities on 127.0.0.1:{broker.port} (is this the right "
            "broker and database?); re-run with --force if it is meant"
        )
    assert identities(broker) == set(IDS)
    code, out, err = run("credentials", "reconcile", "--dry-run", "--json")  # shows, changes nothing
    assert code == 0 and '"orphan_on_broker"' in out and identities(broker) == set(IDS)

    code, out, err = run("devices", "reconcile", "--force")  # no terminal: --yes is needed as well
    assert code == 1 and err.splitlines()[-1] == (
        "error: reconcile would change 12 broker identities and there is no terminal to ask: re-run with --yes "
        "to apply, or --dry-run to only see the drift"
    )
    assert identities(broker) == set(IDS)
    code, out, err = run("devices", "reconcile", "--force", "--yes", "--json")
    assert code == 0, err
    assert identities(broker) == set()


@pytest.mark.integration
def test_reconcile_small_change_needs_yes_without_a_terminal(fleet: str, broker: Broker) -> None:
    engine = make_engine(fleet)
    with engine.begin() as conn:  # the registry forgets one credential: its broker identity is an orphan
        conn.execute(delete(DeviceCredential).where(DeviceCredential.device_id == "gate-0012"))
    engine.dispose()
    code, out, err = run("credentials", "reconcile")
    assert code == 1 and "create 0, delete 1, update 0" in err and "  delete: gate-0012" in err
    assert "gate-0012" in identities(broker)
    code, out, err = run("credentials", "reconcile", "--yes", "--json")
    assert code == 0, err
    assert identities(broker) == set(IDS) - {"gate-0012"}
    code, out, err = run("credentials", "reconcile")  # nothing left to change on the broker: no question asked
    assert code == 0 and "would change" not in err and "unprovisioned" in out


def _read_until(fd: int, text: str, timeout: float = 20.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {text!r}; got {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.integration
@pytest.mark.parametrize(("answer", "code", "left"), [("n", 1, 1), ("y", 0, 0)])
def test_reconcile_asks_on_a_terminal(fleet: str, broker: Broker, answer: str, code: int, left: int) -> None:
    engine = make_engine(fleet)
    with engine.begin() as conn:
        conn.execute(delete(DeviceCredential).where(DeviceCredential.device_id == "gate-0001"))
    engine.dispose()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lianfang", "credentials", "reconcile"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(os.environ),
    )
    os.close(slave)
    try:
        shown = _read_until(master, "apply these 1 changes? [y/N]:")
        assert "  delete: gate-0001" in shown
        os.write(master, f"{answer}\n".encode())
        rest = _read_until(master, "nothing changed" if answer == "n" else "fixed: 1")
        assert proc.wait(timeout=20) == code, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert len({"gate-0001"} & identities(broker)) == left
