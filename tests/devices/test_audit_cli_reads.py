"""``lianfang audit list`` and ``audit verify`` are themselves recorded in the audit log (issue 11), with the person
at the terminal (``Actor.from_cli``: the OS user) as the actor; ``audit export`` already was."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

from sqlalchemy import text
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from devices.audit import Actor, AuditLog
from devices.registry import Registry
from lianfang.cli import app

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def _cli(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["audit", *args], env={"LIANFANG_DATABASE_URL": db_url, "LIANFANG_CONFIG": None})


def test_audit_list_and_verify_leave_a_record(registry: Registry, db_url: str) -> None:
    log = AuditLog(registry.session)
    log.write(Actor("bob (operator)", "api"), "silence.create", ["silence 1"], now=NOW)
    assert _cli(db_url, "list", "--actor", "bob", "--json").exit_code == 0
    listed = log.records(action="audit.list")
    assert len(listed) == 1
    me = getpass.getuser()
    assert listed[0].actor == me and listed[0].origin.startswith("cli@")
    assert listed[0].detail == {
        "records": 1,
        "actor": "bob",
        "action": None,
        "target": None,
        "since": None,
        "until": None,
    }
    assert _cli(db_url, "verify").exit_code == 0
    checked = log.records(action="audit.verify")
    assert [(r.actor, r.outcome, r.detail["records"], r.detail["problems"]) for r in checked] == [(me, "ok", 2, 0)]
    assert log.verify().ok  # the records of the reads are links of the chain like any other
    # a failed check is recorded as failed
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1"))
    assert _cli(db_url, "verify").exit_code == 1
    newest = log.records(action="audit.verify", limit=1)[0]
    assert newest.outcome == "failed" and newest.detail["problems"] >= 1
