"""Every command block (```sh) of README.md and docs/cli.md runs as written, so the docs cannot drift.

Each document runs in a fresh working directory (with the repository's ``examples/`` and ``devices/`` linked in, so
the documented relative paths resolve) whose ``var/`` is the data directory (``LIANFANG_DATA_DIR``), against a real
Mosquitto (the ``broker`` fixture) whose generated passwords are put where the embedded broker keeps them
(``var/broker-secrets.json``). The broker is configured as ``lianfang serve`` starts it with the default settings
(device identities in the password file, devices on their own listener, ADR 0006). Lines that start with
``lianfang`` run through the CLI in process (``CliRunner``) and must exit 0; commands that start long-running
services are skipped, each with its reason (``SKIPPED``). Any other line in a ``sh`` block fails the test unless the
block is marked with ``<!-- docs-test: skip REASON -->`` on the line before its fence.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devices.broker import BrokerConfig, MosquittoProcess
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from tests.conftest import Broker, free_ports

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md"]

# First words of commands that start long-running services: never run here, each with the reason.
SKIPPED: dict[tuple[str, ...], str] = {
    ("make",): "make run / make test set up the machine and run the demo or the whole suite",
    ("lianfang", "serve"): "a long-running service (broker, ingest, API); the test's broker stands in for it",
    ("lianfang", "demo"): "a long-running service (the whole demo, binds :8000)",
    ("lianfang", "ingest"): "a long-running service (ingest until SIGTERM)",
}
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\b(?P<reason>[^>]*)-->")
SHELL_OPERATORS = ("|", ">", "<", "&&", ";", "$(", "`")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int  # 1-based line in the document
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {shlex.join(self.argv)}"


def sh_blocks(text: str, name: str) -> Iterator[tuple[int, list[tuple[int, str]], str | None]]:
    """(fence line, [(line number, line)], skip reason or None) of every ```sh block, continuation lines joined."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start = i + 1
            mark = SKIP_MARK.search(lines[i - 1]) if i > 0 else None
            body: list[tuple[int, str]] = []
            i += 1
            pending = ""
            pending_at = 0
            while i < len(lines) and lines[i].strip() != "```":
                raw = lines[i]
                if not pending:
                    pending_at = i + 1
                if raw.rstrip().endswith("\\"):
                    pending += raw.rstrip()[:-1] + " "
                else:
                    body.append((pending_at, pending + raw))
                    pending = ""
                i += 1
            if i >= len(lines):
                raise AssertionError(f"{name}:{start}: unterminated ```sh block")
            yield start, body, (mark.group("reason").strip() or "marked") if mark else None
        i += 1


def plan(path: Path) -> tuple[list[Command], list[str]]:
    """The commands to run and the lines skipped (with reasons); an unmarked line that is not a lianfang command
    or a known long-running one is an AssertionError naming it."""
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    run: list[Command] = []
    skipped: list[str] = []
    for fence, body, reason in sh_blocks(path.read_text(encoding="utf-8"), name):
        if reason is not None:
            skipped.append(f"{name}:{fence}: block skipped: {reason}")
            continue
        for number, line in body:
            argv = tuple(shlex.split(line, comments=True))
            if not argv:
                continue
            why = next((r for first, r in SKIPPED.items() if argv[: len(first)] == first), None)
            if why is not None:
                skipped.append(f"{name}:{number}: {argv[0]} {argv[1] if len(argv) > 1 else ''}: {why}")
                continue
            if argv[0] != "lianfang":
                raise AssertionError(
                    f"{name}:{number}: {line.strip()!r} is neither a lianfang command nor a known long-running one: "
                    "mark its block with <!-- docs-test: skip REASON -->"
                )
            bad = [op for op in SHELL_OPERATORS if any(op in a for a in argv)]
            if bad:
                raise AssertionError(f"{name}:{number}: shell syntax {bad} in a documented command: keep them plain")
            run.append(Command(name, number, argv))
    return run, skipped


