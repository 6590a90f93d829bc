"""Alert rules edited through the API: overrides, API-defined rules and the history of every change.

Revision ID: 0006
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0003"  # the alerts branch: these rows are applied on top of the rule files by alerts/rule_store.py
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_rule_overrides",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule_id", sa.String(128), nullable=False),  # a rule id, or "*" for every rule
        sa.Column("region_id", sa.String(64), nullable=True),
        sa.Column("device_type", sa.String(32), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
        # rule|region|device_type|device ("" for none): one override per rule and scope (NULLs are never equal
        # in a unique index, so the scope is spelled out).
        sa.Column("scope_key", sa.String(300), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=True),
        sa.Column("severity", sa.String(16), nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope_key", name="alert_rule_overrides_scope"),
    )
    op.create_index("alert_rule_overrides_rule", "alert_rule_overrides", ["rule_id"])
    op.create_table(
        "alert_rule_defs",
        sa.Column("rule_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),  # the rule as in a rule file's rules: section
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "alert_rule_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),  # override | rule
        sa.Column("action", sa.String(16), nullable=False),  # created | updated | deleted
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=True),  # rules: the rule's kind
        sa.Column("region_id", sa.String(64), nullable=True),
        sa.Column("device_type", sa.String(32), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
    )
    op.create_index("alert_rule_changes_rule", "alert_rule_changes", ["rule_id", "at"])


def downgrade() -> None:
    op.drop_table("alert_rule_changes")
    op.drop_table("alert_rule_defs")
    op.drop_table("alert_rule_overrides")
