"""Notification delivery log: one row per notification and channel, one row per send attempt.

Revision ID: 0005
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # alert id, kind, level and target region (+ time for re-notifications): replays are recognised by it.
        sa.Column("notification_key", sa.String(255), nullable=False),
        sa.Column("alert_id", sa.BigInteger, nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("target_region_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        # NULL when no route matched (status "unrouted").
        sa.Column("channel", sa.String(64), nullable=True),
        # pending | retrying | sent | failed | unrouted
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("message_id", sa.String(32), nullable=True),
        sa.Column("group_size", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        # The notification as it was handed over, so unfinished deliveries resume after a restart.
        sa.Column("payload", sa.JSON, nullable=False),
    )
    op.create_index("notify_deliveries_alert", "notify_deliveries", ["alert_id"])
    op.create_index("notify_deliveries_status", "notify_deliveries", ["status", "channel"])
    op.create_index("notify_deliveries_key", "notify_deliveries", ["notification_key", "channel"])
    op.create_index("notify_deliveries_message", "notify_deliveries", ["message_id"])
    op.create_table(
        "notify_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("alert_count", sa.Integer, nullable=False),
    )
    op.create_index("notify_attempts_message", "notify_attempts", ["message_id"])


def downgrade() -> None:
    op.drop_table("notify_attempts")
    op.drop_table("notify_deliveries")
