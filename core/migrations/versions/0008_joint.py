"""Joint prevention and control (joint/): incidents, their member alerts, evidence timeline, department tasks and
the correlator's windows.

``open_key`` equals ``group_key`` while an incident is open (open or investigating) and is NULL afterwards: at most
one open incident per pattern and scope, a database guarantee as for alerts.

Revision ID: 0008_joint
Revises: 0007_alert_clock
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_joint"
down_revision = "0007_alert_clock"  # the alerts branch: incidents are made of alerts
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "joint_incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("pattern_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("title_zh", sa.String(255), nullable=False),
        sa.Column("title_en", sa.String(255), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),  # open | investigating | resolved | closed
        sa.Column("cause_code", sa.String(64), nullable=True),
        sa.Column("scope_level", sa.String(16), nullable=False),  # building | agency | city | province
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("region_path", sa.String(1024), nullable=False),
        sa.Column("group_key", sa.String(255), nullable=False),
        sa.Column("open_key", sa.String(255), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("escalation_level", sa.Integer, nullable=False, server_default="0"),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.UniqueConstraint("open_key", name="joint_incidents_open_key"),
    )
    op.create_index("joint_incidents_state", "joint_incidents", ["state"])
    op.create_index("joint_incidents_region_path", "joint_incidents", ["region_path"])
    op.create_index("joint_incidents_opened", "joint_incidents", ["opened_at"])
    op.create_index("joint_incidents_pattern", "joint_incidents", ["pattern_id", "opened_at"])
    op.create_table(
        "joint_incident_members",
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("joint_incidents.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("alert_id", sa.Integer, primary_key=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("muted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("resolved", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("joint_incident_members_alert", "joint_incident_members", ["alert_id"])
    op.create_table(
        "joint_timeline",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("joint_incidents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # alert | event | action | task
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("joint_timeline_incident", "joint_timeline", ["incident_id", "ts"])
    op.create_table(
        "joint_tasks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("joint_incidents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),  # open | acknowledged | closed
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("escalation_level", sa.Integer, nullable=False, server_default="0"),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("joint_tasks_incident", "joint_tasks", ["incident_id"])
    op.create_index("joint_tasks_department", "joint_tasks", ["department", "state"])
    op.create_table(
        "joint_kv",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("joint_kv")
    op.drop_table("joint_tasks")
    op.drop_table("joint_timeline")
    op.drop_table("joint_incident_members")
    op.drop_table("joint_incidents")
