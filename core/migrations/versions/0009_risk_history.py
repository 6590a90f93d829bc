"""Region risk history: a snapshot of every region's risk score every ``risk.snapshot_interval_s`` (joint/risk.py).

One row per region and snapshot; a region whose score is 0 is written once when it falls to 0 and then left out
until it rises again (a missing point means 0). Rows older than ``risk.history_days`` are deleted by the
snapshot job. Its own branch off 0001 (the registry), like 0003..0005.

Revision ID: 0009_risk_history
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_risk_history"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "region_risk_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float, nullable=False),  # rolled up the tree
        sa.Column("own", sa.Float, nullable=False),  # the region's own items only
        sa.Column("alerts", sa.Integer, nullable=False),  # open alerts in its subtree
        sa.Column("incidents", sa.Integer, nullable=False),  # open incidents in its subtree
    )
    op.create_index("region_risk_history_region_at", "region_risk_history", ["region_id", "at"])
    op.create_index("region_risk_history_at", "region_risk_history", ["at"])


def downgrade() -> None:
    op.drop_table("region_risk_history")
