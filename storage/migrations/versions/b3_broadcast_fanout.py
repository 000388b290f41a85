"""broadcast fan-out lease, cursor and progress

Revision ID: b3_broadcast_fanout
Revises: 0002
Create Date: 2026-11-25
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = 'b3_broadcast_fanout'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('broadcast', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fanout_cursor', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('fanout_by', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('fanout_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('fanout_done_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('progress_pct', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('progress_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('sent', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('failed', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('broadcast', schema=None) as batch_op:
        for name in ('failed', 'sent', 'progress_at', 'progress_pct', 'fanout_done_at', 'fanout_until',
                     'fanout_by', 'fanout_cursor'):
            batch_op.drop_column(name)
