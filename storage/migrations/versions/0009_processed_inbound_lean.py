"""processed_inbound: one B-tree per row

Every inbound message records its id here (the de-duplication of re-delivered updates and
webhooks). The table kept three B-trees: the rows, the primary key and an index on `at` that only
the hourly purge used. On SQLite the table becomes WITHOUT ROWID (the primary key is the table),
and on both databases the `at` index goes: the purge scans the table once an hour instead, and
every conversation step writes two pages fewer.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

LEAN = """CREATE TABLE processed_inbound (
    channel VARCHAR(16) NOT NULL,
    external_id VARCHAR(64) NOT NULL,
    at DATETIME NOT NULL,
    PRIMARY KEY (channel, external_id)
) WITHOUT ROWID"""
PLAIN = LEAN.removesuffix(" WITHOUT ROWID")


def _rebuild(create: str) -> None:
    op.execute("ALTER TABLE processed_inbound RENAME TO processed_inbound_old")
    op.execute(create)
    op.execute("INSERT INTO processed_inbound (channel, external_id, at) "
               "SELECT channel, external_id, at FROM processed_inbound_old")
    op.execute("DROP TABLE processed_inbound_old")


def upgrade() -> None:
    op.drop_index('ix_processed_inbound_at', table_name='processed_inbound')
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(LEAN)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(PLAIN)
    op.create_index('ix_processed_inbound_at', 'processed_inbound', ['at'], unique=False)
