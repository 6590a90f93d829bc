"""Vehicle dispatch records (派车单, rule V2): who drives which vehicle, why, when, and who approved it.

Times are epoch milliseconds (UTC instants, the same on SQLite and PostgreSQL). A dispatch is pending until
approved (``approved``, ``approver``, ``approved_ms``) and closed when ``actual_end_ms`` is set. The alert engine
re-reads the approved dispatches around now on each registry refresh (devices/dispatch.py ``DispatchStore.book``).
Its own branch off 0001 (the registry).

Revision ID: 0015_dispatches
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_dispatches"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vehicle_dispatches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("vehicle_id", sa.String(64), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=False),  # the vehicle's region when it was requested
        sa.Column("driver", sa.String(100), nullable=False),
        sa.Column("purpose", sa.String(500), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("planned_start_ms", sa.BigInteger, nullable=False),
        sa.Column("planned_end_ms", sa.BigInteger, nullable=False),
        sa.Column("approved", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("approver", sa.String(200), nullable=True),
        sa.Column("approved_ms", sa.BigInteger, nullable=True),
        sa.Column("actual_start_ms", sa.BigInteger, nullable=True),
        sa.Column("actual_end_ms", sa.BigInteger, nullable=True),  # set: closed
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("vehicle_dispatches_vehicle", "vehicle_dispatches", ["vehicle_id", "planned_start_ms"])
    op.create_index("vehicle_dispatches_region", "vehicle_dispatches", ["region_id", "planned_start_ms"])
    op.create_index("vehicle_dispatches_approved", "vehicle_dispatches", ["approved", "planned_end_ms"])


def downgrade() -> None:
    op.drop_table("vehicle_dispatches")
