"""The security policy the security administrator sets (gateway/policy.py): one row, NULL fields take defaults.

Revision ID: 0013_security_policy
Revises: 0011_users_auth
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_security_policy"
down_revision = "0011_users_auth"  # the api_users branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "security_policy",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("password_min_length", sa.Integer, nullable=True),
        sa.Column("password_classes", sa.Integer, nullable=True),
        sa.Column("lockout_failures", sa.Integer, nullable=True),
        sa.Column("lockout_minutes", sa.Integer, nullable=True),
        sa.Column("session_idle_minutes", sa.Integer, nullable=True),
        sa.Column("session_absolute_minutes", sa.Integer, nullable=True),
        sa.Column("totp_required_for_admins", sa.Boolean, nullable=True),
        sa.Column("token_max_days", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("security_policy")
