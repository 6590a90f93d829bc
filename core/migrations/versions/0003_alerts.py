"""Alerts, their timeline, silences and the alert engine's state snapshots.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        # = dedup_key while open, NULL when resolved: at most one open alert per key.
        sa.Column("open_key", sa.String(255), nullable=True),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("region_path", sa.String(1024), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title_zh", sa.String(255), nullable=False),
        sa.Column("title_en", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_reason", sa.Text, nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
        sa.Column("resolve_reason", sa.Text, nullable=True),
        sa.Column("assignee", sa.String(128), nullable=True),
        sa.Column("escalation_level", sa.Integer, nullable=False, server_default="0"),
        sa.Column("flapping", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("silenced", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.UniqueConstraint("open_key", name="alerts_open_key"),
    )
    op.create_index("alerts_state", "alerts", ["state"])
    op.create_index("alerts_region_path", "alerts", ["region_path"])
    op.create_index("alerts_device", "alerts", ["device_id", "started_at"])
    op.create_index("alerts_rule", "alerts", ["rule_id", "started_at"])
    op.create_index("alerts_started", "alerts", ["started_at"])
    op.create_table(
        "alert_comments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("alert_comments_alert", "alert_comments", ["alert_id", "at"])
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("region_id", sa.String(64), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("rule_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("creator", sa.String(128), nullable=False),
        sa.Column("approver", sa.String(128), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renotify", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("ended", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("alert_silences_ended", "alert_silences", ["ended", "ends_at"])
    op.create_table(
        "alert_rule_states",
        sa.Column("rule_id", sa.String(128), primary_key=True),
        sa.Column("subject", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.Text, nullable=False),  # JSON text
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "alert_kv",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_kv")
    op.drop_table("alert_rule_states")
    op.drop_table("alert_silences")
    op.drop_table("alert_comments")
    op.drop_table("alerts")
