"""Incremental re-reads and writes at 100,000 devices (issue 10).

- ``device_changes``: a log of changed device ids, one row per inserted, updated or deleted ``devices`` row,
  written by triggers (so every writer is seen: the API, the CLI, provisioning, plain SQL). ``Registry``'s device
  view re-reads only the devices logged after the last row it saw (``devices.registry.DeviceFeed``).
- ``alert_aux``: the alert lifecycle's aux state (recent fires per dedup key, the last resolved alert of a key,
  devices offline, held fires) as one row per (section, key), written as it changes; it replaces the single
  ``alert_kv`` row ``lifecycle``, which is read once more at the first start after this revision.
- ``joint_windows``: the correlator's windows as one row per (pattern, window), written when they change; they
  replace the ``joint_kv`` row ``windows``, read likewise.

Revision ID: 0012_incremental_state
Revises: 0008_joint
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_incremental_state"
down_revision = "0008_joint"  # devices (0001), alerts (0003...) and joint (0008) are all on this branch
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = (
    """CREATE TRIGGER device_changes_ins AFTER INSERT ON devices
       BEGIN INSERT INTO device_changes (device_id) VALUES (NEW.id); END""",
    """CREATE TRIGGER device_changes_upd AFTER UPDATE ON devices
       BEGIN INSERT INTO device_changes (device_id) VALUES (NEW.id); END""",
    """CREATE TRIGGER device_changes_del AFTER DELETE ON devices
       BEGIN INSERT INTO device_changes (device_id) VALUES (OLD.id); END""",
)

_PG_FUNCTION = """CREATE OR REPLACE FUNCTION log_device_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO device_changes (device_id) VALUES (OLD.id);
        RETURN OLD;
    END IF;
    INSERT INTO device_changes (device_id) VALUES (NEW.id);
    RETURN NEW;
END $$ LANGUAGE plpgsql"""

_PG_TRIGGER = """CREATE TRIGGER device_changes_log AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION log_device_change()"""


def upgrade() -> None:
    op.create_table(
        "device_changes",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sqlite_autoincrement=True,  # never reuse a seq after the newest rows were pruned
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for ddl in _SQLITE_TRIGGERS:
            op.execute(ddl)
    op.create_table(
        "alert_aux",
        sa.Column("section", sa.String(16), primary_key=True),  # fires | last_resolved | offline | held
        sa.Column("key", sa.String(255), primary_key=True),  # a dedup key, or a device id for "offline"
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "joint_windows",
        sa.Column("pattern_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),  # "" = the pattern's state without its windows
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("joint_windows")
    op.drop_table("alert_aux")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS device_changes_log ON devices")
        op.execute("DROP FUNCTION IF EXISTS log_device_change()")
    else:
        for name in ("device_changes_ins", "device_changes_upd", "device_changes_del"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("device_changes")
