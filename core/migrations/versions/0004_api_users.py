"""API users of the gateway: a role, a region scope and the SHA-256 hash of a bearer token.

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        # NULL: the whole region tree; otherwise the user sees only this region's subtree.
        sa.Column("region_id", sa.String(64), sa.ForeignKey("regions.id", ondelete="RESTRICT"), nullable=True),
        # Hex SHA-256 of the token; the token itself is shown once and never stored.
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_users")
