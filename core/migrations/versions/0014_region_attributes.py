"""Region attributes: headcount, floor area, energy quotas, tariff, contracted capacity (devices/region_attrs.py).

A JSON mapping per region, ``{}`` by default; the energy rules (E7, E8) and the energy report read it. Its own
branch off 0001, like 0012_telemetry_side.

Revision ID: 0014_region_attributes
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_region_attributes"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("regions", sa.Column("attributes", sa.JSON, nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table("regions") as batch:
        batch.drop_column("attributes")
