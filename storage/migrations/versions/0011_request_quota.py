"""request_quota: token buckets for request budgets shared by every worker

One row per bucket (an Open311 API key's POSTs, all keys' POSTs together): `tat`, the theoretical
arrival time of the next allowed request in seconds since the epoch (GCRA, storage/quota.py).

Revision ID: 0011_request_quota
Revises: 0010_open311_privacy
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0011_request_quota'
down_revision = '0010_open311_privacy'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('request_quota',
    sa.Column('bucket', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('tat', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('bucket')
    )


def downgrade() -> None:
    op.drop_table('request_quota')
