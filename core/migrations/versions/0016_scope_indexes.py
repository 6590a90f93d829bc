"""Region-scoped lists as index ranges (issue 11): ``alerts.region_path`` and ``joint_incidents.region_path``.

A city user's alert list, incident list and overview select the subtree by its materialised path as a range
(``region_path >= '/gd/sz/' AND region_path < '/gd/sz0'``, ``gateway.scope.under_path``) instead of
``LIKE '%/sz/%'``. On SQLite the indexes of 0003 and 0008 (BINARY collation) serve that range as they are. On
PostgreSQL the range is compared ``COLLATE "C"`` (a language collation such as en_US orders "/" apart, which would
make the range wrong), so the indexes here are on that expression.

The overview's open-alert counts (``state IN (firing, acknowledged)`` in a subtree, per severity) get one more index
on both: ``(state, region_path, severity)``, which answers them from the index alone (SQLite otherwise picks
``alerts_state`` and reads every open alert of the country).

Revision ID: 0016_scope_indexes
Revises: 0012_incremental_state
"""

from alembic import op

revision = "0016_scope_indexes"
down_revision = "0012_incremental_state"
branch_labels = None
depends_on = None

_INDEXES = (("alerts_region_path_c", "alerts"), ("joint_incidents_region_path_c", "joint_incidents"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        # SQLite: the BINARY indexes alerts_region_path and joint_incidents_region_path serve the range
        op.execute("CREATE INDEX alerts_state_region_path ON alerts (state, region_path, severity)")
        return
    for name, table in _INDEXES:
        op.execute(f'CREATE INDEX {name} ON {table} ((region_path COLLATE "C"))')
    op.execute('CREATE INDEX alerts_state_region_path ON alerts (state, (region_path COLLATE "C"), severity)')


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS alerts_state_region_path")
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _table in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
