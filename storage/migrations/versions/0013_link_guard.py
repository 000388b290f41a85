"""link_guard: the global budget of wrong link codes (one row)

A wrong code typed at /bagla cannot be attributed to the code it missed, so every wrong guess
counts against one budget shared by every worker; past it, linking by code pauses for everyone
and the live codes are voided (storage/linking.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""
from datetime import datetime, timezone

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    guard = op.create_table(
        'link_guard',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('window_started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('paused_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.bulk_insert(guard, [{'id': 1, 'window_started_at': datetime.now(timezone.utc), 'failures': 0}])


def downgrade() -> None:
    op.drop_table('link_guard')
