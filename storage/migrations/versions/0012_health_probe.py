"""health_probe: the row GET /health writes to prove the database accepts writes

A read answers on a full disk and on a read-only database while every webhook fails, so the
health check commits an update of this one row (storage/health.py).

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012'
down_revision = '0011_request_quota'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'health_probe',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('worker', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('health_probe')
