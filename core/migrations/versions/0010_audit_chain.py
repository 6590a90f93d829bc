"""The audit log as a hash chain (devices/audit.py): ``seq``, ``prev_hash`` and ``hash`` on every record, and the
one-row ``audit_chain_head`` that writers lock. Records already in the log are chained here in ``id`` order, so
they verify.

Revision ID: 0010_audit_chain
Revises: 0002
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from devices.audit import GENESIS, record_hash

revision = "0010_audit_chain"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("seq", sa.Integer, nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    log = sa.table(
        "audit_log",
        sa.column("id", sa.Integer),
        sa.column("ts", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String),
        sa.column("origin", sa.String),
        sa.column("action", sa.String),
        sa.column("target", sa.String),
        sa.column("outcome", sa.String),
        sa.column("detail", sa.JSON),
        sa.column("seq", sa.Integer),
        sa.column("prev_hash", sa.String),
        sa.column("hash", sa.String),
    )
    conn = op.get_bind()
    seq, prev = 0, GENESIS
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(
                log.c.id, log.c.ts, log.c.actor, log.c.origin, log.c.action, log.c.target, log.c.outcome, log.c.detail
            )
            .where(log.c.id > last_id)
            .order_by(log.c.id)
            .limit(1000)
        ).all()
        if not rows:
            break
        updates: list[dict[str, Any]] = []
        for r in rows:
            seq += 1
            h = record_hash(
                seq=seq,
                ts=r.ts,
                actor=r.actor,
                origin=r.origin,
                action=r.action,
                target=r.target,
                outcome=r.outcome,
                detail=r.detail,
                prev_hash=prev,
            )
            updates.append({"rid": r.id, "seq": seq, "prev_hash": prev, "hash": h})
            prev = h
        conn.execute(
            log.update()
            .where(log.c.id == sa.bindparam("rid"))
            .values(seq=sa.bindparam("seq"), prev_hash=sa.bindparam("prev_hash"), hash=sa.bindparam("hash")),
            updates,
        )
        last_id = rows[-1].id
    conn.execute(
        sa.table("audit_chain_head", sa.column("id"), sa.column("seq"), sa.column("hash")).insert(),
        [{"id": 1, "seq": seq, "hash": prev}],
    )
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("seq", existing_type=sa.Integer, nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
    op.create_index("audit_log_seq", "audit_log", ["seq"], unique=True)
    op.create_index("audit_log_actor", "audit_log", ["actor"])


def downgrade() -> None:
    op.drop_index("audit_log_actor", "audit_log")
    op.drop_index("audit_log_seq", "audit_log")
    op.drop_table("audit_chain_head")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
