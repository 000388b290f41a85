"""erasure erases: who sent which stored file, erased reports marked, audit actors pseudonymous

* `media_upload`: the stored files each resident sent (erasure deletes a draft's photos too).
* `report.erased_at`: set when the reporter erased their data (description and street emptied,
  staff views show a marker).
* audit rows written before this revision named the actor by channel and address
  ("telegram:<chat id>", "whatsapp:whatsapp:+90..."): they become "staff:ID" or "resident:ID", or
  "erased" when neither exists any more. This is one way: the way back keeps the pseudonyms
  (putting chat ids and phone numbers back into the audit log would undo the point of it).

Revision ID: 0015_erasure
Revises: 0014
Create Date: 2026-12-01
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0015_erasure'
down_revision = '0014'
branch_labels = None
depends_on = None  # the report table (0003) comes before 0010, which depends on 0006 and so on 0003

CHANNELS = ("telegram", "whatsapp", "console")


def upgrade() -> None:
    op.create_table('media_upload',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resident_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['resident_id'], ['resident.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('resident_id', 'name', name='uq_media_upload_resident_name')
    )
    with op.batch_alter_table('media_upload', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_media_upload_resident_id'), ['resident_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_media_upload_name'), ['name'], unique=False)
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.add_column(sa.Column('erased_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    pseudonymise_audit_actors(op.get_bind())


def pseudonymise_audit_actors(conn) -> None:
    """Every audit actor of the form "<channel>:<address>" → "staff:ID", "resident:ID" or "erased"."""
    text = sa.text
    actors = [a for (a,) in conn.execute(text("SELECT DISTINCT actor FROM audit_log"))
              if a.split(":", 1)[0] in CHANNELS]
    for actor in actors:
        channel, address = actor.split(":", 1)
        staff = None
        if channel == "telegram":
            staff = conn.execute(text("SELECT id FROM staff WHERE telegram_id = :a"), {"a": address}).scalar()
        elif channel == "whatsapp":
            staff = conn.execute(text("SELECT id FROM staff WHERE whatsapp = :a"),
                                 {"a": address.removeprefix("whatsapp:")}).scalar()
        else:
            staff = conn.execute(text("SELECT id FROM staff WHERE name = :a"), {"a": actor}).scalar()
        resident = conn.execute(text("SELECT resident_id FROM channel_identity WHERE channel = :c AND address = :a"),
                                {"c": channel, "a": address}).scalar()
        new = f"staff:{staff}" if staff is not None else f"resident:{resident}" if resident is not None else "erased"
        conn.execute(text("UPDATE audit_log SET actor = :new WHERE actor = :old"), {"new": new, "old": actor})


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+ has it): a batch copy of `report` would drop the table that
    # report_media, report_event and others point at, which foreign keys refuse once they hold rows.
    op.drop_column('report', 'erased_at')
    with op.batch_alter_table('media_upload', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_media_upload_name'))
        batch_op.drop_index(batch_op.f('ix_media_upload_resident_id'))
    op.drop_table('media_upload')
