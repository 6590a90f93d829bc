"""Region-scoped lists select the subtree as an index range (gateway.scope.under_path, migration 0016_scope_indexes):
the right rows, and the plan of SQLite (EXPLAIN QUERY PLAN) and PostgreSQL (EXPLAIN) uses the region_path index."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from alerts.models import AlertRow
from devices.registry import Registry
from gateway.scope import path_upper_bound, under_path
from joint.models import IncidentRow

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
PATHS = ["/gd/", "/gd/sz/", "/gd/sz/b1/", "/gd/sz/b1/x/", "/gd/sz2/", "/gd/sz-a/", "/gd/gz/", "/gd/gz/sz/", "/sz/"]

segment = st.text(alphabet="abz019-_", min_size=1, max_size=4)
paths = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "".join(f"{p}/" for p in parts))


@given(paths, paths)
def test_the_range_is_exactly_the_prefix(prefix: str, path: str) -> None:
    assert path.startswith(prefix) == (prefix <= path < path_upper_bound(prefix))


def _alert(i: int, path: str) -> AlertRow:
    parts = [p for p in path.split("/") if p]
    return AlertRow(
        id=i,
        dedup_key=f"k{i}",
        open_key=f"k{i}",
        rule_id="r",
        device_id=f"d{i}",
        region_id=parts[-1],
        region_path=path,
        severity="warning",
        state="firing",
        title_zh="t",
        title_en="t",
        started_at=NOW,
        updated_at=NOW,
        detail={},
    )


def _plan(registry: Registry, stmt: Any) -> str:
    engine = registry.engine
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))  # a tiny table: would the index serve it at all?
            return "\n".join(str(r[0]) for r in conn.execute(text(f"EXPLAIN {sql}")))
        return "\n".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))


def test_subtree_rows_and_index_plan(registry: Registry) -> None:
    dialect = registry.engine.dialect.name
    with Session(registry.engine) as s:
        s.add_all(_alert(i, p) for i, p in enumerate(PATHS, start=1))
        s.commit()
    alerts = select(AlertRow.region_path).where(under_path(AlertRow.region_path, "/gd/sz/", dialect))
    with registry.engine.connect() as conn:
        assert sorted(conn.scalars(alerts)) == ["/gd/sz/", "/gd/sz/b1/", "/gd/sz/b1/x/"]
    counts = (
        select(AlertRow.severity, func.count())
        .where(AlertRow.state.in_(("firing", "acknowledged")))
        .where(under_path(AlertRow.region_path, "/gd/sz/", dialect))
        .group_by(AlertRow.severity)
    )
    incidents = select(IncidentRow.id).where(under_path(IncidentRow.region_path, "/gd/sz/", dialect))
    c = "_c" if dialect == "postgresql" else ""
    for stmt, indexes in (
        (alerts, (f"alerts_region_path{c}",)),
        # SQLite: the (state, region_path, severity) index; PostgreSQL's costs may pick either
        (counts, ("alerts_state_region_path", f"alerts_region_path{c}") if c else ("alerts_state_region_path",)),
        (incidents, (f"joint_incidents_region_path{c}",)),
    ):
        plan = _plan(registry, stmt)
        assert any(f"INDEX {i} " in plan or f"using {i} " in plan for i in indexes), plan
        assert "SCAN alerts\n" not in plan + "\n" and "Seq Scan" not in plan, plan


def test_the_old_like_scan_is_gone(registry: Registry) -> None:
    """The contrast that makes the test above mean something: LIKE '%/sz/%' cannot seek the index."""
    stmt = select(AlertRow.id).where(AlertRow.region_path.contains("/sz/"))
    plan = _plan(registry, stmt)
    if registry.engine.dialect.name == "sqlite":
        assert "SCAN alerts" in plan and "SEARCH" not in plan, plan
    else:
        assert "alerts_region_path_c" not in plan, plan
