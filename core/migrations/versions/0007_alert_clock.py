"""Alerts: when the platform learned of an alert, and when its escalation clock started.

``started_at`` is the device's own timestamp, which may be hours old (a gateway replaying its buffer); escalation
counts from when the platform learned of the alert (``learned_at``) or, later, from when its current level was
reached or a silence over it ended (``escalation_from``; NULL while nobody has been told of it). Existing rows get
both from ``started_at``, as they were computed before.

Revision ID: 0007_alert_clock
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_alert_clock"
down_revision = "0006"  # the alerts branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("learned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("escalation_from", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE alerts SET learned_at = started_at, escalation_from = started_at")


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("escalation_from")
        batch.drop_column("learned_at")
