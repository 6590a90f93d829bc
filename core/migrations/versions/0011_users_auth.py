"""People who log in: password hash, lockout, TOTP secret, token expiry; login sessions and integration tokens.

The legacy bearer token of ``api_users`` keeps working: ``token_expires_at`` NULL means it never expires (tokens
made before this revision). ``api_sessions`` holds login sessions (``kind`` = ``session``) and the integration
tokens of ``lianfang users token`` (``kind`` = ``token``), each as the SHA-256 of the token, with an expiry and a
revocation time.

Revision ID: 0011_users_auth
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_users_auth"
down_revision = "0004"  # the api_users branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_users") as batch:
        batch.add_column(sa.Column("person_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("password_hash", sa.String(255), nullable=True))
        batch.add_column(sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("totp_secret", sa.String(64), nullable=True))
        # The 30 s step of the last TOTP code accepted: a code is good once (no replay within its window).
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger, nullable=True))
        # NULL: a token made before this revision, which never expires (docs/security.md).
        batch.add_column(sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("token_audited_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "api_sessions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("api_users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # session | token
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("audited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("origin", sa.String(200), nullable=False, server_default=""),
    )
    op.create_index("ix_api_sessions_user_id", "api_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_api_sessions_user_id", table_name="api_sessions")
    op.drop_table("api_sessions")
    with op.batch_alter_table("api_users") as batch:
        for col in (
            "token_audited_at",
            "token_expires_at",
            "totp_last_step",
            "totp_secret",
            "locked_until",
            "failed_logins",
            "password_changed_at",
            "password_hash",
            "person_id",
        ):
            batch.drop_column(col)