@dataclass
class ServeBroker(Broker):
    device_port: int


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ServeBroker]:
    """Mosquitto as `lianfang serve` starts it by default (mqtt.device_identities: password_file): dynsec for the
    platform's accounts on ``port``, the device password file on ``device_port``; in the working directory's
    ``var/mosquitto`` (``mqtt.broker_dir``), where the CLI finds its generated config and password file as it finds
    serve's."""
    port, device_port = free_ports(2)
    cfg = BrokerConfig(
        directory=tmp_path / "work" / "var" / "mosquitto",
        port=port,
        admin_password="test-admin-" + uuid.uuid4().hex,
        platform_password="test-platform-" + uuid.uuid4().hex,
        sim_password="test-sim-" + uuid.uuid4().hex,
        device_passwd=True,
        device_port=device_port,
    )
    proc = MosquittoProcess(cfg)
    proc.start()
    yield ServeBroker(
        cfg.port,
        cfg.directory,
        cfg.admin_password,
        cfg.platform_username,
        cfg.platform_password,
        cfg.sim_password or "",
        proc,
        cfg.device_listener_port,
    )
    proc.stop()


def workdir(tmp_path: Path, broker: ServeBroker) -> tuple[Path, dict[str, str]]:
    """A working directory like a checkout (examples/ and devices/ linked), its data dir and the environment."""
    work = tmp_path / "work"  # the broker fixture made work/var/mosquitto
    work.mkdir(exist_ok=True)
    for name in ("examples", "devices"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    data = work / "var"
    data.mkdir(exist_ok=True)
    assert broker.directory == data / "mosquitto"
    secrets = {"admin": broker.admin_password, "platform": broker.platform_password, "sim": broker.sim_password}
    (data / "broker-secrets.json").write_text(json.dumps(secrets), encoding="utf-8")
    (data / "broker-secrets.json").chmod(0o600)
    env = {
        "LIANFANG_DATA_DIR": str(data),
        # Spelled out too, so the test does not depend on how the defaults follow the data dir.
        "LIANFANG_DATABASE_URL": f"sqlite:///{data / 'registry.db'}",
        "LIANFANG_STORE__SQLITE_PATH": str(data / "telemetry.db"),
        "LIANFANG_MQTT__BROKER_DIR": str(data / "mosquitto"),  # the broker's directory, as serve's
        "LIANFANG_MQTT__PORT": str(broker.port),
        "LIANFANG_MQTT__DEVICE_PORT": str(broker.device_port),
        "LIANFANG_CONFIG": "",
        "LIANFANG_SIM_PASSWORD": "",
        "COLUMNS": "200",
    }
    return work, env


def run_doc(path: Path, work: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run the document's commands in order in ``work``; return the skipped lines. Fails on the first command
    that exits non-zero, naming the document line and showing its output."""
    commands_, skipped = plan(path)
    assert commands_, f"{path.name} documents no lianfang command"
    monkeypatch.chdir(work)
    for cmd in commands_:
        result = CliRunner().invoke(app, list(cmd.argv[1:]), env=env)
        if result.exit_code != 0:
            raise AssertionError(
                f"{cmd} exited {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
                + (f"\nexception: {result.exception!r}" if result.exception else "")
            )
    return skipped


@pytest.mark.integration
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_commands_run_as_written(
    doc: Path, broker: ServeBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, env = workdir(tmp_path, broker)
    skipped = run_doc(doc, work, env, monkeypatch)
    # What is not run is said, with its reason (pytest -rA shows it).
    print("\n".join(skipped))


def test_docs_commands_fail_when_a_documented_command_fails(
    broker: ServeBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "broken.md"
    doc.write_text(
        "Intro.\n\n```sh\nlianfang config check\nlianfang devices show no-such-device-01   # not registered\n```\n",
        encoding="utf-8",
    )
    work, env = workdir(tmp_path, broker)
    with pytest.raises(AssertionError, match=r"broken.md:5: lianfang devices show no-such-device-01 exited 1"):
        run_doc(doc, work, env, monkeypatch)


def test_docs_commands_unmarked_shell_lines_are_refused_and_marked_blocks_skipped(tmp_path: Path) -> None:
    doc = tmp_path / "other.md"
    doc.write_text("```sh\ncurl http://127.0.0.1:8000/api/v1/health\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"other.md:2: 'curl .*' is neither a lianfang command"):
        plan(doc)
    doc.write_text(
        "<!-- docs-test: skip needs a running server -->\n```sh\ncurl http://127.0.0.1:8000/api/v1/health\n```\n"
        "```sh\nmake run   # the demo\nlianfang serve\nlianfang --help\n```\n",
        encoding="utf-8",
    )
    commands_, skipped = plan(doc)
    assert [c.argv for c in commands_] == [("lianfang", "--help")]
    assert len(skipped) == 3 and "needs a running server" in skipped[0] and "long-running" in skipped[2]
