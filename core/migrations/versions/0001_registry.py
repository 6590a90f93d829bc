"""Region tree and device registry.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(64), sa.ForeignKey("regions.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("regions_parent", "regions", ["parent_id"])
    op.create_index("regions_path", "regions", ["path"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("region_id", sa.String(64), sa.ForeignKey("regions.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("expected_interval_s", sa.Integer, nullable=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("devices_region", "devices", ["region_id"])


def downgrade() -> None:
    op.drop_table("devices")
    op.drop_table("regions")
