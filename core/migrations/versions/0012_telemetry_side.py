"""The InfluxDB backend's side store in the SQL database: device state, counters and rejections.

With ``store.backend: influxdb`` telemetry and events live in InfluxDB; each device's last-seen time, status,
firmware and data-quality counters, and the rejected messages, live in these two tables (``core/store/side.py``),
shared by every ingest process (PostgreSQL in production). The embedded SQLite telemetry store keeps its own
tables in its own file. Its own branch off 0001, like 0003..0005.

Revision ID: 0012_telemetry_side
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_telemetry_side"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_device_state",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
        sa.Column("status", sa.Text, nullable=True),
        sa.Column("status_ms", sa.BigInteger, nullable=True),
        sa.Column("fw", sa.Text, nullable=True),
        sa.Column("messages", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("gaps", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("duplicates", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("nonstandard", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rejected", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "telemetry_rejections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("telemetry_rejections_device", "telemetry_rejections", ["device_id", "id"])
    op.create_index("telemetry_rejections_received", "telemetry_rejections", ["received_ms"])


def downgrade() -> None:
    op.drop_table("telemetry_rejections")
    op.drop_table("telemetry_device_state")
