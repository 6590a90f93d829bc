"""Correlation patterns edited through the API (joint/pattern_store.py): patterns defined through the API, per-region
overrides of any pattern, and the history of every change. The newest change's id is the pattern set's version:
a running correlator reloads its patterns when it moves.

Revision ID: 0012_joint_pattern_edits
Revises: 0008_joint
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_joint_pattern_edits"
down_revision = "0008_joint"  # the joint branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "joint_pattern_defs",
        sa.Column("pattern_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),  # the pattern as in a pattern file's patterns: section
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "joint_pattern_overrides",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pattern_id", sa.String(128), nullable=False),  # a pattern id, or "*" for every pattern
        sa.Column("region_id", sa.String(64), nullable=True),  # the region's subtree; NULL: every region
        sa.Column("scope_key", sa.String(200), nullable=False),  # pattern|region ("" for none)
        sa.Column("values", sa.JSON, nullable=False),  # enabled, severity, window_s, mute_members, params
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope_key", name="joint_pattern_overrides_scope"),
    )
    op.create_table(
        "joint_pattern_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),  # override | pattern
        sa.Column("action", sa.String(16), nullable=False),  # created | updated | deleted
        sa.Column("pattern_id", sa.String(128), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
    )
    op.create_index("joint_pattern_changes_pattern", "joint_pattern_changes", ["pattern_id", "at"])


def downgrade() -> None:
    op.drop_table("joint_pattern_changes")
    op.drop_table("joint_pattern_overrides")
    op.drop_table("joint_pattern_defs")
