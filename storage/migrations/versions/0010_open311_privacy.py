"""Open311 privacy: API key scopes and unguessable media names

`api_key.scope`: "public" (what anyone may read: no description, no exact pin, no photos) or
"full" (every detail, each read audited). Keys that existed before get "public": a client that
needs the details is given a new key with `katilim apikey add NAME --scope full`.

`report_media.token`: a random name for each stored attachment (secrets.token_urlsafe(16)); the
Open311 media_url uses it instead of the sequential id, so photos cannot be enumerated. Rows that
existed before get a token of their own here.

Revision ID: 0010_open311_privacy
Revises: 0009
Depends on: 0006 (api_key), 0003 (report_media)
Create Date: 2026-12-02
"""
import secrets

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010_open311_privacy'
down_revision = '0009'
branch_labels = None
depends_on = '0006'


def upgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False,
                                      server_default='public'))
    with op.batch_alter_table('report_media', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
    conn = op.get_bind()
    ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM report_media WHERE token IS NULL"))]
    if ids:
        conn.execute(sa.text("UPDATE report_media SET token = :token WHERE id = :id"),
                     [{"id": i, "token": secrets.token_urlsafe(16)} for i in ids])
    with op.batch_alter_table('report_media', schema=None) as batch_op:
        batch_op.alter_column('token', existing_type=sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False)
        batch_op.create_index(batch_op.f('ix_report_media_token'), ['token'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('report_media', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_media_token'))
        batch_op.drop_column('token')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('scope')
