"""outbox: partial indexes for the broadcast and provider id lookups

Conversation replies and notifications have no broadcast and no provider id until they are
sent; leaving them out of those two indexes saves two index writes per queued message (a reply
is queued with every conversation step).

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0005'
branch_labels = None
depends_on = None

BROADCAST = sa.text("broadcast_id IS NOT NULL")
PROVIDER = sa.text("provider_id != ''")


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_broadcast')
        batch_op.drop_index('ix_outbox_provider_id')
        batch_op.create_index('ix_outbox_broadcast', ['broadcast_id', 'status'], unique=False,
                              sqlite_where=BROADCAST, postgresql_where=BROADCAST)
        batch_op.create_index('ix_outbox_provider_id', ['provider_id'], unique=False,
                              sqlite_where=PROVIDER, postgresql_where=PROVIDER)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_provider_id')
        batch_op.drop_index('ix_outbox_broadcast')
        batch_op.create_index('ix_outbox_broadcast', ['broadcast_id', 'status'], unique=False)
        batch_op.create_index('ix_outbox_provider_id', ['provider_id'], unique=False)
