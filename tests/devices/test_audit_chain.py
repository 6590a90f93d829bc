"""The audit log's hash chain (devices/audit.py) and `lianfang audit verify/list/export`: records edited, deleted and
reordered with raw SQL are each named; concurrent writers keep one linear chain; old rows are chained by 0010."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from prometheus_client import REGISTRY
from sqlalchemy import text
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core.db import MIGRATIONS, make_engine, migrate
from core.settings import AuditSettings, Settings, StoreSettings
from devices.audit import GENESIS, Actor, AuditLog, anchor
from devices.registry import Registry
from lianfang.cli import app
from lianfang.runtime import Runtime

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
ALICE = Actor("alice (admin)", "api from 10.0.0.7")


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.write(ALICE, "rule.override.put", [f"rule r{i}"], now=NOW + timedelta(minutes=i), detail={"i": i})


def _cli(db_url: str, *args: str) -> Result:
    env = {"LIANFANG_DATABASE_URL": db_url, "LIANFANG_CONFIG": None}
    return CliRunner().invoke(app, ["audit", *args], env=env)


def test_audit_chain_intact_verifies(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    _fill(log, 5)
    log.write(ALICE, "provision", ["d1", "d2"], now=NOW.astimezone(), outcome="ok", source="cli@host")
    rows = sorted(log.records(limit=100), key=lambda r: r.seq)
    assert [r.seq for r in rows] == list(range(1, 8))
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert log.head() == (7, rows[-1].hash)
    assert log.verify().ok
    result = _cli(db_url, "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"] == 7


def test_audit_verify_names_edited_deleted_and_reordered_records(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    _fill(log, 12)
    with registry.engine.begin() as conn:
        # edited: the actor of record 3 (what an SQL edit of a rule change's actor looks like)
        conn.execute(text("UPDATE audit_log SET actor = 'mallory (admin)' WHERE seq = 3"))
        # deleted: record 6
        conn.execute(text("DELETE FROM audit_log WHERE seq = 6"))
        # reordered: records 9 and 10 swap places
        conn.execute(text("UPDATE audit_log SET seq = -1 WHERE seq = 9"))
        conn.execute(text("UPDATE audit_log SET seq = 9 WHERE seq = 10"))
        conn.execute(text("UPDATE audit_log SET seq = 10 WHERE seq = -1"))
    result = _cli(db_url, "verify")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("edited: record 3 ") for line in lines), lines
    assert any(line.startswith("deleted: record 6") for line in lines), lines
    assert any(line.startswith("reordered: record 9 ") and "written as record 10" in line for line in lines), lines
    assert any(line.startswith("reordered: record 10 ") and "written as record 9" in line for line in lines), lines
    report = json.loads(_cli(db_url, "verify", "--json").stdout)
    assert not report["ok"]
    assert {(p["kind"], p["seq"]) for p in report["problems"]} >= {
        ("edited", 3),
        ("deleted", 6),
        ("reordered", 9),
        ("reordered", 10),
    }


def test_audit_verify_finds_a_cut_tail_with_the_anchor(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    _fill(log, 6)
    seq, digest = log.head()
    assert _cli(db_url, "verify", "--anchor", f"{seq}:{digest}").exit_code == 0
    with registry.engine.begin() as conn:
        # the attacker cuts the tail and puts the head back to match
        last = conn.execute(text("SELECT hash FROM audit_log WHERE seq = 4")).scalar_one()
        conn.execute(text("DELETE FROM audit_log WHERE seq > 4"))
        conn.execute(text("UPDATE audit_chain_head SET seq = 4, hash = :h"), {"h": last})
    assert _cli(db_url, "verify").exit_code == 0  # undetectable without an anchor
    result = _cli(db_url, "verify", "--anchor", f"{seq}:{digest}")
    assert result.exit_code == 1
    assert result.stdout.startswith("truncated: record 6"), result.stdout
    bad = _cli(db_url, "verify", "--anchor", "x:y")
    assert bad.exit_code == 1 and "SEQ:HASH" in bad.stderr


def test_audit_verify_finds_a_cut_tail_from_the_chain_head(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    _fill(log, 4)
    with registry.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    result = _cli(db_url, "verify")
    assert result.exit_code == 1
    assert result.stdout.startswith("truncated: record 4"), result.stdout


def test_audit_concurrent_writers_keep_a_linear_chain(registry: Registry) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        log = AuditLog(registry.session)  # one per thread, like one per request
        try:
            for i in range(15):
                log.write(Actor(f"w{k}", "test"), "x", [f"t{i}a", f"t{i}b"], now=NOW)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    v = AuditLog(registry.session).verify()
    assert v.ok, [p.line() for p in v.problems]
    assert v.count == v.last_seq == 4 * 15 * 2


def test_audit_concurrent_processes_keep_a_linear_chain(tmp_path: Path) -> None:
    """Two engines on one SQLite file stand for two processes: the in-process lock does not order them."""
    url = f"sqlite:///{tmp_path}/two.db"
    e1, e2 = make_engine(url), make_engine(url)
    migrate(e1)
    r1, r2 = Registry(e1), Registry(e2)
    errors: list[BaseException] = []

    def writer(reg: Registry) -> None:
        try:
            for i in range(20):
                with reg.session() as s, s.begin():
                    AuditLog(reg.session).write(ALICE, "x", [f"t{i}"], now=NOW, session=s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r,)) for r in (r1, r2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors
        v = AuditLog(r1.session).verify()
        assert v.ok and v.count == 40
    finally:
        e1.dispose()
        e2.dispose()


def test_audit_migration_chains_existing_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        for i in range(3):
            conn.execute(
                text(
                    "INSERT INTO audit_log (ts, actor, origin, action, target, outcome, detail) "
                    "VALUES (:ts, 'wang', 'cli@h', 'provision', :t, 'ok', '{\"n\": 1}')"
                ),
                {"ts": NOW + timedelta(seconds=i), "t": f"d{i}"},
            )
    migrate(engine)
    reg = Registry(engine)
    try:
        log = AuditLog(reg.session)
        assert log.head()[0] == 3
        log.write(ALICE, "provision", ["d3"], now=NOW)
        v = log.verify()
        assert v.ok and v.count == 4, [p.line() for p in v.problems]
    finally:
        engine.dispose()


def test_audit_list_and_export_filter(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    _fill(log, 3)
    log.write(Actor("bob (operator)", "api"), "silence.create", ["=cmd|calc"], now=NOW + timedelta(hours=1))
    listed = json.loads(_cli(db_url, "list", "--actor", "bob", "--json").stdout)
    assert [r["target"] for r in listed] == ["=cmd|calc"]
    since = (NOW + timedelta(minutes=1)).isoformat()
    listed = json.loads(_cli(db_url, "list", "--action", "rule.override.put", "--since", since, "--json").stdout)
    assert [r["seq"] for r in listed] == [3, 2]
    exported = _cli(db_url, "export", "--actor", "bob")
    assert exported.exit_code == 0, exported.output
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert rows[0][0] == "seq" and rows[1][5] == "'=cmd|calc"  # not a formula
    assert log.records(action="audit.export", limit=1)[0].detail["records"] == 1
    assert log.verify().ok


def test_audit_anchor_logs_the_head_and_sets_the_gauge(
    registry: Registry, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(registry.session)
    _fill(log, 3)
    with caplog.at_level(logging.INFO, logger="devices.audit"):
        seq, digest = anchor(log, now=NOW)
    assert (seq, digest) == log.head() and seq == 3
    assert f"audit anchor seq=3 hash={digest}" in caplog.text
    assert REGISTRY.get_sample_value("lianfang_audit_anchor_seq") == 3
    assert _cli(db_url, "verify", "--anchor", f"{seq}:{digest}").exit_code == 0


def test_audit_writes_in_a_callers_transaction_do_not_deadlock_with_other_writers(registry: Registry) -> None:
    """A caller writes twice in its own transaction while another thread waits for the chain head."""
    started = threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        started.set()
        try:
            AuditLog(registry.session).write(Actor("other", "test"), "x", ["b"], now=NOW)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    with registry.session() as s, s.begin():
        log = AuditLog(registry.session)
        log.write(ALICE, "x", ["a1"], now=NOW, session=s)
        t.start()
        assert started.wait(5)
        log.write(ALICE, "x", ["a2"], now=NOW, session=s)
    t.join(timeout=30)
    assert not t.is_alive() and not errors
    v = AuditLog(registry.session).verify()
    assert v.ok and v.count == 3
    assert [r.target for r in sorted(AuditLog(registry.session).records(), key=lambda r: r.seq)] == ["a1", "a2", "b"]


def test_audit_runtime_anchors_at_start_and_on_its_schedule(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/registry.db",
        store=StoreSettings(sqlite_path=tmp_path / "t.db"),
        mqtt={"embedded_broker": False},  # type: ignore[arg-type]
        audit=AuditSettings(anchor_minutes=0.5),
    )
    runtime = Runtime(settings, with_ingest=False)
    with caplog.at_level(logging.INFO, logger="devices.audit"):
        runtime.start()
        try:
            assert runtime.registry is not None and runtime.scheduler is not None
            assert "audit anchor seq=0 hash=" + GENESIS in caplog.text
            AuditLog(runtime.registry.session).write(ALICE, "x", ["t"], now=NOW)
            jobs = [j for j in runtime.scheduler.get_jobs() if j.func == runtime.anchor_audit]
            assert len(jobs) == 1 and jobs[0].trigger.interval.total_seconds() == 30
            runtime.anchor_audit()
            assert "audit anchor seq=1 hash=" in caplog.text
            assert REGISTRY.get_sample_value("lianfang_audit_anchor_seq") == 1
        finally:
            runtime.stop()


def test_audit_verify_names_a_forged_record_with_a_taken_number(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    _fill(log, 4)
    with registry.engine.begin() as conn:
        conn.execute(text("DROP INDEX audit_log_seq"))
        conn.execute(
            text(
                "INSERT INTO audit_log (ts, actor, origin, action, target, outcome, detail, seq, prev_hash, hash) "
                "SELECT ts, 'mallory', origin, action, target, outcome, detail, seq, prev_hash, hash "
                "FROM audit_log WHERE seq = 2"
            )
        )
    result = _cli(db_url, "verify")
    assert result.exit_code == 1
    assert any(line.startswith("duplicate: record 2 ") for line in result.stdout.splitlines()), result.stdout
