"""channel_rate.pause_seconds: a pause after a 429 never lasts longer than asked, whatever the clock

With the clock set back an hour, a 10-second pause stored as `paused_until` would hold the
channel for an hour and ten seconds; with its length kept beside it, what is left of a pause is
cut to that length (storage/outbox.py, _pause_left).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('channel_rate', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pause_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('channel_rate', schema=None) as batch_op:
        batch_op.drop_column('pause_seconds')
